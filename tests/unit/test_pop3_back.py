"""Transcripts of the POP3 back-end login: what perdition 2.2 sends to the
real server, and how it judges each answer.

tests/corpus/pop3/back/ holds what the binary sent to a scripted back-end and
what its client was told; the last tests log in to a real Dovecot.
"""

from __future__ import annotations

import ast
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
    ToBackend,
    decode_name,
)
from perditionpy.protocol.pop3 import Pop3BackendLogin
from tests.support.dovecot import Dovecot

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "pop3" / "back"
OURS = b"POP3 perditon ready on localhost 0002bb7c"


def talk(login: Pop3BackendLogin, data: bytes) -> list[object]:
    login.receive_data(data)
    events: list[object] = []
    while (ev := login.next_event()) is not NEED_DATA:
        events.append(ev)
        if isinstance(ev, LoginResult):
            break
    return events


def at_password(user: str = "bob", password: str = "pw") -> Pop3BackendLogin:
    login = Pop3BackendLogin(user, password, our_greeting=OURS)
    assert talk(login, b"+OK Dovecot ready.\r\n") == [ToBackend(b"USER bob\r\n")]
    assert talk(login, b"+OK\r\n") == [ToBackend(b"PASS " + password.encode() + b"\r\n")]
    return login


# ------------------------------------------------------------------ the corpus


def _corpus_lines(path: Path) -> list[tuple[str, Any]]:
    return [(key, ast.literal_eval(value))
            for key, _, value in (raw.partition(": ") for raw in path.read_text().splitlines())
            if key.strip() and not key.startswith("#")]


def replay(path: Path) -> None:
    lines = _corpus_lines(path)
    settings = dict(lines)
    user, password = settings["login"]
    login = Pop3BackendLogin(decode_name(user), decode_name(password),
                             our_greeting=settings["ours"])
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
    assert len(list(CORPUS.glob("*.txt"))) >= 15


# ------------------------------------------------------------------ transcripts


def test_nothing_is_sent_before_the_greeting() -> None:
    login = Pop3BackendLogin("bob", "pw", our_greeting=OURS)
    assert login.next_event() is NEED_DATA
    assert talk(login, b"+OK Dovecot") == []
    assert talk(login, b" ready.\r\n") == [ToBackend(b"USER bob\r\n")]


def test_whole_greeting_line_is_accepted_as_ours() -> None:
    login = Pop3BackendLogin("bob", "pw", our_greeting=b"+OK " + OURS + b"\r\n")
    (result,) = talk(login, b"+OK " + OURS + b"\r\n")
    assert result == LoginResult(LoginStatus.LOOP, server_line=b"+OK " + OURS)


def test_bytes_after_the_final_ok_are_kept_for_the_relay() -> None:
    login = at_password()
    (result,) = talk(login, b"+OK Logged in.\r\n+OK 2 messages\r\n")
    assert result == LoginResult(LoginStatus.OK, server_line=b"+OK Logged in.",
                                 trailing=b"+OK 2 messages\r\n")
    assert login.next_event() is NEED_DATA


def test_eof_while_waiting_is_a_protocol_error() -> None:
    login = Pop3BackendLogin("bob", "pw", our_greeting=OURS)
    talk(login, b"+OK hi\r\n")
    assert talk(login, b"+OK par") == []
    assert talk(login, b"") == [LoginResult(LoginStatus.PROTOCOL_ERROR, server_line=b"+OK par")]


def test_a_line_without_end_is_a_protocol_error() -> None:
    login = Pop3BackendLogin("bob", "pw", our_greeting=OURS)
    (result,) = talk(login, b"+OK " + b"x" * limits.MAX_BACKEND_LINE)
    assert isinstance(result, LoginResult) and result.status is LoginStatus.PROTOCOL_ERROR


def test_eight_bit_names_round_trip() -> None:
    login = Pop3BackendLogin(decode_name(b"\xe9t\xe9"), decode_name(b"\xff\x80 x"),
                             our_greeting=OURS)
    assert talk(login, b"+OK\r\n") == [ToBackend(b"USER \xe9t\xe9\r\n")]
    assert talk(login, b"+OK\r\n") == [ToBackend(b"PASS \xff\x80 x\r\n")]


@pytest.mark.parametrize(("user", "password"), [
    ("bob\r\nDELE 1", "pw"), ("bob", "pw\nQUIT"), ("bob\x00x", "pw"), ("bob", "p\rw"),
])
def test_cr_lf_nul_can_never_make_a_second_command(user: str, password: str) -> None:
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        Pop3BackendLogin(user, password, our_greeting=OURS)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=40),
                          st.sampled_from([b"+OK\r\n", b"-ERR no\r\n", b"+OK " + OURS + b"\r\n"])),
                max_size=12))
def test_arbitrary_server_bytes_give_only_login_events(chunks: list[bytes]) -> None:
    login = Pop3BackendLogin("bob", "pw", our_greeting=OURS)
    sent: list[bytes] = []
    for chunk in [*chunks, b""]:
        for ev in talk(login, chunk):
            if isinstance(ev, LoginResult):
                assert ev.status in LoginStatus
                return
            assert isinstance(ev, ToBackend)
            sent.append(ev.data)
        assert sent in ([], [b"USER bob\r\n"], [b"USER bob\r\n", b"PASS pw\r\n"])
    pytest.fail("end of input gave no LoginResult")


# ------------------------------------------------------------------ a real server


def _login_over_socket(port: int, user: str, password: str) -> LoginResult:
    login = Pop3BackendLogin(user, password, our_greeting=OURS)
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
                    assert sock.recv(4096).startswith(b"+OK")
                return ev


@pytest.mark.parametrize(("user", "password"), [
    ("alice", b"alice-pw"),
    ("quirky", 'with space "dq" back\\slash caf\u00e9'.encode()),
    ("octet", b"\xe9t\xe9 \xff\x80"),
])
def test_logs_in_to_dovecot(dovecot: Dovecot, user: str, password: bytes) -> None:
    result = _login_over_socket(dovecot.pop3_port, user, decode_name(password))
    assert result.status is LoginStatus.OK
    assert result.server_line.startswith(b"+OK")


def test_wrong_password_is_rejected_by_dovecot(dovecot: Dovecot) -> None:
    result = _login_over_socket(dovecot.pop3_port, "alice", "wrong")
    assert result.status is LoginStatus.REJECTED
    assert result.server_line.startswith(b"-ERR")
