"""The username pipeline and server choice, end to end: perditionpy in front of the
private Dovecot, a tap in between, real imaplib/poplib clients.

Each test starts perditionpy with the options under test, logs in, and asserts the
user name that reached the back-end (the exact bytes the tap saw, and for some
Dovecot's own record of the login) and which server and port were used (which tap
got the connection). ``local_authentication`` needs PAM, which perditionpy does not
have yet: only its "does not touch the back-end name" side is checked here.
"""

from __future__ import annotations

import imaplib
import poplib
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.dovecot import Dovecot, Login
from tests.support.ports import LOOPBACK
from tests.support.procs import Proc
from tests.support.scenarios import (
    PERDITION_GDBM_LIBRARY,
    backend_user,
    build_popmap,
    readable_dir,
)
from tests.support.tap import Tap

RunProxy = Callable[..., Proc]
MakeTap = Callable[[int], Tap]

# --------------------------------------------------------------------------- helpers


def imap_login(port: int, user: str, password: str) -> None:
    client = imaplib.IMAP4(LOOPBACK, port)
    try:
        typ, _ = client.login(user, password)
        assert typ == "OK"
    finally:
        client.logout()


def pop3_login(port: int, user: str, password: str) -> None:
    client = poplib.POP3(LOOPBACK, port)
    try:
        client.user(user)
        assert client.pass_(password).startswith(b"+OK")
    finally:
        client.quit()


def received_user(tap: Tap, index: int = 0) -> bytes | None:
    """The name the back-end behind ``tap`` got in its ``index``-th connection."""
    tap.wait_for_connections(index + 1)
    return backend_user(tap.connections[index].wait_closed().to_server)


def server(tap: Tap) -> str:
    return f"{LOOPBACK}:{tap.port}"


def gdbm_args(directory: Path, *lines: str) -> list[str]:
    """``-M`` / ``-m`` for a fresh popmap holding ``lines``."""
    popmap = build_popmap(directory / f"popmap-{len(list(directory.iterdir()))}.db", lines)
    return ["-M", PERDITION_GDBM_LIBRARY, "-m", str(popmap)]


def local_host_name() -> str:
    """What perdition's getnameinfo (no NI_NAMEREQD) makes of 127.0.0.1."""
    return socket.getnameinfo((LOOPBACK, 0), 0)[0]


@pytest.fixture
def map_dir() -> Iterator[Path]:
    with readable_dir() as path:
        yield path


@pytest.fixture
def imap_tap(dovecot: Dovecot, make_tap: MakeTap) -> Tap:
    return make_tap(dovecot.imap_port)


@pytest.fixture
def pop3_tap(dovecot: Dovecot, make_tap: MakeTap) -> Tap:
    return make_tap(dovecot.pop3_port)


# --------------------------------------------------------------------------- --strip_domain


@pytest.mark.parametrize(
    ("states", "user", "password", "expected"),
    [
        ("remote_login", "alice@example.com", "alice-pw", b"alice"),
        ("all", "alice@example.com", "alice-pw", b"alice"),
        ("servername_lookup", "carol@example.org", "carol-pw", b"carol@example.org"),
        ("local_authentication", "carol@example.org", "carol-pw", b"carol@example.org"),
    ],
)
def test_strip_domain_only_in_its_states_reaches_the_back_end(
    run_perditionpy: RunProxy,
    imap_tap: Tap,
    states: str,
    user: str,
    password: str,
    expected: bytes,
) -> None:
    proxy = run_perditionpy(
        ["-P", "IMAP4", "-M", "", "-s", server(imap_tap), "--strip_domain", states]
    )
    imap_login(proxy.port, user, password)
    assert received_user(imap_tap) == expected


def test_strip_domain_servername_lookup_finds_the_short_key(
    run_perditionpy: RunProxy, dovecot: Dovecot, imap_tap: Tap, map_dir: Path
) -> None:
    mark = dovecot.log_position()
    popmap = gdbm_args(map_dir, f"carol:{server(imap_tap)}")
    proxy = run_perditionpy(["-P", "IMAP4", *popmap, "--strip_domain", "servername_lookup"])
    imap_login(proxy.port, "carol@example.org", "carol-pw")
    assert received_user(imap_tap) == b"carol@example.org"
    assert dovecot.wait_for_login("carol@example.org", since=mark) == Login(
        "carol@example.org", True
    )


