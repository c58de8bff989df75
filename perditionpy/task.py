"""One session's login phase driven by an event loop (the relay hub's thread).

A :class:`Task` runs a session's generator of waits (perditionpy.waits) until
it waits for something that is not ready, and tells its :class:`Loop` what to
watch: a plain socket's readiness (with a deadline), a moment (a pause), or a
:class:`~perditionpy.waits.Blocking` call for a worker thread.  Reads, writes
and connects on plain sockets never leave the loop's thread; anything on a TLS
socket, a connect by host name and every ``Blocking`` call run on a worker and
resume the task when they return.  The session sees the results and the
exceptions the blocking calls would give it (``TimeoutError`` at a deadline).

A task is registered with the loop on at most one socket at a time: the one it
waits on.  That keeps level-triggered readiness of a socket it is not waiting
on (a client typing ahead while the back-end answers) from waking it in a loop.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import selectors
import socket
import ssl
import time
from typing import Any, Protocol

from perditionpy.protocol.base import NEED_DATA, ToBackend
from perditionpy.waits import (
    Blocking,
    Connect,
    Converse,
    Recv,
    SendAll,
    Sleep,
    Steps,
    Wait,
    address_family,
    run_blocking,
)

__all__ = ["Loop", "Task"]

log = logging.getLogger(__name__)

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
_IN_PROGRESS = frozenset({errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK})
# In epoll's answer for a connecting socket: the connect failed (SO_ERROR says why),
# or, with neither of those, it is made (writable, or the server's first bytes came).
_CONNECT_FAILED = select.EPOLLERR | select.EPOLLHUP
_CONNECT_MADE = select.EPOLLOUT | select.EPOLLIN


def _made(sock: socket.socket) -> bool:
    """Whether a non-blocking connect has been made (not failed, not in progress)."""
    try:
        sock.getpeername()
    except OSError:
        return False
    return True


class Loop(Protocol):
    """What a task needs from the event loop that drives it."""

    def watch_socket(self, task: Task, sock: socket.socket | None, events: int,
                     old: socket.socket | None) -> None:
        """Watch ``sock`` for ``events`` instead of ``old`` (either may be None)."""

    def wake_at(self, task: Task, when: float) -> None:
        """Call ``task.alarm(loop, when)`` at ``when`` (monotonic) or soon after."""

    def offload(self, task: Task, wait: Wait) -> None:
        """Run ``wait`` on a worker; then, in the loop's thread,
        ``task.finish_offloaded(loop, serial, value, error)``."""

    def hand_over(self, task: Task, wait: Blocking) -> None:
        """Run ``wait`` and then ``task.carry_on(wait)`` on a worker; then, in the
        loop's thread, ``task.finish_elsewhere(loop)``."""

    def ended(self, task: Task) -> None:
        """The session is over (its generator returned or failed); the loop
        lets go of ``task.sock`` (may be None), still watched for ``task.events``."""


