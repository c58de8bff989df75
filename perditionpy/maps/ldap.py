"""The LDAP map: perdition's ``libperditiondb_ldap`` in Python (ldap3).

``-m`` is ``[ldap_version:]ldap_url`` (parsed by :mod:`perditionpy.maps._ldap_url`);
empty means perdition's default,
``ldap://localhost/ou=mailbox,dc=nodomain?username,mailhost,port?one?(uid=%s)``
with protocol version 2.  A lookup searches the URL's base and scope with its
filter, the key put into the filter (and the base DN) as an escaped literal,
and reads the first entry's attributes in the URL's order: the back-end user,
server and port.  An entry with only the first attribute has it parsed as a
whole ``user@server:port`` destination; otherwise the server attribute is used
as written (``host:port`` is not split, so a bare IPv6 address works), as in
perdition.

Connections: a small pool (:class:`perditionpy.maps._sql.ConnectionPool`)
shared by the session threads; each connection is used by one thread at a
time.  Opening one tries the URL's hosts in order (each with a connect
timeout), does StartTLS when the URL asks for it, and binds (``bindname`` /
``x-bindpw``, else anonymously).  A pooled connection found dead (the server
restarted) is replaced and the lookup retried once.  An unreachable server is
logged once per outage as a warning; lookups then raise ``MapError`` and the
session falls back to ``--outgoing_server``.  No connection is made before the
first lookup, so the proxy starts while the directory is down.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import ldap3  # type: ignore[import-untyped]
from ldap3.core import exceptions as ldap_errors  # type: ignore[import-untyped]
from ldap3.operation.search import parse_filter  # type: ignore[import-untyped]

from perditionpy.endpoints import UserServerPort, parse_user_server_port
from perditionpy.errors import MapError
from perditionpy.maps._ldap_url import (
    HostPort,
    LdapUrl,
    LdapUrlError,
    TlsSettings,
    parse_options,
    tls_settings,
)
from perditionpy.maps._sql import ConnectionPool, PoolExhausted
from perditionpy.maps.base import LookupContext

__all__ = ["DEFAULT_POOL_SIZE", "LdapMap", "Timeouts", "open_ldap_map"]

logger = logging.getLogger(__name__)

DEFAULT_POOL_SIZE = 4
# perdition's first three URL attributes: back-end user, server, port.
_USED_ATTRIBUTES = 3
# Two entries are enough to know a filter is ambiguous.
_SIZE_LIMIT = 2
_SUCCESS, _SIZE_LIMIT_EXCEEDED = 0, 4
_PROTOCOL_ERROR, _NO_SUCH_OBJECT, _INVALID_DN_SYNTAX = 2, 32, 34
# The connection is unusable after these (socket gone, server said goodbye, no reply).
_BROKEN = (ldap_errors.LDAPCommunicationError, ldap_errors.LDAPResponseTimeoutError,
           ldap_errors.LDAPSocketOpenError, OSError)


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds: to reach one host (and bind); for one search."""

    connect: float = 5.0
    query: float = 5.0


class _ConnectFailed(Exception):
    """No host could be reached, or the bind was refused; the message says why."""


