"""The LDAP map against a real slapd with etc/ldap/perdition.ldif loaded.

One slapd serves the whole session (``tests.support.slapd.shared_slapd``); this
module's entries live under ``ou=integ,dc=nodomain``.  Covered: lookups and the
shape of results, hostile keys, ``%<width>s`` and a base-DN placeholder,
binding, several hosts, ldaps and StartTLS with a CA made by openssl, slapd
stopped and restarted under the map, bounded timeouts, threads and connection
counts, and logins through perditionpy routed by LDAP to the private Dovecot.
"""

from __future__ import annotations

import imaplib
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from perditionpy.endpoints import UserServerPort
from perditionpy.errors import MapError
from perditionpy.maps import open_map
from perditionpy.maps._ldap_url import TlsSettings, parse_options, tls_settings
from perditionpy.maps.base import LookupContext
from perditionpy.maps.ldap import LdapMap, Timeouts
from tests.support.dovecot import Dovecot
from tests.support.ports import LOOPBACK, free_port
from tests.support.procs import Proc
from tests.support.scenarios import backend_user
from tests.support.slapd import (
    ADMIN_DN,
    ADMIN_PASSWORD,
    Slapd,
    ou_entry,
    popmap_entry,
    shared_slapd,
    slapd_available,
)
from tests.support.tap import Tap

OU = "integ"
BASE = f"ou={OU},dc=nodomain"
ATTRS = "username,mailhost,port"
LIBRARY = "/usr/lib/x86_64-linux-gnu/libperditiondb_ldap.so.0"
CONTEXT = LookupContext()
REPO_ROOT = Path(__file__).resolve().parents[2]

ENTRIES = {
    "horms": {"username": "horms", "mailhost": "localhost", "port": "110"},
    "hostonly": {"mailhost": "mail.example:2143"},
    "v6": {"mailhost": "2001:db8::1", "port": "143"},
    "solo": {"username": "bob@10.0.0.1:143"},
    "plain": {"username": "carol"},
    "renamed": {"username": "dave", "mailhost": "imap.example"},
    "*": {"mailhost": "star.example"},
    "twin1": {"mailhost": "twins.example"},
    "twin2": {"mailhost": "twins.example"},
    "élève": {"mailhost": "unicode.example"},
}


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


@pytest.fixture(scope="module")
def entries(slapd: Slapd) -> None:
    slapd.ldif(ou_entry(OU) + "".join(popmap_entry(OU, uid, **attributes)
                                      for uid, attributes in ENTRIES.items()))


@pytest.fixture
def server(slapd: Slapd, entries: None) -> Iterator[Slapd]:
    """The shared slapd with this module's entries, running again after each test."""
    yield slapd
    if not slapd.running():
        slapd.start()


def option(slapd: Slapd, rest: str = f"?{ATTRS}?one?(uid=%s)", *, version: str = "3:",
           hosts: str | None = None, base: str = BASE) -> str:
    hosts = hosts if hosts is not None else f"{LOOPBACK}:{slapd.port}"
    return f"{version}ldap://{hosts}/{base}{rest}"


@pytest.fixture
def ldap_map(server: Slapd) -> Iterator[LdapMap]:
    found = open_map("ldap", option(server))
    assert isinstance(found, LdapMap)
    yield found
    found.close()


# ------------------------------------------------------------------ lookups


@pytest.mark.parametrize("key, expected", [
    ("horms", UserServerPort("horms", "localhost", "110")),
    ("HORMS", UserServerPort("horms", "localhost", "110")),  # uid ignores case
    ("hostonly", UserServerPort(None, "mail.example:2143", None)),  # mailhost is not split
    ("v6", UserServerPort(None, "2001:db8::1", "143")),
    ("solo", UserServerPort("bob", "10.0.0.1", "143")),  # a lone username is split
    ("plain", UserServerPort(None, "carol", None)),
    ("renamed", UserServerPort("dave", "imap.example", None)),
    ("élève", UserServerPort(None, "unicode.example", None)),
    ("nobody", None),
])
def test_lookup(ldap_map: LdapMap, key: str, expected: UserServerPort | None) -> None:
    assert ldap_map.get(key, CONTEXT) == expected


