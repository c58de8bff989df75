"""perditionpy end to end, in front of the private Dovecot, with real clients.

What a user of the proxy must see: every message read through the proxy is
byte-identical to a direct read (IMAP ``FETCH BODY.PEEK[]`` and POP3 ``RETR``,
the 10 MiB message included); awkward passwords in every IMAP string form and
in POP3 ``PASS``; a refused login leaves the client in pre-auth for a retry;
``--ok_line``, ``-o``, the capability options, ``--login_disabled``; loop
detection; perdition's ``Connect:``/``Auth:``/``Closing session:`` log lines
with the relayed byte counts; both timeouts; a SIGHUP that swaps a GDBM popmap
under a held session; and inetd mode.

Every failure reply costs perdition's 3-second delay, so tests that need
several run their clients concurrently (``concurrently``).
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import poplib
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.support import badservers
from tests.support.dovecot import BIG_MESSAGE_SIZE, Dovecot, Login
from tests.support.ports import LOOPBACK, free_port, read_greeting
from tests.support.procs import REPO_ROOT, Proc, start_perditionpy
from tests.support.scenarios import PERDITION_GDBM_LIBRARY, build_popmap, readable_dir
from tests.support.tap import Tap

DEADLINE = 15.0
# A user whose password has spaces, double quotes, a backslash and UTF-8.
QUIRKY = "quirky"
# A user whose password is 8-bit but not UTF-8: only raw clients can send it.
OCTET = "octet"
IMAP_USERS = ("alice", "bob", "carol@example.org", "bigmail")


# --------------------------------------------------------------------------- helpers


def concurrently(*calls: Callable[[], Any]) -> list[Any]:
    """Run ``calls`` in parallel threads; return their results, re-raising any error."""
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(call) for call in calls]
        return [future.result(timeout=60) for future in futures]


class Raw:
    """A raw client socket: read lines, IMAP responses (literals included), or to EOF."""

    def __init__(self, port: int | None = None, *, sock: socket.socket | None = None) -> None:
        self.sock = sock or socket.create_connection((LOOPBACK, port or 0), timeout=DEADLINE)
        self.sock.settimeout(DEADLINE)
        self._buf = b""
        self.sent = 0  # bytes written since the last reset_counts()
        self.received = 0  # bytes read since the last reset_counts()

    @property
    def local_port(self) -> int:
        return int(self.sock.getsockname()[1])

    def reset_counts(self) -> None:
        self.sent = 0
        self.received = len(self._buf)  # already read from the wire, not yet consumed

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)
        self.sent += len(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.received += len(chunk)
        self._buf += chunk
        return bool(chunk)

    def line(self) -> bytes:
        while b"\n" not in self._buf:
            if not self._fill():
                raise ConnectionError(f"closed mid-line: {self._buf!r}")
        line, _, self._buf = self._buf.partition(b"\n")
        return line + b"\n"

    def exactly(self, size: int) -> bytes:
        while len(self._buf) < size:
            if not self._fill():
                raise ConnectionError("closed mid-literal")
        data, self._buf = self._buf[:size], self._buf[size:]
        return data

    def imap(self, tag: bytes) -> tuple[bytes, list[bytes]]:
        """Read to the tagged reply for ``tag``; return it and the literals on the way."""
        literals = []
        while True:
            line = self.line()
            literal = re.search(rb"\{(\d+)\}\r\n$", line)
            if literal:
                literals.append(self.exactly(int(literal.group(1))))
            elif line.startswith(tag + b" "):
                return line, literals

    def command(self, tag: bytes, text: bytes) -> tuple[bytes, list[bytes]]:
        self.send(tag + b" " + text + b"\r\n")
        return self.imap(tag)

    def pop_multiline(self) -> bytes:
        """A POP3 multi-line body after its +OK line, dot-unstuffed, CRLF kept."""
        lines = []
        while (line := self.line()) != b".\r\n":
            lines.append(line[1:] if line.startswith(b"..") else line)
        return b"".join(lines)

    def until_closed(self) -> bytes:
        """Everything until the peer closes (a reset counts as closed)."""
        data, self._buf = self._buf, b""
        with contextlib.suppress(ConnectionResetError):
            while self._fill():
                data += self._buf
                self._buf = b""
        return data

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def imap_literal_login(raw: Raw, tag: bytes, user: bytes, password: bytes, *, plus: bool) -> bytes:
    """``LOGIN {n}`` user ``{m}`` password, synchronising or LITERAL+; the tagged reply."""
    mark = b"+" if plus else b""
    raw.send(tag + b" LOGIN {%d%s}\r\n" % (len(user), mark))
    if not plus:
        assert raw.line().startswith(b"+ ")
    raw.send(user + b" {%d%s}\r\n" % (len(password), mark))
    if not plus:
        assert raw.line().startswith(b"+ ")
    raw.send(password + b"\r\n")
    return raw.imap(tag)[0]


def imap_quote(value: bytes) -> bytes:
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def imap_messages(client: imaplib.IMAP4) -> list[bytes]:
    typ, data = client.select("INBOX", readonly=True)
    assert typ == "OK" and data[0] is not None
    return [imap_body(client, n) for n in range(1, int(data[0]) + 1)]


def imap_body(client: imaplib.IMAP4, number: int) -> bytes:
    typ, data = client.fetch(str(number), "(BODY.PEEK[])")
    assert typ == "OK"
    part = data[0]
    assert isinstance(part, tuple)
    return part[1]


def imap_read_all(port: int, user: str, password: str) -> list[bytes]:
    client = imaplib.IMAP4(LOOPBACK, port, timeout=DEADLINE)
    try:
        client.login(user, password)
        return imap_messages(client)
    finally:
        client.logout()


def pop3_messages(client: poplib.POP3) -> list[bytes]:
    count, _ = client.stat()
    result = []
    for number in range(1, count + 1):
        _, lines, _ = client.retr(number)
        result.append(b"".join(line + b"\r\n" for line in lines))
    return result


def pop3_read_all(port: int, user: str, password: str) -> list[bytes]:
    client = poplib.POP3(LOOPBACK, port, timeout=DEADLINE)
    try:
        client.user(user)
        client.pass_(password)
        return pop3_messages(client)
    finally:
        client.quit()


def log_pattern(proxy: Proc, client_port: int, rest: str) -> str:
    """A regex for one whole log line of ``proxy`` about the client on ``client_port``."""
    from_to = rf"127\.0\.0\.1:{client_port}->127\.0\.0\.1:{proxy.port}"
    return rf"(?m)perdition\[{proxy.pid}\]: {rest.format(from_to=from_to)}$"


@contextlib.contextmanager
def started(args: list[str], log_dir: Path, **kwargs: Any) -> Iterator[Proc]:
    proxy = start_perditionpy(args, log_dir=log_dir, **kwargs)
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture(scope="module")
def imap_proxy(dovecot: Dovecot, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    args = ["-M", "", "-P", "IMAP4", "-s", f"{LOOPBACK}:{dovecot.imap_port}"]
    with started(args, tmp_path_factory.mktemp("imap-proxy")) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def pop3_proxy(dovecot: Dovecot, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    args = ["-M", "", "-P", "POP3", "-s", f"{LOOPBACK}:{dovecot.pop3_port}"]
    with started(args, tmp_path_factory.mktemp("pop3-proxy")) as proxy:
        yield proxy


# --------------------------------------------------------------------------- whole mailboxes


def test_imap_mailboxes_are_byte_identical_through_the_proxy(
    dovecot: Dovecot, imap_proxy: Proc
) -> None:
    for name in IMAP_USERS:
        user = dovecot.user(name)
        direct = imap_read_all(dovecot.imap_port, name, user.password_text)
        proxied = imap_read_all(imap_proxy.port, name, user.password_text)
        assert proxied == direct == list(user.messages), name
    assert len(dovecot.user("bigmail").messages[1]) == BIG_MESSAGE_SIZE
    assert imap_proxy.running()


def test_pop3_mailboxes_are_byte_identical_through_the_proxy(
    dovecot: Dovecot, pop3_proxy: Proc
) -> None:
    # quirky's password (spaces, quotes, backslash, UTF-8) goes through poplib's PASS.
    for name in (*IMAP_USERS, QUIRKY):
        user = dovecot.user(name)
        direct = pop3_read_all(dovecot.pop3_port, name, user.password_text)
        proxied = pop3_read_all(pop3_proxy.port, name, user.password_text)
        assert proxied == direct == list(user.messages), name
    assert pop3_proxy.running()


@pytest.mark.parametrize("form", ["quoted", "literal", "literal+"])
def test_imap_login_with_an_awkward_password(dovecot: Dovecot, imap_proxy: Proc, form: str) -> None:
    user = dovecot.user(QUIRKY)
    mark = dovecot.log_position()
    with Raw(imap_proxy.port) as raw:
        assert raw.line().startswith(b"* OK ")
        if form == "quoted":
            reply = raw.command(b"a", b"LOGIN quirky " + imap_quote(user.password))[0]
        else:
            reply = imap_literal_login(raw, b"a", b"quirky", user.password, plus=form == "literal+")
        assert reply.startswith(b"a OK ")
        assert raw.command(b"b", b"SELECT INBOX")[0].startswith(b"b OK ")
        reply, literals = raw.command(b"c", b"FETCH 1 BODY.PEEK[]")
        assert reply.startswith(b"c OK ") and literals == [user.messages[0]]
        raw.command(b"d", b"LOGOUT")
    assert dovecot.wait_for_login(QUIRKY, since=mark) == Login(QUIRKY, True)


def test_non_utf8_password_over_imap_literals_and_pop3_pass(
    dovecot: Dovecot, imap_proxy: Proc, pop3_proxy: Proc
) -> None:
    user = dovecot.user(OCTET)
    with Raw(imap_proxy.port) as raw:
        raw.line()
        assert imap_literal_login(raw, b"a", b"octet", user.password, plus=False).startswith(
            b"a OK"
        )
        raw.command(b"b", b"SELECT INBOX")
        assert raw.command(b"c", b"FETCH 1 BODY.PEEK[]")[1] == [user.messages[0]]
    with Raw(pop3_proxy.port) as raw:
        assert raw.line().startswith(b"+OK ")
        raw.send(b"USER octet\r\n")
        assert raw.line().startswith(b"+OK ")
        raw.send(b"PASS " + user.password + b"\r\n")
        assert raw.line().startswith(b"+OK ")
        raw.send(b"RETR 1\r\n")
        assert raw.line().startswith(b"+OK ")
        assert raw.pop_multiline() == user.messages[0]


# --------------------------------------------------------------------------- login replies


def test_failed_backend_login_returns_to_preauth_and_a_retry_succeeds(
    dovecot: Dovecot, imap_proxy: Proc, pop3_proxy: Proc
) -> None:
    alice = dovecot.user("alice")
    mark = dovecot.log_position()

    def imap() -> None:
        client = imaplib.IMAP4(LOOPBACK, imap_proxy.port, timeout=DEADLINE)
        with pytest.raises(imaplib.IMAP4.error, match="failed: Re-Authentication Failure"):
            client.login("alice", "wrong")
        assert client.state == "NONAUTH"
        assert client.login("alice", alice.password_text)[0] == "OK"
        assert imap_messages(client) == list(alice.messages)
        client.logout()

    def pop3() -> None:
        client = poplib.POP3(LOOPBACK, pop3_proxy.port, timeout=DEADLINE)
        client.user("bob")
        with pytest.raises(poplib.error_proto, match="failed: Re-Authentication Failure"):
            client.pass_("wrong")
        client.user("bob")
        assert client.pass_("bob-pw").startswith(b"+OK")
        assert pop3_messages(client) == list(dovecot.user("bob").messages)
        client.quit()

    concurrently(imap, pop3)
    logins = dovecot.logins(since=mark)
    assert [x for x in logins if x.username == "alice"] == [
        Login("alice", False),
        Login("alice", True),
    ]
    assert [x for x in logins if x.username == "bob"] == [Login("bob", False), Login("bob", True)]
    for proxy, user in ((imap_proxy, "alice"), (pop3_proxy, "bob")):
        proxy.wait_for_log(
            rf'Auth: \S+ .*authentication_id="{user}" .*'
            r'status="failed: Re-Authentication Failure"'
        )
    assert imap_proxy.running() and pop3_proxy.running()


def test_ok_line_and_server_resp_line(dovecot: Dovecot, tmp_path: Path) -> None:
    imap = ["-M", "", "-P", "IMAP4", "-s", f"{LOOPBACK}:{dovecot.imap_port}"]
    pop3 = ["-M", "", "-P", "POP3", "-s", f"{LOOPBACK}:{dovecot.pop3_port}"]
    with contextlib.ExitStack() as stack:
        ok_imap, ok_pop3, o_imap, o_pop3 = (
            stack.enter_context(started(args, tmp_path))
            for args in (
                [*imap, "--ok_line", "Custom"],
                [*pop3, "--ok_line", "Custom"],
                [*imap, "-o"],
                [*pop3, "--server_resp_line"],
            )
        )

        def imap_ok_line() -> None:
            client = imaplib.IMAP4(LOOPBACK, ok_imap.port, timeout=DEADLINE)
            assert client.login("alice", "alice-pw") == ("OK", [b"Custom"])
            client.logout()

        def pop3_ok_line() -> None:
            client = poplib.POP3(LOOPBACK, ok_pop3.port, timeout=DEADLINE)
            client.user("alice")
            assert client.pass_("alice-pw") == b"+OK Custom"
            client.quit()

        def imap_server_line() -> None:
            with Raw(o_imap.port) as raw:
                raw.line()
                # Dovecot's own replies under our tag, failure and success alike.
                no = raw.command(b"a", b"LOGIN alice wrong")[0]
                assert no == b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
                assert raw.command(b"b", b"LOGIN alice alice-pw")[0] == b"b OK Logged in\r\n"
                assert raw.command(b"c", b"LOGOUT")[0].startswith(b"c OK Logout completed")

        def pop3_server_line() -> None:
            client = poplib.POP3(LOOPBACK, o_pop3.port, timeout=DEADLINE)
            client.user("alice")
            with pytest.raises(
                poplib.error_proto, match=re.escape("-ERR [AUTH] Authentication failed.")
            ):
                client.pass_("wrong")
            client.user("alice")
            assert client.pass_("alice-pw") == b"+OK Logged in."
            client.quit()

        concurrently(imap_ok_line, pop3_ok_line, imap_server_line, pop3_server_line)
        assert all(p.running() for p in (ok_imap, ok_pop3, o_imap, o_pop3))


def test_capabilities_and_login_disabled(dovecot: Dovecot, tmp_path: Path) -> None:
    imap_args = [
        "-M",
        "",
        "-P",
        "IMAP4",
        "-s",
        f"{LOOPBACK}:{dovecot.imap_port}",
        "--imap_capability",
        "IMAP4REV1 FOO",
        "--login_disabled",
    ]
    pop3_args = [
        "-M",
        "",
        "-P",
        "POP3",
        "-s",
        f"{LOOPBACK}:{dovecot.pop3_port}",
        "--pop_capability",
        "USER  TOP",
        "--login_disabled",
    ]
    mark = dovecot.log_position()
    with started(imap_args, tmp_path) as imap_proxy, started(pop3_args, tmp_path) as pop3_proxy:

        def imap() -> None:
            client = imaplib.IMAP4(LOOPBACK, imap_proxy.port, timeout=DEADLINE)
            assert client.welcome.startswith(b"* OK [CAPABILITY IMAP4REV1 FOO LOGINDISABLED] ")
            assert client.capability() == ("OK", [b"IMAP4REV1 FOO LOGINDISABLED"])
            with pytest.raises(imaplib.IMAP4.error, match="failed: Login Disabled"):
                client.login("bob", "bob-pw")
            client.logout()

        def pop3() -> None:
            client = poplib.POP3(LOOPBACK, pop3_proxy.port, timeout=DEADLINE)
            assert client.capa() == {"USER": [], "TOP": []}
            assert client.user("bob") == b"+OK USER bob set, mate"
            with pytest.raises(poplib.error_proto, match="-ERR failed: Login Disabled"):
                client.pass_("bob-pw")
            client.quit()

        concurrently(imap, pop3)
        login_disabled = (
            r'Auth: \S+ .*authentication_id="bob" server="\(null\):\(null\)" '
            r'.*status="failed: Login Disabled"'
        )
        for proxy in (imap_proxy, pop3_proxy):
            proxy.wait_for_log(login_disabled)
            assert proxy.running()
    assert all(login.username != "bob" for login in dovecot.logins(since=mark))


def test_loop_detection(run_perditionpy: Callable[..., Proc]) -> None:
    imap_port, pop3_port = free_port(), free_port()
    # In front of itself: its back-end greets with its own greeting.
    imap_self = run_perditionpy(
        [
            "-M",
            "",
            "-P",
            "IMAP4",
            "-b",
            LOOPBACK,
            "-l",
            str(imap_port),
            "-s",
            f"{LOOPBACK}:{imap_port}",
        ],
        port=imap_port,
    )
    pop3_self = run_perditionpy(
        [
            "-M",
            "",
            "-P",
            "POP3",
            "-b",
            LOOPBACK,
            "-l",
            str(pop3_port),
            "-s",
            f"{LOOPBACK}:{pop3_port}",
        ],
        port=pop3_port,
    )
    # A back-end that echoes the greeting of the proxy in front of it.
    learned: list[bytes] = []
    mirror = badservers.greets_with(lambda: learned[0])
    try:
        mirrored = run_perditionpy(["-M", "", "-P", "IMAP4", "-s", f"{LOOPBACK}:{mirror.port}"])

        def imap(proxy: Proc) -> None:
            client = imaplib.IMAP4(LOOPBACK, proxy.port, timeout=DEADLINE)
            if proxy is mirrored:
                learned.append(client.welcome)
            with pytest.raises(imaplib.IMAP4.error, match="failed: Connection Negotiation Failure"):
                client.login("alice", "alice-pw")
            client.logout()

        def pop3() -> None:
            client = poplib.POP3(LOOPBACK, pop3_self.port, timeout=DEADLINE)
            client.user("alice")
            with pytest.raises(
                poplib.error_proto, match=r"^b'-ERR failed: Connection Negotiation Failure'$"
            ):
                client.pass_("alice-pw")
            client.quit()

        concurrently(lambda: imap(imap_self), pop3, lambda: imap(mirrored))
        # The credentials never reach the looping back-end: only a goodbye.
        assert re.fullmatch(rb"\S+ LOGOUT\r\n", mirror.wait_finished(0).received)
    finally:
        mirror.close()
    for proxy in (imap_self, pop3_self, mirrored):
        proxy.wait_for_log(r'status="failed: Connection Negotiation Failure"')
        assert proxy.running()


# --------------------------------------------------------------------------- log lines


@pytest.mark.parametrize("protocol", ["IMAP4", "POP3"])
def test_connect_auth_and_closing_session_lines(
    dovecot: Dovecot, imap_proxy: Proc, pop3_proxy: Proc, protocol: str
) -> None:
    proxy, backend = (
        (imap_proxy, dovecot.imap_port) if protocol == "IMAP4" else (pop3_proxy, dovecot.pop3_port)
    )
    with Raw(proxy.port) as raw:
        raw.line()
        if protocol == "IMAP4":
            assert raw.command(b"a", b"LOGIN alice alice-pw")[0].startswith(b"a OK")
            raw.reset_counts()
            raw.command(b"b", b"SELECT INBOX")
            assert raw.command(b"c", b"FETCH 1:* BODY.PEEK[]")[1] == list(
                dovecot.user("alice").messages
            )
            raw.send(b"d LOGOUT\r\n")
        else:
            raw.send(b"USER alice\r\n")
            raw.line()
            raw.send(b"PASS alice-pw\r\n")
            assert raw.line().startswith(b"+OK")
            raw.reset_counts()
            raw.send(b"RETR 2\r\n")
            raw.line()
            assert raw.pop_multiline() == dovecot.user("alice").messages[1]
            raw.send(b"QUIT\r\n")
        raw.until_closed()
        port, sent, received = raw.local_port, raw.sent, raw.received
    assert sent > 10 and received > 100
    proxy.wait_for_log(log_pattern(proxy, port, "Connect:  {from_to}"))
    proxy.wait_for_log(
        log_pattern(
            proxy,
            port,
            'Auth: {from_to} client-secure=plaintext authorisation_id=NONE authentication_id="alice" '
            f'server="127\\.0\\.0\\.1:{backend}" protocol={protocol} server-secure=plaintext status="ok"',
        )
    )
    # received: bytes from the client, sent: bytes to it, both after the login reply.
    proxy.wait_for_log(
        log_pattern(
            proxy,
            port,
            'Closing session: {from_to} authorisation_id=NONE authentication_id="alice" '
            f"received={sent} sent={received}",
        )
    )


# --------------------------------------------------------------------------- timeouts


def test_idle_and_authenticate_timeouts(
    dovecot: Dovecot, run_perditionpy: Callable[..., Proc]
) -> None:
    proxy = run_perditionpy(
        [
            "-M",
            "",
            "-P",
            "IMAP4",
            "-s",
            f"{LOOPBACK}:{dovecot.imap_port}",
            "-t",
            "1",
            "--authenticate_timeout",
            "1",
        ]
    )

    def idle_relayed() -> tuple[int, float]:
        with Raw(proxy.port) as raw:
            raw.line()
            assert raw.command(b"a", b"LOGIN alice alice-pw")[0].startswith(b"a OK")
            assert raw.command(b"b", b"NOOP")[0].startswith(b"b OK")
            start = time.monotonic()
            assert raw.until_closed() == b""  # closed without a BYE, as perdition does
            return raw.local_port, time.monotonic() - start

    def silent_preauth() -> tuple[int, float]:
        with Raw(proxy.port) as raw:
            start = time.monotonic()
            assert raw.line().startswith(b"* OK")
            assert raw.until_closed() == b""
            return raw.local_port, time.monotonic() - start

    (relayed, relayed_idle), (silent, silent_idle) = concurrently(idle_relayed, silent_preauth)
    assert 0.5 < relayed_idle < 10 and 0.5 < silent_idle < 10
    proxy.wait_for_log(
        log_pattern(proxy, relayed, r'Closing session: {from_to} .*authentication_id="alice" .*')
    )
    proxy.wait_for_log(
        log_pattern(
            proxy,
            silent,
            "Fatal Error: Timeout reading authentication information from client {from_to}: "
            "Exiting child",
        )
    )
    assert proxy.running()


# --------------------------------------------------------------------------- SIGHUP


def test_sighup_reloads_the_gdbm_popmap_and_held_sessions_survive(
    dovecot: Dovecot, run_perditionpy: Callable[..., Proc], make_tap: Callable[[int], Tap]
) -> None:
    alice = dovecot.user("alice")
    tap = make_tap(dovecot.imap_port)  # the same Dovecot behind another port
    with readable_dir() as directory:
        popmap = directory / "popmap.db"
        build_popmap(popmap, [f"alice:{LOOPBACK}:{dovecot.imap_port}"])
        proxy = run_perditionpy(["-M", PERDITION_GDBM_LIBRARY, "-m", str(popmap), "-P", "IMAP4"])
        held = imaplib.IMAP4(LOOPBACK, proxy.port, timeout=DEADLINE)
        held.login("alice", alice.password_text)
        assert imap_messages(held) == list(alice.messages)
        assert tap.connections == []

        build_popmap(popmap, [f"alice:{LOOPBACK}:{tap.port}"])
        os.kill(proxy.pid, signal.SIGHUP)
        proxy.wait_for_log(r'Reloading map library ".*libperditiondb_gdbm\.so\.0"')
        deadline = time.monotonic() + DEADLINE
        while not tap.connections:  # readiness: the reload is done when a login takes the new route
            assert time.monotonic() < deadline, "the new popmap was never used"
            assert imap_read_all(proxy.port, "alice", alice.password_text) == list(alice.messages)
        assert b"alice" in tap.connections[0].wait_closed().to_server
        # The session relayed before the HUP still works on its old back-end.
        assert held.noop()[0] == "OK"
        assert imap_body(held, 3) == alice.messages[2]
        held.logout()
    assert proxy.running()


# --------------------------------------------------------------------------- inetd mode


class _SocketIMAP4(imaplib.IMAP4):
    """imaplib over an already connected socket."""

    def __init__(self, sock: socket.socket) -> None:
        self._given = sock
        super().__init__()

    def _create_socket(self, timeout: float | None) -> socket.socket:
        return self._given


def test_inetd_mode(dovecot: Dovecot, tmp_path: Path) -> None:
    alice = dovecot.user("alice")
    log_path = tmp_path / "inetd.log"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    with socket.create_server((LOOPBACK, 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=DEADLINE)
        conn, _ = listener.accept()
    from_to = f"{LOOPBACK}:{client.getsockname()[1]}->{LOOPBACK}:{conn.getsockname()[1]}"
    with conn, log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "perditionpy",
                "-i",
                "-f",
                "",
                "--pid_file",
                "",
                "-F",
                "+",
                "-M",
                "",
                "-P",
                "IMAP4",
                "-s",
                f"{LOOPBACK}:{dovecot.imap_port}",
            ],
            stdin=conn.fileno(),
            stdout=conn.fileno(),
            stderr=log,
            env=env,
            cwd=REPO_ROOT,
        )
    try:
        imap = _SocketIMAP4(client)
        assert imap.welcome.startswith(b"* OK [CAPABILITY IMAP4 IMAP4REV1] perdition ready on ")
        imap.login("alice", alice.password_text)
        assert imap.select("INBOX", readonly=True)[0] == "OK"
        assert imap_body(imap, 2) == alice.messages[1]
        imap.logout()
        assert proc.wait(DEADLINE) == 0  # one connection, then the process is done
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        client.close()
    text = log_path.read_text()
    assert re.search(rf"Connect:  {re.escape(from_to)} inetd_pid=\d+$", text, re.M), text
    assert re.search(
        rf"Closing session: {re.escape(from_to)} authorisation_id=NONE "
        rf'authentication_id="alice" received=\d+ sent=\d+$',
        text,
        re.M,
    ), text


# --------------------------------------------------------------------------- -L and SIGTERM


def test_connection_limit_counts_sessions_logging_in_and_logged_in(
    dovecot: Dovecot, run_perditionpy: Callable[..., Proc]
) -> None:
    """-L 2 in the event loop: one session still at the greeting and one relayed
    fill the two slots; a third connection waits in the backlog, unanswered,
    until one of them ends; the daemon then serves it."""
    proxy = run_perditionpy(["-M", "", "-P", "IMAP4", "-L", "2",
                             "-s", f"{LOOPBACK}:{dovecot.imap_port}"])
    waiting = socket.create_connection((LOOPBACK, proxy.port), timeout=DEADLINE)
    assert waiting.recv(4096).startswith(b"* OK")
    relayed = imaplib.IMAP4(LOOPBACK, proxy.port, timeout=DEADLINE)
    relayed.login("alice", "alice-pw")
    third = socket.create_connection((LOOPBACK, proxy.port), timeout=DEADLINE)
    proxy.wait_for_log(r"Connection limit of 2 reached")
    third.settimeout(0.5)
    with pytest.raises(TimeoutError):
        third.recv(100)  # bounded check that nothing is sent while at the limit
    waiting.close()
    assert read_greeting(third, time.monotonic() + DEADLINE).startswith(b"* OK")
    assert relayed.noop()[0] == "OK"  # the relayed session carried on throughout
    relayed.logout()
    third.close()
    assert proxy.running()


def test_sigterm_lets_a_login_in_progress_finish(
    dovecot: Dovecot, run_perditionpy: Callable[..., Proc]
) -> None:
    """A session in the middle of logging in when SIGTERM comes finishes its login
    and relays; the listener is closed at once; the daemon exits once it ends."""
    proxy = run_perditionpy(["-M", "", "-P", "IMAP4", "-s", f"{LOOPBACK}:{dovecot.imap_port}"])
    client = imaplib.IMAP4(LOOPBACK, proxy.port, timeout=DEADLINE)  # greeted, not logged in
    os.kill(proxy.pid, signal.SIGTERM)
    proxy.wait_for_log(r"Waiting up to \S+ seconds for 1 connection")
    with pytest.raises(OSError):
        socket.create_connection((LOOPBACK, proxy.port), timeout=DEADLINE).close()
    client.login("alice", "alice-pw")
    assert client.select("INBOX")[0] == "OK"
    client.logout()
    assert proxy.wait(DEADLINE) == 0
    assert re.search(r'Closing session: .* authentication_id="alice"', proxy.log_text())
