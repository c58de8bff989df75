"""Differential tests: perdition 2.2 with its own LDAP library against perditionpy.

Both proxies run in inetd mode on one end of a real TCP connection, with the same
``-M /usr/lib/x86_64-linux-gnu/libperditiondb_ldap.so.0 -m "3:ldap://…"`` against
the session's slapd (entries under ``ou=compat,dc=nodomain``); a POP3 client logs
in and a loopback listener records which back-end got the connection and the
USER line it received.  For ordinary keys both must pick the same destination.
perdition's defects (an unescaped ``*)(uid=*``, a crash when a filter matches
several entries) are left out: perditionpy's side of those is in
tests/integration/test_map_ldap.py.
"""

from __future__ import annotations

import grp
import os
import pwd
import select
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.ports import LOOPBACK
from tests.support.slapd import Slapd, ou_entry, popmap_entry, shared_slapd, slapd_available

PERDITION = "/usr/sbin/perdition"
LIBRARY = "/usr/lib/x86_64-linux-gnu/libperditiondb_ldap.so.0"
REPO_ROOT = Path(__file__).resolve().parents[2]
OU = "compat"
BASE = f"ou={OU},dc=nodomain"
TIMEOUT = 30.0

pytestmark = pytest.mark.skipif(
    not os.access(PERDITION, os.X_OK) or not os.path.exists(LIBRARY),
    reason=f"perdition ({PERDITION}) and its LDAP map library are not installed",
)


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def slapd(request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> Slapd:
    if not slapd_available() or shutil.which("openssl") is None:
        message = "slapd, ldap-utils and openssl are needed: run scripts/install-deps.sh"
        if _in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return shared_slapd(tmp_path_factory.mktemp, request.session.config.add_cleanup)


class Backends:
    """Several loopback listeners standing in for POP3 servers."""

    def __init__(self, count: int) -> None:
        self.listeners = [socket.create_server((LOOPBACK, 0)) for _ in range(count)]
        self.ports = [listener.getsockname()[1] for listener in self.listeners]

    def reached(self) -> tuple[int, bytes] | None:
        """(port, first line) of the one connection a proxy makes; None if none comes."""
        ready, _, _ = select.select(self.listeners, [], [], TIMEOUT)
        if not ready:
            return None
        connection, _ = ready[0].accept()
        with connection:
            connection.settimeout(TIMEOUT)
            connection.sendall(b"+OK backend ready\r\n")
            received = b""
            while not received.endswith(b"\r\n"):
                chunk = connection.recv(1024)
                if not chunk:
                    break
                received += chunk
        return ready[0].getsockname()[1], received

    def close(self) -> None:
        for listener in self.listeners:
            listener.close()


@pytest.fixture(scope="module")
def backends() -> Iterator[Backends]:
    listeners = Backends(4)
    yield listeners
    listeners.close()


@dataclass(frozen=True)
class Case:
    key: str
    attributes: dict[str, str]  # "{0}".."{3}" are the back-end ports


CASES = {
    "mailhost_and_port": Case("alice", {"mailhost": LOOPBACK, "port": "{0}"}),
    "all_three": Case("bruce", {"username": "carol", "mailhost": LOOPBACK, "port": "{1}"}),
    "username_as_destination": Case("dana", {"username": f"erin@{LOOPBACK}:{{2}}"}),
    "username_server_port": Case("fred", {"username": f"{LOOPBACK}:{{3}}"}),
}


@pytest.fixture(scope="module")
def entries(slapd: Slapd, backends: Backends) -> None:
    ldif = ou_entry(OU)
    for case in CASES.values():
        values = {name: value.format(*backends.ports) for name, value in case.attributes.items()}
        ldif += popmap_entry(OU, case.key, **values)
    slapd.ldif(ldif)


def _identity() -> list[str]:
    return ["-u", pwd.getpwuid(os.geteuid()).pw_name, "-g", grp.getgrgid(os.getegid()).gr_name]


def _command(proxy: str) -> list[str]:
    if proxy == "perdition":
        return [PERDITION]
    return [sys.executable, "-m", "perditionpy"]


def route(proxy: str, option: str, user: str, flags: tuple[str, ...],
          backends: Backends) -> tuple[int, bytes] | None:
    """Log in as ``user`` through ``proxy`` in inetd mode; what the back-ends saw."""
    argv = [*_command(proxy), "-i", "-P", "POP3", "-f", "", "--no_lookup", *_identity(),
            "-M", LIBRARY, "-m", option, *flags]
    with socket.create_server((LOOPBACK, 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=TIMEOUT)
        server_side, _ = listener.accept()
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    with server_side:
        process = subprocess.Popen(argv, stdin=server_side.fileno(), stdout=server_side.fileno(),
                                   stderr=subprocess.DEVNULL, cwd=REPO_ROOT, env=env)
    try:
        with client:
            greeting = client.recv(1024)
            assert greeting.startswith(b"+OK"), (proxy, greeting)
            client.sendall(b"USER " + user.encode() + b"\r\nPASS secret\r\n")
            return backends.reached()
    finally:
        process.kill()
        process.wait(timeout=TIMEOUT)


def both(option: str, user: str, flags: tuple[str, ...],
         backends: Backends) -> tuple[tuple[int, bytes] | None, tuple[int, bytes] | None]:
    return (route("perdition", option, user, flags, backends),
            route("perditionpy", option, user, flags, backends))


def url(slapd: Slapd, filter_: str = "(uid=%s)", attributes: str = "username,mailhost,port",
        hosts: str | None = None) -> str:
    hosts = hosts if hosts is not None else f"{LOOPBACK}:{slapd.port}"
    return f"3:ldap://{hosts}/{BASE}?{attributes}?one?{filter_}"


@pytest.mark.usefixtures("entries")
@pytest.mark.parametrize("flags", [(), ("-U",)], ids=["plain", "username_from_database"])
@pytest.mark.parametrize("name", list(CASES))
def test_same_destination(slapd: Slapd, backends: Backends, name: str,
                          flags: tuple[str, ...]) -> None:
    case = CASES[name]
    theirs, ours = both(url(slapd), case.key, flags, backends)
    assert theirs is not None and theirs[1].startswith(b"USER ")
    assert ours == theirs


@pytest.mark.usefixtures("entries")
def test_expected_destinations(slapd: Slapd, backends: Backends) -> None:
    """Pin down what both agree on, so the differential cannot pass vacuously."""
    option = url(slapd)
    assert route("perditionpy", option, "dana", ("-U",), backends) == (
        backends.ports[2], b"USER erin\r\n")
    assert route("perditionpy", option, "bruce", (), backends) == (
        backends.ports[1], b"USER bruce\r\n")


@pytest.mark.usefixtures("entries")
@pytest.mark.parametrize("variant", ["width", "two_hosts", "mixed_case_attributes"])
def test_same_destination_for_url_variants(slapd: Slapd, backends: Backends,
                                           variant: str) -> None:
    option = {
        "width": url(slapd, filter_="(uid=%12s)"),
        # 127.0.0.2 refuses at once; the one port is written after the last host.
        "two_hosts": url(slapd, hosts=f"127.0.0.2%20{LOOPBACK}:{slapd.port}"),
        "mixed_case_attributes": url(slapd, attributes="userName,mailHost,Port"),
    }[variant]
    theirs, ours = both(option, "bruce", ("-U",), backends)
    assert theirs == (backends.ports[1], b"USER carol\r\n")
    assert ours == theirs


@pytest.mark.usefixtures("entries")
def test_same_fallback_for_a_missing_key(slapd: Slapd, backends: Backends) -> None:
    fallback = ("-s", f"{LOOPBACK}:{backends.ports[3]}")
    theirs, ours = both(url(slapd), "nobody", fallback, backends)
    assert theirs == (backends.ports[3], b"USER nobody\r\n")
    assert ours == theirs


@pytest.mark.usefixtures("entries")
def test_same_fallback_for_ldapv2_refused(slapd: Slapd, backends: Backends) -> None:
    """No version prefix means LDAPv2 in both; slapd refuses it, both use ``-s``."""
    fallback = ("-s", f"{LOOPBACK}:{backends.ports[0]}")
    theirs, ours = both(url(slapd)[2:], "bruce", fallback, backends)
    assert theirs == (backends.ports[0], b"USER bruce\r\n")
    assert ours == theirs
