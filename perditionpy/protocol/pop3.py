"""POP3 as perdition 2.2 speaks it, sans-I/O.

* :class:`Pop3FrontEnd` — the client side before authentication: the greeting,
  CAPA, USER, PASS, QUIT, STLS (only when the session enables it) and
  perdition's answers to everything else, byte for byte.
* :class:`Pop3BackendLogin` — logging in to the real server for the client:
  the greeting (loop detection), under ``tls_outgoing`` CAPA and STLS, then
  ``USER`` and ``PASS``.

Lines end at LF; one CR before it is dropped.  Reply texts and which replies
come after perdition's 3-second pause (``Send.delay``) were recorded from the
Debian binary: see tests/corpus/pop3/ and tests/unit/test_pop3_*.py.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
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
    "Pop3FrontEnd", "Pop3BackendLogin", "Pop3Options", "capability_block", "greeting_text",
]

log = logging.getLogger(__name__)

CRLF = b"\r\n"
OK = b"+OK"
ERR = b"-ERR"
GREETING = "POP3 perditon ready on"  # sic: perdition's spelling, and what loop detection compares
_CAPA_HEAD = b"+OK Capability list follows, mate\r\n"
_QUIT_REPLY = b"+OK QUIT\r\n"
_STLS_REPLY = b"+OK Begin TLS negotiation, mate\r\n"
_DELIMITER = "."                  # perdition >= 1.18 capability delimiter
_OLD_DELIMITER = "  "             # before 1.18: two spaces; used when there is no "."


class Pop3Options(Protocol):
    """What the engines read from ``Options`` (read-only, so a frozen one fits)."""

    @property
    def pop_capability(self) -> str: ...


# ------------------------------------------------------------------ lines


class _TooLong(enum.Enum):
    TOO_LONG = "too long"


TOO_LONG = _TooLong.TOO_LONG


class _LineReader:
    """A byte stream cut into lines at LF, each at most ``limit`` bytes.

    An over-long line is reported once, as soon as it is known to be too long,
    and the rest of it (up to its LF) is dropped unseen.
    """

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
    def mid_line(self) -> bool:
        """True when part of a line has arrived without its LF."""
        return bool(self._buf) or self._skipping

    def next_line(self) -> bytes | _TooLong | None:
        """The next line without its line end, ``TOO_LONG``, or None for "need more"."""
        while True:
            end = self._buf.find(b"\n")
            if end < 0:
                return self._overflow()
            line = bytes(self._buf[:end])
            del self._buf[: end + 1]
            if not self._skipping:
                return self._checked(line)
            self._skipping = False  # the tail of a line already refused

    def _checked(self, line: bytes) -> bytes | _TooLong:
        if line.endswith(b"\r"):
            line = line[:-1]
        return TOO_LONG if len(line) > self._limit else line

    def _overflow(self) -> _TooLong | None:
        if len(self._buf) <= self._limit + 1:  # + 1: room for the CR before the LF
            return None
        self._buf.clear()
        if self._skipping:
            return None
        self._skipping = True
        return TOO_LONG

    def take_rest(self) -> bytes:
        """Everything buffered and not yet read as a line; the buffer is emptied."""
        rest = bytes(self._buf)
        self._buf.clear()
        return rest


def _unsafe(value: bytes) -> bool:
    """NUL or CR: perdition truncates at the NUL / drops the CR; either would
    let the back-end see another name than the one checked and logged."""
    return b"\x00" in value or b"\r" in value


# ------------------------------------------------------------------ front-end


def greeting_text(host: str, checksum: int) -> str:
    """What follows ``+OK `` in our greeting; also what loop detection compares."""
    return f"{GREETING} {host} {checksum & 0xFFFFFFFF:08x}"


def capability_block(spec: str, *, offer_stls: bool = False) -> bytes:
    """The lines after ``+OK Capability list follows, mate``, ending in ``.``.

    ``spec`` is ``--pop_capability``: items separated by ``.``, or by two
    spaces when it contains no ``.`` at all (the pre-1.18 syntax).  STLS is
    listed only when it can be used (``offer_stls``), as perdition does.
    """
    delimiter = _DELIMITER if _DELIMITER in spec else _OLD_DELIMITER
    items = spec.split(delimiter)
    if not offer_stls:
        items = [item for item in items if item != "STLS"]
    elif "STLS" not in items:
        items.append("STLS")  # a configured STLS keeps its place; a missing one goes last
    # Empty items ("UIDL..USER", "") would be empty lines in the list: skipped.
    return b"".join(encode_name(item) + CRLF for item in items if item) + b"." + CRLF


class _Phase:  # plain constants: an Enum member costs a lookup hook on 3.11
    COMMANDS = "commands"   # reading pre-authentication commands
    WAITING = "waiting"     # Credentials emitted; the session is deciding
    CLOSED = "closed"       # QUIT or end of input


def _err(text: str, *, delay: bool = True) -> Send:
    return Send(ERR + b" " + text.encode() + CRLF, delay=delay)


class Pop3FrontEnd:
    """The client conversation up to a successful login.

    ``tls_listen`` is the STLS hook: when true (``--ssl_mode tls_listen``),
    CAPA lists STLS and STLS is accepted once; the engine then emits
    :class:`StartTLS`, drops anything the client pipelined after STLS (it
    arrived in plain text) and forgets USER, as perdition does.
    """

    def __init__(self, options: Pop3Options, *, greeting_host: str, checksum: int,
                 tls_listen: bool = False, tls_force: bool = False) -> None:
        # tls_force (tls_listen_force) changes nothing POP3 shows: the session
        # refuses PASS before STLS.
        self._capability = options.pop_capability
        self._greeting = greeting_text(greeting_host, checksum)
        self._reader = _LineReader(limits.MAX_LINE_LENGTH)
        self._phase = _Phase.COMMANDS
        self._user: bytes | None = None
        self._tls_listen = tls_listen
        self._tls_active = False
        self._queued: deque[StartTLS] = deque()

    # -- output the session asks for ------------------------------------

    def greeting(self) -> bytes:
        return OK + b" " + self.greeting_line + CRLF

    @property
    def greeting_line(self) -> bytes:
        """Our greeting after ``+OK `` — what a looping back-end would send."""
        return self._greeting.encode()

    def reply_failure(self, text: str) -> bytes:
        """``-ERR <text>`` for the pending login; back to pre-auth, USER forgotten."""
        return self._answer_login(ERR + b" " + encode_name(text) + CRLF)

    def reply_ok(self, text: str) -> bytes:
        """``+OK <text>`` (``--ok_line``) for a successful login."""
        return self._answer_login(OK + b" " + encode_name(text) + CRLF)

    def reply_raw(self, line: bytes) -> bytes:
        """The back-end's final line (``--server_resp_line``), passed through."""
        return self._answer_login(line + CRLF)

    def pending_data(self) -> bytes:
        """Bytes the client pipelined after PASS: after a successful login they
        belong to the back-end (perdition 2.2 drops them)."""
        return self._reader.take_rest()

    def _answer_login(self, data: bytes) -> bytes:
        self._phase = _Phase.COMMANDS
        self._user = None
        return data

    # -- input ------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes from the client; ``b""`` at end of input."""
        self._reader.feed(data)

    def next_event(self) -> Send | Credentials | StartTLS | ClientClosed | NeedData:
        if self._queued:
            return self._queued.popleft()
        if self._phase is _Phase.CLOSED:
            return ClientClosed()
        if self._phase is _Phase.WAITING:
            return NEED_DATA
        line = self._reader.next_line()
        if line is None:
            return self._end_of_input() if self._reader.eof else NEED_DATA
        if line is TOO_LONG:
            return _err("Line too long, mate")
        return self._command(line)

    def _end_of_input(self) -> ClientClosed:
        self._phase = _Phase.CLOSED
        return ClientClosed(error=self._reader.mid_line)

    def _command(self, line: bytes) -> Send | Credentials:
        word, space, rest = line.partition(b" ")
        if not word:
            return _err("Null command, mate")
        if len(word) != 4:
            return self._invalid(word, "the command is too short, ")
        name = word.upper()
        if name == b"STLS" and not self._tls_listen:
            return self._invalid(word, "the command ")
        handler = _COMMANDS.get(name)
        if handler is None:
            return self._invalid(word, "the command ")
        return handler(self, bool(space), rest)

    def _invalid(self, word: bytes, what: str) -> Send:
        offer = "STLS, " if self._offer_stls else ""
        # perdition answers AUTH at once so that clients fall back to USER/PASS
        # quickly; its prefix comparison also spares "A", "AU" and "AUT".
        delay = not b"AUTH".startswith(word.upper())
        return _err(f"Mate, {what}must be one of {offer}CAPA, USER, PASS or QUIT", delay=delay)

    @property
    def _offer_stls(self) -> bool:
        return self._tls_listen and not self._tls_active

    # -- the commands; ``args``: anything after the command word ----------

    def _capa(self, args: bool, rest: bytes) -> Send:
        if args:
            return _err("Mate, try: CAPA")
        return Send(_CAPA_HEAD + capability_block(self._capability, offer_stls=self._offer_stls))

    def _user_cmd(self, args: bool, rest: bytes) -> Send:
        # Exactly one non-empty word: "USER a b", "USER  a" and "USER a " are refused.
        if not args or not rest or b" " in rest or _unsafe(rest):
            return _err("Mate, try: USER <username>")
        self._user = rest
        return Send(OK + b" USER " + rest + b" set, mate" + CRLF)

    def _pass(self, args: bool, rest: bytes) -> Send | Credentials:
        if self._user is None:
            return _err("USER not yet set, mate")
        if not args or _unsafe(rest):
            return _err("Mate, try: PASS <password>")
        # The password is the rest of the line verbatim, spaces and all (even empty).
        self._phase = _Phase.WAITING
        return Credentials(decode_name(self._user), decode_name(rest))

    def _quit(self, args: bool, rest: bytes) -> Send:
        if args:
            return _err("Mate, try: QUIT")
        self._phase = _Phase.CLOSED
        return Send(_QUIT_REPLY, close=True)

    def _stls(self, args: bool, rest: bytes) -> Send:
        if args:
            return _err("Mate, try: STLS")
        if self._tls_active:
            return _err("TLS already active, mate")
        self._tls_active = True
        self._user = None
        dropped = self._reader.take_rest()
        if dropped:
            log.debug("dropping %d bytes pipelined after STLS", len(dropped))
        self._queued.append(StartTLS())
        return Send(_STLS_REPLY)


