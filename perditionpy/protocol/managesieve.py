"""ManageSieve (RFC 5804) as perdition 2.2 speaks it, sans-I/O.

* :class:`ManageSieveFrontEnd` — the client side before authentication: the
  capability greeting, CAPABILITY, NOOP, LOGOUT, STARTTLS (only when the
  session enables it) and ``AUTHENTICATE "PLAIN"`` with its response as a
  quoted string or a literal (``{n}`` / ``{n+}``) on the same command.
* :class:`ManageSieveBackendLogin` — logging in to the real server: read its
  capability greeting (SASL PLAIN offered? loop?), then one
  ``AUTHENTICATE "PLAIN" "<base64>"``.

Reply texts and which replies come after perdition's 3-second pause (every
``NO``) were recorded from the Debian binary: see tests/corpus/managesieve/.
Like perdition, messages are written between double quotes as they are, and
command lines are cut into words at single spaces, a double quote toggling
whether a space ends a word; CR bytes are dropped wherever they appear.
"""

from __future__ import annotations

import base64
import binascii
import enum
import logging
import re
import stringprep
import unicodedata
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from perditionpy import limits
from perditionpy.protocol.base import (
    NEED_DATA,
    ClientClosed,
    Credentials,
    LoginResult,
    LoginStatus,
    NeedData,
    Send,
    StartTLS,
    ToBackend,
    decode_name,
    encode_name,
)

__all__ = [
    "ManageSieveFrontEnd", "ManageSieveBackendLogin", "ManageSieveOptions",
    "capability_lines", "greeting_text", "decode_plain", "saslprep", "PlainError",
]

log = logging.getLogger(__name__)

CRLF = b"\r\n"
GREETING = "perdition ready on"
_DELIMITER = "  "            # --managesieve_capability: two spaces between entries
_STARTTLS = '"STARTTLS"'
_QUOTED_MAX = 1024           # perdition's ACAP_QUOTED_MAX, quotes included
_LITERAL = re.compile(rb"\{([0-9]+)(\+?)\}\Z")
_LITERAL_MAX = 2**32         # perdition's ACAP_LITERAL_MAX: larger sizes are not literals

# perdition's replies.  Some carry unescaped double quotes inside the quoted
# text; they are reproduced byte for byte.
_ARGS_AUTH = "Incorrect argument count, expected AUTHENTICATE <mechanism> [<challenge>], mate"
_ARGS_PLAIN = 'Incorrect argument count, expected AUTHENTICATE "PLAIN" <challenge>, mate'
_BAD_CHALLENGE = 'Invalid AUTHENTICATE "PLAIN" challenge, mate'
_BAD_NOOP_STRING = "Invalid AUTHENTICATE PLAIN challenge, mate"  # sic, for NOOP
_UNKNOWN_MECH = "Unknown SASL mechanism, mate"
_UNKNOWN = "Unknown command, mate"
_LINE_TOO_LONG = "Line too long, mate"


class ManageSieveOptions(Protocol):
    """What the engines read from ``Options`` (read-only, so a frozen one fits)."""

    @property
    def managesieve_capability(self) -> str: ...


# ------------------------------------------------------------------ replies


def _text(message: str | bytes) -> bytes:
    """perdition's ``acap_from_str``: a quoted string, or a literal when the
    text holds CR or LF (``{n}`` from the server side)."""
    data = encode_name(message) if isinstance(message, str) else message
    if b"\r" in data or b"\n" in data:
        return b"{%d}" % len(data) + CRLF + data
    return b'"' + data + b'"'


def _ok(message: str, code: bytes = b"") -> Send:
    return Send(b"OK " + code + _text(message) + CRLF)


def _no(message: str) -> Send:
    # Every NO from perdition's command loop comes after its 3-second pause.
    return Send(b"NO " + _text(message) + CRLF, delay=True)


