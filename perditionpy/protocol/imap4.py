"""IMAP4 as perdition 2.2 speaks it, sans-I/O.

* :class:`Imap4FrontEnd` — the client side before authentication: greeting,
  CAPABILITY, NOOP, LOGOUT, AUTHENTICATE (refused), STARTTLS (under
  ``tls_listen``), LOGIN with atoms, quoted strings and literals ({n} and {n+}).
* :class:`Imap4BackendLogin` — logging in to the real server for the client:
  greeting (loop detection), under ``tls_outgoing`` CAPABILITY and STARTTLS,
  CAPABILITY (LOGINDISABLED check), then ``LOGIN {n}`` user ``{m}`` password as
  synchronising literals, as perdition does, so any byte in a name or password
  reaches the server intact.

Reply texts are perdition's, byte for byte; see tests/unit/test_imap4_*.py.
"""

from __future__ import annotations

from typing import Protocol

from perditionpy.protocol import _imap4_syntax as syntax
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
    ToClient,
    decode_name,
)

__all__ = ["Imap4FrontEnd", "Imap4BackendLogin", "Imap4Options", "greeting_text", "capability"]

CRLF = b"\r\n"
GREETING = "perdition ready on"
CONTINUE = b"+ OK ready for additional input\r\n"
_LOGIN_SYNTAX = "Mate, try LOGIN <username> <passwd>"
_TAG_START = b"flim07"


class Imap4Options(Protocol):
    imap_capability: str
    login_disabled: bool


def capability(options: Imap4Options, *, tls_listen: bool = False, tls_force: bool = False,
               tls_active: bool = False) -> str:
    """The capability list we advertise, as perdition rewrites ``--imap_capability``.

    STARTTLS is listed while it can be used (``tls_listen`` and TLS not yet
    active; a configured STARTTLS keeps its place, a missing one goes last) and
    removed otherwise.  LOGINDISABLED is added under ``--login_disabled``, and
    under ``tls_listen_force`` (``tls_force``) until TLS is active.
    """
    words = options.imap_capability.split()
    upper = [w.upper() for w in words]
    if tls_listen and not tls_active:
        if "STARTTLS" not in upper:
            words.append("STARTTLS")
    else:
        words = [w for w in words if w.upper() != "STARTTLS"]
    if options.login_disabled or (tls_force and not tls_active):
        if "LOGINDISABLED" not in upper:
            words.append("LOGINDISABLED")
    elif tls_force:
        words = [w for w in words if w.upper() != "LOGINDISABLED"]
    return " ".join(words)


def greeting_text(options: Imap4Options, host: str, checksum: int, *,
                  tls_listen: bool = False, tls_force: bool = False) -> str:
    """What follows ``* OK `` in our greeting; also what loop detection compares."""
    words = capability(options, tls_listen=tls_listen, tls_force=tls_force)
    return f"[CAPABILITY {words}] {GREETING} {host} {checksum:08x}"


# Greeting texts already worked out, by (options, host, checksum, tls_listen,
# tls_force): every connection to one address gets the same one.
_GREETINGS: dict[tuple[int, str, int, bool, bool], tuple[Imap4Options, str]] = {}
_GREETINGS_KEPT = 64


def _greeting_text_for(options: Imap4Options, host: str, checksum: int, tls_listen: bool,
                       tls_force: bool) -> str:
    """:func:`greeting_text`, remembered (the options object is kept with it, so a
    new one after SIGHUP never finds an old text)."""
    key = (id(options), host, checksum, tls_listen, tls_force)
    known = _GREETINGS.get(key)
    if known is not None and known[0] is options:
        return known[1]
    text = greeting_text(options, host, checksum, tls_listen=tls_listen, tls_force=tls_force)
    if len(_GREETINGS) >= _GREETINGS_KEPT:
        _GREETINGS.clear()
    _GREETINGS[key] = (options, text)
    return text


def _line(tag: bytes | None, *words: str | bytes) -> bytes:
    parts = [tag if tag is not None else b"*"]
    for word in words:
        parts.append(word.encode("utf-8", "surrogateescape") if isinstance(word, str) else word)
    return b" ".join(parts) + CRLF


class _State:  # plain constants: an Enum member costs a lookup hook on 3.11
    COMMANDS = "commands"          # reading pre-authentication commands
    WAITING = "waiting"            # Credentials emitted; the session is deciding
    CLOSED = "closed"