class LdapMap:
    """The ``Map`` for an ``[ldap_version:]ldap_url`` option string."""

    name = "ldap"

    def __init__(self, url: LdapUrl, *, pool_size: int = DEFAULT_POOL_SIZE,
                 timeouts: Timeouts | None = None, tls: TlsSettings | None = None) -> None:
        self.url = url
        self.timeouts = timeouts or Timeouts()
        self._tls = tls if tls is not None else tls_settings()
        self._check_filter()
        self._pool: ConnectionPool[ldap3.Connection] = ConnectionPool(
            self._open, _unbind, size=pool_size, wait=self.timeouts.query)
        self._state = threading.Lock()
        self._down: set[HostPort] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"LdapMap({self.url.describe()})"

    @property
    def pool(self) -> ConnectionPool[ldap3.Connection]:
        return self._pool

    # --------------------------------------------------------------- Map

    def get(self, key: str, context: LookupContext) -> UserServerPort | None:
        """Look ``key`` up; ``None`` if no entry; ``MapError`` if the directory fails."""
        if self._closed:
            raise MapError(self.name, "map is closed")
        if not _lookup_able(key):
            return None
        entry = self._search(key)
        if entry is None:
            return None
        return self._destination(entry, context.domain_delimiter)

    def close(self) -> None:
        """Unbind pooled connections; lookups afterwards raise ``MapError``.  Idempotent."""
        self._closed = True
        self._pool.close()

    # --------------------------------------------------------------- searching

    def _check_filter(self) -> None:
        """Refuse at start-up a filter that can never parse."""
        try:
            parse_filter(self.url.search_filter("x"), None, True, True, None, False)
        except (ldap_errors.LDAPException, ValueError) as exc:
            raise MapError(self.name, f"bad filter {self.url.filter.literal()!r}: {exc}") from exc

    def _search(self, key: str) -> Mapping[str, list[bytes]] | None:
        """The first entry's raw attributes; one retry when a pooled connection was dead."""
        for attempt in (1, 2):
            connection, reused = self._acquire()
            try:
                entries = self._run_search(connection, key)
            except _BROKEN as exc:
                self._pool.discard(connection)
                self._pool.discard_idle()  # the server went away: so did the idle ones
                if reused and attempt == 1:
                    logger.debug("ldap map: pooled connection lost (%s); retrying", _text(exc))
                    continue
                raise MapError(self.name, f"search failed: {_text(exc)}") from exc
            except MapError:
                self._pool.release(connection)
                raise
            self._pool.release(connection)
            return entries
        raise AssertionError("unreachable")  # pragma: no cover

    def _acquire(self) -> tuple[ldap3.Connection, bool]:
        try:
            return self._pool.acquire()
        except PoolExhausted as exc:
            raise MapError(self.name, str(exc)) from exc
        except _ConnectFailed as exc:
            raise MapError(self.name, str(exc)) from exc

    def _run_search(self, connection: ldap3.Connection,
                    key: str) -> Mapping[str, list[bytes]] | None:
        base, search_filter = self.url.search_base(key), self.url.search_filter(key)
        connection.search(
            base, search_filter, search_scope=self.url.scope, dereference_aliases=ldap3.DEREF_NEVER,
            attributes=list(self.url.attributes), size_limit=_SIZE_LIMIT,
            time_limit=_seconds(self.timeouts.query))
        code = connection.result.get("result")
        if code == _NO_SUCH_OBJECT or (code == _INVALID_DN_SYNTAX and
                                       self.url.base.has_placeholder):
            return None
        if code not in (_SUCCESS, _SIZE_LIMIT_EXCEEDED):
            raise MapError(self.name, f"search under {base!r} failed: {_result_text(connection)}")
        entries = [item for item in connection.response or []
                   if item.get("type") == "searchResEntry"]
        if len(entries) > 1:
            logger.warning("ldap map: multiple entries returned by filter: base: %s; "
                           "scope: %s; filter: %s (using the first)",
                           base, self.url.scope.lower(), search_filter)
        return entries[0].get("raw_attributes", {}) if entries else None

    # --------------------------------------------------------------- the result

    def _destination(self, attributes: Mapping[str, list[bytes]],
                     delimiter: str) -> UserServerPort | None:
        user, server, port = self._values(attributes)
        if user and server is None and port is None:
            return parse_user_server_port(user, delimiter)
        if user is None and server is None and port is None:
            logger.debug("ldap map: the entry has none of %s", ",".join(self.url.attributes))
            return None
        return UserServerPort(user, server, port)

    def _values(self, attributes: Mapping[str, list[bytes]]) -> list[str | None]:
        """The first value of each of the URL's first three attributes (``None``: absent)."""
        by_name = {name.lower(): values for name, values in attributes.items()}
        values: list[str | None] = []
        for name in self.url.attributes[:_USED_ATTRIBUTES]:
            found = by_name.get(name.lower()) or []
            values.append(_value(found[0]) if found else None)
        return values + [None] * (_USED_ATTRIBUTES - len(values))

    # --------------------------------------------------------------- connecting

    def _open(self) -> ldap3.Connection:
        """Connect to the first host that answers, in URL order, and bind."""
        failures: list[str] = []
        for host in self.url.hosts:
            try:
                connection = self._connect(host)
            except _BROKEN + (ldap_errors.LDAPStartTLSError,) as exc:
                failures.append(f"{host}: {_text(exc)}")
                self._note_down(host, _text(exc))
                continue
            self._note_up(host)
            self._bind(connection, host)
            return connection
        raise _ConnectFailed("cannot reach the LDAP server: " + "; ".join(failures))

    def _connect(self, host: HostPort) -> ldap3.Connection:
        server = ldap3.Server(
            host.host, port=host.port, use_ssl=self.url.use_ssl, tls=self._ldap3_tls(),
            get_info=ldap3.NONE, connect_timeout=_seconds(self.timeouts.connect),
            mode=ldap3.IP_SYSTEM_DEFAULT)
        connection = ldap3.Connection(
            server, user=self.url.bind_dn, password=self.url.bind_password,
            version=self.url.version, client_strategy=ldap3.SYNC, auto_bind=ldap3.AUTO_BIND_NONE,
            raise_exceptions=False, auto_referrals=False, check_names=False,
            receive_timeout=_seconds(self.timeouts.query), return_empty_attributes=False)
        try:
            connection.open(read_server_info=False)
            if self.url.start_tls and not connection.start_tls(read_server_info=False):
                raise ldap_errors.LDAPStartTLSError(f"StartTLS refused: {_result_text(connection)}")
        except BaseException:
            _unbind(connection)
            raise
        return connection

    def _ldap3_tls(self) -> ldap3.Tls | None:
        if not (self.url.use_ssl or self.url.start_tls):
            return None
        return ldap3.Tls(validate=self._tls.verify, ca_certs_file=self._tls.ca_file,
                         ca_certs_path=self._tls.ca_dir)

    def _bind(self, connection: ldap3.Connection, host: HostPort) -> None:
        """Bind (anonymously without ``bindname``), or close and explain why not."""
        try:
            bound = connection.bind()
        except ldap_errors.LDAPException as exc:
            _unbind(connection)
            raise _ConnectFailed(f"bind to {host} failed: {_text(exc)}") from exc
        if bound:
            return
        reason, code = _result_text(connection), (connection.result or {}).get("result")
        _unbind(connection)
        if code == _PROTOCOL_ERROR and self.url.version == 2:
            reason += ("; the server refuses LDAPv2 (perdition's default): "
                       "write -m '3:ldap://…' for LDAPv3")
        who = self.url.bind_dn or "anonymous"
        logger.warning("ldap map: bind as %s to %s refused: %s", who, host, reason)
        raise _ConnectFailed(f"bind as {who} to {host} refused: {reason}")

    def _note_down(self, host: HostPort, reason: str) -> None:
        """Warn once per outage of ``host``; later failures are debug lines."""
        with self._state:
            first = host not in self._down
            self._down.add(host)
        if not first:
            logger.debug("ldap map: LDAP server %s still unreachable: %s", host, reason)
            return
        more = len(self.url.hosts) > 1
        logger.warning("ldap map: LDAP server %s is unreachable (%s); %s", host, reason,
                       "trying the next host" if more else
                       "lookups fail (falling back to --outgoing_server) until it is back")

    def _note_up(self, host: HostPort) -> None:
        with self._state:
            was_down = host in self._down
            self._down.discard(host)
        if was_down:
            logger.info("ldap map: LDAP server %s is reachable again", host)


