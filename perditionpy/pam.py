"""Local authentication through PAM (``-a`` / ``--authenticate_in``).

One PAM transaction per login attempt, on the session's own thread:
``pam_start("perdition", user)`` → ``PAM_RHOST`` = the client's address →
``pam_authenticate`` → ``pam_acct_mgmt`` → ``pam_end``, the last on every path.
The conversation answers each hidden prompt (``PAM_PROMPT_ECHO_OFF``) with the
client's password, notes informational and error messages without answering
them, and refuses anything else (a visible prompt has nothing we could
truthfully answer with).

Thread safety: every call has its own handle and its own conversation state;
the one C callback is shared and finds the call's state through
``appdata_ptr`` (``ffi.new_handle``).  libpam is loaded once, under a lock.

What this module decides is only "did PAM accept": :class:`PamResult`.  A PAM
that cannot be asked at all (libpam missing, ``pam_start`` failing) raises
:class:`PamError`, which the session treats as fatal for the connection —
never as a pass.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from perditionpy import _pam_ffi as raw
from perditionpy.errors import PerditionError

__all__ = ["SERVICE", "PamError", "PamResult", "authenticate", "failure_text", "rhost"]

log = logging.getLogger(__name__)

SERVICE = "perdition"

# What perdition answers when PAM says no, per protocol family.
_FAILURE_TEXT = {"IMAP4": "Authentication failure", "POP3": "Authentication failure, mate"}

# Codes that mean the PAM stack itself is broken rather than the credentials wrong.
_BROKEN = frozenset({raw.PAM_OPEN_ERR, raw.PAM_SYMBOL_ERR, raw.PAM_SERVICE_ERR,
                     raw.PAM_SYSTEM_ERR, raw.PAM_BUF_ERR, raw.PAM_ABORT,
                     raw.PAM_MODULE_UNKNOWN})


class PamError(PerditionError):
    """PAM could not be asked: the connection must end, the login never passes."""


@dataclass(frozen=True, slots=True)
class PamResult:
    """PAM's verdict on one login.

    ``step``: the call that refused (``"pam_authenticate"``, ``"pam_acct_mgmt"``,
    ``"pam_set_item"``, or ``"input"`` when we refused before asking PAM);
    ``""`` when accepted.  ``reason``: ``pam_strerror``'s text or ours.
    ``messages``: what PAM's modules said through the conversation, as
    ``(style, text)``, for debugging and tests.
    """

    ok: bool
    step: str = ""
    code: int = raw.PAM_SUCCESS
    reason: str = ""
    messages: tuple[tuple[int, str], ...] = ()


def failure_text(protocol: str) -> str:
    """The text of the refusal for ``protocol``; ``PamError`` if it has none.

    perdition 2.2 has no local authentication for ManageSieve (it ends the
    connection), and neither do we.
    """
    for family, text in _FAILURE_TEXT.items():
        if protocol.startswith(family):
            return text
    raise PamError(f"local authentication is not available for {protocol}")


def rhost(client: tuple[Any, ...] | None) -> str | None:
    """``PAM_RHOST`` for a client address: the numeric host, IPv4-mapped IPv6 unmapped."""
    if client is None:
        return None
    host = str(client[0])
    if host.lower().startswith("::ffff:") and "." in host:
        return host[len("::ffff:"):]
    return host


# --------------------------------------------------------------------------- the library


class _Library:
    """libpam in the global scope, plus the one conversation callback."""

    def __init__(self, soname: str) -> None:
        try:
            self._libpam, self.c = raw.open_global(soname)
        except OSError as exc:
            raise PamError(f"cannot load {soname}: {exc}") from exc
        self.conv = raw.ffi.callback(
            "int(int, const struct pam_message **, struct pam_response **, void *)",
            _converse, error=raw.PAM_CONV_ERR, onerror=_conversation_crashed)

    def strerror(self, pamh: Any, code: int) -> str:
        text = self.c.pam_strerror(pamh, code)
        if text == raw.ffi.NULL:
            return f"PAM error {code}"
        return str(raw.ffi.string(text).decode("utf-8", "replace"))


_library_lock = threading.Lock()
_libraries: dict[str, _Library] = {}


def _library(soname: str) -> _Library:
    with _library_lock:
        if soname not in _libraries:
            _libraries[soname] = _Library(soname)
        return _libraries[soname]


# --------------------------------------------------------------------------- the conversation


@dataclass(slots=True)
class _Conversation:
    """One transaction's side of the conversation."""

    password: bytes
    messages: list[tuple[int, str]] = field(default_factory=list)
    refused: str = ""

    def answer(self, lib: Any, count: int, msgs: Any, out: Any) -> int:
        """Fill ``*out`` with ``count`` answers allocated with C's allocator (PAM frees them)."""
        if not 0 < count <= raw.PAM_MAX_NUM_MSG:
            self.refused = f"conversation asked {count} questions"
            return raw.PAM_CONV_ERR
        if out == raw.ffi.NULL:  # some modules send notices with nowhere to answer
            return self._notices_only(count, msgs)
        block = lib.calloc(count, raw.ffi.sizeof("struct pam_response"))
        if block == raw.ffi.NULL:
            return raw.PAM_BUF_ERR
        replies = raw.ffi.cast("struct pam_response *", block)
        try:
            for i in range(count):
                replies[i].resp = self._reply(lib, msgs[i][0])
        except (_Refuse, MemoryError) as exc:
            _free_replies(lib, replies, count)
            self.refused = str(exc) or "out of memory"
            return raw.PAM_CONV_ERR
        out[0] = replies
        return raw.PAM_SUCCESS

    def _notices_only(self, count: int, msgs: Any) -> int:
        for i in range(count):
            if self._note(msgs[i][0]) not in (raw.PAM_ERROR_MSG, raw.PAM_TEXT_INFO):
                self.refused = "PAM asked a question with nowhere to put the answer"
                return raw.PAM_CONV_ERR
        return raw.PAM_SUCCESS

    def _note(self, message: Any) -> int:
        style = int(message.msg_style)
        text = "" if message.msg == raw.ffi.NULL else raw.ffi.string(message.msg).decode(
            "utf-8", "replace")
        self.messages.append((style, text))
        return style

    def _reply(self, lib: Any, message: Any) -> Any:
        style = self._note(message)
        text = self.messages[-1][1]
        if style == raw.PAM_PROMPT_ECHO_OFF:
            copy = lib.strdup(self.password)
            if copy == raw.ffi.NULL:
                raise MemoryError
            return copy
        if style in (raw.PAM_ERROR_MSG, raw.PAM_TEXT_INFO):
            return raw.ffi.NULL
        raise _Refuse(f"PAM asked something only a person could answer: {text!r}")