# --------------------------------------------------------------------------- --add_domain


def test_add_domain_explicit_domain_ignores_the_strip_depth(
    run_perditionpy: RunProxy, pop3_tap: Tap
) -> None:
    proxy = run_perditionpy(
        ["-P", "POP3", "-M", "", "-s", server(pop3_tap)]
        + ["--add_domain", "remote_login,2", "--explicit_domain", "example.org"]
    )
    pop3_login(proxy.port, "carol", "carol-pw")
    # A name that already holds the delimiter is left alone.
    pop3_login(proxy.port, "carol@example.org", "carol-pw")
    assert received_user(pop3_tap, 0) == b"carol@example.org"
    assert received_user(pop3_tap, 1) == b"carol@example.org"


def test_add_domain_from_the_reverse_lookup_at_servername_lookup(
    run_perditionpy: RunProxy, imap_tap: Tap, map_dir: Path
) -> None:
    # Depth 0 keeps the whole name of the address the client connected to;
    # --no_lookup does not stop that lookup (as in perdition 2.2).
    popmap = gdbm_args(map_dir, f"bob@{local_host_name()}:{server(imap_tap)}")
    proxy = run_perditionpy(
        ["-P", "IMAP4", *popmap, "--add_domain", "servername_lookup,0", "--no_lookup"]
    )
    imap_login(proxy.port, "bob", "bob-pw")
    assert received_user(imap_tap) == b"bob"  # remote_login: no domain added


# --------------------------------------------------------------------------- --lower_case


def test_lower_case_remote_login(run_perditionpy: RunProxy, imap_tap: Tap) -> None:
    proxy = run_perditionpy(
        ["-P", "IMAP4", "-M", "", "-s", server(imap_tap), "--lower_case", "remote_login"]
    )
    imap_login(proxy.port, "CaRoL@Example.ORG", "carol-pw")
    assert received_user(imap_tap) == b"carol@example.org"


def test_lower_case_servername_lookup_leaves_the_login_name(
    run_perditionpy: RunProxy, imap_tap: Tap, map_dir: Path
) -> None:
    popmap = gdbm_args(map_dir, f"carol@example.org:{server(imap_tap)}")
    proxy = run_perditionpy(["-P", "IMAP4", *popmap, "--lower_case", "servername_lookup"])
    imap_login(proxy.port, "CAROL@Example.org", "carol-pw")  # Dovecot folds case itself
    assert received_user(imap_tap) == b"CAROL@Example.org"


# --------------------------------------------------------------------------- --domain_delimiter


def test_multi_character_domain_delimiter(run_perditionpy: RunProxy, pop3_tap: Tap) -> None:
    proxy = run_perditionpy(
        ["-P", "POP3", "-M", "", "-s", server(pop3_tap)]
        + ["--domain_delimiter", "%%", "--strip_domain", "remote_login"]
    )
    pop3_login(proxy.port, "alice%%example.com", "alice-pw")
    pop3_login(proxy.port, "carol@example.org", "carol-pw")  # "@" is just a character now
    assert received_user(pop3_tap, 0) == b"alice"
    assert received_user(pop3_tap, 1) == b"carol@example.org"


# --------------------------------------------------------------------------- --query_key


def test_query_keys_are_tried_in_order(
    run_perditionpy: RunProxy, dovecot: Dovecot, make_tap: MakeTap, map_dir: Path
) -> None:
    first, second = make_tap(dovecot.imap_port), make_tap(dovecot.imap_port)
    popmap = gdbm_args(map_dir, f"example.org:{server(first)}", f"carol@127.0.0.1:{server(second)}")
    keys = ["--query_key", r"nobody-\U,\d,\u\D\i"]
    proxy = run_perditionpy(["-P", "IMAP4", *popmap, *keys])
    imap_login(proxy.port, "carol@example.org", "carol-pw")
    assert received_user(first) == b"carol@example.org"
    assert second.connections == []
    # Without the \d entry the third key, "carol@127.0.0.1", is the one found.
    popmap = gdbm_args(map_dir, f"carol@127.0.0.1:{server(second)}")
    proxy = run_perditionpy(["-P", "IMAP4", *popmap, *keys])
    imap_login(proxy.port, "carol@example.org", "carol-pw")
    assert received_user(second) == b"carol@example.org"
    assert len(first.connections) == 1


