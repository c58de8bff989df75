"""``perditiondb_ldap_makedb``: seed an LDAP directory with a popmap for the LDAP map.

Like perdition's interactive script it takes no arguments (``-h`` prints
help), reminds you that ``perdition.schema`` (or ``perdition.ldif`` for
cn=config) must be loaded, and asks, one answer a line (read from stdin when it
is not a terminal): whether the schema is loaded (``y`` to go on), the bind DN
(default ``cn=admin,dc=nodomain``) and its password.  It then adds
``ou=mailbox,dc=nodomain`` and a sample entry ``uid=horms`` (username
``horms``, mailhost ``localhost``, port ``110``), and prints an entry to copy.

Additions: a fourth question, the server URL (default ``ldap://localhost``;
``ldaps://`` works, with the TLS settings of ldap.conf / ``LDAPTLS_*``), so
no ``ldapadd`` is needed; an entry that already exists is left as it is
instead of failing.  Exit status: 0 done or declined, 1 on failure.
"""

from __future__ import annotations

import getpass
import sys
from collections.abc import Sequence
from typing import TextIO

import ldap3  # type: ignore[import-untyped]
from ldap3.core import exceptions as ldap_errors  # type: ignore[import-untyped]

from perditionpy.maps._ldap_url import tls_settings

__all__ = ["main", "ENTRIES"]

EXIT_OK, EXIT_FAILURE = 0, 1
DEFAULT_BIND_DN = "cn=admin,dc=nodomain"
DEFAULT_URL = "ldap://localhost"
_ALREADY_EXISTS = 68
_TIMEOUT = 10

USAGE = """Usage: perditiondb_ldap_makedb

Adds ou=mailbox,dc=nodomain and a sample popmap entry for perdition's ldap map.
Asks for: confirmation that perdition.schema is loaded, the bind DN, its
password and the server URL (default ldap://localhost).
"""

SCHEMA_NOTE = """
The directory must know perdition's schema first: with slapd.conf, include
/etc/ldap/schema/perdition.schema after the other schema files; with
cn=config (slapd.d), add /etc/ldap/schema/perdition.ldif with ldapadd.
"""

ENTRIES: tuple[tuple[str, dict[str, list[str]]], ...] = (
    ("ou=mailbox,dc=nodomain", {
        "objectClass": ["top", "organizationalUnit"], "ou": ["mailbox"],
        "description": ["Popmap for perdition"]}),
    ("uid=horms,ou=mailbox,dc=nodomain", {
        "objectClass": ["top", "uidObject", "perditionPopmap"], "uid": ["horms"],
        "username": ["horms"], "mailhost": ["localhost"], "port": ["110"]}),
)

TEMPLATE = """Done

More entries look like this:

dn: uid=horms,ou=mailbox,dc=nodomain
objectClass: top
objectClass: uidObject
objectClass: perditionPopmap
uid: horms
username: horms
mailhost: localhost
port: 110
"""


class Failed(Exception):
    """A step failed; the message is printed before exiting 1."""


def _ask(question: str, stdin: TextIO, stderr: TextIO, *, secret: bool = False) -> str:
    if stdin.isatty():
        return getpass.getpass(question, stderr) if secret else input(question)
    stderr.write(question)
    stderr.flush()
    answer = stdin.readline()
    stderr.write("\n")
    return answer.rstrip("\r\n")


def _connect(url: str, bind_dn: str, password: str) -> ldap3.Connection:
    settings = tls_settings()
    tls = ldap3.Tls(validate=settings.verify, ca_certs_file=settings.ca_file,
                    ca_certs_path=settings.ca_dir)
    try:
        server = ldap3.Server(url, tls=tls, get_info=ldap3.NONE, connect_timeout=_TIMEOUT)
        connection = ldap3.Connection(server, user=bind_dn, password=password,
                                      receive_timeout=_TIMEOUT, raise_exceptions=False)
        if not connection.bind():
            result = connection.result or {}
            raise Failed(f"bind as {bind_dn} failed: {result.get('description')} "
                         f"{result.get('message', '')}".rstrip())
    except ldap_errors.LDAPException as exc:
        raise Failed(f"cannot use {url}: {exc}") from exc
    return connection


def _add(connection: ldap3.Connection, dn: str, attributes: dict[str, list[str]],
         stdout: TextIO) -> None:
    if connection.add(dn, attributes=attributes):
        stdout.write(f"added {dn}\n")
        return
    result = connection.result or {}
    if result.get("result") == _ALREADY_EXISTS:
        stdout.write(f"{dn} is already there: left as it is\n")
        return
    raise Failed(f"adding {dn} failed: {result.get('description')} "
                 f"{result.get('message', '')}".rstrip())


def run(stdin: TextIO, stdout: TextIO, stderr: TextIO) -> int:
    """The dialogue; the exit status."""
    stdout.write(SCHEMA_NOTE + "\n")
    stdout.flush()
    if _ask("Has perdition's schema been loaded? [y/N]: ", stdin, stderr).lower() != "y":
        stdout.write("Bailing...\n")
        return EXIT_OK
    bind_dn = _ask(f"Enter binddn [{DEFAULT_BIND_DN}]: ", stdin, stderr) or DEFAULT_BIND_DN
    password = _ask(f'Enter the password for "{bind_dn}": ', stdin, stderr, secret=True)
    url = _ask(f"Enter the server URL [{DEFAULT_URL}]: ", stdin, stderr) or DEFAULT_URL
    stdout.write("Initialising LDAP popmap...\n")
    try:
        connection = _connect(url, bind_dn, password)
        try:
            for dn, attributes in ENTRIES:
                _add(connection, dn, attributes, stdout)
        finally:
            connection.unbind()
    except (Failed, ldap_errors.LDAPException) as exc:
        stderr.write(f"Error initialising LDAP popmap: {exc}. Bailing\n")
        return EXIT_FAILURE
    stdout.write(TEMPLATE)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args:
        sys.stdout.write(USAGE)
        return EXIT_OK if args[0] in ("-h", "--help") else EXIT_FAILURE
    return run(sys.stdin, sys.stdout, sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
