"""The test infrastructure itself, against real servers: the private Dovecot, the tap,
the hostile back-ends, and the first differential baseline through perdition 2.2.

The baseline logs in with the standard library's imaplib and poplib through the real
perdition (``-M "" -s <dovecot>``) and checks the bytes of a message, what the
back-end received (through a tap) and perdition's Auth log line. The same test runs
against perditionpy as soon as its option loader exists.
"""

from __future__ import annotations

import base64
import imaplib
import poplib
import re
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import badservers
from tests.support.dovecot import BIG_MESSAGE_SIZE, Dovecot, Login, TlsFiles
from tests.support.ports import LOOPBACK, read_greeting
from tests.support.procs import Proc, ProcError, start_perdition
from tests.support.tap import Tap

# --------------------------------------------------------------------------- helpers


def imap_fetch_all(port: int, user: str, password: str) -> list[bytes]:
    client = imaplib.IMAP4(LOOPBACK, port)
    try:
        client.login(user, password)
        typ, data = client.select("INBOX", readonly=True)
        assert typ == "OK" and data[0] is not None
        count = int(data[0])
        return [_imap_body(client, n) for n in range(1, count + 1)]
    finally:
        client.logout()


def _imap_body(client: imaplib.IMAP4, number: int) -> bytes:
    typ, data = client.fetch(str(number), "(BODY.PEEK[])")
    assert typ == "OK"
    part = data[0]
    assert isinstance(part, tuple)
    return part[1]


def pop3_retr(port: int, user: str, password: str, number: int) -> bytes:
    client = poplib.POP3(LOOPBACK, port)
    try:
        client.user(user)
        client.pass_(password)
        _, lines, _ = client.retr(number)
        return b"".join(line + b"\r\n" for line in lines)
    finally:
        client.quit()


def raw_imap_login(port: int, user: bytes, password: bytes) -> bytes:
    """LOGIN with both arguments as synchronising literals; return the tagged reply."""
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        read_greeting(sock, time.monotonic() + 10)
        sock.sendall(b"a LOGIN {%d}\r\n" % len(user))
        assert read_greeting(sock, time.monotonic() + 10).startswith(b"+")
        sock.sendall(user + b" {%d}\r\n" % len(password))
        assert read_greeting(sock, time.monotonic() + 10).startswith(b"+")
        sock.sendall(password + b"\r\n")
        return read_greeting(sock, time.monotonic() + 10, until=b"a ")


# --------------------------------------------------------------------------- Dovecot


def test_imap_login_and_every_message_byte_for_byte(dovecot: Dovecot) -> None:
    alice = dovecot.user("alice")
    assert imap_fetch_all(dovecot.imap_port, "alice", alice.password_text) == list(alice.messages)


def test_pop3_retr_undoes_dot_stuffing_exactly(dovecot: Dovecot) -> None:
    alice = dovecot.user("alice")
    assert pop3_retr(dovecot.pop3_port, "alice", alice.password_text, 3) == alice.messages[2]


def test_ten_mebibyte_message_over_imap_and_pop3(dovecot: Dovecot) -> None:
    big = dovecot.user("bigmail")
    assert len(big.messages[1]) == BIG_MESSAGE_SIZE
    assert imap_fetch_all(dovecot.imap_port, "bigmail", "bigmail-pw")[1] == big.messages[1]
    assert pop3_retr(dovecot.pop3_port, "bigmail", "bigmail-pw", 2) == big.messages[1]


def test_quirky_password_with_imaplib_poplib_and_literals(dovecot: Dovecot) -> None:
    quirky = dovecot.user("quirky")
    assert b" " in quirky.password and b'"' in quirky.password and b"\\" in quirky.password
    assert any(byte >= 0x80 for byte in quirky.password)
    assert pop3_retr(dovecot.pop3_port, "quirky", quirky.password_text, 1) == quirky.messages[0]
    reply = raw_imap_login(dovecot.imap_port, b"quirky", quirky.password)
    assert reply.startswith(b"a OK")