class Imap4FrontEnd:
    """The client conversation up to a successful login.

    ``tls_listen`` (``--ssl_mode tls_listen``): STARTTLS is offered and accepted
    once; the engine then emits :class:`StartTLS` and drops whatever the client
    pipelined after the command (it arrived in plain text: STARTTLS command
    injection).  ``tls_force`` (``tls_listen_force``): LOGINDISABLED is
    announced until TLS is active; refusing the login itself is the session's
    business.
    """

    def __init__(self, options: Imap4Options, *, greeting_host: str, checksum: int,
                 tls_listen: bool = False, tls_force: bool = False) -> None:
        self._options = options
        self._greeting = _greeting_text_for(options, greeting_host, checksum, tls_listen,
                                            tls_force)
        self._reader = syntax.CommandReader()
        self._state = _State.COMMANDS
        self._tag: bytes | None = None
        self._tls_listen = tls_listen
        self._tls_force = tls_force
        self._tls_active = False
        self._starttls_pending = False

    # -- output the session asks for ------------------------------------

    def greeting(self) -> bytes:
        return _line(None, "OK", self._greeting)

    @property
    def greeting_line(self) -> bytes:
        """Our greeting after ``* OK `` — what a looping back-end would send."""
        return self._greeting.encode()

    def reply_failure(self, text: str) -> bytes:
        """``<tag> NO <text>`` for the pending login; back to pre-auth."""
        return self._answer_login(_line(self._tag, "NO", text))

    def reply_ok(self, text: str) -> bytes:
        return self._answer_login(_line(self._tag, "OK", text))

    def reply_raw(self, line: bytes) -> bytes:
        """The back-end's final reply (tag stripped) under the client's tag."""
        return self._answer_login(_line(self._tag, line))

    def pending_data(self) -> bytes:
        """Bytes the client pipelined after LOGIN, for the back-end once logged in."""
        return self._reader.take_remaining()

    def _answer_login(self, data: bytes) -> bytes:
        self._state = _State.COMMANDS
        return data

    # -- input ------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        self._reader.feed(data)

    def next_event(self) -> Send | Credentials | StartTLS | ClientClosed | NeedData:
        if self._starttls_pending:
            self._starttls_pending = False
            return StartTLS()
        if self._state is _State.CLOSED:
            return ClientClosed()
        if self._state is _State.WAITING:
            return NEED_DATA
        item = self._reader.next()
        if item is None:
            return self._end_of_input() if self._reader.eof else NEED_DATA
        return self._dispatch(item)

    def _end_of_input(self) -> ClientClosed:
        self._state = _State.CLOSED
        return ClientClosed(error=self._reader.mid_command)

    def _dispatch(self, item: syntax.Item) -> Send | Credentials | ClientClosed:
        if isinstance(item, syntax.Continue):
            return Send(CONTINUE)
        if isinstance(item, syntax.LineTooLong):
            return self._bad(item.tag, "Line too long, mate")
        if isinstance(item, syntax.BadLiteral):
            return self._bad_literal(item)
        return self._command(item)

    def _bad(self, tag: bytes, text: str, *, close: bool = False) -> Send:
        if not syntax.valid_tag(tag):
            tag = b"*"
        if close:
            self._state = _State.CLOSED
        return Send(_line(tag, "BAD", text), delay=True, close=close)

    def _bad_literal(self, item: syntax.BadLiteral) -> Send:
        return self._bad(item.tag, "Literal too long, mate", close=item.fatal)

    def _command(self, cmd: syntax.Command) -> Send | Credentials | ClientClosed:
        if not syntax.valid_tag(cmd.tag):
            return self._bad(b"*", "Invalid tag, mate")
        if not cmd.name:
            return self._bad(cmd.tag, "Missing command, mate")
        if cmd.bad:
            return self._bad(cmd.tag, f"Bad syntax ({cmd.bad}), mate")
        handler = _COMMANDS.get(cmd.name.upper())
        if handler is None:
            return self._bad(cmd.tag, "Unrecognised command, mate")
        return handler(self, cmd)

    def _no_args(self, cmd: syntax.Command) -> Send | None:
        if cmd.args:
            name = cmd.name.upper().decode("ascii", "replace")
            return self._bad(cmd.tag, f"Argument given to {name} but there shouldn't be one, mate")
        return None

    def _noop(self, cmd: syntax.Command) -> Send:
        return self._no_args(cmd) or Send(_line(cmd.tag, "OK", "NOOP"))

    def _capability(self, cmd: syntax.Command) -> Send:
        return self._no_args(cmd) or Send(
            _line(None, "CAPABILITY", self._capability_words())
            + _line(cmd.tag, "OK", "CAPABILITY"))

    def _logout(self, cmd: syntax.Command) -> Send:
        refused = self._no_args(cmd)
        if refused:
            return refused
        self._state = _State.CLOSED
        return Send(_line(None, "BYE", "IMAP4 server logging out, mate")
                    + _line(cmd.tag, "OK", "LOGOUT"), close=True)

    def _authenticate(self, cmd: syntax.Command) -> Send:
        if len(cmd.args) != 1:
            return self._bad(cmd.tag, "Mate, try AUTHENTICATE <mechanism>")
        return Send(_line(cmd.tag, "NO", "AUTHENTICATE mechanism not supported, mate"))

    def _capability_words(self) -> str:
        return capability(self._options, tls_listen=self._tls_listen,
                          tls_force=self._tls_force, tls_active=self._tls_active)

    def _starttls(self, cmd: syntax.Command) -> Send:
        refused = self._no_args(cmd)
        if refused:
            return refused
        if not self._tls_listen:
            return self._bad(cmd.tag, "STARTTLS disabled, mate")
        if self._tls_active:
            return self._bad(cmd.tag, "SSL already active, mate")
        self._tls_active = True
        self._reader.take_remaining()  # plain-text bytes must not count as encrypted
        self._starttls_pending = True
        return Send(_line(cmd.tag, "OK", "Begin TLS negotiation now"))

    def _login(self, cmd: syntax.Command) -> Send | Credentials:
        if len(cmd.args) != 2:
            return self._bad(cmd.tag, _LOGIN_SYNTAX)
        user, password = cmd.args
        if _unsafe(user) or b"\x00" in password:
            return self._bad(cmd.tag, _LOGIN_SYNTAX)
        self._tag = cmd.tag
        self._state = _State.WAITING
        return Credentials(decode_name(user), decode_name(password), tag=cmd.tag)


