"""The LDAP map against a directory of ``inetLocalMailRecipient`` users (``mailHost``).

A second private slapd, of this module's own, loads OpenLDAP's standard core,
cosine, inetorgperson and misc schemas (misc defines ``inetLocalMailRecipient``
and ``mailHost``; perdition's schema is not loaded: its ``mailhost`` has the
same name) and serves ``dc=example,dc=org``.  The users under
``ou=People,dc=example,dc=org`` are ``inetOrgPerson, inetLocalMailRecipient``
entries.  Covered: what the map returns for ``?uid,mailHost?`` and for
``?mailHost?`` URLs, and IMAP logins routed by ``mailHost`` through perditionpy
and through the real perdition 2.2 with its own LDAP library, the port coming
from ``-p``.
"""

from __future__ import annotations

import imaplib
import os
import select
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from perditionpy.endpoints import UserServerPort
from perditionpy.maps import open_map
from perditionpy.maps.base import LookupContext
from perditionpy.maps.ldap import LdapMap
from tests.support.dovecot import Dovecot
from tests.support.ports import LOOPBACK
from tests.support.procs import Proc
from tests.support.scenarios import backend_user
from tests.support.slapd import Slapd, slapd_available
from tests.support.tap import Tap

SCHEMAS = tuple(
    f"/etc/ldap/schema/{name}.ldif" for name in ("core", "cosine", "inetorgperson", "misc")
)
SUFFIX = "dc=example,dc=org"
PEOPLE = f"ou=People,{SUFFIX}"
LIBRARY = "/usr/lib/x86_64-linux-gnu/libperditiondb_ldap.so.0"
CONTEXT = LookupContext()
# 127.0.0.0/8 is all loopback: a second host that is not the Dovecot's.
OTHER_HOST = "127.0.0.2"
TIMEOUT = 10.0

# uid -> mailHost (None: an inetLocalMailRecipient without one).
USERS: dict[str, str | None] = {
    "alice": LOOPBACK,
    "bob": OTHER_HOST,
    "dave": "mail.example.org",
    "erin": "imap.example.org:1143",
    "nomail": None,
    OTHER_HOST: None,  # a uid that is also an address: see test_uid_without_mailhost_…
}


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def person(uid: str, mail_host: str | None) -> str:
    """LDIF for one ``inetOrgPerson, inetLocalMailRecipient`` under ``ou=People``."""
    lines = [
        f"dn: uid={uid},{PEOPLE}",
        "objectClass: inetOrgPerson",
        "objectClass: inetLocalMailRecipient",
        f"uid: {uid}",
        f"cn: {uid}",
        f"sn: {uid}",
    ]
    if mail_host is not None:
        lines.append(f"mailHost: {mail_host}")
    return "\n".join(lines) + "\n\n"


_TREE = f"""dn: {SUFFIX}
objectClass: dcObject
objectClass: organization
o: Example
dc: example

dn: {PEOPLE}
objectClass: organizationalUnit
ou: People

"""


@pytest.fixture(scope="module")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    if not slapd_available() or not all(os.path.exists(path) for path in SCHEMAS):
        message = (
            "slapd, ldap-utils and OpenLDAP's schema files are needed: run scripts/install-deps.sh"
        )
        if _in_ci():
            pytest.fail(message)
        pytest.skip(message)
    server = Slapd(
        tmp_path_factory.mktemp("slapd-inetlocal"),
        schemas=[Path(path) for path in SCHEMAS],
        suffix=SUFFIX,
    ).start()
    try:
        server.ldif(_TREE + "".join(person(uid, host) for uid, host in USERS.items()))
        yield server
    finally:
        server.stop()


def option(slapd: Slapd, attributes: str = "uid,mailHost") -> str:
    return f"3:ldap://{LOOPBACK}:{slapd.port}/{PEOPLE}?{attributes}?one?(uid=%s)"


# ------------------------------------------------------------------ the map


@pytest.fixture(scope="module")
def uid_mailhost(slapd: Slapd) -> Iterator[LdapMap]:
    found = open_map("ldap", option(slapd))
    assert isinstance(found, LdapMap)
    yield found
    found.close()


@pytest.mark.parametrize(
    "key, expected",
    [
        ("alice", UserServerPort("alice", LOOPBACK, None)),
        ("ALICE", UserServerPort("alice", LOOPBACK, None)),  # uid ignores case; the entry's is used
        ("bob", UserServerPort("bob", OTHER_HOST, None)),
        ("dave", UserServerPort("dave", "mail.example.org", None)),
        ("erin", UserServerPort("erin", "imap.example.org:1143", None)),  # mailHost is not split
        ("missing", None),
    ],
)
def test_uid_and_mailhost(uid_mailhost: LdapMap, key: str, expected: UserServerPort | None) -> None:
    assert uid_mailhost.get(key, CONTEXT) == expected