def capability_lines(spec: str, *, offer_starttls: bool = False) -> bytes:
    """``--managesieve_capability`` as lines: one per entry (entries are
    separated by two spaces).  ``"STARTTLS"`` is listed only when it can be
    used (``offer_starttls``), appended when missing, as perdition does."""
    items = spec.split(_DELIMITER)
    if not offer_starttls:
        items = [item for item in items if item != _STARTTLS]
    elif _STARTTLS not in items:
        items.append(_STARTTLS)
    # perdition writes an empty line for an empty entry (or an empty spec);
    # an empty line is not a capability, so it is left out.
    return b"".join(encode_name(item) + CRLF for item in items if item)


def greeting_text(host: str, checksum: int) -> str:
    """The text of our greeting's OK line; also what loop detection compares."""
    return f"{GREETING} {host} {checksum & 0xFFFFFFFF:08x}"


# ------------------------------------------------------------------ SASL PLAIN


class PlainError(ValueError):
    """An AUTHENTICATE "PLAIN" response perdition refuses; the argument is its reply."""


def saslprep(raw: bytes) -> str:
    """RFC 4013 SASLprep of UTF-8 ``raw`` as libidn does it for perdition
    (unassigned code points allowed).  Raises ``ValueError`` when refused."""
    text = raw.decode("utf-8")  # UnicodeDecodeError is a ValueError
    mapped = "".join(" " if stringprep.in_table_c12(c) else c
                     for c in text if not stringprep.in_table_b1(c))
    text = unicodedata.ucd_3_2_0.normalize("NFKC", mapped)
    for c in text:
        if _prohibited(c):
            raise ValueError(f"SASLprep: prohibited character U+{ord(c):04X}")
    _check_bidi(text)
    return text


def _prohibited(c: str) -> bool:
    return (stringprep.in_table_c12(c) or stringprep.in_table_c21_c22(c)
            or stringprep.in_table_c3(c) or stringprep.in_table_c4(c)
            or stringprep.in_table_c5(c) or stringprep.in_table_c6(c)
            or stringprep.in_table_c7(c) or stringprep.in_table_c8(c)
            or stringprep.in_table_c9(c))


def _check_bidi(text: str) -> None:
    if not any(stringprep.in_table_d1(c) for c in text):
        return
    if any(stringprep.in_table_d2(c) for c in text) or not (
            stringprep.in_table_d1(text[0]) and stringprep.in_table_d1(text[-1])):
        raise ValueError("SASLprep: bad bidirectional text")


def _b64decode(text: bytes) -> bytes:
    """Base64 as OpenSSL's BIO reads it for perdition: whole 4-character
    groups; a short last group counts only when ``=`` pads it; no spaces."""
    body = text.rstrip(b"=")
    padding = len(text) - len(body)
    short = len(body) % 4
    if short and short + padding < 4:
        body = body[:len(body) - short]      # an unpadded short tail is ignored
    elif short:
        body += b"=" * (4 - short)
    try:
        return base64.b64decode(body, validate=True)
    except binascii.Error:
        return b""


@dataclass(frozen=True, slots=True)
class Plain:
    """A decoded PLAIN response: names after SASLprep, the password as sent."""

    authzid: str | None
    authcid: str
    password: bytes


def decode_plain(challenge: bytes) -> Plain:
    """perdition's reading of a base64 PLAIN response, with its error texts.

    Raises :class:`PlainError` with the reply text for the client.
    """
    data = _b64decode(challenge)
    if not data:
        raise PlainError("Invalid base64 encoded challenge, mate")
    authzid: str | None = None
    if data[0]:
        raw, _, _ = data.partition(b"\0")
        authzid = _prepped(raw)
        data = data[len(raw):]
    if not data:
        raise PlainError("Challenge has no authentication id, mate")
    raw, _, _ = data[1:].partition(b"\0")
    data = data[1 + len(raw):]
    authcid = _prepped(raw)
    if not authcid:
        raise PlainError("Empty authentication id, mate")
    if not data:
        raise PlainError("Challenge has no password, mate")
    password, nul, _ = data[1:].partition(b"\0")
    if nul:
        raise PlainError("Trailing garbage in challenge, mate")
    return Plain(authzid, authcid, password)


