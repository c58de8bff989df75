"""Bad input from clients and back-ends must cost one connection, never the daemon.

Each test keeps a healthy session going through the same perditionpy process:
logged in before the bad input, still reading mail after it, followed by a
fresh login — and the daemon must still be running at the end.

One IMAP4 and one POP3 proxy serve the whole module. Their GDBM popmap sends
the users ``down``, ``dropper``, ``silent`` and ``garbage`` to a closed port and
to hostile back-ends (tests/support/badservers.py); everyone else goes to the
private Dovecot (``-s``). ``--authenticate_timeout`` bounds the wait for a
silent back-end.
"""

from __future__ import annotations

import contextlib
import imaplib
import poplib
import re
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support import badservers
from tests.support.dovecot import Dovecot
from tests.support.ports import LOOPBACK, free_port
from tests.support.procs import Proc, start_perditionpy
from tests.support.scenarios import PERDITION_GDBM_LIBRARY, build_popmap, readable_dir

DEADLINE = 15.0
AUTHENTICATE_TIMEOUT = 3
MEBIBYTE = 1 << 20
FOUR_GIB = 1 << 32
BROKEN_BACKENDS = ("dropper", "silent", "garbage")


# --------------------------------------------------------------------------- helpers


def concurrently(*calls: Callable[[], Any]) -> list[Any]:
    """Run ``calls`` in parallel threads; return their results, re-raising any error."""
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(call) for call in calls]
        return [future.result(timeout=90) for future in futures]