_COMMANDS = {
    b"CAPA": Pop3FrontEnd._capa,
    b"USER": Pop3FrontEnd._user_cmd,
    b"PASS": Pop3FrontEnd._pass,
    b"QUIT": Pop3FrontEnd._quit,
    b"STLS": Pop3FrontEnd._stls,
}


# ------------------------------------------------------------------ back-end


class _Step:  # plain constants: an Enum member costs a lookup hook on 3.11
    GREETING = "greeting"
    CAPA = "capa"          # tls_outgoing: sent CAPA; waiting for +OK
    CAPA_LIST = "capa_list"  # reading the capability lines up to "."
    STLS = "stls"          # sent STLS; waiting for +OK
    USER = "user"          # sent USER; waiting for +OK
    PASS = "pass"          # sent PASS; waiting for the final reply
    DONE = "done"


def _is_ok(line: bytes) -> bool:
    """perdition's test: the first space-separated word is ``+OK``, any case."""
    return line.split(b" ", 1)[0].upper() == OK


def _our_text(our_greeting: bytes) -> bytes:
    """Accept our greeting as the text after ``+OK `` or as the whole line."""
    text = our_greeting.removesuffix(b"\n").removesuffix(b"\r")
    return text[len(OK) + 1:] if text.startswith(OK + b" ") else text