def _prepped(raw: bytes) -> str:
    try:
        return saslprep(raw)
    except ValueError as exc:
        # perdition sends no reply at all here and the client hangs; refuse instead.
        log.debug("SASLprep refused a name: %s", exc)
        raise PlainError(_BAD_CHALLENGE) from None


def encode_plain(authzid: str | None, authcid: str, password: str) -> bytes:
    """The base64 PLAIN response perdition sends to the real server."""
    raw = b"\0".join(encode_name(part) for part in (authzid or "", authcid, password))
    return base64.b64encode(raw)


# ------------------------------------------------------------------ input


class _TooLong(enum.Enum):
    TOO_LONG = "too long"


TOO_LONG = _TooLong.TOO_LONG


class _Input:
    """Buffered bytes read as lines (LF-terminated, every CR dropped, at most
    ``limit`` bytes) or as counted literal bytes.  An over-long line is
    reported once and the rest of it skipped."""

    def __init__(self, limit: int) -> None:
        self._buf = bytearray()
        self._limit = limit
        self._skipping = False
        self.eof = False

    def feed(self, data: bytes) -> None:
        if data:
            self._buf += data
        else:
            self.eof = True

    @property
    def pending(self) -> bool:
        """True when bytes of an unfinished line or literal have arrived."""
        return bool(self._buf) or self._skipping

    def line(self) -> bytes | _TooLong | None:
        while True:
            end = self._buf.find(b"\n")
            if end < 0:
                return self._overflow()
            line = bytes(self._buf[:end]).replace(b"\r", b"")
            del self._buf[:end + 1]
            if self._skipping:
                self._skipping = False
                continue
            return TOO_LONG if len(line) > self._limit else line

    def _overflow(self) -> _TooLong | None:
        if len(self._buf) - self._buf.count(b"\r") <= self._limit:
            return None
        self._buf.clear()
        if self._skipping:
            return None
        self._skipping = True
        return TOO_LONG

    def take(self, count: int) -> bytes | None:
        """``count`` bytes exactly, or None until they have all arrived."""
        if len(self._buf) < count:
            return None
        data = bytes(self._buf[:count])
        del self._buf[:count]
        return data

    def discard(self, count: int) -> int:
        """Drop up to ``count`` bytes; return how many were dropped."""
        dropped = min(count, len(self._buf))
        del self._buf[:dropped]
        return dropped

    def take_rest(self) -> bytes:
        rest = bytes(self._buf)
        self._buf.clear()
        return rest


def _is_quoted(word: bytes) -> bool:
    """perdition's ``acap_strn_is_quoted``: quotes around UTF-8 text without
    NUL, bare ``"`` or bare ``\\``; at most 1024 bytes with the quotes."""
    if len(word) < 2 or len(word) > _QUOTED_MAX or word[:1] != b'"' or word[-1:] != b'"':
        return False
    inner = word[1:-1]
    if b"\0" in inner:
        return False
    if re.fullmatch(rb'(?:[^"\\]|\\["\\])*', inner, re.DOTALL) is None:
        return False
    try:
        inner.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class _Literal:
    size: int


def _string_arg(word: bytes) -> bytes | _Literal | None:
    """A string argument: the inside of a quoted string, a literal to read, or
    None for anything else (an atom included), as ``acap_token_wrapper``."""
    match = _LITERAL.match(word)
    if match is not None:
        size = int(match.group(1))
        return _Literal(size) if size <= _LITERAL_MAX else None
    if _is_quoted(word):
        return word[1:-1]
    return None


# ------------------------------------------------------------------ front-end


class _Phase:  # plain constants: an Enum member costs a lookup hook on 3.11
    COMMANDS = "commands"     # reading command lines
    LITERAL = "literal"       # reading a literal's bytes
    AFTER_LITERAL = "after"   # reading the rest of the line after a literal
    WAITING = "waiting"       # Credentials emitted; the session is deciding
    CLOSED = "closed"         # LOGOUT or end of input