def _unsafe(name: bytes) -> bool:
    """Bytes a user name may never carry: they would split or truncate it."""
    return any(c in name for c in (0, 0x0A, 0x0D))


_COMMANDS = {
    b"NOOP": Imap4FrontEnd._noop,
    b"CAPABILITY": Imap4FrontEnd._capability,
    b"LOGOUT": Imap4FrontEnd._logout,
    b"AUTHENTICATE": Imap4FrontEnd._authenticate,
    b"STARTTLS": Imap4FrontEnd._starttls,
    b"LOGIN": Imap4FrontEnd._login,
}


# ------------------------------------------------------------------ back-end


def next_tag(tag: bytes) -> bytes:
    """perdition's tag sequence: the last character counts 0-9, a-z, A-Z."""
    last = tag[-1] if tag else 0
    if 0x30 <= last < 0x39 or 0x61 <= last < 0x7A or 0x41 <= last < 0x5A:
        return tag[:-1] + _BYTE[last + 1]  # the usual case: no carry
    chars = bytearray(tag)
    for i in range(len(chars) - 1, -1, -1):
        c = chars[i]
        if 0x30 <= c < 0x39 or 0x61 <= c < 0x7A or 0x41 <= c < 0x5A:
            chars[i] = c + 1
            return bytes(chars)
        if c == 0x39:
            chars[i] = 0x61
            return bytes(chars)
        if c == 0x7A:
            chars[i] = 0x41
            return bytes(chars)
        chars[i] = 0x30  # 'Z' or anything else wraps and carries
    return bytes(chars)


_BYTE = [bytes((value,)) for value in range(256)]


class _Step:  # plain constants: an Enum member costs a lookup hook on 3.11
    GREETING = "greeting"
    TLS_CAPABILITY = "tls_capability"  # tls_outgoing: does the server offer STARTTLS?
    STARTTLS = "starttls"        # sent STARTTLS; waiting for the tagged reply
    CAPABILITY = "capability"
    LOGIN = "login"              # sent LOGIN {n}; waiting for "+"
    USER = "user"                # sent user {m}; waiting for "+"
    PASSWORD = "password"        # sent password; waiting for the tagged reply
    DONE = "done"


