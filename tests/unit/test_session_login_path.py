"""The session's login path: greeting hosts looked up once per address, back-end
connections to an address without a resolver call."""

from __future__ import annotations

import socket
import threading
from types import SimpleNamespace
from typing import Any

import pytest

from perditionpy import waits
from perditionpy.session import GreetingHosts


def _opts(**kw: Any) -> Any:
    return SimpleNamespace(**{"no_bind_banner": False, "no_lookup": False, **kw})


def test_greeting_host_is_looked_up_once_per_address_until_cleared(
        monkeypatch: pytest.MonkeyPatch) -> None:
    lookups: list[str] = []

    def gethostbyaddr(address: str) -> tuple[str, list[str], list[str]]:
        lookups.append(address)
        return f"host-{address}", [], [address]

    monkeypatch.setattr(socket, "gethostbyaddr", gethostbyaddr)
    hosts = GreetingHosts()
    for port in range(5):
        assert hosts.get(_opts(), ("192.0.2.1", port)) == "host-192.0.2.1"
    assert hosts.get(_opts(), ("192.0.2.2", 143)) == "host-192.0.2.2"
    assert lookups == ["192.0.2.1", "192.0.2.2"]
    hosts.clear()  # SIGHUP
    assert hosts.get(_opts(), ("192.0.2.1", 1)) == "host-192.0.2.1"
    assert lookups == ["192.0.2.1", "192.0.2.2", "192.0.2.1"]


def test_numeric_back_end_needs_no_getaddrinfo(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_resolver(*args: object, **kwargs: object) -> None:
        raise AssertionError("getaddrinfo called")

    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        monkeypatch.setattr(socket, "getaddrinfo", no_resolver)
        sock = waits.open_connection("127.0.0.1", port, 5.0)
        with sock, server.accept()[0]:
            assert sock.getpeername() == ("127.0.0.1", port)
            assert sock.gettimeout() == 5.0


def test_names_still_resolve() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with waits.open_connection("localhost", port, 5.0) as sock, server.accept()[0]:
            assert sock.getpeername()[1] == port


@pytest.mark.parametrize(("host", "family"), [
    ("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6),
    ("mail.example", None), ("fe80::1%eth0", None),
])
def test_address_family(host: str, family: int | None) -> None:
    assert waits.address_family(host) == family


def _imap_backend(listener: socket.socket, after_login: bytes) -> None:
    """One connection: perdition's CAPABILITY and literal LOGIN dialogue; the
    reply to the password is ``after_login``, written at once."""
    conn, _ = listener.accept()
    with conn, conn.makefile("rb") as lines:
        conn.sendall(b"* OK [CAPABILITY IMAP4rev1] ready\r\n")
        for line in lines:
            if line.endswith(b"CAPABILITY\r\n"):
                conn.sendall(b"* CAPABILITY IMAP4rev1\r\n" + line.split()[0] + b" OK done\r\n")
            elif line.endswith(b"}\r\n"):
                conn.sendall(b"+ go\r\n")
            else:  # the password
                conn.sendall(after_login)
                return


def test_lines_the_back_end_sends_with_its_ok_reach_the_client_in_one_write() -> None:
    """perdition writes the untagged lines and the OK separately; to a client
    that costs two segments and two wake-ups.  The bytes are the same."""
    from perditionpy import options as options_mod
    from perditionpy.app import App
    from perditionpy.session import Session

    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        backend = threading.Thread(target=_imap_backend, args=(
            listener, b"* CAPABILITY IMAP4rev1 IDLE\r\nflim08 OK [ALERT] in\r\n"))
        backend.start()
        opts = options_mod.load(["-f", "", "-P", "IMAP4", "-M", "", "-B",
                                 "-s", f"127.0.0.1:{port}"], "perdition")
        app = App(opts)
        near, far = socket.socketpair()
        writes: list[bytes] = []
        try:
            far.sendall(b"a LOGIN user secret\r\n")
            steps = Session(app.services, near, ("127.0.0.1", 1), ("127.0.0.1", 143)).steps()
            value: object = None
            while not any(b"a OK" in data for data in writes):
                wait = steps.send(value)
                if isinstance(wait, waits.SendAll) and wait.sock is near:
                    writes.append(wait.data)
                value = wait.run()
            steps.close()
        finally:
            backend.join(10.0)
            app.close()
            near.close()
            far.close()
    assert writes[-1] == b"* CAPABILITY IMAP4rev1 IDLE\r\na OK You are so in\r\n"