class ManageSieveFrontEnd:
    """The client conversation up to a successful login.

    ``tls_listen`` is the STARTTLS hook (``--ssl_mode tls_listen``): the
    capability lists ``"STARTTLS"`` and STARTTLS is accepted once; the engine
    answers OK, emits :class:`StartTLS`, drops what the client pipelined in
    plain text, and once the session has done the handshake its next event
    sends the capability again ending in ``OK "TLS negotiation completed,
    mate"`` (RFC 5804 section 2.2).  Without it STARTTLS is an unknown
    command, as in perdition built or run without TLS.
    """

    def __init__(self, options: ManageSieveOptions, *, greeting_host: str, checksum: int,
                 tls_listen: bool = False, tls_force: bool = False) -> None:
        # tls_force (tls_listen_force) changes nothing ManageSieve shows: the
        # session refuses a login before STARTTLS with "Login Disabled".
        self._capability = options.managesieve_capability
        self._greeting = greeting_text(greeting_host, checksum)
        self._input = _Input(limits.MAX_LINE_LENGTH)
        self._phase = _Phase.COMMANDS
        self._tls_listen = tls_listen
        self._tls_active = False
        self._queued: deque[Send | StartTLS] = deque()
        self._literal_left = 0            # bytes of a refused literal still to skip
        self._literal_for: bytes = b""    # the command waiting for the literal
        self._literal: bytes | None = None
        self._skip_literal = False

    # -- output the session asks for ------------------------------------

    def greeting(self) -> bytes:
        return self._capabilities() + b"OK " + _text(self._greeting) + CRLF

    @property
    def greeting_line(self) -> bytes:
        """Our greeting's last line without CRLF: what a looping back-end sends."""
        return b"OK " + _text(self._greeting)

    def reply_failure(self, text: str) -> bytes:
        """``NO "<text>"`` for the pending login; back to reading commands."""
        return self._answer_login(b"NO " + _text(text) + CRLF)

    def reply_ok(self, text: str) -> bytes:
        """``OK "<text>"`` (``--ok_line``) for a successful login."""
        return self._answer_login(b"OK " + _text(text) + CRLF)

    def reply_raw(self, line: bytes) -> bytes:
        """The back-end's final line (``--server_resp_line``), passed through."""
        return self._answer_login(line + CRLF)

    def pending_data(self) -> bytes:
        """Bytes the client pipelined after AUTHENTICATE: after a successful
        login they belong to the back-end (perdition 2.2 drops them)."""
        return self._input.take_rest()

    def _answer_login(self, data: bytes) -> bytes:
        self._phase = _Phase.COMMANDS
        return data

    def _capabilities(self) -> bytes:
        offer = self._tls_listen and not self._tls_active
        return capability_lines(self._capability, offer_starttls=offer)

    # -- input ------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes from the client; ``b""`` at end of input."""
        self._input.feed(data)

    def next_event(self) -> Send | Credentials | StartTLS | ClientClosed | NeedData:
        if self._queued:
            return self._queued.popleft()
        if self._phase is _Phase.CLOSED:
            return ClientClosed()
        if self._phase is _Phase.WAITING:
            return NEED_DATA
        if self._phase is _Phase.LITERAL:
            event = self._read_literal()
        else:
            event = self._read_line()
        if event is NEED_DATA and self._input.eof:
            self._phase = _Phase.CLOSED
            return ClientClosed(error=self._input.pending or self._phase_mid_command())
        return event

    def _phase_mid_command(self) -> bool:
        return self._literal_for != b""

    def _read_line(self) -> Send | Credentials | NeedData:
        line = self._input.line()
        if line is None:
            return NEED_DATA
        if self._phase is _Phase.AFTER_LITERAL:
            return self._after_literal(line)
        if line is TOO_LONG:
            return _no(_LINE_TOO_LONG)
        return self._command(line)

    def _command(self, line: bytes) -> Send | Credentials | NeedData:
        words = _split(line)
        name, args = words[0].upper(), words[1:]
        if name == b"AUTHENTICATE":
            return self._authenticate(args)
        if name == b"CAPABILITY":
            return self._capability_cmd(args)
        if name == b"LOGOUT":
            return self._logout(args)
        if name == b"NOOP":
            return self._noop(args)
        if name == b"STARTTLS" and self._tls_listen and not self._tls_active:
            return self._starttls(args)
        return _no(_UNKNOWN)

    # -- string arguments that may be literals --------------------------

    def _string(self, command: bytes, word: bytes) -> Send | Credentials | NeedData:
        """Finish ``command`` with its string argument ``word``."""
        arg = _string_arg(word)
        if isinstance(arg, _Literal):
            self._phase = _Phase.LITERAL
            self._literal_for = command
            self._literal_left = arg.size
            self._literal = None
            self._skip_literal = arg.size > limits.MAX_LITERAL_LENGTH
            return self._read_literal()
        return self._finish(command, arg)

    def _read_literal(self) -> Send | Credentials | NeedData:
        if self._skip_literal:
            # Too big to keep: skip its bytes and refuse the command afterwards.
            self._literal_left -= self._input.discard(self._literal_left)
            if self._literal_left:
                return NEED_DATA
            self._phase = _Phase.AFTER_LITERAL
            return self._read_line()
        data = self._input.take(self._literal_left)
        if data is None:
            return NEED_DATA
        self._literal = data
        self._literal_left = 0
        self._phase = _Phase.AFTER_LITERAL
        return self._read_line()

    def _after_literal(self, line: bytes | _TooLong) -> Send | Credentials:
        command, literal = self._literal_for, self._literal
        self._phase = _Phase.COMMANDS
        self._literal_for, self._literal = b"", None
        # The literal must end the command line: anything after it is garbage.
        if line != b"":
            literal = None
        return self._finish(command, literal)

    def _finish(self, command: bytes, arg: bytes | None) -> Send | Credentials:
        if command == b"NOOP":
            if arg is None:
                return _no(_BAD_NOOP_STRING)
            return _ok("NOOP completed, mate", b"(TAG " + _text(arg) + b") ")
        if arg is None:
            return _no(_BAD_CHALLENGE)
        return self._plain(arg)

    # -- the commands -----------------------------------------------------

    def _authenticate(self, args: list[bytes]) -> Send | Credentials | NeedData:
        if not args or len(args) > 2:
            return _no(_ARGS_AUTH)
        if args[0].upper() != b'"PLAIN"':
            return _no(_UNKNOWN_MECH)
        if len(args) != 2:
            # perdition has no SASL continuation: the response must come with
            # the command (RFC 5804 clients send it so for PLAIN).
            return _no(_ARGS_PLAIN)
        return self._string(b"AUTHENTICATE", args[1])

    def _plain(self, challenge: bytes) -> Send | Credentials:
        try:
            plain = decode_plain(challenge)
        except PlainError as exc:
            return _no(str(exc))
        self._phase = _Phase.WAITING
        return Credentials(plain.authcid, decode_name(plain.password), authzid=plain.authzid)

    def _capability_cmd(self, args: list[bytes]) -> Send:
        if args:
            return _no("Too many arguments, expected CAPABILITY, mate")
        return Send(self._capabilities() + b"OK " + _text("CAPABILITY completed, mate") + CRLF)

    def _logout(self, args: list[bytes]) -> Send:
        if args:
            return _no("Too many arguments, expected LOGOUT, mate")
        self._phase = _Phase.CLOSED
        return Send(_ok("LOGOUT completed, mate").data, close=True)

    def _noop(self, args: list[bytes]) -> Send | NeedData | Credentials:
        if not args:
            return _ok("NOOP completed, mate")
        if len(args) > 1:
            return _no("Too many arguments, expected NOOP [String], mate")
        return self._string(b"NOOP", args[0])

    def _starttls(self, args: list[bytes]) -> Send:
        if args:
            return _no("Too many arguments, expected STARTTLS, mate")
        self._tls_active = True
        dropped = self._input.take_rest()
        if dropped:
            log.debug("dropping %d bytes pipelined after STARTTLS", len(dropped))
        self._queued.append(StartTLS())
        self._queued.append(Send(self._capabilities() + b"OK "
                                 + _text("TLS negotiation completed, mate") + CRLF))
        return _ok("Begin TLS negotiation, mate")


