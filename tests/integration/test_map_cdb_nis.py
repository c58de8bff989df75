"""The CDB map end to end: perditionpy routes real IMAP and POP3 logins to the private
Dovecot by a popmap built with tinycdb's ``cdb`` tool.

(The NIS map's real-server tests live in tests/unit/test_nis_map.py, and its full
login through the proxy in tests/integration/test_map_nis_e2e.py, which shares the
host's network namespace with ypserv.)
"""

from __future__ import annotations

import imaplib
import poplib
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.dovecot import Dovecot, Login
from tests.support.ports import LOOPBACK
from tests.support.procs import Proc
from tests.support.scenarios import backend_user, readable_dir
from tests.support.tap import Tap

RunProxy = Callable[..., Proc]
MakeTap = Callable[[int], Tap]

PERDITION_CDB_LIBRARY = "/usr/lib/x86_64-linux-gnu/libperditiondb_cdb.so.0"
CDB_TOOL = shutil.which("cdb")

pytestmark = pytest.mark.skipif(CDB_TOOL is None, reason="tinycdb's cdb tool is not installed")


def build_cdb(path: Path, *lines: str) -> Path:
    """``cdb -c -m`` with ``key value`` lines, world-readable for the dropped proxy."""
    data = "".join(f"{line}\n" for line in lines).encode()
    subprocess.run(
        [CDB_TOOL or "cdb", "-c", "-m", "-p", "0644", str(path)], input=data, check=True, timeout=10
    )
    return path


def server(tap: Tap) -> str:
    return f"{LOOPBACK}:{tap.port}"


def received_user(tap: Tap, index: int = 0) -> bytes | None:
    tap.wait_for_connections(index + 1)
    return backend_user(tap.connections[index].wait_closed().to_server)


def imap_login(port: int, user: str, password: str) -> None:
    client = imaplib.IMAP4(LOOPBACK, port)
    try:
        typ, _ = client.login(user, password)
        assert typ == "OK"
    finally:
        client.logout()


@pytest.fixture
def map_dir() -> Iterator[Path]:
    with readable_dir() as path:
        yield path


@pytest.fixture
def imap_tap(dovecot: Dovecot, make_tap: MakeTap) -> Tap:
    return make_tap(dovecot.imap_port)


def test_imap_login_routed_by_a_cdb_popmap(
    run_perditionpy: RunProxy, dovecot: Dovecot, imap_tap: Tap, map_dir: Path
) -> None:
    popmap = build_cdb(map_dir / "popmap.cdb", f"alice {server(imap_tap)}")
    mark = dovecot.log_position()
    proxy = run_perditionpy(["-P", "IMAP4", "-M", PERDITION_CDB_LIBRARY, "-m", str(popmap)])
    imap_login(proxy.port, "alice", "alice-pw")
    assert received_user(imap_tap) == b"alice"
    assert dovecot.wait_for_login("alice", since=mark) == Login("alice", True)


def test_pop3_login_with_the_user_from_the_cdb_popmap(
    run_perditionpy: RunProxy, dovecot: Dovecot, make_tap: MakeTap, map_dir: Path
) -> None:
    tap = make_tap(dovecot.pop3_port)
    popmap = build_cdb(map_dir / "popmap.cdb", f"mailbox-of-bob bob@{server(tap)}")
    proxy = run_perditionpy(
        ["-P", "POP3", "-M", "cdb", "-m", str(popmap), "--username_from_database"]
    )
    client = poplib.POP3(LOOPBACK, proxy.port)
    try:
        client.user("mailbox-of-bob")
        assert client.pass_("bob-pw").startswith(b"+OK")
        assert client.stat()[0] >= 0
    finally:
        client.quit()
    assert received_user(tap) == b"bob"


def test_cdb_miss_falls_back_and_a_rebuilt_popmap_is_used_at_once(
    run_perditionpy: RunProxy, dovecot: Dovecot, make_tap: MakeTap, map_dir: Path
) -> None:
    mapped, fallback = make_tap(dovecot.imap_port), make_tap(dovecot.imap_port)
    popmap = build_cdb(map_dir / "popmap.cdb", f"bob {server(mapped)}")
    proxy = run_perditionpy(["-P", "IMAP4", "-M", "cdb", "-m", str(popmap), "-s", server(fallback)])
    imap_login(proxy.port, "alice", "alice-pw")
    assert received_user(fallback) == b"alice"
    build_cdb(popmap, f"bob {server(mapped)}", f"alice {server(mapped)}")
    imap_login(proxy.port, "alice", "alice-pw")
    assert received_user(mapped) == b"alice"
    assert len(fallback.connections) == 1