def test_non_utf8_password_over_imap_literal(dovecot: Dovecot) -> None:
    octet = dovecot.user("octet")
    assert raw_imap_login(dovecot.imap_port, b"octet", octet.password).startswith(b"a OK")
    assert raw_imap_login(dovecot.imap_port, b"octet", b"\xe9t\xe9").startswith(b"a NO")


def test_user_name_with_domain(dovecot: Dovecot) -> None:
    carol = dovecot.user("carol@example.org")
    got = imap_fetch_all(dovecot.imap_port, "carol@example.org", carol.password_text)
    assert got == list(carol.messages)


def test_logins_report_user_and_outcome_in_order(dovecot: Dovecot) -> None:
    mark = dovecot.log_position()
    with pytest.raises(imaplib.IMAP4.error):
        imap_fetch_all(dovecot.imap_port, "bob", "wrong")
    with pytest.raises(poplib.error_proto):
        pop3_retr(dovecot.pop3_port, "nosuchuser", "x", 1)
    pop3_retr(dovecot.pop3_port, "bob", "bob-pw", 1)
    dovecot.wait_for_login("bob", ok=True, since=mark)
    assert dovecot.logins(since=mark) == [
        Login("bob", False),
        Login("nosuchuser", False),
        Login("bob", True),
    ]


def test_failed_logins_are_not_slowed_down_by_penalties(dovecot: Dovecot) -> None:
    started = time.monotonic()
    for _ in range(4):
        reply = raw_imap_login(dovecot.imap_port, b"bob", b"wrong")
        assert b"AUTHENTICATIONFAILED" in reply
    # Dovecot's default penalty would make the 4th attempt alone take 8 s or more.
    assert time.monotonic() - started < 6
    assert raw_imap_login(dovecot.imap_port, b"bob", b"bob-pw").startswith(b"a OK")


def test_many_sessions_of_one_user_from_one_address(dovecot: Dovecot) -> None:
    # Dovecot's default allows 10 per user and IP; concurrency tests need far more.
    clients = []
    try:
        for _ in range(40):
            client = imaplib.IMAP4(LOOPBACK, dovecot.imap_port)
            clients.append(client)
            client.login("alice", "alice-pw")
            assert client.select("INBOX", readonly=True)[0] == "OK"
    finally:
        for client in clients:
            client.logout()
    assert len(clients) == 40


def test_managesieve_authenticate_plain(dovecot: Dovecot) -> None:
    with socket.create_connection((LOOPBACK, dovecot.sieve_port), timeout=10) as sock:
        greeting = read_greeting(sock, time.monotonic() + 10, until=b"OK")
        assert b'"SASL" "PLAIN' in greeting
        token = base64.b64encode(b"\0alice\0alice-pw")
        sock.sendall(b'AUTHENTICATE "PLAIN" "' + token + b'"\r\n')
        assert read_greeting(sock, time.monotonic() + 10).startswith(b"OK")


def test_fresh_dovecot_is_separate_and_stops_cleanly(
    dovecot: Dovecot, fresh_dovecot: Dovecot
) -> None:
    assert fresh_dovecot.imap_port != dovecot.imap_port
    client = poplib.POP3(LOOPBACK, fresh_dovecot.pop3_port)
    client.user("bob")
    client.pass_("bob-pw")
    client.dele(1)
    client.quit()
    assert imap_fetch_all(fresh_dovecot.imap_port, "bob", "bob-pw") == []
    assert len(imap_fetch_all(dovecot.imap_port, "bob", "bob-pw")) == 1
    assert fresh_dovecot.errors() == []
    port = fresh_dovecot.imap_port
    fresh_dovecot.stop()
    assert not fresh_dovecot.running()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((LOOPBACK, port), timeout=5).close()