def test_uid_without_mailhost_is_taken_as_the_destination(uid_mailhost: LdapMap) -> None:
    """perdition's rule: an entry with only the first attribute is a whole destination.

    So with ``?uid,mailHost?`` a user without ``mailHost`` is *found*, routed to a
    host named like the user (``-s`` is not used).  The logins below show perdition
    2.2 does the same.
    """
    assert uid_mailhost.get("nomail", CONTEXT) == UserServerPort(None, "nomail", None)
    assert uid_mailhost.get(OTHER_HOST, CONTEXT) == UserServerPort(None, OTHER_HOST, None)


@pytest.mark.parametrize(
    "key, expected",
    [
        ("alice", UserServerPort(None, LOOPBACK, None)),
        ("dave", UserServerPort(None, "mail.example.org", None)),
        ("erin", UserServerPort(None, "imap.example.org", "1143")),  # a lone value is parsed
        ("nomail", None),  # nothing to read: not found, so -s applies
        ("missing", None),
    ],
)
def test_mailhost_alone(slapd: Slapd, key: str, expected: UserServerPort | None) -> None:
    alone = open_map("ldap", option(slapd, "mailHost"))
    assert alone is not None
    try:
        assert alone.get(key, CONTEXT) == expected
    finally:
        alone.close()


# ------------------------------------------------------------------ logins


class Listener:
    """A loopback stand-in IMAP server on another address: records who connects."""

    def __init__(self, host: str, port: int) -> None:
        self.socket = socket.create_server((host, port))

    def first_line(self) -> bytes | None:
        """Greet the one connection a proxy makes; the first line it sends (None: none came)."""
        ready, _, _ = select.select([self.socket], [], [], TIMEOUT)
        if not ready:
            return None
        connection, _ = self.socket.accept()
        with connection:
            connection.settimeout(TIMEOUT)
            connection.sendall(b"* OK stand-in ready\r\n")
            received = b""
            while not received.endswith(b"\r\n"):
                chunk = connection.recv(1024)
                if not chunk:
                    break
                received += chunk
        return received

    def close(self) -> None:
        self.socket.close()


@pytest.fixture
def imap_tap(dovecot: Dovecot, make_tap: Callable[[int], Tap]) -> Tap:
    return make_tap(dovecot.imap_port)


@pytest.fixture
def other_host(imap_tap: Tap) -> Iterator[Listener]:
    """Listens on ``OTHER_HOST`` at the tap's port: ``-p`` serves both hosts."""
    listener = Listener(OTHER_HOST, imap_tap.port)
    yield listener
    listener.close()


def _login(proxy: Proc, user: str, password: str) -> str:
    client = imaplib.IMAP4(LOOPBACK, proxy.port, timeout=TIMEOUT)
    try:
        typ, _ = client.login(user, password)
        return str(typ)
    except imaplib.IMAP4.error as exc:
        return f"NO {exc}"
    finally:
        client.logout()


def _send_login(proxy: Proc, user: str) -> socket.socket:
    """Start a login and leave it pending (the back-end's answer is not awaited)."""
    client = socket.create_connection((LOOPBACK, proxy.port), timeout=TIMEOUT)
    assert client.recv(1024).startswith(b"* OK")
    client.sendall(b"a LOGIN " + user.encode() + b" secret\r\n")
    return client


@pytest.mark.parametrize("proxy", ["perditionpy", "perdition"])
def test_logins_routed_by_mailhost(
    proxy: str,
    slapd: Slapd,
    imap_tap: Tap,
    other_host: Listener,
    dovecot: Dovecot,
    request: pytest.FixtureRequest,
) -> None:
    """The same ``-m`` routes alike in both: by ``mailHost``, else by a lone ``uid``."""
    if proxy == "perditionpy":
        run, library = request.getfixturevalue("run_perditionpy"), "ldap"
    else:
        run, library = request.getfixturevalue("run_perdition"), LIBRARY
        if not os.path.exists(LIBRARY):
            pytest.skip(f"perdition's LDAP map library {LIBRARY} is not installed")
    started = run(["-P", "IMAP4", "-M", library, "-m", option(slapd), "-p", str(imap_tap.port)])
    mark = dovecot.log_position()
    assert _login(started, "alice", "alice-pw") == "OK"
    imap_tap.wait_for_connections(1)
    assert backend_user(imap_tap.connections[0].wait_closed().to_server) == b"alice"
    assert dovecot.wait_for_login("alice", ok=True, since=mark)
    for user in ("bob", OTHER_HOST):  # mailHost 127.0.0.2; no mailHost, uid 127.0.0.2
        with _send_login(started, user):
            first = other_host.first_line()
        assert first is not None, f"{proxy}: {user} did not reach {OTHER_HOST}"
        assert first.endswith(b" CAPABILITY\r\n"), first
    assert len(imap_tap.connections) == 1
