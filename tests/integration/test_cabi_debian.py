"""perdition 2.2's own map libraries (Debian's ``libperditiondb_*.so.0``) through the C-ABI loader.

For GDBM, POSIX regex, MySQL, PostgreSQL and LDAP, on the same data:

* lookups through ``-M legacy:/usr/lib/…/libperditiondb_<kind>.so.0`` (in this
  process), through ``isolated:`` (helper processes) and through our native
  map give the same answers;
* real IMAP logins through ``python -m perditionpy -M legacy:<library>`` and
  through the real ``/usr/sbin/perdition -M <library>`` reach the same tap (in
  front of the private Dovecot) with the same user name, with ``-U``.

The servers are the session's shared MariaDB, PostgreSQL and slapd.
"""

from __future__ import annotations

import imaplib
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from perditionpy.endpoints import UserServerPort
from perditionpy.maps import open_map
from perditionpy.maps.base import LookupContext
from tests.support import mariadb, postgres
from tests.support.dovecot import Dovecot
from tests.support.ports import LOOPBACK
from tests.support.procs import REPO_ROOT, Proc
from tests.support.scenarios import backend_user, readable_dir
from tests.support.slapd import ou_entry, popmap_entry, shared_slapd, slapd_available
from tests.support.tap import Tap

LIBRARY_DIR = "/usr/lib/x86_64-linux-gnu"
KINDS = ["gdbm", "posix_regex", "mysql", "postgresql", "ldap"]
OU = "cabi"
CONTEXT = LookupContext(client=("127.0.0.9", 40000), local=("127.0.0.1", 143))
# Keys every kind is filled with; "nobody" is in none of them.
KEYS = ["alice", "dave", "nobody"]

RunProxy = Callable[..., Proc]


@dataclass(frozen=True)
class Filled:
    """One kind's data, ready: the ``-m`` string and the library."""

    kind: str
    option: str

    @property
    def library(self) -> str:
        return f"{LIBRARY_DIR}/libperditiondb_{self.kind}.so.0"


@pytest.fixture(scope="session", autouse=True)
def cplugins_built() -> None:
    subprocess.run([str(REPO_ROOT / "cplugins" / "build.sh")], check=True, timeout=120)


@pytest.fixture(scope="module")
def popmap_dir() -> Iterator[Path]:
    with readable_dir() as path:
        yield path


@pytest.fixture
def tap(dovecot: Dovecot, make_tap: Callable[[int], Tap]) -> Tap:
    return make_tap(dovecot.imap_port)


def _fill(kind: str, request: pytest.FixtureRequest, directory: Path, port: int) -> str:
    """Put alice → 127.0.0.1:<port> and dave → bob@127.0.0.1:<port> in ``kind``; the -m."""
    if kind == "gdbm":
        import io

        from perditionpy.tools.makegdbm import build

        path = directory / f"popmap-{port}.db"
        popmap = f"alice:{LOOPBACK}:{port}\ndave:bob@{LOOPBACK}:{port}\n".encode()
        assert build(str(path), io.BytesIO(popmap), io.BytesIO()) == 0
        path.chmod(0o644)
        return str(path)
    if kind == "posix_regex":
        path = directory / f"regex-{port}"
        path.write_text(f"^alice$: {LOOPBACK}:{port}\n^da(v)e$: bob@{LOOPBACK}:{port}\n")
        path.chmod(0o644)
        return str(path)
    if kind in ("mysql", "postgresql"):
        module = mariadb if kind == "mysql" else postgres
        server = (mariadb.shared_mariadb(request) if kind == "mysql"
                  else postgres.shared_postgres(request))
        module.put_row(server, "alice", LOOPBACK, str(port))  # type: ignore[arg-type]
        module.put_row(server, "dave", f"bob@{LOOPBACK}", str(port))  # type: ignore[arg-type]
        return module.map_option(server)  # type: ignore[arg-type]
    return _fill_ldap(request, port)


def _fill_ldap(request: pytest.FixtureRequest, port: int) -> str:
    if not slapd_available():
        pytest.skip("slapd is not installed: run scripts/install-deps.sh")
    factory = request.getfixturevalue("tmp_path_factory")
    slapd = shared_slapd(factory.mktemp, request.session.config.add_cleanup)
    ldif = ou_entry(OU) if not getattr(slapd, "_cabi_ou", False) else ""
    slapd._cabi_ou = True  # type: ignore[attr-defined]
    slapd.ldif(ldif + popmap_entry(OU, f"alice{port}", mailhost=LOOPBACK, port=str(port))
               # username only: Debian's library splits it with the host's
               # user_server_port_str_assign(), which our shim provides.
               + popmap_entry(OU, f"dave{port}", username=f"bob@{LOOPBACK}:{port}"))
    return (f"3:ldap://{LOOPBACK}:{slapd.port}/ou={OU},dc=nodomain"
            f"?username,mailhost,port?one?(uid=%s{port})")


@pytest.fixture(params=KINDS)
def filled(request: pytest.FixtureRequest, popmap_dir: Path, tap: Tap) -> Filled:
    kind: str = request.param
    filled = Filled(kind, "")
    if not os.path.exists(filled.library):
        pytest.skip(f"perdition's {filled.library} is not installed")
    return Filled(kind, _fill(kind, request, popmap_dir, tap.port))


# ------------------------------------------------------------------ lookups


def _answers(library: str, option: str) -> list[UserServerPort | None]:
    opened = open_map(library, option)
    assert opened is not None
    try:
        return [opened.get(key, CONTEXT) for key in KEYS]
    finally:
        opened.close()


def test_same_answers_as_our_native_map(filled: Filled, tap: Tap) -> None:
    expected = [UserServerPort(None, LOOPBACK, str(tap.port)),
                UserServerPort("bob", LOOPBACK, str(tap.port)), None]
    assert _answers(f"legacy:{filled.library}", filled.option) == expected
    assert _answers(f"isolated,workers=1:{filled.library}", filled.option) == expected
    assert _answers(filled.library, filled.option) == expected  # our native map


def test_reload_runs_fini_then_init(filled: Filled, tap: Tap) -> None:
    """What SIGHUP does (open the new map, close the old): lookups go on working."""
    first = open_map(f"legacy:{filled.library}", filled.option)
    assert first is not None
    second = open_map(f"legacy:{filled.library}", filled.option)
    assert second is not None
    first.close()
    try:
        assert second.get("alice", CONTEXT) == UserServerPort(None, LOOPBACK, str(tap.port))
    finally:
        second.close()


# ------------------------------------------------------------------ logins


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
            pass


def _routes(proxy: Proc, tap: Tap) -> list[tuple[str, bytes | None]]:
    seen = []
    for user, password in [("alice", "alice-pw"), ("dave", "bob-pw")]:
        before = len(tap.connections)
        reply = _login(proxy, user, password)
        tap.wait_for_connections(before + 1)
        seen.append((reply, backend_user(tap.connections[before].wait_closed().to_server)))
    return seen


def test_logins_routed_as_by_perdition(filled: Filled, tap: Tap, run_perdition: RunProxy,
                                       run_perditionpy: RunProxy) -> None:
    common = ["-P", "IMAP4", "-m", filled.option, "-U"]
    ours = run_perditionpy(["-M", f"legacy:{filled.library}", *common])
    theirs = run_perdition(["-M", filled.library, *common])
    expected = [("OK", b"alice"), ("OK", b"bob")]
    assert _routes(ours, tap) == expected
    assert _routes(theirs, tap) == expected
