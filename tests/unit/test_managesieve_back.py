"""Transcripts of the ManageSieve back-end login: what perdition 2.2 sends to
the real server, and how it judges each answer.

tests/corpus/managesieve/back/ holds what the binary sent to Dovecot through a
recording tap; the last tests log in to a real Dovecot.
"""

from __future__ import annotations

import ast
import base64
import socket
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perditionpy import limits
from perditionpy.protocol.base import (
    NEED_DATA,
    LoginResult,
    LoginStatus,
    StartTLS,
    ToBackend,
    decode_name,
)
from perditionpy.protocol.managesieve import ManageSieveBackendLogin
from tests.support.dovecot import Dovecot

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "managesieve" / "back"
OURS = b'OK "perdition ready on localhost 0002c010"'
GREETING = b'"IMPLEMENTATION" "X"\r\n"SASL" "PLAIN LOGIN"\r\n"VERSION" "1.0"\r\nOK "ready"\r\n'
AUTH_ALICE = ToBackend(b'AUTHENTICATE "PLAIN" "AGFsaWNlAHB3"\r\n')  # \0alice\0pw


def talk(login: ManageSieveBackendLogin, data: bytes) -> list[object]:
    login.receive_data(data)
    events: list[object] = []
    while (ev := login.next_event()) is not NEED_DATA:
        events.append(ev)
        if isinstance(ev, LoginResult):
            break
    return events


def login_for(**kw: Any) -> ManageSieveBackendLogin:
    return ManageSieveBackendLogin("alice", "pw", our_greeting=OURS, **kw)


# ------------------------------------------------------------------ the corpus


def _corpus_lines(path: Path) -> list[tuple[str, Any]]:
    return [(key, ast.literal_eval(value))
            for key, _, value in (raw.partition(": ") for raw in path.read_text().splitlines())
            if key.strip() and not key.startswith("#")]


def replay(path: Path) -> None:
    lines = _corpus_lines(path)
    settings = dict(lines)
    user, password, authzid = settings["login"]
    login = ManageSieveBackendLogin(
        decode_name(user), decode_name(password), our_greeting=settings["ours"],
        authzid=None if authzid is None else decode_name(authzid))
    pending: list[object] = []
    for key, value in lines:
        if key == "server":
            pending += talk(login, value)
        elif key == "sent":
            assert pending.pop(0) == ToBackend(value), path.name
        elif key == "result":
            status, line = value
            assert pending.pop(0) == LoginResult(LoginStatus[status], server_line=line), path.name
        elif key == "quit":
            assert login.quit_bytes() == value
    assert pending == [], path.name


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.txt")), ids=lambda p: p.stem)
def test_corpus_transcript(path: Path) -> None:
    replay(path)


def test_corpus_is_there() -> None:
    assert len(list(CORPUS.glob("*.txt"))) >= 4


# ------------------------------------------------------------------ greeting


def test_nothing_is_sent_before_the_greeting_ends() -> None:
    login = login_for()
    assert login.next_event() is NEED_DATA
    assert talk(login, GREETING[:30]) == []
    assert talk(login, GREETING[30:]) == [AUTH_ALICE]


def test_bytes_sent_with_the_greeting_are_not_the_answer() -> None:
    login = login_for()
    assert talk(login, GREETING + b'OK "not yet"\r\n') == [AUTH_ALICE]
    assert talk(login, b'NO "Authentication failed."\r\n') == [
        LoginResult(LoginStatus.REJECTED, server_line=b'NO "Authentication failed."')]


def test_ok_in_any_case_with_trailing_bytes_kept() -> None:
    login = login_for()
    talk(login, GREETING)
    assert talk(login, b'ok "Logged in."\r\nOK "Listscripts completed."\r\n') == [
        LoginResult(LoginStatus.OK, server_line=b'ok "Logged in."',
                    trailing=b'OK "Listscripts completed."\r\n')]


def test_our_own_greeting_is_a_loop() -> None:
    # perdition 2.2 has no loop check for ManageSieve: it authenticated to
    # itself over and over.  The other protocols compare greetings; so do we.
    login = login_for()
    (result,) = talk(login, b'"SASL" "PLAIN"\r\n' + OURS + b"\r\n")
    assert result == LoginResult(LoginStatus.LOOP, server_line=OURS)


def test_text_alone_is_accepted_as_ours() -> None:
    login = ManageSieveBackendLogin("a", "b", our_greeting=b"perdition ready on x 00000001")
    (result,) = talk(login, b'"SASL" "PLAIN"\r\nOK "perdition ready on x 00000001"\r\n')
    assert isinstance(result, LoginResult) and result.status is LoginStatus.LOOP


@pytest.mark.parametrize("final", [b'NO "busy"', b'BYE "bye"', b"Ok"])
def test_a_final_line_other_than_ok_is_negotiation_failure(final: bytes) -> None:
    (result,) = talk(login_for(), b'"SASL" "PLAIN"\r\n' + final + b"\r\n")
    assert result == LoginResult(LoginStatus.LOOP, server_line=final)


@pytest.mark.parametrize("sasl", [b'"SASL" "LOGIN"', b'"SASL" "PLAINX"', b'"SASL"', b'"X" "PLAIN"'])
def test_without_sasl_plain_the_mechanism_is_unavailable(sasl: bytes) -> None:
    (result,) = talk(login_for(), sasl + b'\r\nOK "hi"\r\n')
    assert result == LoginResult(LoginStatus.MECHANISM_UNAVAILABLE, server_line=b'OK "hi"')


def test_plain_is_found_in_any_case_among_mechanisms() -> None:
    assert talk(login_for(), b'"SASL" "scram-sha-1 plain"\r\nOK ""\r\n') == [AUTH_ALICE]