# --------------------------------------------------------------------------- -c


def test_client_server_specification(
    run_perditionpy: RunProxy, dovecot: Dovecot, make_tap: MakeTap
) -> None:
    chosen, default = make_tap(dovecot.imap_port), make_tap(dovecot.imap_port)
    proxy = run_perditionpy(["-P", "IMAP4", "-M", "", "-c", "-s", server(default)])
    imap_login(proxy.port, f"bob@{server(chosen)}", "bob-pw")
    imap_login(proxy.port, f"carol@example.org@{server(chosen)}", "carol-pw")
    imap_login(proxy.port, "alice", "alice-pw")  # no server given: -s
    assert received_user(chosen, 0) == b"bob"
    assert received_user(chosen, 1) == b"carol@example.org"
    assert received_user(default) == b"alice"
    assert len(default.connections) == 1


# --------------------------------------------------------------------------- -U


def test_username_from_database(
    run_perditionpy: RunProxy, dovecot: Dovecot, pop3_tap: Tap, map_dir: Path
) -> None:
    popmap = gdbm_args(map_dir, f"alice:carol@example.org@{server(pop3_tap)}")
    mark = dovecot.log_position()
    proxy = run_perditionpy(["-P", "POP3", *popmap, "--username_from_database"])
    pop3_login(proxy.port, "alice", "carol-pw")
    assert received_user(pop3_tap, 0) == b"carol@example.org"
    assert dovecot.wait_for_login("carol@example.org", since=mark).ok
    # Without -U the user part of the map's answer is ignored.
    proxy = run_perditionpy(["-P", "POP3", *popmap])
    pop3_login(proxy.port, "alice", "alice-pw")
    assert received_user(pop3_tap, 1) == b"alice"


# --------------------------------------------------------------------------- -s, -p, -n


def test_outgoing_servers_take_turns(
    run_perditionpy: RunProxy, dovecot: Dovecot, make_tap: MakeTap
) -> None:
    taps = [make_tap(dovecot.imap_port), make_tap(dovecot.imap_port)]
    proxy = run_perditionpy(["-P", "IMAP4", "-M", "", "-s", ",".join(server(tap) for tap in taps)])
    for _ in range(4):
        imap_login(proxy.port, "bob", "bob-pw")
    assert [len(tap.connections) for tap in taps] == [2, 2]
    assert {received_user(tap, index) for tap in taps for index in (0, 1)} == {b"bob"}


@pytest.mark.parametrize("where", ["outgoing_server", "map"])
def test_outgoing_port_when_no_port_is_given(
    run_perditionpy: RunProxy, imap_tap: Tap, map_dir: Path, where: str
) -> None:
    if where == "map":
        args = [*gdbm_args(map_dir, f"bob:{LOOPBACK}"), "-s", f"{LOOPBACK}:1"]
    else:
        args = ["-M", "", "-s", LOOPBACK]
    proxy = run_perditionpy(["-P", "IMAP4", *args, "--outgoing_port", str(imap_tap.port)])
    imap_login(proxy.port, "bob", "bob-pw")
    assert received_user(imap_tap) == b"bob"
    proxy.wait_for_log(rf'authentication_id="bob" server="{LOOPBACK}:{imap_tap.port}"')


@pytest.mark.parametrize("no_lookup", [True, False])
def test_no_lookup_greets_with_the_numeric_address(
    run_perditionpy: RunProxy, imap_tap: Tap, no_lookup: bool
) -> None:
    flags = ["--no_lookup"] if no_lookup else []
    proxy = run_perditionpy(["-P", "IMAP4", "-M", "", "-s", server(imap_tap), *flags])
    client = imaplib.IMAP4(LOOPBACK, proxy.port)
    try:
        host = LOOPBACK if no_lookup else socket.gethostbyaddr(LOOPBACK)[0]
        assert client.welcome.split()[-2] == host.encode()
        assert client.login("bob", "bob-pw")[0] == "OK"
    finally:
        client.logout()
    assert received_user(imap_tap) == b"bob"
