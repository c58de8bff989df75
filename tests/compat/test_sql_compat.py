"""Differential tests: perdition 2.2 with its own SQL map libraries vs perditionpy.

The same ``-M``/``-m`` strings go to the real ``/usr/sbin/perdition`` (which
loads Debian's ``libperditiondb_mysql.so.0`` / ``libperditiondb_postgresql.so.0``)
and to ``python -m perditionpy``; both talk to the session's MariaDB and
PostgreSQL over TCP on 127.0.0.1 (perdition's libraries cannot name a unix
socket).  For ordinary keys each proxy must send the login to the same tap
(in front of the private Dovecot) with the same user name, with and without
``-U``, and answer an unknown key the same way.
"""

from __future__ import annotations

import imaplib
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support import mariadb, postgres
from tests.support.dovecot import Dovecot
from tests.support.ports import LOOPBACK
from tests.support.procs import Proc
from tests.support.scenarios import backend_user
from tests.support.tap import Tap

LIBRARY_DIR = "/usr/lib/x86_64-linux-gnu"

RunProxy = Callable[..., Proc]


@dataclass(frozen=True)
class Kind:
    """One SQL map kind: its library and its test database helpers."""

    name: str
    library: str
    shared: Callable[[Any], Any]
    put_row: Callable[..., None]
    map_option: Callable[..., str]


KINDS = [
    Kind("mysql", f"{LIBRARY_DIR}/libperditiondb_mysql.so.0", mariadb.shared_mariadb,
         mariadb.put_row, mariadb.map_option),
    Kind("postgresql", f"{LIBRARY_DIR}/libperditiondb_postgresql.so.0",
         postgres.shared_postgres, postgres.put_row, postgres.map_option),
]


@dataclass(frozen=True)
class Routed:
    """Where one login went: which tap (``None``: none) and the name it carried."""

    tap: int | None
    user: bytes | None
    reply: str


@pytest.fixture(params=KINDS, ids=lambda kind: kind.name)
def kind(request: pytest.FixtureRequest) -> Kind:
    library: str = request.param.library
    if not os.path.exists(library):
        pytest.skip(f"perdition's map library {library} is not installed")
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def taps(dovecot: Dovecot, make_tap: Callable[[int], Tap]) -> Iterator[list[Tap]]:
    yield [make_tap(dovecot.imap_port), make_tap(dovecot.imap_port)]


def _login(proxy: Proc, user: str, password: str) -> str:
    client = imaplib.IMAP4(LOOPBACK, proxy.port)
    try:
        typ, _ = client.login(user, password)
        return str(typ)
    except imaplib.IMAP4.error as exc:
        return f"NO {exc}"
    finally:
        try:
            client.logout()
        except (imaplib.IMAP4.error, OSError):
            pass  # the proxy may already have hung up after a failure


def _route(proxy: Proc, taps: list[Tap], user: str, password: str) -> Routed:
    before = [len(tap.connections) for tap in taps]
    reply = _login(proxy, user, password)
    for index, tap in enumerate(taps):
        if len(tap.connections) > before[index]:
            sent = tap.connections[before[index]].wait_closed().to_server
            return Routed(index, backend_user(sent), reply)
    return Routed(None, None, reply)


def _fill(kind: Kind, server: Any, taps: list[Tap]) -> None:
    kind.put_row(server, "alice", LOOPBACK, str(taps[0].port))
    kind.put_row(server, "bob", LOOPBACK, None)  # the port comes from -p
    kind.put_row(server, "dave", f"bob@{LOOPBACK}", str(taps[0].port))
    kind.put_row(server, "carol@example.org", LOOPBACK, str(taps[1].port))


# (user, password, where it goes: tap index or None, name the back-end gets)
PLAIN = [
    ("alice", "alice-pw", 0, b"alice"),
    ("bob", "bob-pw", 1, b"bob"),
    ("carol@example.org", "carol-pw", 1, b"carol@example.org"),
    ("nobody", "nobody-pw", None, None),  # not in the table: "Could not determine server"
]
# -U: the user part of the server column replaces the login name.
FROM_DATABASE = [
    ("alice", "alice-pw", 0, b"alice"),
    ("dave", "bob-pw", 0, b"bob"),
]


@pytest.mark.parametrize("flags, logins", [([], PLAIN), (["-U"], FROM_DATABASE)],
                         ids=["plain", "username_from_database"])
def test_same_destinations_as_perdition(
    kind: Kind, request: pytest.FixtureRequest, taps: list[Tap], flags: list[str],
    logins: list[tuple[str, str, int | None, bytes | None]],
    run_perdition: RunProxy, run_perditionpy: RunProxy,
) -> None:
    server = kind.shared(request)
    _fill(kind, server, taps)
    args = ["-P", "IMAP4", "-M", kind.library, "-m", kind.map_option(server),
            "-p", str(taps[1].port), *flags]
    proxies = {"perdition": run_perdition(args), "perditionpy": run_perditionpy(args)}
    routed = [login for login in logins if login[2] is not None]
    unknown = [login for login in logins if login[2] is None]
    results = {name: _route_all(proxy, taps, routed) for name, proxy in proxies.items()}
    # Logins that must reach no back-end can run side by side (a tap connection
    # would still show), so perdition's 3-second failure delays overlap.
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(_route_all, proxy, taps, unknown)
                   for name, proxy in proxies.items()}
        for name, future in futures.items():
            results[name] += future.result(timeout=120)
    expected = [(tap, user) for _, _, tap, user in routed + unknown]
    assert [(r.tap, r.user) for r in results["perditionpy"]] == expected
    assert [(r.tap, r.user) for r in results["perdition"]] == expected
    # Every routed login succeeds at Dovecot; the unknown key fails, in both.
    replies = {name: [r.reply.split()[0] for r in done] for name, done in results.items()}
    assert replies["perditionpy"] == ["OK" if tap is not None else "NO" for tap, _ in expected]
    assert replies["perdition"] == replies["perditionpy"]


def _route_all(proxy: Proc, taps: list[Tap],
               logins: list[tuple[str, str, int | None, bytes | None]]) -> list[Routed]:
    return [_route(proxy, taps, user, password) for user, password, _, _ in logins]
