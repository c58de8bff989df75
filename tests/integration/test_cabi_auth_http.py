"""``cplugins/auth_http.so``, the C map that asks an NGINX mail ``auth_http`` service.

Against a real HTTP server started here (our own test server, playing the
site's auth service):

* lookups through the C-ABI loader, in this process and ``isolated:``: the
  answers (``Auth-Server``/``Auth-Port``, ``Auth-User`` as the back-end user),
  "not found" for any other ``Auth-Status``, errors for HTTP 500, a silent
  service, an oversized reply and a service that is down; the request
  headers NGINX sends, ``Client-IP`` from the host's ``peername``, and a key
  that tries to inject a header arriving URL-encoded in ``Auth-User``;
* real IMAP logins through perditionpy (in process and isolated) and through
  the real perdition 2.2, routed by the service to a tap in front of the
  private Dovecot, a refused user going to ``-s`` instead.
"""

from __future__ import annotations

import http.server
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from perditionpy.endpoints import UserServerPort
from perditionpy.errors import MapError
from perditionpy.maps import open_map
from perditionpy.maps.base import LookupContext, Map
from tests.support.dovecot import Dovecot
from tests.support.ports import LOOPBACK
from tests.support.procs import REPO_ROOT, Proc
from tests.support.scenarios import backend_user
from tests.support.tap import Tap

LIBRARY = REPO_ROOT / "cplugins" / "build" / "auth_http.so"
CONTEXT = LookupContext(client=("127.0.0.7", 50000), local=(LOOPBACK, 143))
CLIENT_SOURCE = "127.0.0.5"  # where the daemon tests' IMAP clients connect from
TIMEOUT = 30.0
MODES = {"in_process": "", "isolated": "isolated,workers=1:"}

RunProxy = Callable[..., Proc]


@pytest.fixture(scope="session", autouse=True)
def cplugins_built() -> None:
    subprocess.run([str(REPO_ROOT / "cplugins" / "build.sh")], check=True, timeout=120)


@dataclass(frozen=True)
class Request:
    path: str
    headers: list[tuple[str, str]]

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key == name), None)


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the library hung up on "huge" or "silent", as it should


class AuthService:
    """An NGINX mail auth_http service: routes the users in ``routes``, refuses the
    rest, and misbehaves for ``broken`` (HTTP 500), ``silent`` (no answer for 5 s)
    and ``huge`` (64 KiB of headers). Records every request."""

    def __init__(self, routes: dict[str, dict[str, str]]) -> None:
        self.requests: list[Request] = []
        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                user = self.headers.get("Auth-User", "")
                service.requests.append(Request(self.path, list(self.headers.items())))
                if user == "silent":
                    time.sleep(5)
                    return
                self.send_response(500 if user == "broken" else 200)
                if user == "huge":
                    for n in range(1024):
                        self.send_header(f"X-Filler-{n}", "x" * 60)
                answer = routes.get(
                    user, {"Auth-Status": "Invalid login or password", "Auth-Wait": "3"}
                )
                for name, value in answer.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(b"Auth-Status: OK\r\n")  # a body is not headers

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = _QuietServer((LOOPBACK, 0), Handler)
        self.url = f"http://{LOOPBACK}:{self.server.server_address[1]}/mail/auth"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _route(port: int, **extra: str) -> dict[str, str]:
    return {"Auth-Status": "OK", "Auth-Server": LOOPBACK, "Auth-Port": str(port), **extra}


def _dead_port() -> int:
    with socket.create_server((LOOPBACK, 0)) as listener:
        return int(listener.getsockname()[1])


def _opened(mode: str, option: str) -> Map:
    opened = open_map(MODES[mode] + str(LIBRARY), option)
    assert opened is not None
    return opened


# ------------------------------------------------------------------ lookups


@pytest.fixture
def service() -> Iterator[AuthService]:
    auth = AuthService(
        {
            "alice": _route(1143),
            "dave": _route(1143, **{"Auth-User": "bob"}),
            "six": {"Auth-Status": "OK", "Auth-Server": "::1", "Auth-Port": "993"},
        }
    )
    yield auth
    auth.close()


@pytest.mark.parametrize("mode", MODES)
def test_lookups_and_the_request_nginx_sends(mode: str, service: AuthService) -> None:
    mapped = _opened(mode, f"{service.url} protocol=pop3 timeout=2")
    try:
        assert mapped.get("alice", CONTEXT) == UserServerPort(None, LOOPBACK, "1143")
        assert mapped.get("dave", CONTEXT) == UserServerPort("bob", LOOPBACK, "1143")
        assert mapped.get("six", CONTEXT) == UserServerPort(None, "::1", "993")
        assert mapped.get("nobody", CONTEXT) is None
        assert mapped.get("evil\r\nAuth-Status: OK", CONTEXT) is None
        for key in ("broken", "huge"):
            with pytest.raises(MapError):
                mapped.get(key, CONTEXT)
    finally:
        mapped.close()
    first = service.requests[0]
    assert first.path == "/mail/auth"
    assert first.headers == [
        ("Host", service.url.split("/")[2]),
        ("Auth-Method", "none"),
        ("Auth-User", "alice"),
        ("Auth-Protocol", "pop3"),
        ("Auth-Login-Attempt", "1"),
        ("Client-IP", "127.0.0.7"),
    ]
    evil = service.requests[4]
    assert evil.header("Auth-User") == "evil%0D%0AAuth-Status:%20OK"
    assert evil.header("Auth-Status") is None


