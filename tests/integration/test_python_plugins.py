"""The Python maps in plugins/: loaded by file path as a site would, used by the daemon.

* ``failover_prober.py`` answers the first of a user's servers that accepts a
  connection, and fails (falls back to ``-s``) when none does;
* ``nginx_auth_http.py`` asks an NGINX-style ``auth_http`` service (a real
  HTTP server here) and routes by its ``Auth-Server``/``Auth-Port``/``Auth-User``.
"""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from perditionpy.endpoints import UserServerPort
from perditionpy.errors import MapError
from perditionpy.maps import open_map
from perditionpy.maps.base import LookupContext, Map
from tests.support.ports import LOOPBACK
from tests.support.procs import REPO_ROOT, Proc
from tests.support.scenarios import readable_dir
from tests.support.whoami import WhoAmI, pop3_session

PLUGINS = REPO_ROOT / "plugins"
CONTEXT = LookupContext(client=("127.0.0.7", 50000), local=(LOOPBACK, 110))

RunProxy = Callable[..., Proc]


def _dead_port() -> int:
    with socket.create_server((LOOPBACK, 0)) as listener:
        return int(listener.getsockname()[1])


def _opened(path: Path, option: str) -> Map:
    opened = open_map(str(path), option)
    assert opened is not None
    return opened


# ------------------------------------------------------------------ fail-over prober


@pytest.fixture
def failover_table(whoami: WhoAmI) -> Iterator[tuple[Path, int]]:
    dead = _dead_port()
    with readable_dir() as directory:
        table = directory / "failover.map"
        table.write_text(f"# key servers...\nalice {LOOPBACK}:{dead} {LOOPBACK}:{whoami.port}\n"
                         f"carol bob@{LOOPBACK}:{whoami.port}\ndown {LOOPBACK}:{dead}\n")
        table.chmod(0o644)
        yield table, dead


def test_failover_prober_lookups(failover_table: tuple[Path, int], whoami: WhoAmI) -> None:
    table, dead = failover_table
    prober = _opened(PLUGINS / "failover_prober.py", str(table))
    try:
        assert prober.get("alice", CONTEXT) == UserServerPort(None, LOOPBACK, str(whoami.port))
        assert prober.get("carol", CONTEXT) == UserServerPort("bob", LOOPBACK, str(whoami.port))
        assert prober.get("nobody", CONTEXT) is None
        with pytest.raises(MapError, match=f"no server of 'down' answers: {LOOPBACK}:{dead}"):
            prober.get("down", CONTEXT)
    finally:
        prober.close()


def test_failover_prober_in_the_daemon(failover_table: tuple[Path, int], whoami: WhoAmI,
                                       run_perditionpy: RunProxy) -> None:
    table, _ = failover_table
    proxy = run_perditionpy(["-P", "POP3", "-M", str(PLUGINS / "failover_prober.py"),
                             "-m", str(table), "-U", "-s", f"{LOOPBACK}:{whoami.port}"])
    assert pop3_session(proxy, "alice") == b"+OK alice"
    assert pop3_session(proxy, "carol") == b"+OK bob"
    # All down: the lookup fails and -s is used, as for any failing map.
    assert pop3_session(proxy, "down") == b"+OK down"


# ------------------------------------------------------------------ nginx auth_http


class AuthService:
    """An NGINX mail auth_http service: routes users it knows, records requests."""

    def __init__(self, routes: dict[str, dict[str, str]]) -> None:
        self.requests: list[dict[str, str]] = []
        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                headers = {name: value for name, value in self.headers.items()}
                service.requests.append(headers)
                if headers.get("Auth-User") == "broken":
                    self.send_response(500)
                    self.end_headers()
                    return
                self.send_response(200)
                answer = routes.get(headers.get("Auth-User", ""),
                                    {"Auth-Status": "Invalid login or password",
                                     "Auth-Wait": "3"})
                for name, value in answer.items():
                    self.send_header(name, value)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.url = f"http://{LOOPBACK}:{self.server.server_address[1]}/mail/auth"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def auth_service(whoami: WhoAmI) -> Iterator[AuthService]:
    ok = {"Auth-Status": "OK", "Auth-Server": LOOPBACK, "Auth-Port": str(whoami.port)}
    service = AuthService({"alice": ok, "dave": {**ok, "Auth-User": "bob"}})
    yield service
    service.close()


def test_nginx_auth_http_lookups(auth_service: AuthService, whoami: WhoAmI) -> None:
    mapped = _opened(PLUGINS / "nginx_auth_http.py", f"{auth_service.url} protocol=pop3")
    try:
        assert mapped.get("alice", CONTEXT) == UserServerPort(None, LOOPBACK, str(whoami.port))
        assert mapped.get("dave", CONTEXT) == UserServerPort("bob", LOOPBACK, str(whoami.port))
        assert mapped.get("nobody", CONTEXT) is None
        with pytest.raises(MapError, match="HTTP 500"):
            mapped.get("broken", CONTEXT)
    finally:
        mapped.close()
    first = auth_service.requests[0]
    assert first["Auth-User"] == "alice"
    assert first["Auth-Protocol"] == "pop3"
    assert first["Auth-Method"] == "none"
    assert first["Auth-Login-Attempt"] == "1"
    assert first["Client-IP"] == "127.0.0.7"
    assert "Auth-Pass" not in first


def test_nginx_auth_http_service_down_is_a_map_error() -> None:
    mapped = _opened(PLUGINS / "nginx_auth_http.py",
                     f"http://{LOOPBACK}:{_dead_port()}/auth timeout=2")
    try:
        with pytest.raises(MapError, match="nginx_auth_http"):
            mapped.get("alice", CONTEXT)
    finally:
        mapped.close()


def test_nginx_auth_http_in_the_daemon(auth_service: AuthService, whoami: WhoAmI,
                                       run_perditionpy: RunProxy) -> None:
    proxy = run_perditionpy(["-P", "POP3", "-M", str(PLUGINS / "nginx_auth_http.py"),
                             "-m", f"{auth_service.url} protocol=pop3", "-U"])
    assert pop3_session(proxy, "alice") == b"+OK alice"
    assert pop3_session(proxy, "dave") == b"+OK bob"
    assert b"Could not determine server" in pop3_session(proxy, "nobody")
    assert [request["Client-IP"] for request in auth_service.requests] == [LOOPBACK] * 3
