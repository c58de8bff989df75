"""Transcripts of the ManageSieve front-end engine.

The corpus files (tests/corpus/managesieve/front/) are what perdition 2.2
answered, byte for byte and with its 3-second pauses, when fed the same input;
the tests below them pin down where perditionpy deliberately does better.
"""

from __future__ import annotations

import ast
import base64
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perditionpy import limits
from perditionpy._option_table import MANAGESIEVE_CAPABILITY
from perditionpy.protocol.base import (
    NEED_DATA,
    ClientClosed,
    Credentials,
    Send,
    StartTLS,
    decode_name,
)
from perditionpy.protocol.managesieve import (
    ManageSieveFrontEnd,
    PlainError,
    capability_lines,
    decode_plain,
    saslprep,
)

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "managesieve" / "front"
CAPS = capability_lines(MANAGESIEVE_CAPABILITY)
BAD_CHALLENGE = Send(b'NO "Invalid AUTHENTICATE "PLAIN" challenge, mate"\r\n', delay=True)
UNKNOWN = Send(b'NO "Unknown command, mate"\r\n', delay=True)
NOOP_OK = Send(b'OK "NOOP completed, mate"\r\n')


@dataclass(frozen=True)
class Opts:
    managesieve_capability: str = MANAGESIEVE_CAPABILITY


def engine(tls_listen: bool = False, checksum: int = 0x2BE38, **kw: Any) -> ManageSieveFrontEnd:
    return ManageSieveFrontEnd(Opts(**kw), greeting_host="localhost", checksum=checksum,
                               tls_listen=tls_listen)


def talk(e: ManageSieveFrontEnd, data: bytes) -> list[object]:
    """Feed ``data`` and collect events until the engine needs more or waits."""
    e.receive_data(data)
    events: list[object] = []
    while (ev := e.next_event()) is not NEED_DATA:
        events.append(ev)
        if isinstance(ev, Credentials | ClientClosed):
            break
    return events


def auth(raw: bytes) -> bytes:
    return b'AUTHENTICATE "PLAIN" "' + base64.b64encode(raw) + b'"\r\n'


# ------------------------------------------------------------------ the corpus


def _corpus_lines(path: Path) -> Iterator[tuple[str, Any]]:
    for raw in path.read_text().splitlines():
        if raw.strip() and not raw.startswith("#"):
            key, _, value = raw.partition(":")
            value = value.strip()
            yield key, ast.literal_eval(value) if value else None


def _expected_event(key: str, value: Any) -> list[object]:
    if key == "reply":
        return [Send(value)]
    if key == "reply after 3s":
        return [Send(value, delay=True)]
    if key == "reply and close":
        return [Send(value, close=True), ClientClosed()]
    if key == "credentials":
        user, password, authzid = value
        return [Credentials(decode_name(user), decode_name(password),
                            authzid=None if authzid is None else decode_name(authzid))]
    return [ClientClosed(error=key == "closed with error")]


def _session_reply(e: ManageSieveFrontEnd, key: str, argument: Any) -> bytes:
    if key == "session fails":
        return e.reply_failure(argument)
    if key == "session ok":
        return e.reply_ok(argument)
    return e.reply_raw(argument)


def replay(path: Path) -> None:
    lines = list(_corpus_lines(path))
    options = {k.removeprefix("option "): v for k, v in lines if k.startswith("option ")}
    greeting = dict(lines)["greeting"]
    # Each recording's checksum is that perdition's (it hashes the options).
    checksum = int(greeting.rsplit(b" ", 1)[-1][:8], 16)
    e = engine(checksum=checksum, **options)
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
        elif not key.startswith("option "):
            expected = _expected_event(key, value)
            assert pending[: len(expected)] == expected, f"{path.name}: {key} {value!r}"
            del pending[: len(expected)]
    assert pending == [], f"{path.name}: engine said more than recorded"


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.txt")), ids=lambda p: p.stem)
def test_corpus_transcript(path: Path) -> None:
    replay(path)


def test_corpus_is_there() -> None:
    assert len(list(CORPUS.glob("*.txt"))) >= 15


# ------------------------------------------------------------------ greeting


def test_greeting_and_loop_line() -> None:
    e = engine()
    assert e.greeting() == CAPS + b'OK "perdition ready on localhost 0002be38"\r\n'
    assert e.greeting_line == b'OK "perdition ready on localhost 0002be38"'


@pytest.mark.parametrize(("spec", "offer", "lines"), [
    ('"A" "b"  "C"', False, b'"A" "b"\r\n"C"\r\n'),
    ('"X"  "STARTTLS"  "Y"', False, b'"X"\r\n"Y"\r\n'),
    ('"X"  "STARTTLS"  "Y"', True, b'"X"\r\n"STARTTLS"\r\n"Y"\r\n'),
    ('"X"', True, b'"X"\r\n"STARTTLS"\r\n'),
    # perdition sends an empty line for an empty spec and for empty entries
    # (b"\r\n" and b"A\r\n B\r\n\r\n"); an empty line is not a capability.
    ("", False, b""),
    ("A   B  ", False, b"A\r\n B\r\n"),
])
def test_capability_lines(spec: str, offer: bool, lines: bytes) -> None:
    assert capability_lines(spec, offer_starttls=offer) == lines