class Imap4BackendLogin:
    """Logs in to the real server: one instance per attempt.

    perdition's dialogue: CAPABILITY, then LOGIN with the user and the password
    as synchronising literals.  When the greeting carries the server's
    capabilities (RFC 3501 7.1) and they allow LOGIN, the LOGIN line goes out
    with CAPABILITY in one write: the server gets the same bytes, one round trip
    sooner.  CAPABILITY's answer is still read and judged as perdition does.

    ``starttls`` (``tls_outgoing``): after the greeting, ask for CAPABILITY and,
    if STARTTLS is listed, send it; on its OK the engine emits
    :class:`StartTLS` (the session then runs the handshake) and carries on with
    CAPABILITY and LOGIN.  ``require_tls`` (``tls_outgoing_force``): a server
    without STARTTLS ends the attempt as ``LoginStatus.TLS_NOT_PRESENT``.
    """

    def __init__(self, user: str, password: str, *, our_greeting: bytes,
                 tag: bytes = _TAG_START, starttls: bool = False,
                 require_tls: bool = False) -> None:
        self._user = user.encode("utf-8", "surrogateescape")
        self._password = password.encode("utf-8", "surrogateescape")
        self._our_greeting = our_greeting
        self.tag = tag
        self._buf = bytearray()
        self._eof = False
        self._step = _Step.GREETING
        self._logindisabled = False
        self._capability_read = False
        self._starttls = starttls
        self._require_tls = require_tls
        self._offers_starttls = False
        self._login_sent = False  # LOGIN went out with CAPABILITY (see the class)
        self._outbox: list[ToBackend | ToClient | StartTLS | LoginResult] = []

    def receive_data(self, data: bytes) -> None:
        if data:
            self._buf += data
        else:
            self._eof = True

    def quit_bytes(self) -> bytes:
        """The LOGOUT perdition sends after a failed login."""
        return self.tag + b" LOGOUT" + CRLF

    def next_event(self) -> ToBackend | ToClient | StartTLS | LoginResult | NeedData:
        while not self._outbox:
            if self._step is _Step.DONE:
                return NEED_DATA
            line = self._read_line()
            if line is None:
                if self._eof:
                    self._finish(LoginStatus.PROTOCOL_ERROR)
                    break
                return NEED_DATA
            self._handle(line)
        return self._outbox.pop(0)

    # -- internals -------------------------------------------------------

    def _read_line(self) -> bytes | None:
        end = self._buf.find(b"\n")
        if end < 0:
            if len(self._buf) > 64 * 1024:
                self._eof = True  # a back-end that never ends a line: give up
            return None
        line = bytes(self._buf[: end + 1])
        del self._buf[: end + 1]
        return line

    def _finish(self, status: LoginStatus, line: bytes = b"") -> None:
        self._step = _Step.DONE
        trailing = bytes(self._buf)
        self._buf.clear()
        self._outbox.append(LoginResult(status, server_line=line, trailing=trailing))

    def _send(self, data: bytes) -> None:
        self._outbox.append(ToBackend(data))

    def _handle(self, raw: bytes) -> None:
        line = raw.rstrip(b"\r\n")
        if self._step is _Step.GREETING:
            self._greeting(line)
        elif line.startswith(b"* "):
            self._untagged(line, raw)
        elif self._step in (_Step.LOGIN, _Step.USER) and line.startswith(b"+"):
            self._continuation()
        elif line.startswith(self.tag + b" "):
            self._tagged(line[len(self.tag) + 1 :])
        else:
            self._finish(LoginStatus.PROTOCOL_ERROR, line)

    def _greeting(self, line: bytes) -> None:
        if not line.upper().startswith(b"* OK"):
            self._finish(LoginStatus.PROTOCOL_ERROR, line)
        elif line[5:] == self._our_greeting:
            self._finish(LoginStatus.LOOP, line)
        elif self._starttls:
            self._capability(_Step.TLS_CAPABILITY)
        else:
            self._login_sent = _greeting_allows_login(line)
            self._capability(_Step.CAPABILITY, self._login_line(next_tag(self.tag))
                             if self._login_sent else b"")

    def _capability(self, step: str, then: bytes = b"") -> None:
        """Ask for CAPABILITY (``then``: the next command, in the same write)."""
        self._step = step
        self._capability_read = False
        self._send(self.tag + b" CAPABILITY" + CRLF + then)

    def _untagged(self, line: bytes, raw: bytes) -> None:
        asking = self._step in (_Step.CAPABILITY, _Step.TLS_CAPABILITY)
        if asking and not self._capability_read:
            words = line.upper().split()
            if len(words) > 1 and words[1] == b"CAPABILITY":
                self._capability_read = True
                self._logindisabled = b"LOGINDISABLED" in words[2:]
                self._offers_starttls = b"STARTTLS" in words[2:]
                return
        # perdition consumes only the reply to its own CAPABILITY; it passes every
        # other untagged line on to the client (e.g. the capabilities Dovecot
        # announces with a successful LOGIN).
        self._outbox.append(ToClient(line + CRLF))

    def _tagged(self, rest: bytes) -> None:
        ok = rest.split(b" ", 1)[0].upper() == b"OK"
        if self._step is _Step.CAPABILITY:
            self._after_capability(ok, rest)
        elif self._step is _Step.TLS_CAPABILITY:
            self.tag = next_tag(self.tag)
            self._after_tls_capability(rest)
        elif self._step is _Step.STARTTLS:
            self.tag = next_tag(self.tag)
            self._after_starttls(ok, rest)
        else:
            # Either the reply to the password, or the server refused LOGIN
            # before taking the literals; the next command gets a fresh tag.
            self.tag = next_tag(self.tag)
            ok = ok and self._step is _Step.PASSWORD
            self._finish(LoginStatus.OK if ok else LoginStatus.REJECTED, rest)

    def _after_capability(self, ok: bool, rest: bytes) -> None:
        self.tag = next_tag(self.tag)
        if not ok:
            self._finish(LoginStatus.PROTOCOL_ERROR, rest)
        elif self._logindisabled:
            if self._login_sent:  # (against its greeting) the LOGIN sent has this tag
                self.tag = next_tag(self.tag)
            self._finish(LoginStatus.LOGIN_DISABLED, rest)
        else:
            self._step = _Step.LOGIN
            if not self._login_sent:
                self._send(self._login_line(self.tag))

    def _login_line(self, tag: bytes) -> bytes:
        return tag + b" LOGIN " + syntax_literal(self._user)

    def _after_tls_capability(self, rest: bytes) -> None:
        if self._offers_starttls:
            self._step = _Step.STARTTLS
            self._send(self.tag + b" STARTTLS" + CRLF)
        elif self._require_tls:
            self._finish(LoginStatus.TLS_NOT_PRESENT, rest)
        else:  # perdition carries on in plain text, asking for CAPABILITY again
            self._capability(_Step.CAPABILITY)

    def _after_starttls(self, ok: bool, rest: bytes) -> None:
        if not ok:
            if self._require_tls:
                self._finish(LoginStatus.TLS_NOT_PRESENT, rest)
            else:
                self._capability(_Step.CAPABILITY)
            return
        # Anything after the OK came in plain text: a man in the middle's
        # injection, never the answer to a command we send over TLS.
        self._buf.clear()
        self._outbox.append(StartTLS())
        self._capability(_Step.CAPABILITY)

    def _continuation(self) -> None:
        if self._step is _Step.LOGIN:
            self._step = _Step.USER
            self._send(self._user + b" " + syntax_literal(self._password))
        else:
            self._step = _Step.PASSWORD
            self._send(self._password + CRLF)


def _greeting_allows_login(line: bytes) -> bool:
    """Whether a greeting (``* OK [CAPABILITY ...] ...``) lists the server's
    capabilities, IMAP4rev1 among them and LOGINDISABLED not."""
    upper = line.upper()
    if not upper.startswith(b"* OK [CAPABILITY "):
        return False
    end = upper.find(b"]", 17)
    words = upper[17:end].split() if end > 0 else []
    return b"IMAP4REV1" in words and b"LOGINDISABLED" not in words


def syntax_literal(data: bytes) -> bytes:
    """``{n}`` + CRLF announcing ``data`` as a synchronising literal."""
    return b"{%d}" % len(data) + CRLF
