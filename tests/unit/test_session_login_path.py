"""The session's login path: greeting hosts looked up once per address, back-end
connections to an address without a resolver call."""

from __future__ import annotations

import socket
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