def _split(line: bytes) -> list[bytes]:
    """perdition's words: split at spaces outside double quotes (a ``"``
    toggles, backslashes do not escape); two spaces make an empty word."""
    words, start, quoted = [], 0, False
    for index, byte in enumerate(line):
        if byte == 0x22:
            quoted = not quoted
        elif byte == 0x20 and not quoted:
            words.append(line[start:index])
            start = index + 1
    words.append(line[start:])
    return words


# ------------------------------------------------------------------ back-end


class _Step:  # plain constants: an Enum member costs a lookup hook on 3.11
    GREETING = "greeting"     # reading the capability lines up to OK
    STARTTLS = "starttls"     # sent STARTTLS; waiting for OK
    TLS_GREETING = "tls"      # after the handshake: the capability again
    AUTH = "auth"             # sent AUTHENTICATE; waiting for the reply
    DONE = "done"


class _BadToken(Exception):
    """A back-end capability line perdition cannot read (it gives up)."""


def _line_words(line: bytes) -> list[bytes]:
    """A back-end capability line as words: quoted strings keep their quotes."""
    return [word for word in _split(line) if word != b""] or [b""]


class ManageSieveBackendLogin:
    """Logs in to the real ManageSieve server: one instance per attempt.

    ``our_greeting`` is :attr:`ManageSieveFrontEnd.greeting_line`; a back-end
    whose greeting ends in that line is ourselves (a loop).  ``authzid`` is
    passed through as perdition does; the response is
    ``authzid NUL user NUL password`` in base64, so any byte is safe.

    ``starttls`` (``tls_outgoing``): when the greeting lists ``"STARTTLS"``,
    send STARTTLS; on its OK the engine emits :class:`StartTLS` (the session
    runs the handshake), reads the capability the server sends again, then
    authenticates.  ``require_tls`` (``tls_outgoing_force``): a server without
    STARTTLS ends in ``LoginStatus.TLS_NOT_PRESENT``.
    """

    def __init__(self, user: str, password: str, *, our_greeting: bytes,
                 authzid: str | None = None, starttls: bool = False,
                 require_tls: bool = False) -> None:
        self._starttls = starttls
        self._require_tls = require_tls
        self._offers_tls = False
        self._response = encode_plain(authzid, user, password)
        ours = our_greeting.removesuffix(b"\n").removesuffix(b"\r")
        self._ours = {ours, b"OK " + _text(ours)}
        self._input = _Input(limits.MAX_BACKEND_LINE)
        self._step = _Step.GREETING
        self._plain = False
        self._literal_left = 0
        self._literal_end = False  # the rest of a line after a literal is due
        self._outbox: deque[ToBackend | StartTLS | LoginResult] = deque()

    def receive_data(self, data: bytes) -> None:
        """Bytes from the back-end; ``b""`` at end of input."""
        self._input.feed(data)

    def quit_bytes(self) -> bytes:
        """What perdition sends after a failed login (it then reads one reply line)."""
        return b"LOGOUT" + CRLF

    def next_event(self) -> ToBackend | StartTLS | LoginResult | NeedData:
        while not self._outbox:
            if self._step is _Step.DONE:
                return NEED_DATA
            if self._literal_left:
                self._literal_left -= self._input.discard(self._literal_left)
                if self._literal_left:
                    if self._input.eof:
                        self._finish(LoginStatus.PROTOCOL_ERROR)
                        continue
                    return NEED_DATA
            line = self._input.line()
            if line is None and not self._input.eof:
                return NEED_DATA
            if line is None:  # the back-end closed; keep what it said for the log
                self._finish(LoginStatus.PROTOCOL_ERROR, self._input.take_rest())
            elif line is TOO_LONG:
                self._finish(LoginStatus.PROTOCOL_ERROR)
            elif self._literal_end:
                # The literal must end its line, as perdition reads them.
                self._literal_end = False
                if line != b"":
                    self._finish(LoginStatus.PROTOCOL_ERROR, line)
            elif self._step in (_Step.GREETING, _Step.TLS_GREETING):
                self._greeting_line(line)
            elif self._step is _Step.STARTTLS:
                self._starttls_reply(line)
            else:
                ok = line.split(b" ", 1)[0].upper() == b"OK"
                self._finish(LoginStatus.OK if ok else LoginStatus.REJECTED, line)
        return self._outbox.popleft()

    def _greeting_line(self, line: bytes) -> None:
        words = _line_words(line)
        first = words[0]
        try:
            kind = _token_kind(first)
            if kind == "atom":
                self._greeting_end(line, first)
                return
            self._note_capability(line, words)
        except _BadToken:
            self._finish(LoginStatus.PROTOCOL_ERROR, line)

    def _note_capability(self, line: bytes, words: list[bytes]) -> None:
        for word in words[1:]:
            if _token_kind(word) == "atom":  # perdition takes any atom for the end
                self._greeting_end(line, word)
                return
        last = _LITERAL.match(words[-1])
        if last is not None:  # skipped: perdition reads literals only to ignore them
            self._literal_left = int(last.group(1))
            self._literal_end = True
        self._offers_tls = self._offers_tls or words[0] == _STARTTLS.encode()
        if words[0] == b'"SASL"' and len(words) > 1 and _is_quoted(words[1]):
            mechanisms = words[1][1:-1].upper().split()
            self._plain = self._plain or b"PLAIN" in mechanisms

    def _greeting_end(self, line: bytes, atom: bytes) -> None:
        # A final line other than OK is perdition's "Connection Negotiation Failure".
        if atom != b"OK" or line in self._ours:
            self._finish(LoginStatus.LOOP, line)
            return
        if self._step is _Step.GREETING and self._starttls:
            if self._offers_tls:
                self._input.take_rest()
                self._step = _Step.STARTTLS
                self._outbox.append(ToBackend(b"STARTTLS" + CRLF))
                return
            if self._require_tls:
                self._finish(LoginStatus.TLS_NOT_PRESENT, line)
                return
        if not self._plain:
            self._finish(LoginStatus.MECHANISM_UNAVAILABLE, line)
            return
        # perdition flushes its input here: nothing sent with the greeting is
        # taken for the answer to AUTHENTICATE.
        self._input.take_rest()
        self._step = _Step.AUTH
        self._outbox.append(ToBackend(b'AUTHENTICATE "PLAIN" "' + self._response + b'"' + CRLF))

    def _starttls_reply(self, line: bytes) -> None:
        if line.split(b" ", 1)[0].upper() != b"OK":
            self._finish(LoginStatus.LOOP, line)  # perdition: "Connection Negotiation Failure"
            return
        # Plain-text bytes after OK must not be read as TLS data.
        self._input.take_rest()
        self._step = _Step.TLS_GREETING
        self._plain = False  # RFC 5804: the capability after TLS is what counts
        self._outbox.append(StartTLS())

    def _finish(self, status: LoginStatus, line: bytes = b"") -> None:
        self._step = _Step.DONE
        trailing = self._input.take_rest()
        self._outbox.append(LoginResult(status, server_line=line, trailing=trailing))


def _token_kind(word: bytes) -> str:
    if _LITERAL.match(word):
        return "literal"
    if _is_quoted(word):
        return "quoted"
    if word and len(word) <= _QUOTED_MAX and re.fullmatch(rb"[!#-'*-\[\]-z|-~]+", word):
        return "atom"
    raise _BadToken(word)
