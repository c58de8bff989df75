"""A perditionpy map driven by an NGINX mail ``auth_http`` service.

    perdition -M /path/to/plugins/nginx_auth_http.py \\
              -m "http://127.0.0.1:9000/auth protocol=imap timeout=5"

For each lookup it sends what NGINX's mail proxy sends
(https://nginx.org/en/docs/mail/ngx_mail_auth_http_module.html)::

    GET /auth HTTP/1.0
    Host: 127.0.0.1
    Auth-Method: none
    Auth-User: <key>
    Auth-Protocol: imap
    Auth-Login-Attempt: 1
    Client-IP: <client address>

and reads the answer's headers: ``Auth-Status: OK`` with ``Auth-Server``
(an address) and ``Auth-Port`` routes the login there (``Auth-User``, if
present, is the back-end user name for ``--username_from_database``); any
other ``Auth-Status`` means "no server" for this user.  An unreachable
service, a non-200 reply or a timeout raises ``MapError`` (the session falls
back to ``--outgoing_server``).

Differences from NGINX: a map sees the user name but never the password —
perditionpy authenticates at the back-end, as perdition does — so the request
says ``Auth-Method: none`` and carries no ``Auth-Pass``; ``Auth-Wait`` and
``Auth-Error-Code`` are ignored.

``-m`` options after the URL: ``protocol=`` (default ``imap``), ``timeout=``
seconds (default 5).
"""

from __future__ import annotations

import http.client
import urllib.parse

from perditionpy.endpoints import UserServerPort
from perditionpy.errors import MapError
from perditionpy.maps.base import LookupContext

DEFAULT_TIMEOUT = 5.0


def _header_value(text: str) -> str:
    """A header value that cannot end the header (user names may hold anything)."""
    return urllib.parse.quote(text, safe="@.-_+%!#$&'*/=?^`{|}~:")


class NginxAuthHttp:
    name = "nginx_auth_http"

    def __init__(self, options: str) -> None:
        url, *settings = options.split()
        self.url = urllib.parse.urlsplit(url)
        if self.url.scheme not in ("http", "https") or not self.url.hostname:
            raise MapError(self.name, f"-m must start with an http(s) URL, not {url!r}")
        values = dict(item.partition("=")[::2] for item in settings)
        self.protocol = values.pop("protocol", "imap")
        self.timeout = float(values.pop("timeout", DEFAULT_TIMEOUT))
        if values:
            raise MapError(self.name, f"unknown -m settings: {', '.join(values)}")

    def _connection(self) -> http.client.HTTPConnection:
        kind = (http.client.HTTPSConnection if self.url.scheme == "https"
                else http.client.HTTPConnection)
        return kind(self.url.hostname or "", self.url.port, timeout=self.timeout)

    def get(self, key: str, context: LookupContext) -> UserServerPort | None:
        headers = {"Auth-Method": "none", "Auth-User": _header_value(key),
                   "Auth-Protocol": self.protocol, "Auth-Login-Attempt": "1"}
        if context.client is not None:
            headers["Client-IP"] = str(context.client[0])
        path = self.url.path or "/"
        if self.url.query:
            path += "?" + self.url.query
        connection = self._connection()
        try:
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise MapError(self.name, f"{self.url.geturl()}: {exc}") from exc
        finally:
            connection.close()
        if response.status != 200:
            raise MapError(self.name, f"{self.url.geturl()}: HTTP {response.status}")
        if response.getheader("Auth-Status", "") != "OK":
            return None
        server = response.getheader("Auth-Server")
        if not server:
            raise MapError(self.name, "Auth-Status: OK without Auth-Server")
        return UserServerPort(response.getheader("Auth-User"), server,
                              response.getheader("Auth-Port"))

    def close(self) -> None:
        pass


map_factory = NginxAuthHttp