class _Refuse(Exception):
    """The conversation will not answer this question."""


def _free_replies(lib: Any, replies: Any, count: int) -> None:
    for i in range(count):
        if replies[i].resp != raw.ffi.NULL:
            lib.free(replies[i].resp)
    lib.free(replies)


def _converse(count: int, msgs: Any, out: Any, appdata: Any) -> int:
    conversation, lib = raw.ffi.from_handle(appdata)
    return int(conversation.answer(lib, count, msgs, out))


def _conversation_crashed(exc_type: type[BaseException], exc: BaseException,
                          traceback: Any) -> None:
    log.error("PAM conversation failed: %s: %s", exc_type.__name__, exc)


# --------------------------------------------------------------------------- one login


def authenticate(user: str, password: str, *, rhost: str | None,
                 service: str = SERVICE, confdir: str | None = None,
                 soname: str = raw.LIBPAM) -> PamResult:
    """Ask PAM's ``service`` whether ``user`` may log in with ``password``.

    ``password`` is the client's text (8-bit bytes kept as surrogates, as the
    protocol engines hand them over).  ``confdir`` reads the service from that
    directory instead of /etc/pam.d (Linux-PAM 1.4+; for tests).  Raises
    :class:`PamError` when PAM cannot be asked.
    """
    name = user.encode("utf-8", "surrogateescape")
    secret = password.encode("utf-8", "surrogateescape")
    if b"\0" in name or b"\0" in secret:
        # C strings would cut them short: a shortened password must not pass.
        return PamResult(False, "input", 0, "NUL byte in the user name or password")
    lib = _library(soname)
    conversation = _Conversation(secret)
    state = raw.ffi.new_handle((conversation, lib.c))
    conv = raw.ffi.new("struct pam_conv *", {"conv": lib.conv, "appdata_ptr": state})
    pamh = _start(lib, service.encode(), name, conv, confdir)
    status = raw.PAM_SUCCESS
    try:
        step, status = _transaction(lib, pamh, rhost)
        reason = "" if step == "" else lib.strerror(pamh, status)
    finally:
        _end(lib, pamh, status)
    if conversation.refused:
        reason = f"{reason} ({conversation.refused})"
    result = PamResult(step == "", step, status, reason, tuple(conversation.messages))
    _log_result(user, rhost, service, result)
    return result


def _start(lib: _Library, service: bytes, user: bytes, conv: Any, confdir: str | None) -> Any:
    handle = raw.ffi.new("pam_handle_t **")
    if confdir is None:
        code = lib.c.pam_start(service, user, conv, handle)
    else:
        code = lib.c.pam_start_confdir(service, user, conv, confdir.encode(), handle)
    if code != raw.PAM_SUCCESS:
        reason = lib.strerror(handle[0], code)
        if handle[0] != raw.ffi.NULL:
            lib.c.pam_end(handle[0], code)
        raise PamError(f"pam_start({service.decode()!r}): {reason}")
    return handle[0]


def _transaction(lib: _Library, pamh: Any, host: str | None) -> tuple[str, int]:
    """(the step that refused or ``""``, the last status)."""
    if host is not None:
        code = lib.c.pam_set_item(pamh, raw.PAM_RHOST, host.encode())
        if code != raw.PAM_SUCCESS:
            return "pam_set_item", code
    code = lib.c.pam_authenticate(pamh, 0)
    if code != raw.PAM_SUCCESS:
        return "pam_authenticate", code
    code = lib.c.pam_acct_mgmt(pamh, 0)
    if code != raw.PAM_SUCCESS:
        return "pam_acct_mgmt", code
    return "", code


def _end(lib: _Library, pamh: Any, status: int) -> None:
    code = lib.c.pam_end(pamh, status)
    if code != raw.PAM_SUCCESS:
        log.warning("pam_end: PAM error %d", code)


def _log_result(user: str, host: str | None, service: str, result: PamResult) -> None:
    peer = host or "-"
    if result.ok:
        log.debug("%s: PAM service %s accepted %r", peer, service, user)
    elif result.code in _BROKEN:
        log.error("%s: PAM service %s is not usable (check /etc/pam.d/%s): %s: %s",
                  peer, service, service, result.step, result.reason)
    else:
        log.debug("%s: PAM service %s refused %r: %s: %s",
                  peer, service, user, result.step, result.reason)