# ------------------------------------------------------------------ commands


def test_logout_closes_and_stays_closed() -> None:
    e = engine()
    assert talk(e, b"LOGOUT\r\nNOOP\r\n") == [
        Send(b'OK "LOGOUT completed, mate"\r\n', close=True), ClientClosed()]
    assert e.next_event() == ClientClosed()


def test_eof_between_commands_is_clean() -> None:
    assert talk(engine(), b"NOOP\r\n") == [NOOP_OK]
    e = engine()
    talk(e, b"NOOP\r\n")
    assert talk(e, b"") == [ClientClosed(error=False)]


def test_eof_inside_a_literal_is_an_error() -> None:
    assert talk(engine(), b'AUTHENTICATE "PLAIN" {20+}\r\nAGFs') == []
    e = engine()
    talk(e, b'AUTHENTICATE "PLAIN" {20+}\r\nAGFs')
    assert talk(e, b"") == [ClientClosed(error=True)]


def test_noop_with_a_string_answers_with_its_tag() -> None:
    # perdition 2.2 sends nothing at all (its response-code writer skips the
    # line); RFC 5804 wants OK (TAG "x").
    e = engine()
    assert talk(e, b'NOOP "x"\r\n') == [Send(b'OK (TAG "x") "NOOP completed, mate"\r\n')]
    assert talk(e, b"noop {3+}\r\nabc\r\n") == [
        Send(b'OK (TAG "abc") "NOOP completed, mate"\r\n')]
    assert talk(e, b"NOOP {4+}\r\na\r\nb\r\n") == [
        Send(b'OK (TAG {4}\r\na\r\nb) "NOOP completed, mate"\r\n')]


def test_literal_arrives_in_pieces() -> None:
    e = engine()
    assert talk(e, b'AUTHENTICATE "PLAIN" {20}\r\n') == []
    assert talk(e, b"AGFsaWNlAGFs") == []
    assert talk(e, b"aWNlLXB3\r") == []
    assert talk(e, b"\n") == [Credentials("alice", "alice-pw")]


def test_empty_literal_ends_the_command() -> None:
    # perdition took the CRLF after {0+} for a second, empty command and
    # answered it "Unknown command" too; the literal is part of its line.
    assert talk(engine(), b'AUTHENTICATE "PLAIN" {0+}\r\n\r\nNOOP\r\n') == [
        Send(b'NO "Invalid base64 encoded challenge, mate"\r\n', delay=True), NOOP_OK]


def test_oversized_literal_is_skipped_then_refused() -> None:
    size = limits.MAX_LITERAL_LENGTH + 1
    e = engine()
    assert talk(e, b'AUTHENTICATE "PLAIN" {%d+}\r\n' % size) == []
    assert talk(e, b"A" * (size - 1)) == []
    assert talk(e, b"A\r\nNOOP\r\n") == [BAD_CHALLENGE, NOOP_OK]


def test_huge_literal_size_is_not_a_literal() -> None:
    assert talk(engine(), b'AUTHENTICATE "PLAIN" {99999999999}\r\n') == [BAD_CHALLENGE]


def test_too_long_line_is_refused_once() -> None:
    e = engine()
    events = talk(e, b"X" * (limits.MAX_LINE_LENGTH + 10))
    assert events == [Send(b'NO "Line too long, mate"\r\n', delay=True)]
    assert talk(e, b"more\r\nNOOP\r\n") == [NOOP_OK]


def test_credentials_wait_for_the_session_then_pipelined_bytes_follow() -> None:
    e = engine()
    assert talk(e, auth(b"\0alice\0pw") + b"LISTSCRIPTS\r\n") == [Credentials("alice", "pw")]
    assert e.next_event() is NEED_DATA
    assert e.reply_ok("You are so in") == b'OK "You are so in"\r\n'
    assert e.pending_data() == b"LISTSCRIPTS\r\n"


def test_failure_then_next_command() -> None:
    e = engine()
    talk(e, auth(b"\0alice\0pw") + b"NOOP\r\n")
    assert e.reply_failure("failed: Could not determine server") == (
        b'NO "failed: Could not determine server"\r\n')
    assert talk(e, b"") == [NOOP_OK, ClientClosed()]


def test_words_split_at_single_spaces_and_quotes_hold_spaces() -> None:
    # Two spaces make an empty word: one argument too many.
    assert talk(engine(), b"NOOP  \r\n") == [
        Send(b'NO "Too many arguments, expected NOOP [String], mate"\r\n', delay=True)]
    assert talk(engine(), b'NOOP "a b"\r\n') == [
        Send(b'OK (TAG "a b") "NOOP completed, mate"\r\n')]


def test_quoted_response_over_1024_bytes_is_refused() -> None:
    token = b"QUFB" * 256  # 1024 characters, 1026 with the quotes
    assert talk(engine(), b'AUTHENTICATE "PLAIN" "' + token + b'"\r\n') == [BAD_CHALLENGE]