def _lookup_able(key: str) -> bool:
    """Whether ``key`` could name an entry at all: no NUL, valid UTF-8 (else: not found)."""
    if "\0" in key:
        logger.debug("ldap map: key with a NUL byte: not found")
        return False
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        logger.debug("ldap map: key is not UTF-8: not found")
        return False
    return True


def _value(raw: bytes) -> str | None:
    """An attribute value as perdition's C code sees it: up to a NUL; empty is absent."""
    text = raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
    return text or None


def _seconds(timeout: float) -> int:
    """ldap3 wants whole seconds (it packs them into socket options)."""
    return max(1, math.ceil(timeout))


def _unbind(connection: ldap3.Connection) -> None:
    try:
        connection.unbind()
    except Exception as exc:  # a dead connection may fail to say goodbye; it is gone anyway
        logger.debug("ldap map: closing a connection: %s", _text(exc))


def _result_text(connection: ldap3.Connection) -> str:
    result: dict[str, Any] = connection.result or {}
    text = f"{result.get('description', 'error')} ({result.get('result', '?')})"
    message = result.get("message")
    return f"{text}: {message}" if message else text


def _text(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def open_ldap_map(options: str) -> LdapMap:
    """The factory ``-M ldap`` / ``libperditiondb_ldap.so*`` uses."""
    try:
        url = parse_options(options)
    except LdapUrlError as exc:
        raise MapError("ldap", f"-m: {exc}") from exc
    logger.debug("ldap map: LDAPv%d %s", url.version, url.describe())
    return LdapMap(url)
