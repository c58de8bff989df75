"""Events shared by every protocol engine, and the two engine shapes.

A *front-end engine* speaks to the mail client before authentication::

    engine = Imap4FrontEnd(options, greeting_host="mail.example.org")
    send(engine.greeting())
    while True:
        event = engine.next_event()
        if event is NEED_DATA:
            engine.receive_data(sock.recv(...))   # b"" at EOF
        elif isinstance(event, Send): ...          # maybe sleep(AUTH_FAIL_DELAY) first
        elif isinstance(event, Credentials): ...   # resolve, connect, log in
        elif isinstance(event, ClientClosed): ...

After a ``Credentials`` event the session decides and tells the engine with
``engine.login_failed(reason)`` / ``engine.login_ok(...)``; both return bytes for
the client and put the engine back in the right state.

A *back-end engine* logs in to the real server for the client::

    login = Imap4BackendLogin(user, password, options=..., our_greeting=...)
    while not done:
        event = login.next_event()
        NEED_DATA -> login.receive_data(backend.recv(...))
        ToBackend(data) -> backend.sendall(data)
        ToClient(data)  -> client.sendall(data)    # untagged lines perdition forwards
        LoginResult(...) -> done
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = [
    "NEED_DATA", "NeedData", "Send", "Credentials", "ClientClosed", "StartTLS",
    "ToBackend", "ToClient", "LoginResult", "LoginStatus", "decode_name", "encode_name",
]


class NeedData(Enum):
    """The engine needs more bytes before it can say anything."""

    NEED_DATA = "NEED_DATA"


NEED_DATA = NeedData.NEED_DATA


def decode_name(raw: bytes) -> str:
    """Wire bytes → ``str`` without loss (undecodable bytes become surrogates)."""
    return raw.decode("utf-8", "surrogateescape")


def encode_name(text: str) -> bytes:
    """The inverse of :func:`decode_name`."""
    return text.encode("utf-8", "surrogateescape")


# --------------------------------------------------------------------- front-end


@dataclass(frozen=True, slots=True)
class Send:
    """Bytes to write to the client.

    ``delay``: sleep ``limits.AUTH_FAIL_DELAY`` seconds first (perdition does so
    before invalid-command and failure replies).  ``close``: close the
    connection once written (LOGOUT, QUIT, too many errors).
    """

    data: bytes
    delay: bool = False
    close: bool = False


@dataclass(frozen=True, slots=True)
class Credentials:
    """The client asked to log in.  ``tag`` is the IMAP tag (``None`` for POP3).

    ``authzid`` is the SASL authorisation id where the protocol carries one
    (ManageSieve AUTHENTICATE PLAIN); otherwise ``None``.
    """

    user: str
    password: str
    tag: bytes | None = None
    authzid: str | None = None


@dataclass(frozen=True, slots=True)
class StartTLS:
    """Time for a TLS handshake.  From a front-end engine: the client asked for
    STARTTLS/STLS and was told to go ahead.  From a back-end engine: the server
    accepted our STARTTLS/STLS."""


@dataclass(frozen=True, slots=True)
class ClientClosed:
    """The client went away (EOF) or must be disconnected.

    ``error`` is True when it went away in the middle of a command (perdition's
    "Fatal Error reading authentication information from client"), False for a
    clean end (EOF between commands, or after LOGOUT/QUIT).
    """

    error: bool = False


# --------------------------------------------------------------------- back-end


@dataclass(frozen=True, slots=True)
class ToBackend:
    """Bytes to write to the back-end server."""

    data: bytes


@dataclass(frozen=True, slots=True)
class ToClient:
    """Bytes from the back-end that perdition passes to the client during login."""

    data: bytes


class LoginStatus(Enum):
    OK = "ok"
    REJECTED = "rejected"            # bad credentials: "Re-Authentication Failure"
    LOOP = "loop"                    # back-end greeting is ours: "Connection Negotiation Failure"
    LOGIN_DISABLED = "login_disabled"  # back-end advertises LOGINDISABLED: "Login Disabled"
    # ManageSieve back-end without SASL PLAIN: "SASL mechanism unavailable"
    MECHANISM_UNAVAILABLE = "mechanism_unavailable"
    TLS_NOT_PRESENT = "tls_not_present"  # tls_outgoing_force, no STARTTLS: "TLS not present"
    PROTOCOL_ERROR = "protocol_error"  # garbage or EOF from the back-end


@dataclass(frozen=True, slots=True)
class LoginResult:
    """The end of the back-end login.

    ``server_line``: the back-end's final reply line without the tag and CRLF,
    for ``--server_resp_line`` (e.g. ``b"OK [CAPABILITY ...] Logged in"``).
    ``trailing``: bytes the back-end sent after its final reply, to be relayed.
    """

    status: LoginStatus
    server_line: bytes = b""
    trailing: bytes = b""