def test_names_saslprep_refuses_get_a_reply() -> None:
    # perdition 2.2 wrote nothing (the client waited forever) for a control
    # character or bad UTF-8 in a name.
    assert talk(engine(), auth(b"\0\x01bob\0pw")) == [BAD_CHALLENGE]
    assert talk(engine(), auth(b"\0\xffbob\0pw")) == [BAD_CHALLENGE]
    assert talk(engine(), auth(b"\xff\0bob\0pw")) == [BAD_CHALLENGE]


def test_password_bytes_pass_unchanged() -> None:
    [cred] = talk(engine(), auth(b"\0alice\0p w\xff\r\n"))
    assert isinstance(cred, Credentials)
    assert cred.password.encode("utf-8", "surrogateescape") == b"p w\xff\r\n"


# ------------------------------------------------------------------ STARTTLS hook


def test_starttls_without_tls_listen_is_unknown() -> None:
    assert talk(engine(), b"STARTTLS\r\n") == [UNKNOWN]


def test_starttls_hook() -> None:
    e = engine(tls_listen=True)
    assert e.greeting() == CAPS + b'"STARTTLS"\r\nOK "perdition ready on localhost 0002be38"\r\n'
    assert talk(e, b"STARTTLS x\r\n") == [
        Send(b'NO "Too many arguments, expected STARTTLS, mate"\r\n', delay=True)]
    events = talk(e, b"STARTTLS\r\n" + auth(b"\0plain\0text"))
    assert events == [Send(b'OK "Begin TLS negotiation, mate"\r\n'), StartTLS(),
                      Send(CAPS + b'OK "TLS negotiation completed, mate"\r\n')]
    # What was pipelined in plain text is dropped; STARTTLS is gone.
    assert talk(e, b"STARTTLS\r\n") == [UNKNOWN]
    assert talk(e, b"CAPABILITY\r\n") == [Send(CAPS + b'OK "CAPABILITY completed, mate"\r\n')]


# ------------------------------------------------------------------ SASL PLAIN


@pytest.mark.parametrize(("raw", "expected"), [
    (b"\0alice\0pw", (None, "alice", b"pw")),
    (b"bob\0alice\0pw", ("bob", "alice", b"pw")),
    (b"\0alice\0", (None, "alice", b"")),
    (b"\0\xc2\xa0a\xc2\xadb\0pw", (None, " ab", b"pw")),   # non-ASCII space, soft hyphen
    # perdition cut the rest of the response after the SASLprepped authzid's
    # length, so a name that SASLprep shortens broke it; the raw length counts.
    ("\uff42ob\0alice\0pw".encode(), ("bob", "alice", b"pw")),
])
def test_decode_plain(raw: bytes, expected: tuple[str | None, str, bytes]) -> None:
    plain = decode_plain(base64.b64encode(raw))
    assert (plain.authzid, plain.authcid, plain.password) == expected


def test_decode_plain_errors() -> None:
    with pytest.raises(PlainError, match="Empty authentication id"):
        decode_plain(base64.b64encode(b"\0"))


@pytest.mark.parametrize(("text", "prepped"), [
    ("alice", "alice"), ("\uff21lice", "Alice"), ("I\u00adX", "IX"), ("a\u2002b", "a b"),
    ("\u2168", "IX"),
])
def test_saslprep(text: str, prepped: str) -> None:
    assert saslprep(text.encode()) == prepped


@pytest.mark.parametrize("raw", [b"a\x07", b"\xff", "\u0627a".encode(), "a\ufffd\U000e0001".encode()])
def test_saslprep_refuses(raw: bytes) -> None:
    with pytest.raises(ValueError):
        saslprep(raw)


# ------------------------------------------------------------------ robustness


def _allowed(ev: object) -> bool:
    if isinstance(ev, Send):
        last = ev.data.rstrip(b"\r\n").rsplit(b"\r\n", 1)[-1]
        # A reply, or capability lines ending in OK.
        return ev.data.endswith(b"\r\n") and (
            ev.data.startswith((b"OK ", b"NO ")) or last.startswith(b"OK "))
    return isinstance(ev, Credentials | ClientClosed | StartTLS)


_words = st.sampled_from([b"AUTHENTICATE", b'"PLAIN"', b"NOOP", b"CAPABILITY", b"LOGOUT",
                          b"STARTTLS", b"{4+}", b"{3}", b'"QQ=="', b'"AGEAYg=="', b"\r\n", b" "])
_chunks = st.lists(st.one_of(st.binary(max_size=40), _words), max_size=30)


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
                assert e.reply_failure("failed: Re-Authentication Failure").startswith(b"NO ")
    assert isinstance(events[-1], ClientClosed)


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=300))
def test_any_plain_response_gives_credentials_or_a_no(raw: bytes) -> None:
    [ev] = talk(engine(), auth(raw))
    assert isinstance(ev, Credentials) or (
        isinstance(ev, Send) and ev.data.startswith(b"NO "))