@pytest.mark.parametrize("line", [b"", b'"unterminated', b"{x}", b"\x01"])
def test_unreadable_greeting_is_a_protocol_error(line: bytes) -> None:
    (result,) = talk(login_for(), line + b"\r\n")
    assert isinstance(result, LoginResult) and result.status is LoginStatus.PROTOCOL_ERROR


def test_an_atom_after_a_capability_ends_the_greeting() -> None:
    (result,) = talk(login_for(), b'"SASL" PLAIN\r\n')
    assert isinstance(result, LoginResult) and result.status is LoginStatus.LOOP


def test_literal_in_a_capability_is_skipped() -> None:
    login = login_for()
    assert talk(login, b'"X" {5}\r\na\r\nbc\r\n"SASL" "PLAIN"\r\nOK "hi"\r\n') == [AUTH_ALICE]


def test_eof_and_endless_lines_are_protocol_errors() -> None:
    login = login_for()
    assert talk(login, b'"SASL" "PL') == []
    assert talk(login, b"") == [LoginResult(LoginStatus.PROTOCOL_ERROR, server_line=b'"SASL" "PL')]
    (result,) = talk(login_for(), b'"' + b"x" * limits.MAX_BACKEND_LINE)
    assert isinstance(result, LoginResult) and result.status is LoginStatus.PROTOCOL_ERROR


def test_authzid_and_any_bytes_travel_in_base64() -> None:
    login = ManageSieveBackendLogin("al ice", decode_name(b'p"w\r\n\xff'), authzid="bob",
                                    our_greeting=OURS)
    [sent] = talk(login, GREETING)
    assert isinstance(sent, ToBackend)
    token = sent.data.removeprefix(b'AUTHENTICATE "PLAIN" "').removesuffix(b'"\r\n')
    assert base64.b64decode(token) == b'bob\0al ice\0p"w\r\n\xff'


def test_quit_is_logout() -> None:
    assert login_for().quit_bytes() == b"LOGOUT\r\n"


# ------------------------------------------------------------------ STARTTLS to the back-end


def test_starttls_then_capability_again_then_authenticate() -> None:
    login = login_for(starttls=True)
    tls_greeting = b'"SASL" "PLAIN"\r\n"STARTTLS"\r\nOK "hi"\r\n'
    assert talk(login, tls_greeting) == [ToBackend(b"STARTTLS\r\n")]
    assert talk(login, b'OK "Begin TLS negotiation now."\r\n') == [StartTLS()]
    assert talk(login, b'"SASL" "PLAIN"\r\nOK "TLS done"\r\n') == [AUTH_ALICE]


def test_starttls_refused_is_negotiation_failure() -> None:
    login = login_for(starttls=True)
    talk(login, b'"SASL" "PLAIN"\r\n"STARTTLS"\r\nOK "hi"\r\n')
    (result,) = talk(login, b'NO "no"\r\n')
    assert result == LoginResult(LoginStatus.LOOP, server_line=b'NO "no"')


def test_without_starttls_on_offer() -> None:
    assert talk(login_for(starttls=True), GREETING) == [AUTH_ALICE]
    (result,) = talk(login_for(starttls=True, require_tls=True), GREETING)
    assert result == LoginResult(LoginStatus.TLS_NOT_PRESENT, server_line=b'OK "ready"')


# ------------------------------------------------------------------ robustness


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=40),
                          st.sampled_from([b'"SASL" "PLAIN"\r\n', b'OK "x"\r\n', b'NO "y"\r\n',
                                           b"{3}\r\n", OURS + b"\r\n", b'"STARTTLS"\r\n'])),
                max_size=12), st.booleans())
def test_arbitrary_server_bytes_give_only_login_events(chunks: list[bytes], tls: bool) -> None:
    login = login_for(starttls=tls)
    for chunk in [*chunks, b""]:
        for ev in talk(login, chunk):
            if isinstance(ev, LoginResult):
                assert ev.status in LoginStatus
                return
            assert isinstance(ev, ToBackend | StartTLS)
    pytest.fail("end of input gave no LoginResult")


# ------------------------------------------------------------------ a real server


def _login_over_socket(port: int, user: str, password: str,
                       authzid: str | None = None) -> LoginResult:
    login = ManageSieveBackendLogin(user, password, our_greeting=OURS, authzid=authzid)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        while True:
            ev = login.next_event()
            if ev is NEED_DATA:
                login.receive_data(sock.recv(4096))
            elif isinstance(ev, ToBackend):
                sock.sendall(ev.data)
            else:
                assert isinstance(ev, LoginResult)
                if ev.status is not LoginStatus.OK:
                    sock.sendall(login.quit_bytes())
                    assert sock.recv(4096).startswith(b"OK")
                return ev


@pytest.mark.parametrize(("user", "password"), [
    ("alice", b"alice-pw"),
    ("quirky", 'with space "dq" back\\slash caf\u00e9'.encode()),
    ("octet", b"\xe9t\xe9 \xff\x80"),
])
def test_logs_in_to_dovecot(dovecot: Dovecot, user: str, password: bytes) -> None:
    result = _login_over_socket(dovecot.sieve_port, user, decode_name(password))
    assert result.status is LoginStatus.OK
    assert result.server_line.startswith(b"OK")


@pytest.mark.parametrize(("user", "authzid"), [("alice", "bob"), ("alice", None)])
def test_dovecot_refuses(dovecot: Dovecot, user: str, authzid: str | None) -> None:
    password = "alice-pw" if authzid else "wrong"
    result = _login_over_socket(dovecot.sieve_port, user, password, authzid=authzid)
    assert result.status is LoginStatus.REJECTED
    assert result.server_line.startswith(b"NO")