class Pop3BackendLogin:
    """Logs in to the real POP3 server: one instance per attempt.

    ``our_greeting`` is :attr:`Pop3FrontEnd.greeting_line` (the whole greeting
    line is accepted too).  A user name or password containing CR, LF or NUL
    would inject a command: the constructor refuses it with ``ValueError``.

    ``starttls`` (``tls_outgoing``): after the greeting send CAPA and, if STLS
    is listed, STLS; on its +OK the engine emits :class:`StartTLS` (the session
    runs the handshake) and goes on with USER.  ``require_tls``
    (``tls_outgoing_force``): a server without STLS ends the attempt as
    ``LoginStatus.TLS_NOT_PRESENT``.
    """

    def __init__(self, user: str, password: str, *, our_greeting: bytes,
                 starttls: bool = False, require_tls: bool = False) -> None:
        self._user = encode_name(user)
        self._password = encode_name(password)
        for value in (self._user, self._password):
            if b"\r" in value or b"\n" in value or b"\x00" in value:
                raise ValueError("POP3 user name or password contains CR, LF or NUL")
        self._ours = _our_text(our_greeting)
        self._reader = _LineReader(limits.MAX_BACKEND_LINE)
        self._step = _Step.GREETING
        self._starttls = starttls
        self._require_tls = require_tls
        self._offers_stls = False
        self._outbox: deque[ToBackend | StartTLS | LoginResult] = deque()

    def receive_data(self, data: bytes) -> None:
        """Bytes from the back-end; ``b""`` at end of input."""
        self._reader.feed(data)

    def quit_bytes(self) -> bytes:
        """What perdition sends after a failed login (it then reads one reply line)."""
        return b"QUIT" + CRLF

    def next_event(self) -> ToBackend | StartTLS | LoginResult | NeedData:
        while not self._outbox:
            if self._step is _Step.DONE:
                return NEED_DATA
            line = self._reader.next_line()
            if line is None and not self._reader.eof:
                return NEED_DATA
            if line is None:  # the back-end closed; keep what it said for the log
                self._finish(LoginStatus.PROTOCOL_ERROR, self._reader.take_rest())
            elif line is TOO_LONG:
                self._finish(LoginStatus.PROTOCOL_ERROR)
            else:
                self._handle(line)
        return self._outbox.popleft()

    def _handle(self, line: bytes) -> None:
        if self._step is _Step.GREETING:
            self._greeting(line)
        elif self._step is _Step.CAPA_LIST:
            self._capa_line(line)
        elif self._step in (_Step.CAPA, _Step.STLS):
            self._tls_reply(line)
        elif not _is_ok(line):
            # perdition treats any answer but +OK as a refusal, garbage included.
            self._finish(LoginStatus.REJECTED, line)
        elif self._step is _Step.USER:
            self._send(_Step.PASS, b"PASS " + self._password + CRLF)
        else:
            self._finish(LoginStatus.OK, line)

    def _greeting(self, line: bytes) -> None:
        # A greeting that is not +OK gets the loop's answer from perdition:
        # "Connection Negotiation Failure", after a QUIT.
        if not _is_ok(line) or line[len(OK) + 1:] == self._ours:
            self._finish(LoginStatus.LOOP, line)
            return
        # perdition flushes its input buffer here: lines that came with the
        # greeting are never taken for the answer to USER.
        self._reader.take_rest()
        if self._starttls:
            self._send(_Step.CAPA, b"CAPA" + CRLF)
        else:
            self._send_user()

    def _send_user(self) -> None:
        self._send(_Step.USER, b"USER " + self._user + CRLF)

    def _capa_line(self, line: bytes) -> None:
        if line == b".":
            self._stls_or_not()
        elif line.split(b" ", 1)[0].upper() == b"STLS":
            self._offers_stls = True

    def _stls_or_not(self, refusal: bytes = b"") -> None:
        if self._offers_stls and self._step is _Step.CAPA_LIST:
            self._send(_Step.STLS, b"STLS" + CRLF)
        elif self._require_tls:
            self._finish(LoginStatus.TLS_NOT_PRESENT, refusal)
        else:  # perdition goes on without TLS
            self._send_user()

    def _tls_reply(self, line: bytes) -> None:
        if not _is_ok(line):  # CAPA or STLS refused
            self._stls_or_not(line)
        elif self._step is _Step.CAPA:
            self._step = _Step.CAPA_LIST
        else:
            # Anything after +OK came in plain text: an injection, never the
            # answer to a command we send over TLS.
            self._reader.take_rest()
            self._outbox.append(StartTLS())
            self._send_user()

    def _send(self, step: str, data: bytes) -> None:
        self._step = step
        self._outbox.append(ToBackend(data))

    def _finish(self, status: LoginStatus, line: bytes = b"") -> None:
        self._step = _Step.DONE
        trailing = self._reader.take_rest()
        self._outbox.append(LoginResult(status, server_line=line, trailing=trailing))