@pytest.mark.parametrize("key", [
    "*)(uid=*", "horms)(uid=*", "*)", "(", "\\", "\\2a", "h*", "*horms", "horms\0", "a\0b",
    "x" * 10240, "%s", "?", "horms?x", "%2a", "uid=horms,ou=integ",
])
def test_hostile_keys_are_literal_values(ldap_map: LdapMap, key: str,
                                         caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert ldap_map.get(key, CONTEXT) is None
    assert "multiple entries" not in caplog.text


def test_a_star_key_finds_only_the_entry_named_star(ldap_map: LdapMap,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert ldap_map.get("*", CONTEXT) == UserServerPort(None, "star.example", None)
    assert "multiple entries" not in caplog.text


def test_an_ambiguous_filter_warns_and_uses_one_entry(server: Slapd,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    ambiguous = LdapMap(parse_options(option(server, "?mailhost,uid?one?(mailhost=%s)")))
    with caplog.at_level(logging.WARNING):
        found = ambiguous.get("twins.example", CONTEXT)
    ambiguous.close()
    assert found is not None and found.user == "twins.example"
    assert found.server in ("twin1", "twin2")
    assert "multiple entries returned by filter" in caplog.text


def test_width_placeholder_pads_and_still_matches(server: Slapd) -> None:
    padded = LdapMap(parse_options(option(server, f"?{ATTRS}?one?(uid=%12s)")))
    try:
        assert padded.get("horms", CONTEXT) == UserServerPort("horms", "localhost", "110")
        assert padded.get("*)(uid=*", CONTEXT) is None
    finally:
        padded.close()


def test_placeholder_in_the_base_dn(server: Slapd) -> None:
    by_dn = LdapMap(parse_options(option(server, f"?{ATTRS}?base?", base=f"uid=%s,{BASE}")))
    try:
        assert by_dn.get("horms", CONTEXT) == UserServerPort("horms", "localhost", "110")
        assert by_dn.get("nobody", CONTEXT) is None
        assert by_dn.get("horms,ou=elsewhere", CONTEXT) is None
        assert by_dn.get("x\\", CONTEXT) is None
    finally:
        by_dn.close()


def test_attribute_names_match_whatever_their_case(server: Slapd) -> None:
    """What a directory with inetLocalMailRecipient writes: ``?mailHost?``."""
    mixed = LdapMap(parse_options(option(server, "?mailHost?one?(uid=%s)")))
    try:
        assert mixed.get("renamed", CONTEXT) == UserServerPort(None, "imap.example", None)
    finally:
        mixed.close()


def test_through_the_registry_by_perditions_library_path(server: Slapd) -> None:
    found = open_map(LIBRARY, option(server))
    assert isinstance(found, LdapMap)
    try:
        assert found.get("solo", CONTEXT) == UserServerPort("bob", "10.0.0.1", "143")
    finally:
        found.close()


def test_the_map_sees_changes_at_once(ldap_map: LdapMap, server: Slapd) -> None:
    assert ldap_map.get("late", CONTEXT) is None
    server.ldif(popmap_entry(OU, "late", mailhost="late.example"))
    assert ldap_map.get("late", CONTEXT) == UserServerPort(None, "late.example", None)


# ------------------------------------------------------------------ binding and versions


def test_perditions_default_version_2_is_refused_with_a_hint(
        server: Slapd, caplog: pytest.LogCaptureFixture) -> None:
    v2 = LdapMap(parse_options(option(server, version="")))
    assert v2.url.version == 2
    with caplog.at_level(logging.WARNING), pytest.raises(MapError, match="LDAPv2"):
        v2.get("horms", CONTEXT)
    v2.close()
    assert "3:ldap://" in caplog.text


def test_bindname_and_x_bindpw(server: Slapd) -> None:
    dn = ADMIN_DN.replace(",", "%2C")
    bound = LdapMap(parse_options(option(
        server, f"?{ATTRS}?one?(uid=%s)?bindname={dn},X-BINDPW={ADMIN_PASSWORD}")))
    wrong = LdapMap(parse_options(option(
        server, f"?{ATTRS}?one?(uid=%s)?!bindname={dn},!x-bindpw=wrong")))
    try:
        assert bound.get("horms", CONTEXT) == UserServerPort("horms", "localhost", "110")
        with pytest.raises(MapError, match="invalidCredentials"):
            wrong.get("horms", CONTEXT)
    finally:
        bound.close()
        wrong.close()


def test_unknown_extensions(server: Slapd) -> None:
    with pytest.raises(MapError, match="critical extension 'x-frobnicate'"):
        open_map("ldap", option(server, f"?{ATTRS}?one?(uid=%s)?!x-frobnicate=1"))
    lenient = open_map("ldap", option(server, f"?{ATTRS}?one?(uid=%s)?x-frobnicate=1"))
    assert lenient is not None
    assert lenient.get("horms", CONTEXT) == UserServerPort("horms", "localhost", "110")
    lenient.close()


# ------------------------------------------------------------------ hosts and TLS


def test_several_hosts_sharing_one_port_are_tried_in_order(
        server: Slapd, caplog: pytest.LogCaptureFixture) -> None:
    # Nothing listens on 127.0.0.2: refused at once; the port is written once, at the end.
    failover = LdapMap(parse_options(option(server, hosts=f"127.0.0.2%20{LOOPBACK}:{server.port}")))
    try:
        with caplog.at_level(logging.WARNING):
            assert failover.get("horms", CONTEXT) == UserServerPort("horms", "localhost", "110")
        assert f"127.0.0.2:{server.port} is unreachable" in caplog.text
    finally:
        failover.close()


def test_ldaps_checks_the_certificate(server: Slapd) -> None:
    assert server.tls is not None
    url = parse_options(f"3:{server.ldaps_url}/{BASE}?{ATTRS}?one?(uid=%s)")
    trusted = LdapMap(url, tls=TlsSettings(ca_file=str(server.tls.ca)))
    untrusted = LdapMap(url, tls=TlsSettings())
    lax = LdapMap(url, tls=tls_settings({"LDAPTLS_REQCERT": "never", "LDAPNOINIT": "1"}))
    try:
        assert trusted.get("horms", CONTEXT) == UserServerPort("horms", "localhost", "110")
        with pytest.raises(MapError, match="CERTIFICATE_VERIFY_FAILED"):
            untrusted.get("horms", CONTEXT)
        assert lax.get("horms", CONTEXT) == UserServerPort("horms", "localhost", "110")
    finally:
        for each in (trusted, untrusted, lax):
            each.close()


def test_starttls_extension(server: Slapd) -> None:
    assert server.tls is not None
    url = parse_options(option(server, f"?{ATTRS}?one?(uid=%s)?!x-starttls"))
    assert url.start_tls
    secured = LdapMap(url, tls=TlsSettings(ca_file=str(server.tls.ca)))
    untrusted = LdapMap(url, tls=TlsSettings())
    try:
        assert secured.get("horms", CONTEXT) == UserServerPort("horms", "localhost", "110")
        connection, _ = secured.pool.acquire()
        assert connection.tls_started
        secured.pool.release(connection)
        with pytest.raises(MapError):
            untrusted.get("horms", CONTEXT)
    finally:
        secured.close()
        untrusted.close()


# ------------------------------------------------------------------ outages and limits


def test_slapd_stopped_mid_test_fails_then_recovers(
        ldap_map: LdapMap, server: Slapd, caplog: pytest.LogCaptureFixture) -> None:
    assert ldap_map.get("horms", CONTEXT) is not None
    server.stop()
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            with pytest.raises(MapError, match="cannot reach the LDAP server"):
                ldap_map.get("horms", CONTEXT)
    assert caplog.text.count("is unreachable") == 1  # warned once per outage
    server.start()
    assert ldap_map.get("horms", CONTEXT) == UserServerPort("horms", "localhost", "110")


def test_a_restart_between_lookups_costs_no_failed_lookup(ldap_map: LdapMap,
                                                          server: Slapd) -> None:
    assert ldap_map.get("horms", CONTEXT) is not None
    assert ldap_map.pool.idle_count() == 1
    server.stop()
    server.start()
    assert ldap_map.get("horms", CONTEXT) == UserServerPort("horms", "localhost", "110")


def test_a_server_that_never_answers_is_cut_off() -> None:
    with socket.create_server((LOOPBACK, 0)) as silent:
        port = silent.getsockname()[1]
        mute = LdapMap(parse_options(f"3:ldap://{LOOPBACK}:{port}/{BASE}?{ATTRS}?one?(uid=%s)"),
                       timeouts=Timeouts(connect=1, query=1))
        started = time.monotonic()
        with pytest.raises(MapError):
            mute.get("horms", CONTEXT)
        mute.close()
    assert time.monotonic() - started < 5


def test_threads_get_their_own_answers_and_connections_do_not_leak(server: Slapd) -> None:
    shared = LdapMap(parse_options(option(server)), pool_size=3)
    expected = {"horms": "localhost", "v6": "2001:db8::1", "renamed": "imap.example"}
    wrong: list[str] = []

    def worker(key: str) -> None:
        for _ in range(40):
            found = shared.get(key, CONTEXT)
            if found is None or found.server != expected[key]:
                wrong.append(f"{key}: {found}")

    threads = [threading.Thread(target=worker, args=(key,)) for key in expected for _ in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert wrong == []
    assert server.connections() <= 3
    shared.close()
    _wait_for(lambda: server.connections() == 0, "slapd to see every connection closed")
    with pytest.raises(MapError, match="closed"):
        shared.get("horms", CONTEXT)


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(0.05)  # polling a kernel connection table


# ------------------------------------------------------------------ the schema files


def _oids(text: str) -> set[tuple[str, str]]:
    return set(re.findall(r"\(\s*([\d.]+)\s+NAME\s+'(\w+)'", text))


def test_schema_and_ldif_define_perditions_identifiers(tmp_path: Path) -> None:
    schema = (REPO_ROOT / "etc/ldap/perdition.schema").read_text()
    ldif = (REPO_ROOT / "etc/ldap/perdition.ldif").read_text().replace("\n  ", "\n ")
    ldif = ldif.replace("\n ", "")
    expected = {("1.3.6.1.4.1.12856.10.10", "username"), ("1.3.6.1.4.1.12856.10.11", "mailhost"),
                ("1.3.6.1.4.1.12856.10.12", "port"),
                ("1.3.6.1.4.1.12856.10.100", "perditionPopmap")}
    assert _oids(schema) == expected
    assert _oids(ldif) == expected


def test_slapd_conf_accepts_the_schema_file(tmp_path: Path, slapd: Slapd) -> None:
    conf = tmp_path / "slapd.conf"
    conf.write_text("include /etc/ldap/schema/core.schema\n"
                    f"include {REPO_ROOT / 'etc/ldap/perdition.schema'}\n")
    result = subprocess.run(["/usr/sbin/slaptest", "-u", "-f", str(conf)],
                            capture_output=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------ through perditionpy


@pytest.fixture
def imap_tap(dovecot: Dovecot, make_tap: Callable[[int], Tap]) -> Tap:
    return make_tap(dovecot.imap_port)


def _login(proxy: Proc, user: str, password: str) -> str:
    client = imaplib.IMAP4(LOOPBACK, proxy.port)
    try:
        typ, _ = client.login(user, password)
        return str(typ)
    except imaplib.IMAP4.error as exc:
        return f"NO {exc}"
    finally:
        client.logout()


def _received(tap: Tap) -> bytes | None:
    tap.wait_for_connections(1)
    return backend_user(tap.connections[0].wait_closed().to_server)


def test_login_routed_by_ldap(server: Slapd, imap_tap: Tap, dovecot: Dovecot,
                              run_perditionpy: Callable[..., Proc]) -> None:
    server.ldif(popmap_entry(OU, "alice", mailhost=LOOPBACK, port=str(imap_tap.port)))
    proxy = run_perditionpy(["-P", "IMAP4", "-M", LIBRARY, "-m", option(server)])
    assert _login(proxy, "alice", "alice-pw") == "OK"
    assert _received(imap_tap) == b"alice"
    assert dovecot.wait_for_login("alice", ok=True)


def test_login_with_username_from_database(server: Slapd, imap_tap: Tap, dovecot: Dovecot,
                                           run_perditionpy: Callable[..., Proc]) -> None:
    server.ldif(popmap_entry(OU, "erin", username=f"bob@{LOOPBACK}:{imap_tap.port}"))
    proxy = run_perditionpy(["-P", "IMAP4", "-M", LIBRARY, "-m", option(server), "-U"])
    assert _login(proxy, "erin", "bob-pw") == "OK"
    assert _received(imap_tap) == b"bob"
    assert dovecot.wait_for_login("bob", ok=True)


def test_login_falls_back_to_outgoing_server_while_ldap_is_down(
        server: Slapd, imap_tap: Tap, run_perditionpy: Callable[..., Proc]) -> None:
    dead = free_port()
    proxy = run_perditionpy(["-P", "IMAP4", "-M", "ldap", "-m",
                             option(server, hosts=f"{LOOPBACK}:{dead}"),
                             "-s", f"{LOOPBACK}:{imap_tap.port}"])
    assert _login(proxy, "alice", "alice-pw") == "OK"
    assert _received(imap_tap) == b"alice"
    proxy.wait_for_log(rf"ldap map: LDAP server {LOOPBACK}:{dead} is unreachable")


# ------------------------------------------------------------------ perditiondb_ldap_makedb


def _makedb(answers: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "perditionpy.tools.ldap_makedb"],
                          input=answers, capture_output=True, text=True, timeout=60,
                          cwd=REPO_ROOT, check=False)


def test_makedb_seeds_the_default_popmap(server: Slapd) -> None:
    assert _makedb("n\n").returncode == 0  # declined: nothing added
    answers = f"y\n{ADMIN_DN}\nwrong\n{server.url}\n"
    refused = _makedb(answers.replace("wrong", "bad"))
    assert refused.returncode == 1 and "invalidCredentials" in refused.stderr
    answers = answers.replace("wrong", ADMIN_PASSWORD)
    first = _makedb(answers)
    assert first.returncode == 0, first.stderr
    assert "added uid=horms,ou=mailbox,dc=nodomain" in first.stdout
    # perdition's default URL, pointed at this server with LDAPv3, finds the sample entry.
    default = open_map("ldap", f"3:{server.url}/ou=mailbox,dc=nodomain?username,mailhost,port"
                               "?one?(uid=%s)")
    assert default is not None
    assert default.get("horms", CONTEXT) == UserServerPort("horms", "localhost", "110")
    default.close()
    again = _makedb(answers)
    assert again.returncode == 0 and "already there" in again.stdout