class Task:
    """A session's generator and what it waits for now."""

    __slots__ = ("steps", "client", "label", "wait", "sock", "events", "serial", "pending",
                 "done", "spoke", "deadline", "alarm_at", "plain")

    def __init__(self, steps: Steps[None], client: socket.socket, label: str = "") -> None:
        self.steps = steps
        self.client = client          # shut down when the daemon stops
        self.label = label
        self.wait: Wait | None = None
        self.sock: socket.socket | None = None  # the socket watched for this task
        self.events = 0
        self.serial = 0               # bumped by every resumption: stale results do nothing
        self.pending: memoryview | socket.socket | None = None  # unsent bytes / connecting
        self.done = False
        # The socket last written to (or connected): a read from it right after
        # would only find nothing yet, so it waits for readiness straight away.
        self.spoke: socket.socket | None = None
        # When the wait now in progress times out (or a pause ends), and when the
        # loop's one alarm for this task rings: most waits end long before their
        # deadline, so a later deadline only moves the time an alarm finds.
        self.deadline: float | None = None
        self.alarm_at: float | None = None
        # The sockets this loop reads and writes itself, made non-blocking already.
        self.plain: set[socket.socket] = set()

    # -- running the generator

    def resume(self, loop: Loop, value: Any = None, error: BaseException | None = None) -> None:
        """Run the session until it waits for something that is not ready."""
        self.serial += 1
        self.wait = self.pending = self.deadline = None
        while True:
            try:
                wait = self.steps.send(value) if error is None else self.steps.throw(error)
            except StopIteration:
                self._end(loop)
                return
            except Exception:  # a bug must cost one connection, never the loop
                log.exception("Fatal error in session%s", self.label)
                self._end(loop)
                return
            value, error = None, None
            try:
                ready, value = self._begin(loop, wait)
            except Exception as exc:  # handed to the session, as the call would raise it
                error = exc
                continue
            if not ready:
                self.wait = wait
                return

    def _begin(self, loop: Loop, wait: Wait) -> tuple[bool, Any]:
        """Start ``wait``: (True, result) when it is done already, else (False, None)
        with the loop told what to watch."""
        if type(wait) is Recv:
            sock = wait.sock
            if sock in self.plain or self._plain(sock):
                if sock is self.spoke:
                    self.spoke = None
                    self._block(loop, sock, _READ, wait.timeout, True)
                    return False, None
                return self._recv(loop, wait)
        elif type(wait) is Converse:
            if wait.sock in self.plain or self._plain(wait.sock):
                return self._converse(loop, wait, True)
        elif type(wait) is SendAll:
            if wait.sock in self.plain or self._plain(wait.sock):
                return self._send(loop, wait.data, wait, True)
        elif type(wait) is Connect:
            family = address_family(wait.host)
            if family is not None:  # an address: connected from here, not a worker
                return self._connect(loop, wait, family)
        self._watch(loop, None, 0)
        if type(wait) is Sleep:
            self._alarm(loop, time.monotonic() + wait.seconds)
        elif isinstance(wait, Blocking) and wait.hold:
            loop.hand_over(self, wait)
        else:  # Blocking, anything on TLS, a connect by name
            loop.offload(self, wait)
        return False, None

    def _plain(self, sock: socket.socket) -> bool:
        """Whether the loop can read and write ``sock`` itself (not TLS); made
        non-blocking the first time (a socket from a connect by name, made on a
        worker, is still blocking)."""
        if isinstance(sock, ssl.SSLSocket):
            return False
        if sock.gettimeout() != 0.0:
            sock.setblocking(False)
        self.plain.add(sock)
        return True

    def _recv(self, loop: Loop, wait: Recv) -> tuple[bool, Any]:
        try:
            return True, wait.sock.recv(wait.size)
        except (BlockingIOError, InterruptedError):
            self._block(loop, wait.sock, _READ, wait.timeout, self.wait is None)
            return False, None

    def _send(self, loop: Loop, data: bytes | memoryview, wait: SendAll | Converse,
              fresh: bool) -> tuple[bool, Any]:
        """Write ``data`` to ``wait.sock``; ``fresh``: a write just begun (its
        deadline starts now), not one carried on after readiness."""
        sock = wait.sock
        try:
            sent = sock.send(data)
            if sent < len(data):  # rarely: the rest waits for room
                data = memoryview(data)[sent:]
                while data:
                    data = data[sock.send(data):]
        except (BlockingIOError, InterruptedError):
            self.pending = memoryview(data)
            self._block(loop, sock, _WRITE, wait.timeout, fresh)
            return False, None
        self.spoke = sock
        return True, None

    def _converse(self, loop: Loop, wait: Converse, fresh: bool) -> tuple[bool, Any]:
        """Carry ``wait``'s dialogue on from ``wait.event``: (True, the engine's
        event for the session) or (False, None) with the loop told what to watch.
        ``fresh``: the first read or write here is a new one (see ``_send``);
        every one after it is."""
        sock, engine, event = wait.sock, wait.engine, wait.event
        while True:
            if event is NEED_DATA:
                if sock is self.spoke:  # an answer to what was just written: wait for it
                    self.spoke = None
                    self._block(loop, sock, _READ, wait.timeout, fresh)
                    return False, None
                try:
                    data = sock.recv(wait.size)
                except (BlockingIOError, InterruptedError):
                    self._block(loop, sock, _READ, wait.timeout, fresh)
                    return False, None
                engine.receive_data(data)
            elif type(event) is ToBackend:
                if not self._send(loop, event.data, wait, fresh)[0]:
                    return False, None
            else:
                return True, event
            fresh = True
            event = wait.event = engine.next_event()

    def _connect(self, loop: Loop, wait: Connect, family: int) -> tuple[bool, Any]:
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        try:
            code = sock.connect_ex((wait.host, wait.port))
        except BaseException:
            sock.close()
            raise
        self.plain.add(sock)
        if code == 0:
            self.spoke = sock
            return True, sock
        if code not in _IN_PROGRESS:
            sock.close()
            raise OSError(code, os.strerror(code))
        self.pending = sock
        self._block(loop, sock, _READ if wait.greeted else _WRITE, wait.timeout, True)
        return False, None

    def _block(self, loop: Loop, sock: socket.socket, events: int,
               timeout: float | None, fresh: bool) -> None:
        """Watch ``sock`` for ``events``; ``fresh``: a new read or write, whose
        deadline starts now (not a retry after spurious readiness)."""
        if sock is not self.sock or events != self.events:
            loop.watch_socket(self, sock, events, self.sock)
            self.sock, self.events = sock, events
        if timeout is not None and fresh:
            deadline = self.deadline = time.monotonic() + timeout
            if self.alarm_at is None or deadline < self.alarm_at:  # (as _alarm, inlined)
                self.alarm_at = deadline
                loop.wake_at(self, deadline)

    def _alarm(self, loop: Loop, deadline: float) -> None:
        self.deadline = deadline
        if self.alarm_at is None or deadline < self.alarm_at:
            self.alarm_at = deadline
            loop.wake_at(self, deadline)

    def _watch(self, loop: Loop, sock: socket.socket | None, events: int) -> None:
        if sock is not self.sock or events != self.events:
            loop.watch_socket(self, sock, events, self.sock)
            self.sock, self.events = sock, events if sock is not None else 0

    def _end(self, loop: Loop) -> None:
        self.done = True
        loop.ended(self)
        self.sock, self.events = None, 0

    # -- called by the loop

    def ready(self, loop: Loop, mask: int = 0) -> None:
        """The watched socket is ready: carry the wait on.  ``mask``: epoll's
        events for it, if the loop knows them (0: it does not)."""
        wait = self.wait
        try:
            if type(wait) is Recv:
                ready, value = self._recv(loop, wait)
            elif type(wait) is Converse:
                pending = self.pending
                if pending is None:  # the read it waits for
                    ready, value = self._converse(loop, wait, False)
                else:  # the rest of one of its writes
                    assert isinstance(pending, memoryview)
                    ready, value = self._send(loop, pending, wait, False)
                    if ready:
                        self.pending = None
                        wait.event = wait.engine.next_event()
                        ready, value = self._converse(loop, wait, True)
            elif type(wait) is SendAll:
                pending = self.pending
                assert isinstance(pending, memoryview)
                ready, value = self._send(loop, pending, wait, False)
            elif type(wait) is Connect:
                ready, value = True, self._connected(mask)
            else:
                return  # readiness for a wait that is over: nothing to do
        except Exception as exc:
            self.resume(loop, error=exc)
            return
        if ready:
            self.resume(loop, value)

    def _connected(self, mask: int) -> socket.socket:
        """The connect in progress is over: its socket, or the error it ended in.
        Writable or readable (greeted) without an error or a hang-up in ``mask``
        means connected (no system call to ask)."""
        sock = self.pending
        assert isinstance(sock, socket.socket)
        code = (sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if not mask & _CONNECT_MADE or mask & _CONNECT_FAILED else 0)
        if code:
            sock.close()
            raise OSError(code, os.strerror(code))
        # Writable: its greeting is rarely there yet.  Readable: it is.
        self.spoke = None if mask & select.EPOLLIN else sock
        return sock

    def alarm(self, loop: Loop, when: float) -> None:
        """The alarm set for ``when`` rang: the end of a pause, a deadline, or
        neither yet (the wait it was set for is over; the next one's deadline,
        if any, gets the alarm)."""
        if when != self.alarm_at or self.done:
            return  # an alarm replaced by an earlier one
        self.alarm_at = None
        if self.deadline is None or self.wait is None:
            return
        if self.deadline > when:
            self._alarm(loop, self.deadline)
            return
        if isinstance(self.wait, Sleep):
            self.resume(loop)
            return
        if isinstance(self.pending, socket.socket):
            sock = self.pending
            if self.events == _READ and _made(sock):
                # Made, and the greeting it waits for is late: the read of the
                # greeting, which shares this deadline, times out (the session
                # tells a failed connect from a silent server).
                self.spoke = sock
                self.resume(loop, sock)
                if not self.done and self.sock is sock and self.events == _READ:
                    self.resume(loop, error=TimeoutError("timed out"))
                return
            sock.close()
        self.resume(loop, error=TimeoutError("timed out"))

    def finish_offloaded(self, loop: Loop, serial: int, value: Any,
                         error: BaseException | None) -> None:
        if serial == self.serial and not self.done:
            self.resume(loop, value, error)

    def carry_on(self, wait: Blocking) -> None:
        """(on a worker) ``wait``, then the rest of the session, blocking."""
        try:
            run_blocking(self.steps, first=wait)
        except Exception:  # a bug must cost one connection, never the worker
            log.exception("Fatal error in session%s", self.label)

    def finish_elsewhere(self, loop: Loop) -> None:
        """The session ran to its end on a worker (:meth:`carry_on`)."""
        if not self.done:
            self._end(loop)

