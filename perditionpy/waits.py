"""What a session waits for, as values: a session is a generator that yields
one of these and is resumed with its result (or has its exception thrown in).

Two drivers run such a generator:

* :func:`run_blocking` here: each wait is the blocking call it names, in the
  calling thread (inetd mode, and anything run on a pool thread);
* the relay hub's event loop (perditionpy.relay_hub): plain-socket reads,
  writes, connects and sleeps wait on epoll in the hub's one thread; a
  :class:`Blocking` call (a map that talks to a server, PAM, a TLS handshake,
  any I/O on a TLS socket) runs on a pool thread and resumes the session when
  it returns.

Either way the session sees the same results and the same exceptions:
``TimeoutError`` when a deadline passes, ``OSError`` for socket trouble.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from perditionpy.protocol.base import NEED_DATA, ToBackend

__all__ = ["Blocking", "Connect", "Converse", "Engine", "Recv", "SendAll", "Sleep", "Steps",
           "Wait", "open_connection", "address_family", "run_blocking"]

T = TypeVar("T")


@dataclass(slots=True)
class Recv:
    """``sock.recv(size)``: ``b""`` at EOF; ``TimeoutError`` after ``timeout`` s."""

    sock: socket.socket
    size: int
    timeout: float | None

    def run(self) -> bytes:
        _set_timeout(self.sock, self.timeout)
        return self.sock.recv(self.size)


@dataclass(slots=True)
class SendAll:
    """``sock.sendall(data)``, each write bounded by ``timeout``."""

    sock: socket.socket
    data: bytes
    timeout: float | None

    def run(self) -> None:
        _set_timeout(self.sock, self.timeout)
        self.sock.sendall(self.data)


class Engine(Protocol):
    """A back-end login engine, as :class:`Converse` drives it (perditionpy.protocol)."""

    def next_event(self) -> object: ...

    def receive_data(self, data: bytes) -> None: ...


@dataclass(slots=True)
class Converse:
    """A login engine's dialogue with its back-end, carried as far as the driver
    can take it alone: from ``event`` (the engine's latest) on, each ``NEED_DATA``
    is a read of ``sock`` (``size`` bytes at most, fed to the engine) and each
    ``ToBackend`` a write of its bytes, each bounded by ``timeout`` as a
    :class:`Recv` or :class:`SendAll` would be, in the same order; the engine's
    first event of any other kind is the result.  One wait, and one resumption
    of the session, instead of one per line of the dialogue.  ``event`` follows
    the dialogue (the driver's place in it)."""

    sock: socket.socket
    engine: Engine
    event: object
    size: int
    timeout: float | None

    def run(self) -> object:
        sock, engine, event = self.sock, self.engine, self.event
        while True:
            if event is NEED_DATA:
                _set_timeout(sock, self.timeout)
                engine.receive_data(sock.recv(self.size))
            elif type(event) is ToBackend:
                _set_timeout(sock, self.timeout)
                sock.sendall(event.data)
            else:
                return event
            event = self.event = engine.next_event()


@dataclass(slots=True)
class Connect:
    """A TCP connection to ``host``:``port`` (a name is resolved first).

    ``greeted``: the server speaks first (a mail server's greeting), so an event
    loop may take the connect as made when its first bytes arrive, and read them
    at once: one wake-up instead of two.  The connect and the greeting then share
    the deadline: when it finds the connection made but silent, the connect
    succeeds and the session's read of the greeting times out (as it would a
    moment after a connect on a LAN; :func:`run_blocking` bounds each apart).
    """

    host: str
    port: int
    timeout: float | None
    greeted: bool = False

    def run(self) -> socket.socket:
        return open_connection(self.host, self.port, self.timeout)


@dataclass(slots=True)
class Blocking:
    """Work that may block for long and has no descriptor to wait on.

    ``hold``: the session carries on in the thread that did this work, blocking,
    to its end (a TLS handshake: the TLS session is then read and written by that
    one thread, as OpenSSL objects are best kept to one).
    """

    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    hold: bool = False

    def run(self) -> Any:
        return self.fn(*self.args)


@dataclass(slots=True)
class Sleep:
    """A pause (perdition's delay before a failure reply)."""

    seconds: float
    sleep: Callable[[float], None]

    def run(self) -> None:
        self.sleep(self.seconds)


Wait = Recv | SendAll | Converse | Connect | Blocking | Sleep
Steps = Generator[Wait, Any, T]


def run_blocking(steps: Steps[T], *, first: Wait | None = None) -> T:
    """Drive ``steps`` to its end in this thread; its return value.  ``first``:
    a wait ``steps`` has yielded already, to carry out before resuming it."""
    value: Any = None
    error: BaseException | None = None
    if first is not None:
        try:
            value = first.run()
        except Exception as exc:
            error = exc
    while True:
        try:
            wait = steps.send(value) if error is None else steps.throw(error)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        value, error = None, None
        try:
            value = wait.run()
        except Exception as exc:  # handed to the session, as the call would raise it
            error = exc


def _set_timeout(sock: socket.socket, timeout: float | None) -> None:
    # settimeout() costs two system calls even when nothing changes.
    if sock.gettimeout() != timeout:
        sock.settimeout(timeout)


def open_connection(host: str, port: int, timeout: float | None) -> socket.socket:
    """``socket.create_connection`` without its ``getaddrinfo`` when ``host`` is
    already an address (the usual back-end): one system call less per login."""
    family = address_family(host)
    if family is None:
        return socket.create_connection((host, port), timeout=timeout)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def address_family(host: str) -> int | None:
    """``AF_INET``/``AF_INET6`` when ``host`` is a numeric address (no scope id)."""
    try:
        socket.inet_pton(socket.AF_INET, host)
        return socket.AF_INET
    except OSError:
        pass
    try:
        socket.inet_pton(socket.AF_INET6, host)
    except OSError:
        return None
    return None if "%" in host else socket.AF_INET6