def test_tls_listeners_when_given_a_certificate(
    make_dovecot: Callable[..., Dovecot], openssl: str, tmp_path: Path
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
        + ["-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    server = make_dovecot(tls=TlsFiles(cert, key))
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    imaps = imaplib.IMAP4_SSL(LOOPBACK, server.imaps_port, ssl_context=context)
    assert imaps.login("alice", "alice-pw")[0] == "OK"
    imaps.logout()
    pop3s = poplib.POP3_SSL(LOOPBACK, server.pop3s_port, context=context)
    pop3s.user("bob")
    assert pop3s.pass_("bob-pw").startswith(b"+OK")
    pop3s.quit()


# --------------------------------------------------------------------------- tap


def test_tap_records_both_directions_and_sees_the_close(
    dovecot: Dovecot, make_tap: Callable[[int], Tap]
) -> None:
    tap = make_tap(dovecot.pop3_port)
    assert pop3_retr(tap.port, "bob", "bob-pw", 1) == dovecot.user("bob").messages[0]
    tap.wait_for_connections(1)
    conn = tap.connections[0].wait_closed()
    assert conn.to_server == b"USER bob\r\nPASS bob-pw\r\nRETR 1\r\nQUIT\r\n"
    assert conn.to_client.startswith(b"+OK Dovecot ready.\r\n")
    assert conn.to_client.endswith(b"+OK Logging out.\r\n")
    assert conn.chunks[0] == ("s>c", b"+OK Dovecot ready.\r\n")


# --------------------------------------------------------------------------- hostile back-ends


def test_closes_at_once_gives_eof_before_greeting() -> None:
    with badservers.closes_at_once() as server:
        with socket.create_connection((LOOPBACK, server.port), timeout=5) as sock:
            assert sock.recv(100) == b""
        assert server.wait_finished(0).received == b""


def test_greets_then_drops_after_one_line() -> None:
    with badservers.greets_then_drops(badservers.POP3_GREETING) as server:
        with socket.create_connection((LOOPBACK, server.port), timeout=5) as sock:
            assert read_greeting(sock, time.monotonic() + 5) == badservers.POP3_GREETING
            sock.sendall(b"USER alice\r\n")
            assert sock.recv(100) == b""
        assert server.wait_finished(0).received == b"USER alice\r\n"


def test_never_answers_stays_silent_until_we_hang_up() -> None:
    with badservers.never_answers() as server:
        with socket.create_connection((LOOPBACK, server.port), timeout=5) as sock:
            sock.sendall(b"hello\r\n")
            sock.settimeout(0.3)
            with pytest.raises(TimeoutError):
                sock.recv(100)
        peer = server.wait_finished(0)
        assert peer.received == b"hello\r\n" and peer.closed_by_proxy


def test_sends_garbage_then_closes() -> None:
    with badservers.sends_garbage() as server:
        with socket.create_connection((LOOPBACK, server.port), timeout=5) as sock:
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        assert data == badservers.GARBAGE


# --------------------------------------------------------------------------- perdition 2.2


@pytest.fixture(params=["perdition", "perditionpy"])
def run_proxy(
    request: pytest.FixtureRequest,
    run_perdition: Callable[..., Proc],
) -> Callable[..., Proc]:
    """Start the reference perdition 2.2, or perditionpy, with the same arguments."""
    if request.param == "perditionpy":
        run: Callable[..., Proc] = request.getfixturevalue("run_perditionpy")
        return run
    return run_perdition


AUTH_OK = (
    r"Auth: 127\.0\.0\.1:\d+->127\.0\.0\.1:{port} client-secure=plaintext "
    r'authorisation_id=NONE authentication_id="{user}" server="127\.0\.0\.1:{backend}" '
    r'protocol={protocol} server-secure=plaintext status="ok"'
)


@pytest.mark.parametrize(
    ("protocol", "greeting"),
    [
        ("IMAP4", rb"\* OK \[CAPABILITY IMAP4 IMAP4REV1\] perdition ready on \S+ [0-9a-f]{8}\r\n"),
        ("POP3", rb"\+OK POP3 perditon ready on \S+ [0-9a-f]{8}\r\n"),
    ],
)
def test_baseline_greeting(run_proxy: Callable[..., Proc], protocol: str, greeting: bytes) -> None:
    proxy = run_proxy(["-M", "", "-P", protocol, "-s", f"{LOOPBACK}:1"])
    with socket.create_connection((LOOPBACK, proxy.port), timeout=10) as sock:
        assert re.fullmatch(greeting, read_greeting(sock, time.monotonic() + 10))


def test_baseline_imap_through_the_proxy(
    dovecot: Dovecot, run_proxy: Callable[..., Proc], make_tap: Callable[[int], Tap]
) -> None:
    tap = make_tap(dovecot.imap_port)
    proxy = run_proxy(["-M", "", "-P", "IMAP4", "-s", f"{LOOPBACK}:{tap.port}"])
    mark = dovecot.log_position()
    alice = dovecot.user("alice")
    assert imap_fetch_all(proxy.port, "alice", alice.password_text) == list(alice.messages)
    tap.wait_for_connections(1)
    sent = tap.connections[0].wait_closed().to_server
    assert re.match(rb"(\S+) CAPABILITY\r\n(\S+) LOGIN \{5\}\r\nalice \{8\}\r\nalice-pw\r\n", sent)
    assert dovecot.wait_for_login("alice", since=mark) == Login("alice", True)
    pattern = AUTH_OK.format(port=proxy.port, user="alice", backend=tap.port, protocol="IMAP4")
    proxy.wait_for_log(pattern)
    proxy.wait_for_log(r'Closing session: .* authentication_id="alice" received=\d+ sent=\d+')


def test_baseline_pop3_through_the_proxy(
    dovecot: Dovecot, run_proxy: Callable[..., Proc], make_tap: Callable[[int], Tap]
) -> None:
    tap = make_tap(dovecot.pop3_port)
    proxy = run_proxy(["-M", "", "-P", "POP3", "-s", f"{LOOPBACK}:{tap.port}"])
    quirky = dovecot.user("quirky")
    assert pop3_retr(proxy.port, "quirky", quirky.password_text, 1) == quirky.messages[0]
    tap.wait_for_connections(1)
    sent = tap.connections[0].wait_closed().to_server
    assert sent.startswith(b"USER quirky\r\nPASS " + quirky.password + b"\r\n")
    pattern = AUTH_OK.format(port=proxy.port, user="quirky", backend=tap.port, protocol="POP3")
    proxy.wait_for_log(pattern)


def test_baseline_big_message_through_the_proxy(
    dovecot: Dovecot, run_proxy: Callable[..., Proc]
) -> None:
    proxy = run_proxy(["-M", "", "-P", "IMAP4", "-s", f"{LOOPBACK}:{dovecot.imap_port}"])
    got = imap_fetch_all(proxy.port, "bigmail", "bigmail-pw")
    assert got[1] == dovecot.user("bigmail").messages[1]


def test_perdition_detects_a_loop_with_a_back_end_that_echoes_its_greeting(
    run_perdition: Callable[..., Proc],
) -> None:
    # The greeting's checksum covers the options (-s included), so learn it from the
    # very proxy under test before it first contacts the back-end.
    learned: list[bytes] = []
    with badservers.greets_with(lambda: learned[0]) as mirror:
        proxy = run_perdition(["-M", "", "-P", "IMAP4", "-s", f"{LOOPBACK}:{mirror.port}"])
        client = imaplib.IMAP4(LOOPBACK, proxy.port)
        learned.append(client.welcome)
        with pytest.raises(imaplib.IMAP4.error, match="Connection Negotiation Failure"):
            client.login("alice", "alice-pw")
        # perdition says goodbye to "itself" and never sends the credentials.
        assert re.fullmatch(rb"\S+ LOGOUT\r\n", mirror.wait_finished(0).received)


def test_start_perdition_reports_the_log_when_it_cannot_start(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind((LOOPBACK, 0))  # bound, not listening: perdition's bind must fail
        started = time.monotonic()
        with pytest.raises(ProcError, match="perdition not ready") as failure:
            start_perdition(
                ["-M", "", "-P", "POP3"], port=busy.getsockname()[1], log_dir=tmp_path, timeout=20
            )
    assert time.monotonic() - started < 10
    assert "Fatal error listening for connections" in str(failure.value)