def test_protocol_defaults_to_imap_and_odd_keys_are_escaped_as_nginx_does(
    service: AuthService,
) -> None:
    mapped = _opened("in_process", service.url)
    try:
        assert mapped.get("o'neil #1 100%\"é", CONTEXT) is None
    finally:
        mapped.close()
    [request] = service.requests
    assert request.header("Auth-Protocol") == "imap"
    assert request.header("Auth-User") == "o%27neil%20%231%20100%25%22%C3%A9"


@pytest.mark.parametrize("mode", MODES)
def test_a_silent_service_costs_at_most_the_timeout(mode: str, service: AuthService) -> None:
    mapped = _opened(mode, f"{service.url} timeout=1")
    try:
        started = time.monotonic()
        with pytest.raises(MapError):
            mapped.get("silent", CONTEXT)
        assert time.monotonic() - started < 2.5
    finally:
        mapped.close()


def test_a_service_that_is_down_is_an_access_error() -> None:
    mapped = _opened("in_process", f"http://{LOOPBACK}:{_dead_port()}/auth timeout=2")
    try:
        with pytest.raises(MapError, match=r"access error \(-1\)"):
            mapped.get("alice", CONTEXT)
    finally:
        mapped.close()


@pytest.mark.parametrize(
    "option",
    [
        "",
        "https://127.0.0.1/auth",
        "http:///auth",
        "http://127.0.0.1:x/auth",
        "http://127.0.0.1/a protocol=smtp",
        "http://127.0.0.1/a timeout=0",
        "http://127.0.0.1/a colour=red",
    ],
)
def test_a_bad_m_stops_the_start(option: str) -> None:
    with pytest.raises(MapError, match="dbserver_init failed"):
        open_map(str(LIBRARY), option)


# ------------------------------------------------------------------ logins


@dataclass
class Routes:
    """The service and two taps in front of the private Dovecot: one the service
    routes to, one given as ``-s``."""

    service: AuthService
    routed: Tap
    fallback: Tap

    def args(self) -> list[str]:
        return [
            "-P",
            "IMAP4",
            "-m",
            self.service.url,
            "-U",
            "-s",
            f"{LOOPBACK}:{self.fallback.port}",
        ]


@pytest.fixture
def routes(dovecot: Dovecot, make_tap: Callable[[int], Tap]) -> Iterator[Routes]:
    routed, fallback = make_tap(dovecot.imap_port), make_tap(dovecot.imap_port)
    service = AuthService(
        {"alice": _route(routed.port), "dave": _route(routed.port, **{"Auth-User": "bob"})}
    )
    yield Routes(service, routed, fallback)
    service.close()


def _imap_login(proxy: Proc, user: str, password: str) -> bytes:
    """LOGIN through ``proxy`` from CLIENT_SOURCE; the tagged reply."""
    with (
        socket.create_connection(
            (LOOPBACK, proxy.port), timeout=TIMEOUT, source_address=(CLIENT_SOURCE, 0)
        ) as conn,
        conn.makefile("rb") as lines,
    ):
        assert lines.readline().startswith(b"* OK")
        conn.sendall(f"a LOGIN {user} {password}\r\n".encode())
        reply = lines.readline()
        while not reply.startswith(b"a ") and reply:
            reply = lines.readline()
        conn.sendall(b"b LOGOUT\r\n")
        return reply.split(b" ", 2)[1]


def _backend_user(tap: Tap, index: int) -> bytes | None:
    tap.wait_for_connections(index + 1)
    return backend_user(tap.connections[index].wait_closed().to_server)


@pytest.mark.parametrize("mode", ["in_process", "isolated", "perdition"])
def test_logins_routed_by_the_service(
    mode: str, routes: Routes, run_perditionpy: RunProxy, run_perdition: RunProxy
) -> None:
    if mode == "perdition":
        proxy = run_perdition(["-M", str(LIBRARY), *routes.args()])
    else:
        proxy = run_perditionpy(["-M", MODES[mode] + str(LIBRARY), *routes.args()])
    assert _imap_login(proxy, "alice", "alice-pw") == b"OK"
    assert _imap_login(proxy, "dave", "bob-pw") == b"OK"
    assert _imap_login(proxy, "bob", "bob-pw") == b"OK"  # refused: -s
    assert [_backend_user(routes.routed, n) for n in range(2)] == [b"alice", b"bob"]
    assert _backend_user(routes.fallback, 0) == b"bob"
    assert len(routes.routed.connections) == 2
    sent = [
        (r.header("Auth-User"), r.header("Auth-Protocol"), r.header("Client-IP"))
        for r in routes.service.requests
    ]
    assert sent == [
        ("alice", "imap", CLIENT_SOURCE),
        ("dave", "imap", CLIENT_SOURCE),
        ("bob", "imap", CLIENT_SOURCE),
    ]
