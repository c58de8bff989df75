"""Transcripts of the POP3 front-end engine.

The corpus files (tests/corpus/pop3/front/) are what perdition 2.2 answered,
byte for byte and with its 3-second pauses, when fed the same input; the tests
below them pin down where perditionpy deliberately does better.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perditionpy import limits
from perditionpy.protocol.base import (
    NEED_DATA,
    ClientClosed,
    Credentials,
    Send,
    StartTLS,
    decode_name,
    encode_name,
)
from perditionpy.protocol.pop3 import Pop3FrontEnd, capability_block

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "pop3" / "front"
CAPA_REPLY = b"+OK Capability list follows, mate\r\nUIDL\r\nUSER\r\n.\r\n"
TRY_USER = Send(b"-ERR Mate, try: USER <username>\r\n", delay=True)
TRY_PASS = Send(b"-ERR Mate, try: PASS <password>\r\n", delay=True)
TOO_LONG = Send(b"-ERR Line too long, mate\r\n", delay=True)


@dataclass(frozen=True)
class Opts:
    pop_capability: str = "UIDL.USER"
    login_disabled: bool = False
    ok_line: str = "You are so in"
    server_resp_line: bool = False
    domain_delimiter: str = "@"


def engine(tls_listen: bool = False, checksum: int = 0x2BB7C, **kw: Any) -> Pop3FrontEnd:
    return Pop3FrontEnd(Opts(**kw), greeting_host="localhost",
                        checksum=checksum, tls_listen=tls_listen)


def talk(e: Pop3FrontEnd, data: bytes) -> list[object]:
    """Feed ``data`` and collect events until the engine needs more or waits."""
    e.receive_data(data)
    events: list[object] = []
    while (ev := e.next_event()) is not NEED_DATA:
        events.append(ev)
        if isinstance(ev, Credentials | ClientClosed):
            break
    return events


# ------------------------------------------------------------------ the corpus


def _corpus_lines(path: Path) -> Iterator[tuple[str, Any]]:
    for raw in path.read_text().splitlines():
        if raw.strip() and not raw.startswith("#"):
            key, _, value = raw.partition(": ")
            yield key, ast.literal_eval(value) if value else None


def _expected_event(key: str, value: Any) -> list[object]:
    if key == "reply":
        return [Send(value)]
    if key == "reply after 3s":
        return [Send(value, delay=True)]
    if key == "reply and close":
        return [Send(value, close=True), ClientClosed()]
    if key == "credentials":
        user, password = value
        return [Credentials(decode_name(user), decode_name(password))]
    if key == "starttls":
        return [StartTLS()]
    return [ClientClosed(error=key == "closed with error")]


def _session_reply(e: Pop3FrontEnd, key: str, argument: Any) -> bytes:
    if key == "session fails":
        return e.reply_failure(argument)
    if key == "session ok":
        return e.reply_ok(argument)
    return e.reply_raw(argument)


def replay(path: Path) -> None:
    lines = list(_corpus_lines(path))
    options = {k.removeprefix("option "): v for k, v in lines if k.startswith("option ")}
    settings = dict(lines)
    # Each recording's checksum is that perdition's (it hashes the options).
    checksum = int(settings["greeting"].split()[-1], 16)
    e = engine(tls_listen=settings.get("tls_listen") is True, checksum=checksum, **options)
    pending: list[object] = []
    for key, value in lines:
        if key == "greeting":
            assert e.greeting() == value
        elif key == "client":
            assert pending == [], f"{path.name}: engine said more than recorded"
            pending = talk(e, value)
        elif key.startswith("session "):
            argument, wire = value
            assert _session_reply(e, key, argument) == wire, path.name
        elif key in ("reply", "reply after 3s", "reply and close", "credentials",
                     "starttls", "closed", "closed with error"):
            expected = _expected_event(key, value)
            assert pending[: len(expected)] == expected, f"{path.name}: {key} {value!r}"
            del pending[: len(expected)]
    assert pending == [], f"{path.name}: engine said more than recorded"


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.txt")), ids=lambda p: p.stem)
def test_corpus_transcript(path: Path) -> None:
    replay(path)


def test_corpus_is_there() -> None:
    assert len(list(CORPUS.glob("*.txt"))) >= 20


# ------------------------------------------------------------------ greeting


def test_greeting_matches_perdition() -> None:
    assert engine().greeting() == b"+OK POP3 perditon ready on localhost 0002bb7c\r\n"
    assert engine().greeting_line == b"POP3 perditon ready on localhost 0002bb7c"


def test_checksum_is_eight_hex_digits_of_32_bits() -> None:
    e = Pop3FrontEnd(Opts(), greeting_host="mx", checksum=(1 << 32) + 0xABC)
    assert e.greeting() == b"+OK POP3 perditon ready on mx 00000abc\r\n"


# ------------------------------------------------------------------ capabilities


@pytest.mark.parametrize(("spec", "offer", "lines"), [
    ("UIDL.USER", False, b"UIDL\r\nUSER\r\n.\r\n"),
    ("TOP  SASL PLAIN  UIDL", False, b"TOP\r\nSASL PLAIN\r\nUIDL\r\n.\r\n"),
    ("UIDL  STLS.X", False, b"UIDL  STLS\r\nX\r\n.\r\n"),
    ("UIDL.STLS.USER", False, b"UIDL\r\nUSER\r\n.\r\n"),
    ("UIDL.USER", True, b"UIDL\r\nUSER\r\nSTLS\r\n.\r\n"),
    ("UIDL.STLS.USER", True, b"UIDL\r\nSTLS\r\nUSER\r\n.\r\n"),
    # perdition 2.2 died of heap corruption ("double free or corruption") on
    # this one: an STLS first in the list.
    ("STLS.TOP.UIDL.STLS", False, b"TOP\r\nUIDL\r\n.\r\n"),
    # Empty items would be empty lines in the list (perdition sends them).
    ("UIDL..USER", False, b"UIDL\r\nUSER\r\n.\r\n"),
    ("", False, b".\r\n"),
    ("X-CAF\u00c9", False, b"X-CAF\xc3\x89\r\n.\r\n"),
])
def test_capability_block(spec: str, offer: bool, lines: bytes) -> None:
    assert capability_block(spec, offer_stls=offer) == lines


# ------------------------------------------------------------------ commands


def test_quit_closes_and_stays_closed() -> None:
    e = engine()
    assert talk(e, b"QUIT\r\nCAPA\r\n") == [Send(b"+OK QUIT\r\n", close=True), ClientClosed()]
    assert e.next_event() == ClientClosed()


def test_credentials_wait_for_the_session() -> None:
    e = engine()
    assert talk(e, b"USER a\r\nPASS b\r\nCAPA\r\n")[-1] == Credentials("a", "b")
    assert e.next_event() is NEED_DATA  # nothing more is read until the session answers
    assert e.reply_failure("failed: Could not connect to server") == (
        b"-ERR failed: Could not connect to server\r\n")
    assert talk(e, b"") == [Send(CAPA_REPLY), ClientClosed()]


@pytest.mark.parametrize("answer", ["failure", "ok", "raw"])
def test_every_answer_forgets_user(answer: str) -> None:
    e = engine()
    talk(e, b"USER a\r\nPASS b\r\n")
    if answer == "failure":
        e.reply_failure("failed: Re-Authentication Failure")
    elif answer == "ok":
        e.reply_ok("You are so in")
    else:
        e.reply_raw(b"-ERR no")
    assert talk(e, b"PASS b\r\n") == [Send(b"-ERR USER not yet set, mate\r\n", delay=True)]


def test_second_user_replaces_the_first() -> None:
    e = engine()
    assert talk(e, b"USER a\r\nUSER b\r\nPASS p\r\n")[-1] == Credentials("b", "p")


def test_refused_user_keeps_the_previous_one() -> None:
    e = engine()
    assert talk(e, b"USER a\r\nUSER x y\r\nPASS p\r\n") == [
        Send(b"+OK USER a set, mate\r\n"), TRY_USER, Credentials("a", "p")]


def test_replies_encode_eight_bit_text() -> None:
    e = engine()
    talk(e, b"USER a\r\nPASS b\r\n")
    assert e.reply_ok("caf\u00e9 \udcff") == b"+OK caf\xc3\xa9 \xff\r\n"


def test_byte_at_a_time_gives_the_same_events() -> None:
    stream = b"CAPA\r\nNOOP\nuser b\xe9b\r\nPASS  x y \r\n"
    e = engine()
    events: list[object] = []
    for i in range(len(stream)):
        events += talk(e, stream[i : i + 1])
    assert events == talk(engine(), stream)
    assert events[-1] == Credentials(decode_name(b"b\xe9b"), " x y ")


def test_login_disabled_is_the_sessions_business() -> None:
    # perdition checks --login_disabled after reading USER and PASS, in its
    # main loop (so the Auth log line names the user); the session does that.
    assert talk(engine(login_disabled=True), b"USER a\r\nPASS b\r\n")[-1] == Credentials("a", "b")


def test_stls_is_an_unknown_command_without_tls() -> None:
    assert talk(engine(), b"STLS\r\n") == [Send(
        b"-ERR Mate, the command must be one of CAPA, USER, PASS or QUIT\r\n", delay=True)]


def test_stls_drops_what_was_pipelined_after_it() -> None:
    e = engine(tls_listen=True)
    assert talk(e, b"USER a\r\nSTLS\r\nPASS injected\r\n") == [
        Send(b"+OK USER a set, mate\r\n"),
        Send(b"+OK Begin TLS negotiation, mate\r\n"),
        StartTLS(),
    ]
    assert talk(e, b"PASS b\r\n") == [Send(b"-ERR USER not yet set, mate\r\n", delay=True)]


# ------------------------------------------------------------------ end of input


def test_eof_between_commands_is_clean() -> None:
    assert talk(engine(), b"") == [ClientClosed(error=False)]


def test_complete_lines_are_answered_before_eof() -> None:
    e = engine()
    e.receive_data(b"CAPA\r\nUSER a")
    assert talk(e, b"") == [Send(CAPA_REPLY), ClientClosed(error=True)]


# ------------------------------------------------------------------ deliberate differences


def test_nul_in_user_is_refused() -> None:
    # perdition 2.2 answered "+OK USER bo set, mate" and sent "USER bo" to the
    # back-end: the NUL truncated the name.
    assert talk(engine(), b"USER bo\x00b\r\n") == [TRY_USER]


def test_nul_in_password_is_refused() -> None:
    # perdition 2.2 sent "PASS p" to the back-end for this.
    assert talk(engine(), b"USER bob\r\nPASS p\x00w\r\n")[-1] == TRY_PASS


def test_nul_in_command_word_is_an_unknown_command() -> None:
    (reply,) = talk(engine(), b"US\x00R bob\r\n")
    assert reply == Send(
        b"-ERR Mate, the command must be one of CAPA, USER, PASS or QUIT\r\n", delay=True)


@pytest.mark.parametrize("line", [b"USER b\rob\r\n", b"USER bob\rCAPA\r\n", b"USER bob\r\r\n"])
def test_cr_inside_user_is_refused(line: bytes) -> None:
    # perdition 2.2 dropped every CR: "b\rob" became "bob", "bob\rCAPA" "bobCAPA".
    assert talk(engine(), line) == [TRY_USER]


def test_cr_inside_password_is_refused() -> None:
    assert talk(engine(), b"USER bob\r\nPASS p\rw\r\n")[-1] == TRY_PASS


def test_longest_line_is_accepted() -> None:
    name = b"a" * (limits.MAX_LINE_LENGTH - len(b"USER "))
    assert talk(engine(), b"USER " + name + b"\r\n") == [
        Send(b"+OK USER " + name + b" set, mate\r\n")]


def test_over_long_user_is_refused_and_the_session_continues() -> None:
    # perdition 2.2: "Mate, try: USER <username>" for 5000 bytes; for a
    # 4095-byte name its reply overflowed a buffer (4084 "a", then NULs, no CRLF).
    e = engine()
    name = b"a" * (limits.MAX_LINE_LENGTH - len(b"USER ") + 1)
    assert talk(e, b"USER " + name + b"\r\n") == [TOO_LONG]
    assert talk(e, b"CAPA\r\n") == [Send(CAPA_REPLY)]


def test_over_long_password_never_reaches_the_session() -> None:
    # perdition 2.2 sent "PASS " + 4088 bytes + NULs, without CRLF, to the back-end.
    e = engine()
    talk(e, b"USER bob\r\n")
    assert talk(e, b"PASS " + b"p" * 5000 + b"\r\nPASS ok\r\n") == [
        TOO_LONG, Credentials("bob", "ok")]


def test_one_mebibyte_without_newline_is_refused_once() -> None:
    e = engine()
    assert talk(e, b"X" * (1 << 20)) == [TOO_LONG]
    assert talk(e, b"Y" * (1 << 16)) == []
    assert talk(e, b"tail\r\nCAPA\r\n") == [Send(CAPA_REPLY)]


def test_pipelined_bytes_after_pass_are_kept_for_the_back_end() -> None:
    # perdition 2.2 flushed its input buffer after PASS: the STAT was lost.
    e = engine()
    assert talk(e, b"USER bob\r\nPASS pw\r\nSTAT\r\nLIST 1") == [
        Send(b"+OK USER bob set, mate\r\n"), Credentials("bob", "pw")]
    assert e.reply_ok("You are so in") == b"+OK You are so in\r\n"
    assert e.pending_data() == b"STAT\r\nLIST 1"
    assert e.pending_data() == b""


# ------------------------------------------------------------------ robustness


def _allowed(ev: object) -> bool:
    if isinstance(ev, Send):
        return ev.data.startswith((b"+OK ", b"-ERR ")) and ev.data.endswith(b"\r\n")
    if isinstance(ev, Credentials):
        return not any(c in encode_name(ev.user + ev.password) for c in b"\r\n\x00")
    return isinstance(ev, ClientClosed | StartTLS)


_words = st.sampled_from([b"USER", b"PASS", b"CAPA", b"QUIT", b"AUTH", b"user", b"STLS", b"X"])
_chunks = st.lists(
    st.one_of(st.binary(max_size=64), _words, _words.map(lambda w: w + b" x\r\n"),
              st.sampled_from([b"\r\n", b"\n", b" ", b"\x00", b"\r", b"\xff"])),
    max_size=30)


@settings(max_examples=300, deadline=None)
@given(_chunks, st.booleans())
def test_arbitrary_bytes_give_only_protocol_events(chunks: list[bytes], tls: bool) -> None:
    e = engine(tls_listen=tls)
    events: list[object] = []
    for chunk in [*chunks, b""]:
        e.receive_data(chunk)
        while not events or not isinstance(events[-1], ClientClosed):
            ev = e.next_event()
            if ev is NEED_DATA:
                break
            assert _allowed(ev), ev
            events.append(ev)
            if isinstance(ev, Credentials):
                assert e.reply_failure("failed: Re-Authentication Failure").startswith(b"-ERR ")
    assert isinstance(events[-1], ClientClosed)


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=limits.MAX_LINE_LENGTH - 8, max_size=limits.MAX_LINE_LENGTH * 3))
def test_long_input_never_buffers_more_than_a_line(blob: bytes) -> None:
    e = engine()
    blob = blob.replace(b"\n", b"")
    for ev in talk(e, blob):
        assert ev == TOO_LONG
    assert len(e.pending_data()) <= limits.MAX_LINE_LENGTH + 1
