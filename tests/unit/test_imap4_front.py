"""Transcripts of the IMAP4 front-end engine.  Expected bytes are what
perdition 2.2 sends (observed with the Debian binary)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perditionpy.protocol.base import NEED_DATA, ClientClosed, Credentials, Send
from perditionpy.protocol.imap4 import Imap4FrontEnd


@dataclass(frozen=True)
class Opts:
    imap_capability: str = "IMAP4 IMAP4REV1"
    login_disabled: bool = False


def engine(**kw: object) -> Imap4FrontEnd:
    return Imap4FrontEnd(Opts(**kw), greeting_host="localhost", checksum=0x2BB46)  # type: ignore[arg-type]


def talk(e: Imap4FrontEnd, data: bytes) -> list[object]:
    """Feed ``data`` and collect events until the engine needs more or waits."""
    e.receive_data(data)
    events: list[object] = []
    while (ev := e.next_event()) is not NEED_DATA:
        events.append(ev)
        if isinstance(ev, Credentials | ClientClosed):
            break
    return events


def test_greeting_matches_perdition() -> None:
    assert engine().greeting() == (
        b"* OK [CAPABILITY IMAP4 IMAP4REV1] perdition ready on localhost 0002bb46\r\n")


@pytest.mark.parametrize(("line", "reply", "delayed"), [
    (b"a1 CAPABILITY\r\n", b"* CAPABILITY IMAP4 IMAP4REV1\r\na1 OK CAPABILITY\r\n", False),
    (b"a1 capability\r\n", b"* CAPABILITY IMAP4 IMAP4REV1\r\na1 OK CAPABILITY\r\n", False),
    (b"a1 NOOP\r\n", b"a1 OK NOOP\r\n", False),
    (b"a1 NOOP\n", b"a1 OK NOOP\r\n", False),
    (b"\r\n", b"* BAD Invalid tag, mate\r\n", True),
    (b"* NOOP\r\n", b"* BAD Invalid tag, mate\r\n", True),
    (b"a{ NOOP\r\n", b"* BAD Invalid tag, mate\r\n", True),
    (b"a1\r\n", b"a1 BAD Missing command, mate\r\n", True),
    (b"a1 FOO\r\n", b"a1 BAD Unrecognised command, mate\r\n", True),
    (b"a1 ID NIL\r\n", b"a1 BAD Unrecognised command, mate\r\n", True),
    (b"a1 STARTTLS\r\n", b"a1 BAD STARTTLS disabled, mate\r\n", True),
    (b"a1 NOOP x\r\n", b"a1 BAD Argument given to NOOP but there shouldn't be one, mate\r\n", True),
    (b"a1 AUTHENTICATE PLAIN\r\n", b"a1 NO AUTHENTICATE mechanism not supported, mate\r\n", False),
    (b"a1 AUTHENTICATE\r\n", b"a1 BAD Mate, try AUTHENTICATE <mechanism>\r\n", True),
    (b"a1 LOGIN\r\n", b"a1 BAD Mate, try LOGIN <username> <passwd>\r\n", True),
    (b"a1 LOGIN a\r\n", b"a1 BAD Mate, try LOGIN <username> <passwd>\r\n", True),
    (b"a1 LOGIN a b c\r\n", b"a1 BAD Mate, try LOGIN <username> <passwd>\r\n", True),
])
def test_pre_auth_replies(line: bytes, reply: bytes, delayed: bool) -> None:
    assert talk(engine(), line) == [Send(reply, delay=delayed)]


def test_logout_says_bye_and_closes() -> None:
    e = engine()
    assert talk(e, b"a1 LOGOUT\r\n") == [Send(
        b"* BYE IMAP4 server logging out, mate\r\na1 OK LOGOUT\r\n", close=True), ClientClosed()]


def test_pipelined_commands_answered_in_order() -> None:
    assert talk(engine(), b"a1 NOOP\r\na2 NOOP\r\n") == [
        Send(b"a1 OK NOOP\r\n"), Send(b"a2 OK NOOP\r\n")]


def test_login_with_atoms() -> None:
    assert talk(engine(), b"a1 LOGIN user secret\r\n") == [Credentials("user", "secret", tag=b"a1")]


def test_login_with_quoted_strings_unescapes() -> None:
    events = talk(engine(), b'a1 LOGIN "a b" "c\\"d\\\\e"\r\n')
    assert events == [Credentials("a b", 'c"d\\e', tag=b"a1")]


def test_login_with_synchronising_literals() -> None:
    e = engine()
    assert talk(e, b"a1 LOGIN {4}\r\n") == [Send(b"+ OK ready for additional input\r\n")]
    assert talk(e, b"us e {3}\r\n") == [Send(b"+ OK ready for additional input\r\n")]
    assert talk(e, b"p w\r\n") == [Credentials("us e", "p w", tag=b"a1")]


def test_literal_user_then_quoted_password_strips_the_quotes() -> None:
    # perdition 2.2 sends '"pw"' (with the quotes) here: a defect we fix.
    e = engine()
    talk(e, b"a1 LOGIN {1}\r\n")
    assert talk(e, b'u "pw"\r\n') == [Credentials("u", "pw", tag=b"a1")]


def test_login_with_literal_plus_needs_no_continuation() -> None:
    assert talk(engine(), b"a1 LOGIN {1+}\r\na {1+}\r\nb\r\n") == [Credentials("a", "b", tag=b"a1")]


def test_literal_split_across_reads() -> None:
    e = engine()
    talk(e, b"a1 LOGIN {5+}\r\nab")
    assert talk(e, b"cde pw") == []
    assert talk(e, b"\r\n") == [Credentials("abcde", "pw", tag=b"a1")]


def test_eight_bit_bytes_round_trip() -> None:
    (cred,) = talk(engine(), b"a1 LOGIN {2+}\r\n\xc3\xa9 \"p\xffw\"\r\n")
    assert isinstance(cred, Credentials)
    assert cred.password.encode("utf-8", "surrogateescape") == b"p\xffw"


def test_empty_quoted_user_is_passed_on_like_perdition() -> None:
    assert talk(engine(), b'a1 LOGIN "" b\r\n') == [Credentials("", "b", tag=b"a1")]


def test_nul_in_user_is_refused() -> None:
    (reply,) = talk(engine(), b"a1 LOGIN {3+}\r\na\x00b pw\r\n")
    assert reply == Send(b"a1 BAD Mate, try LOGIN <username> <passwd>\r\n", delay=True)


def test_nul_in_atom_is_refused() -> None:
    (reply,) = talk(engine(), b"a1 LOGIN a\x00b pw\r\n")
    assert isinstance(reply, Send) and reply.data.startswith(b"a1 BAD")


def test_huge_synchronising_literal_refused_without_continuation() -> None:
    e = engine()
    assert talk(e, b"a1 LOGIN {4294967296}\r\n") == [
        Send(b"a1 BAD Literal too long, mate\r\n", delay=True)]
    assert talk(e, b"a2 NOOP\r\n") == [Send(b"a2 OK NOOP\r\n")]


def test_huge_non_synchronising_literal_closes() -> None:
    e = engine()
    assert talk(e, b"a1 LOGIN {4294967296+}\r\nxxxx") == [
        Send(b"a1 BAD Literal too long, mate\r\n", delay=True, close=True), ClientClosed()]


def test_over_long_line_is_refused_and_the_session_continues() -> None:
    e = engine()
    (reply,) = talk(e, b"a1 LOGIN " + b"x" * 5000 + b" pw\r\n")
    assert reply == Send(b"a1 BAD Line too long, mate\r\n", delay=True)
    assert talk(e, b"a2 NOOP\r\n") == [Send(b"a2 OK NOOP\r\n")]


def test_one_mebibyte_without_newline_is_refused_once() -> None:
    e = engine()
    events = talk(e, b"a1 LOGIN " + b"x" * (1 << 20))
    assert events == [Send(b"a1 BAD Line too long, mate\r\n", delay=True)]
    assert talk(e, b"yyy\r\na2 NOOP\r\n") == [Send(b"a2 OK NOOP\r\n")]


def test_eof_mid_literal_is_an_error_close() -> None:
    e = engine()
    talk(e, b"a1 LOGIN {10}\r\nabc")
    assert talk(e, b"") == [ClientClosed(error=True)]


def test_eof_between_commands_is_clean() -> None:
    assert talk(engine(), b"") == [ClientClosed(error=False)]


def test_failed_login_returns_to_pre_auth() -> None:
    e = engine()
    talk(e, b"a1 LOGIN u p\r\n")
    assert e.reply_failure("failed: Re-Authentication Failure") == (
        b"a1 NO failed: Re-Authentication Failure\r\n")
    assert talk(e, b"a2 LOGIN u p2\r\n") == [Credentials("u", "p2", tag=b"a2")]


def test_ok_and_raw_replies_use_the_client_tag() -> None:
    e = engine()
    talk(e, b"x9 LOGIN u p\r\n")
    assert e.reply_ok("You are so in") == b"x9 OK You are so in\r\n"
    talk(e, b"x10 LOGIN u p\r\n")
    assert e.reply_raw(b"OK [CAPABILITY IMAP4rev1] Logged in") == (
        b"x10 OK [CAPABILITY IMAP4rev1] Logged in\r\n")


def test_login_disabled_advertised() -> None:
    assert talk(engine(login_disabled=True), b"a CAPABILITY\r\n") == [
        Send(b"* CAPABILITY IMAP4 IMAP4REV1 LOGINDISABLED\r\na OK CAPABILITY\r\n")]


def test_custom_capability() -> None:
    e = engine(imap_capability="IMAP4rev1 LITERAL+ ID")
    assert e.greeting().startswith(b"* OK [CAPABILITY IMAP4rev1 LITERAL+ ID] perdition ready on")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_arbitrary_bytes_only_produce_protocol_events(chunks: list[bytes]) -> None:
    e = engine()
    for chunk in chunks + [b""]:
        e.receive_data(chunk)
        for _ in range(1000):
            ev = e.next_event()
            if ev is NEED_DATA or isinstance(ev, ClientClosed):
                break
            assert isinstance(ev, Send | Credentials)
            if isinstance(ev, Credentials):
                e.reply_failure("failed: x")
        else:
            pytest.fail("engine did not settle")
        if isinstance(ev, ClientClosed):
            break


def test_a_greeting_worked_out_once_follows_new_options() -> None:
    """The greeting text is remembered per options object: new options (a
    SIGHUP) give a new text even for the same host, checksum and flags."""
    first, again = Opts(), Opts()
    assert first == again and first is not again
    assert engine().greeting() == Imap4FrontEnd(first, greeting_host="localhost",  # type: ignore[arg-type]
                                                checksum=0x2BB46).greeting()
    changed = Opts(imap_capability="IMAP4REV1 IDLE")
    for _ in range(2):
        assert Imap4FrontEnd(changed, greeting_host="localhost",  # type: ignore[arg-type]
                             checksum=0x2BB46).greeting() == (
            b"* OK [CAPABILITY IMAP4REV1 IDLE] perdition ready on localhost 0002bb46\r\n")
        assert Imap4FrontEnd(first, greeting_host="other",  # type: ignore[arg-type]
                             checksum=0x2BB46).greeting() == (
            b"* OK [CAPABILITY IMAP4 IMAP4REV1] perdition ready on other 0002bb46\r\n")