class Raw:
    """A raw client socket that reads lines and notices the close."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((LOOPBACK, port), timeout=DEADLINE)
        self._buf = b""
        self.greeting = self.line()

    @property
    def local_port(self) -> int:
        return int(self.sock.getsockname()[1])

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        """One line, or ``b""`` if the proxy closed (or reset) first."""
        while b"\n" not in self._buf:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                rest, self._buf = self._buf, b""
                return rest
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line + b"\n"

    def imap(self, tag: bytes, text: bytes) -> bytes:
        """Send a command; return the tagged reply (untagged lines skipped)."""
        self.send(tag + b" " + text + b"\r\n")
        while (line := self.line()) and not line.startswith(tag + b" "):
            pass
        return line

    def pop(self, text: bytes) -> bytes:
        self.send(text + b"\r\n")
        return self.line()

    def closed(self) -> bool:
        """True once the proxy closed: everything left is read and discarded."""
        while self.line():
            pass
        return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def imap_body(client: imaplib.IMAP4, number: int) -> bytes:
    typ, data = client.fetch(str(number), "(BODY.PEEK[])")
    assert typ == "OK"
    part = data[0]
    assert isinstance(part, tuple)
    return part[1]


def pop3_message(client: poplib.POP3, number: int) -> bytes:
    _, lines, _ = client.retr(number)
    return b"".join(line + b"\r\n" for line in lines)


def imap_login_works(raw: Raw, tag: bytes = b"z") -> None:
    """After bad input: the same connection can still log in and log out."""
    assert raw.imap(tag + b"1", b"LOGIN bob bob-pw").startswith(tag + b"1 OK")
    assert raw.imap(tag + b"2", b"LOGOUT").startswith(tag + b"2 OK")


def pop3_login_works(raw: Raw) -> None:
    assert raw.pop(b"USER bob").startswith(b"+OK")
    assert raw.pop(b"PASS bob-pw").startswith(b"+OK")
    assert raw.pop(b"QUIT").startswith(b"+OK")


# --------------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class Proxies:
    imap: Proc
    pop3: Proc
    down_port: int
    backends: dict[str, badservers.BadServer]  # "<protocol>-<user>" → server


@pytest.fixture(scope="module")
def proxies(dovecot: Dovecot, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxies]:
    log_dir = tmp_path_factory.mktemp("bad-input-proxies")
    with contextlib.ExitStack() as stack:
        backends: dict[str, badservers.BadServer] = {}
        for protocol, greeting in (
            ("IMAP4", badservers.IMAP_GREETING),
            ("POP3", badservers.POP3_GREETING),
        ):
            for user, server in (
                ("dropper", badservers.greets_then_drops(greeting, lines=1)),
                ("silent", badservers.never_answers()),
                ("garbage", badservers.sends_garbage()),
            ):
                backends[f"{protocol}-{user}"] = stack.enter_context(server)
        down_port = free_port()  # nothing listens there
        directory = stack.enter_context(readable_dir())
        started = {}
        for protocol, port in (("IMAP4", dovecot.imap_port), ("POP3", dovecot.pop3_port)):
            popmap = build_popmap(
                directory / f"{protocol}.db",
                [
                    f"down:{LOOPBACK}:{down_port}",
                    *(
                        f"{user}:{LOOPBACK}:{backends[f'{protocol}-{user}'].port}"
                        for user in BROKEN_BACKENDS
                    ),
                ],
            )
            args = [
                "-M",
                PERDITION_GDBM_LIBRARY,
                "-m",
                str(popmap),
                "-P",
                protocol,
                "-s",
                f"{LOOPBACK}:{port}",
                "--authenticate_timeout",
                str(AUTHENTICATE_TIMEOUT),
            ]
            started[protocol] = stack.enter_context(start_perditionpy(args, log_dir=log_dir))
        yield Proxies(started["IMAP4"], started["POP3"], down_port, backends)


@contextlib.contextmanager
def healthy_imap(proxy: Proc, dovecot: Dovecot) -> Iterator[imaplib.IMAP4]:
    """An IMAP session relayed before the bad input that must keep working after it;
    then a new login, and the daemon must still be up."""
    alice = dovecot.user("alice")
    client = imaplib.IMAP4(LOOPBACK, proxy.port, timeout=DEADLINE)
    client.login("alice", alice.password_text)
    assert client.select("INBOX", readonly=True)[0] == "OK"
    assert imap_body(client, 1) == alice.messages[0]
    yield client
    assert client.noop()[0] == "OK"
    assert client.select("INBOX", readonly=True)[0] == "OK"
    assert imap_body(client, 3) == alice.messages[2]
    client.logout()
    fresh = imaplib.IMAP4(LOOPBACK, proxy.port, timeout=DEADLINE)
    fresh.login("bob", "bob-pw")
    assert fresh.select("INBOX", readonly=True)[0] == "OK"
    assert imap_body(fresh, 1) == dovecot.user("bob").messages[0]
    fresh.logout()
    assert proxy.running()


@contextlib.contextmanager
def healthy_pop3(proxy: Proc, dovecot: Dovecot) -> Iterator[poplib.POP3]:
    """The POP3 counterpart of ``healthy_imap``."""
    alice = dovecot.user("alice")
    client = poplib.POP3(LOOPBACK, proxy.port, timeout=DEADLINE)
    client.user("alice")
    client.pass_(alice.password_text)
    assert pop3_message(client, 1) == alice.messages[0]
    yield client
    assert client.noop().startswith(b"+OK")
    assert pop3_message(client, 3) == alice.messages[2]
    client.quit()
    fresh = poplib.POP3(LOOPBACK, proxy.port, timeout=DEADLINE)
    fresh.user("bob")
    fresh.pass_("bob-pw")
    assert pop3_message(fresh, 1) == dovecot.user("bob").messages[0]
    fresh.quit()
    assert proxy.running()


# --------------------------------------------------------------------------- client input


def test_imap_one_mebibyte_line(proxies: Proxies, dovecot: Dovecot) -> None:
    with healthy_imap(proxies.imap, dovecot), Raw(proxies.imap.port) as raw:
        raw.send(b"a LOGIN " + b"x" * MEBIBYTE + b" alice-pw\r\n")
        assert raw.line().startswith(b"a BAD ")
        assert raw.imap(b"b", b"NOOP") == b"b OK NOOP\r\n"
        imap_login_works(raw)


def test_pop3_one_mebibyte_line(proxies: Proxies, dovecot: Dovecot) -> None:
    with healthy_pop3(proxies.pop3, dovecot), Raw(proxies.pop3.port) as raw:
        assert raw.pop(b"USER " + b"x" * MEBIBYTE).startswith(b"-ERR ")
        assert raw.pop(b"CAPA").startswith(b"+OK ")  # answered at once, unlike NOOP
        while raw.line() != b".\r\n":
            pass
        pop3_login_works(raw)


def test_imap_nul_bytes_in_login(proxies: Proxies, dovecot: Dovecot) -> None:
    mark = dovecot.log_position()
    commands = (
        b"a LOGIN al\x00ice alice-pw\r\n",  # atom
        b'a LOGIN alice "alice\x00-pw"\r\n',  # quoted string
        b"a LOGIN {6+}\r\nal\x00ice alice-pw\r\n",  # literal
    )

    def attempt(command: bytes) -> None:
        with Raw(proxies.imap.port) as raw:
            raw.send(command)
            assert re.match(rb"a (BAD|NO) ", raw.line())
            imap_login_works(raw)

    with healthy_imap(proxies.imap, dovecot):
        concurrently(*(lambda c=c: attempt(c) for c in commands))
    # Nothing with a NUL (or cut at it) reached the back-end.
    assert {login.username for login in dovecot.logins(since=mark)} <= {"alice", "bob"}


def test_pop3_nul_bytes_in_user_and_pass(proxies: Proxies, dovecot: Dovecot) -> None:
    mark = dovecot.log_position()

    def bad_user() -> None:
        with Raw(proxies.pop3.port) as raw:
            assert raw.pop(b"USER al\x00ice").startswith(b"-ERR ")
            pop3_login_works(raw)

    def bad_pass() -> None:
        with Raw(proxies.pop3.port) as raw:
            assert raw.pop(b"USER alice").startswith(b"+OK")
            assert raw.pop(b"PASS alice\x00-pw").startswith(b"-ERR ")
            pop3_login_works(raw)

    with healthy_pop3(proxies.pop3, dovecot):
        concurrently(bad_user, bad_pass)
    logins = dovecot.logins(since=mark)
    assert {login.username for login in logins} <= {"alice", "bob"}
    assert all(login.ok for login in logins)  # no "alice" with a password cut at the NUL


def test_imap_literal_announcing_four_gibibytes(proxies: Proxies, dovecot: Dovecot) -> None:
    def synchronising() -> None:
        with Raw(proxies.imap.port) as raw:
            raw.send(b"a LOGIN {%d}\r\n" % FOUR_GIB)
            # Refused at once: no "+ OK ready for additional input" invitation.
            assert raw.line().startswith(b"a BAD ")
            assert raw.imap(b"b", b"NOOP") == b"b OK NOOP\r\n"
            imap_login_works(raw)

    def non_synchronising() -> None:
        with Raw(proxies.imap.port) as raw:
            # The client is already sending the literal: the stream cannot be resynchronised.
            raw.send(b"a LOGIN {%d+}\r\n" % FOUR_GIB + b"y" * 65536)
            assert raw.line().startswith(b"a BAD ")
            assert raw.closed()

    with healthy_imap(proxies.imap, dovecot):
        concurrently(synchronising, non_synchronising)


@pytest.mark.parametrize("plus", [False, True], ids=["sync", "literal+"])
def test_imap_client_disconnects_mid_literal(
    proxies: Proxies, dovecot: Dovecot, plus: bool
) -> None:
    proxy = proxies.imap
    with healthy_imap(proxy, dovecot):
        with Raw(proxy.port) as raw:
            port = raw.local_port
            if plus:
                raw.send(b"a LOGIN {5+}\r\nalice {100+}\r\nalice")
            else:
                raw.send(b"a LOGIN {5}\r\n")
                assert raw.line() == b"+ OK ready for additional input\r\n"
                raw.send(b"ali")
        proxy.wait_for_log(
            rf"Fatal Error reading authentication information from client "
            rf"127\.0\.0\.1:{port}->127\.0\.0\.1:{proxy.port}: Exiting child"
        )


# --------------------------------------------------------------------------- broken back-ends


@pytest.mark.parametrize("protocol", ["IMAP4", "POP3"])
def test_backend_down(proxies: Proxies, dovecot: Dovecot, protocol: str) -> None:
    if protocol == "IMAP4":
        with healthy_imap(proxies.imap, dovecot), Raw(proxies.imap.port) as raw:
            reply = raw.imap(b"a", b"LOGIN down secret")
            assert reply == b"a NO failed: Could not connect to server\r\n"
            imap_login_works(raw)  # back in pre-auth
        proxy = proxies.imap
    else:
        with healthy_pop3(proxies.pop3, dovecot), Raw(proxies.pop3.port) as raw:
            assert raw.pop(b"USER down").startswith(b"+OK")
            assert raw.pop(b"PASS secret") == b"-ERR failed: Could not connect to server\r\n"
            pop3_login_works(raw)
        proxy = proxies.pop3
    proxy.wait_for_log(
        rf'authentication_id="down" server="127\.0\.0\.1:{proxies.down_port}" '
        rf'protocol={protocol} server-secure=plaintext status="failed: Could not connect to server"'
    )


@pytest.mark.parametrize("protocol", ["IMAP4", "POP3"])
def test_a_silent_backend_is_a_timed_out_login_not_a_failed_connect(
    proxies: Proxies, protocol: str
) -> None:
    """A back-end that accepts and never greets: the connect is made (the loop
    waits for the greeting instead of writability), and --authenticate_timeout
    ends the wait for the greeting as perdition's does: the client is closed
    and the log says why, with no "Could not connect to server" and no retry."""
    proxy = proxies.imap if protocol == "IMAP4" else proxies.pop3
    with Raw(proxy.port) as raw:
        if protocol == "IMAP4":
            assert raw.imap(b"a", b"LOGIN silent secret") == b""
        else:
            assert raw.pop(b"USER silent").startswith(b"+OK")
            assert raw.pop(b"PASS secret") == b""
        assert raw.closed()
    proxy.wait_for_log(r"Fatal error authenticating user \S+: timed out\. Exiting child\.")
    assert 'authentication_id="silent"' not in proxy.log_text()  # no Auth: line
    assert proxy.running()


@pytest.mark.parametrize("protocol", ["IMAP4", "POP3"])
def test_broken_backends_cost_one_connection_each(
    proxies: Proxies, dovecot: Dovecot, protocol: str
) -> None:
    """Dropped mid-login, silent, or garbage: that client gets a reply or a clean
    close (never a hang), and the password never reaches the broken server."""
    proxy = proxies.imap if protocol == "IMAP4" else proxies.pop3
    healthy = healthy_imap if protocol == "IMAP4" else healthy_pop3
    password = b"secret-pw"
    seen = {user: len(proxies.backends[f"{protocol}-{user}"].peers) for user in BROKEN_BACKENDS}

    def login_as(user: str) -> bytes:
        with Raw(proxy.port) as raw:
            if protocol == "IMAP4":
                reply = raw.imap(b"a", b"LOGIN " + user.encode() + b" " + password)
                assert reply == b"" or reply.startswith(b"a NO ")
                if reply:  # a protocol reply: back in pre-auth, so a goodbye works
                    assert raw.imap(b"b", b"LOGOUT") == b"b OK LOGOUT\r\n"
            else:
                raw.pop(b"USER " + user.encode())
                reply = raw.pop(b"PASS " + password)
                assert reply == b"" or reply.startswith(b"-ERR ")
                if reply:
                    assert raw.pop(b"QUIT").startswith(b"+OK")
            assert raw.closed()
            return reply

    with healthy(proxy, dovecot):
        concurrently(*(lambda u=u: login_as(u) for u in BROKEN_BACKENDS))
    for user in BROKEN_BACKENDS:
        server = proxies.backends[f"{protocol}-{user}"]
        peer = server.wait_finished(seen[user], timeout=DEADLINE)
        assert password not in peer.received, user
    assert proxy.running()


# --------------------------------------------------------------------------- load


def test_thirty_concurrent_logins_per_protocol(proxies: Proxies, dovecot: Dovecot) -> None:
    count = 30
    start = threading.Barrier(2 * count, timeout=DEADLINE)
    users = [dovecot.user(name) for name in ("alice", "bob", "carol@example.org")]

    def imap(index: int) -> bytes:
        user = users[index % len(users)]
        client = imaplib.IMAP4(LOOPBACK, proxies.imap.port, timeout=DEADLINE)
        start.wait()
        assert client.login(user.name, user.password_text)[0] == "OK"
        assert client.select("INBOX", readonly=True)[0] == "OK"
        body = imap_body(client, 1)
        client.logout()
        return body

    def pop3(index: int) -> bytes:
        user = users[index % len(users)]
        client = poplib.POP3(LOOPBACK, proxies.pop3.port, timeout=DEADLINE)
        start.wait()
        client.user(user.name)
        client.pass_(user.password_text)
        body = pop3_message(client, 1)
        client.quit()
        return body

    with healthy_imap(proxies.imap, dovecot), healthy_pop3(proxies.pop3, dovecot):
        bodies = concurrently(
            *(lambda i=i: imap(i) for i in range(count)),
            *(lambda i=i: pop3(i) for i in range(count)),
        )
    expected = [users[i % len(users)].messages[0] for i in range(count)]
    assert bodies == expected + expected
    assert proxies.imap.running() and proxies.pop3.running()
