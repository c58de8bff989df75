"""The event loop of the process: one thread, one selector, every session's
login phase (perditionpy.task) and every client ⇄ back-end pair after it.

A new connection's session starts here (:meth:`RelayHub.start_session`): its
reads, writes, connects and pauses wait on the selector, its blocking calls
run on a worker pool, and no thread is held per login.

A session that has logged its client in hands the two sockets to :func:`hub`
and its thread returns; an idle authenticated session then costs two
descriptors and a few small objects, not a Python thread.  Per pair and per
direction (a :class:`_Flow`) bytes wait in a bounded buffer; while it is full
the source is not read (back-pressure).  Either side's EOF or error ends the
pair, once what was already read has been written, as :func:`relay.relay` does.
When the pair ends the hub closes both sockets and calls the session's
``on_done`` with the byte counts (the session logs its ``Closing session`` line).

Neither side TLS (and Linux): the bytes go socket → pipe → socket with
``os.splice`` and never enter Python.  Pipes are lent to a direction only while
bytes are in flight, so idle pairs hold none.  TLS sockets are read and written
without blocking, ``SSLWantReadError``/``SSLWantWriteError`` turning into the
readiness they ask for; decrypted bytes waiting inside OpenSSL (``pending()``)
have no descriptor readiness, so such pairs are stepped again at once.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import heapq
import itertools
import logging
import os
import select
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable

from perditionpy import limits
from perditionpy.pool import WorkerPool, default_size
from perditionpy.relay import RelayResult
from perditionpy.task import Task
from perditionpy.tls import close as close_socket
from perditionpy.waits import Blocking, Steps, Wait

__all__ = ["RelayHub", "hub", "splice_available"]

log = logging.getLogger(__name__)

OnDone = Callable[[RelayResult], None]
# Takes the connections waiting on a listener; False: stop listening.
Accept = Callable[[socket.socket], bool]
Pipe = tuple[int, int, int]  # read end, write end, capacity

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
_ALL = _READ | _WRITE
_IN_EVENTS = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR | select.EPOLLPRI
_OUT_EVENTS = select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR
# How often idle timeouts are checked (perdition's -t is in seconds).
_SCAN_INTERVAL = 1.0
# Empty pipes kept for the next transfer instead of being closed.
_SPARE_PIPES = 64
_BOTH_READ = [_READ, _READ]  # a pair's masks while it only waits to read
# _Pair.step's answers for a pair that goes on: look at its registrations, or
# leave them as they are.
_GOING = 1
_AS_REGISTERED = 2
# epoll's mask for each combination of selectors' EVENT_READ (1) and EVENT_WRITE (2).
_EPOLL_MASKS = (0, select.EPOLLIN, select.EPOLLOUT, select.EPOLLIN | select.EPOLLOUT)
# The data of a parked registration (_Poller.park): its readiness is nobody's.
_PARKED = object()


# Largest single write to a TLS socket: one TLS record.
_TLS_WRITE_CHUNK = 16 * 1024


def splice_available() -> bool:
    return hasattr(os, "splice") and hasattr(fcntl, "F_GETPIPE_SZ")


_SPLICE = splice_available()
_SPLICE_FLAGS = (os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK) if _SPLICE else 0


def _is_tls(sock: socket.socket) -> bool:
    return isinstance(sock, ssl.SSLSocket)


def _pending(sock: socket.socket) -> bool:
    return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0


class _Poller:
    """epoll with the little ``selectors`` offers that the loop uses, minus its
    per-call objects: ``register(obj, events, data)``, ``modify``, ``unregister``
    (also of an object already closed or detached), ``select(timeout)`` →
    ``[(obj, data)]``.  ``events`` are ``selectors``' EVENT_READ/EVENT_WRITE."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._fds: dict[object, int] = {}
        self._objects: dict[int, tuple[object, object]] = {}
        self._parked: dict[object, int] = {}  # object → its epoll mask (see park)

    def register(self, obj: socket.socket, events: int, data: object) -> None:
        if obj in self._fds:
            if obj not in self._parked:
                raise KeyError(f"{obj!r} is already registered")
            self._adopt(obj, events, data)
            return
        fd = obj.fileno()
        stale = self._objects.get(fd)
        if stale is not None:  # closed while registered; its number is this one's now
            self._fds.pop(stale[0], None)
            self._parked.pop(stale[0], None)
        try:
            self._epoll.register(fd, _EPOLL_MASKS[events])
        except FileExistsError:  # the stale one's file is still open elsewhere
            self._epoll.modify(fd, _EPOLL_MASKS[events])
        self._fds[obj] = fd
        self._objects[fd] = (obj, data)

    def modify(self, obj: socket.socket, events: int, data: object) -> None:
        fd = self._fds[obj]
        self._epoll.modify(fd, _EPOLL_MASKS[events])
        self._objects[fd] = (obj, data)

    def unregister(self, obj: object) -> None:
        fd = self.forget(obj)
        if fd is not None:
            try:
                self._epoll.unregister(fd)
            except OSError:  # closed already: the kernel forgot it
                pass

    def forget(self, obj: object) -> int | None:
        """Drop ``obj`` from the books only (its descriptor number, or ``None`` if
        that went to another object meanwhile): right before closing a socket of
        which no duplicate is open, as closing takes it out of the epoll set."""
        self._parked.pop(obj, None)
        fd = self._fds.pop(obj, None)
        if fd is None or self._objects[fd][0] is not obj:
            return None  # its number went to another socket after it closed
        del self._objects[fd]
        return fd

    def park(self, obj: object, events: int) -> None:
        """Keep ``obj``'s registration (``events``) without waking anyone, for
        whoever registers it next in this turn: a session's back-end socket
        going from its login to its relay costs no epoll change.  What
        :meth:`settle` finds still parked is unregistered."""
        fd = self._fds.get(obj)
        if fd is not None and self._objects[fd][0] is obj:
            self._objects[fd] = (obj, _PARKED)
            self._parked[obj] = _EPOLL_MASKS[events]

    def _adopt(self, obj: socket.socket, events: int, data: object) -> None:
        mask = _EPOLL_MASKS[events]
        fd = self._fds[obj]
        if self._parked.pop(obj) != mask:
            self._epoll.modify(fd, mask)
        self._objects[fd] = (obj, data)

    def settle(self) -> None:
        """Unregister what is still parked."""
        while self._parked:
            self.unregister(next(iter(self._parked)))

    def select(self, timeout: float) -> list[tuple[object, object, int]]:
        """``(obj, data, mask)`` for each ready object, parked ones left out;
        ``mask`` is epoll's (see :func:`_events`)."""
        objects = self._objects
        ready = []
        for fd, mask in self._epoll.poll(timeout):
            entry = objects.get(fd)
            if entry is not None and entry[1] is not _PARKED:
                ready.append((entry[0], entry[1], mask))
        return ready


def _events(mask: int) -> int:
    """An epoll mask as EVENT_READ/EVENT_WRITE; a hang-up or an error counts as
    both (the next read or write tells)."""
    return (_READ if mask & _IN_EVENTS else 0) | (_WRITE if mask & _OUT_EVENTS else 0)


class _Pipes:
    """Pipes for splice, lent to a direction only while bytes sit in them."""

    def __init__(self) -> None:
        self.free: list[Pipe] = []

    def take(self) -> Pipe | None:
        if self.free:
            return self.free.pop()
        try:
            read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:  # out of descriptors: the caller copies instead
            return None
        return read_end, write_end, fcntl.fcntl(write_end, fcntl.F_GETPIPE_SZ)

    def give(self, pipe: Pipe) -> None:
        if len(self.free) < _SPARE_PIPES:
            self.free.append(pipe)
        else:
            _close_pipe(pipe)


def _close_pipe(pipe: Pipe) -> None:
    for fd in pipe[:2]:
        with contextlib.suppress(OSError):
            os.close(fd)


class _Flow:
    """One direction of a pair: bytes read from ``src`` wait here (in ``buf``,
    or in a pipe when spliced) until written to ``dst``."""

    __slots__ = ("src", "dst", "src_fd", "dst_fd", "splice", "buf", "pipe", "held", "moved",
                 "spliced", "read_on", "write_on", "active", "retry")

    def __init__(self, src: socket.socket, dst: socket.socket, *, splice: bool) -> None:
        self.src, self.dst, self.splice = src, dst, splice
        # Their descriptors, for splice (both stay open as long as the pair does).
        self.src_fd, self.dst_fd = (src.fileno(), dst.fileno()) if splice else (-1, -1)
        self.buf = bytearray()
        self.pipe: Pipe | None = None
        self.held = 0      # bytes read and not yet written
        self.moved = 0     # bytes written to dst
        self.spliced = 0   # of which through a pipe
        self.read_on = _READ   # what src must be ready for before reading (TLS may differ)
        self.write_on = _WRITE
        self.active = False
        # OpenSSL wants a write that returned WANT_READ/WANT_WRITE retried with the
        # same length ("bad write retry" otherwise), even though buf has grown since.
        self.retry = 0

    def room(self) -> int:
        limit = self.pipe[2] if self.pipe is not None else limits.RELAY_BUFFER_SIZE
        return limit - self.held

    def fill(self, pipes: _Pipes) -> bool:
        """Read what ``src`` has, as far as there is room; False at EOF or on an error."""
        self.read_on = _READ
        try:
            if self.splice and not self.buf:
                self.pipe = self.pipe or pipes.take()
                if self.pipe is not None:
                    return self._splice_in(self.pipe, pipes)
            return self._recv_in()
        except ssl.SSLWantReadError:
            return True
        except ssl.SSLWantWriteError:
            self.read_on = _WRITE
            return True
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        finally:
            if self.pipe is not None and not self.held:  # nothing came: an idle
                pipes.give(self.pipe)                     # pair holds no pipe
                self.pipe = None

    def _splice_in(self, pipe: Pipe, pipes: _Pipes) -> bool:
        try:
            count = os.splice(self.src_fd, pipe[1], pipe[2] - self.held, flags=_SPLICE_FLAGS)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOSYS) or self.held:
                raise
            # A socket the kernel cannot splice from: copy from now on.
            self.splice, self.pipe = False, None
            pipes.give(pipe)
            return self._recv_in()
        if count == 0:
            return False
        self.held += count
        self.active = True
        return True

    def _recv_in(self) -> bool:
        while self.room() > 0:
            data = self.src.recv(self.room())
            if not data:
                return False
            self.buf += data
            self.held = len(self.buf)
            self.active = True
            if not _pending(self.src):
                break
        return True

    def drain(self, pipes: _Pipes) -> bool:
        """Write what waits to ``dst``; False on an error."""
        if not self.held:
            return True
        self.write_on = _WRITE
        try:
            count = self._send()
        except ssl.SSLWantReadError:
            self.write_on = _READ
            return True
        except (ssl.SSLWantWriteError, BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        self.held -= count
        self.moved += count
        self.active = self.active or count > 0
        if self.pipe is not None and not self.held:
            pipes.give(self.pipe)
            self.pipe = None
        return True

    def _send(self) -> int:
        if self.pipe is not None and not self.buf:
            count = os.splice(self.pipe[0], self.dst_fd, self.held, flags=_SPLICE_FLAGS)
            self.spliced += count
            return count
        if self.buf:
            size = self.retry or min(len(self.buf), _TLS_WRITE_CHUNK)
            self.retry = size if _is_tls(self.dst) else 0
            count = self.dst.send(self.buf[:size] if self.retry else self.buf)
            self.retry = 0
            del self.buf[:count]
            return count
        return 0

    def through(self, pipes: _Pipes) -> int:
        """(a spliced flow holding nothing) Read what ``src`` has into a pipe and
        write it on to ``dst`` at once: 1 when done or nothing came, 0 at EOF,
        -1 when writing failed.  What ``dst`` did not take stays held, as after
        ``fill`` and ``drain``; a read error other than "nothing yet" goes the
        ``fill`` way (it knows sockets the kernel cannot splice from)."""
        if not self.splice:  # the kernel refused to splice from src: copying now
            return self._fill_and_drain(pipes)
        pipe = pipes.take()
        if pipe is None:
            return self._fill_and_drain(pipes)
        try:
            count = os.splice(self.src_fd, pipe[1], pipe[2], flags=_SPLICE_FLAGS)
        except (BlockingIOError, InterruptedError):
            pipes.give(pipe)
            return 1
        except OSError:
            pipes.give(pipe)
            return self._fill_and_drain(pipes)
        if count == 0:
            pipes.give(pipe)
            return 0
        self.active = True
        try:
            sent = os.splice(pipe[0], self.dst_fd, count, flags=_SPLICE_FLAGS)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.pipe, self.held = pipe, count  # released with the pair
            return -1
        self.moved += sent
        self.spliced += sent
        if sent == count:
            pipes.give(pipe)
        else:
            self.pipe, self.held = pipe, count - sent
        return 1

    def _fill_and_drain(self, pipes: _Pipes) -> int:
        if not self.fill(pipes):
            return 0
        return 1 if self.drain(pipes) else -1

    def release(self) -> None:
        if self.pipe is not None:  # may still hold bytes: not fit to lend again
            _close_pipe(self.pipe)
            self.pipe = None


class _Pair:
    """A client and its back-end, relayed until either side ends."""

    __slots__ = ("client", "server", "up", "down", "timeout", "on_done", "label", "last",
                 "ending", "masks", "tls", "quick")

    def __init__(self, client: socket.socket, server: socket.socket, *,
                 timeout: float | None, on_done: OnDone, label: str, splice: bool) -> None:
        self.client, self.server = client, server
        self.up = _Flow(client, server, splice=splice)    # "received" in the Closing line
        self.down = _Flow(server, client, splice=splice)  # "sent"
        self.timeout, self.on_done, self.label = timeout, on_done, label
        self.last = time.monotonic()
        self.ending = False  # a side ended: only writing out what was read
        self.masks = [0, 0]  # events registered for client, server
        self.tls = _is_tls(client) or _is_tls(server)
        self.quick = splice and not self.tls  # see step

    def step(self, pipes: _Pipes, client_events: int = _ALL, server_events: int = _ALL) -> int:
        """Move what can move without blocking: 0 when the pair is over, else
        :data:`_GOING`, or :data:`_AS_REGISTERED` when what the pair waits for
        is what it is registered for already.

        ``client_events``/``server_events``: the readiness seen on each side
        (both in full for a new TLS pair, or one with bytes inside OpenSSL;
        none for a new plain pair, which is only registered).
        A direction reads only when its source showed what its read waits for,
        so a wake-up by one side costs no failed read of the other."""
        up, down = self.up, self.down
        if self.quick and not (up.held or down.held or self.ending):
            # Spliced both ways and nothing waiting: each side that showed
            # readiness is read and passed on straight away.
            if client_events & _READ:
                done = up.through(pipes)
                if done <= 0:
                    if done < 0:
                        return 0
                    self.ending = True
            if server_events & _READ and not self.ending:
                done = down.through(pipes)
                if done <= 0:
                    if done < 0:
                        return 0
                    self.ending = True
            if up.active or down.active:
                up.active = down.active = False
                self.last = time.monotonic()
            if not (self.ending or up.held or down.held) and self.masks == _BOTH_READ:
                return _AS_REGISTERED  # (what RelayHub._register would find)
            return 0 if self.ending and not up.held and not down.held else _GOING
        # (Nothing held: there is room, without asking.)
        if not self.ending and client_events & up.read_on and (not up.held or up.room() > 0) \
                and not up.fill(pipes):
            self.ending = True
        if up.held and not up.drain(pipes):
            return 0
        if not self.ending and server_events & down.read_on \
                and (not down.held or down.room() > 0) and not down.fill(pipes):
            self.ending = True
        if down.held and not down.drain(pipes):
            return 0
        if up.active or down.active:
            up.active = down.active = False
            self.last = time.monotonic()
        return 0 if self.ending and not up.held and not down.held else _GOING

    def wanted(self, sock: socket.socket) -> int:
        events = 0
        for flow in (self.up, self.down):
            if flow.src is sock and not self.ending and flow.room() > 0:
                events |= flow.read_on
            if flow.dst is sock and flow.held:
                events |= flow.write_on
        return events

    def hot(self) -> bool:
        """Decrypted bytes wait inside OpenSSL where no readiness will show them."""
        return self.tls and not self.ending and any(flow.room() > 0 and _pending(flow.src)
                                                    for flow in (self.up, self.down))

    def result(self, timed_out: bool) -> RelayResult:
        return RelayResult(self.up.moved, self.down.moved, timed_out=timed_out)


class RelayHub:
    """The event-loop thread of this process, the sessions logging in and the
    pairs it holds.

    ``start_session`` hands a new connection's session over and ``add`` a
    logged-in pair (from any thread); ``active`` counts sessions and pairs
    held; ``close_all`` ends them all (shutdown); ``watch`` registers a
    callback run after each session or pair ends.  The thread starts with the
    first of them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._incoming: list[_Pair] = []
        self._new_tasks: list[Task] = []
        self._from_workers: list[Callable[[], None]] = []  # run in the loop's thread
        self._tasks: set[Task] = set()
        self._timers: list[tuple[float, int, Task]] = []
        self._timer_order = itertools.count()
        self._workers: WorkerPool | None = None
        # Listeners the loop accepts on, and how (Server._accept_in_loop).
        self._listening = False
        self._listen_request: tuple[list[socket.socket], Accept | None] | None = None
        self._listen_applied: threading.Event | None = None
        self._listeners: list[socket.socket] = []
        self._ident: int | None = None
        self._count = 0
        self._close_all = False
        self._watchers: list[Callable[[], None]] = []
        self._thread: threading.Thread | None = None
        self._waker: socket.socket | None = None
        self._sel: _Poller | None = None
        self._pairs: set[_Pair] = set()
        self._pipes = _Pipes()
        self.paths = {"splice": 0, "copy": 0}  # pairs started on each path

    # -- any thread

    def add(self, client: socket.socket, server: socket.socket, *, timeout: float | None,
            on_done: OnDone, label: str = "") -> None:
        """Relay ``client`` ⇄ ``server`` from now on; the hub owns and closes both."""
        splice = _SPLICE and not (_is_tls(client) or _is_tls(server))
        pair = _Pair(client, server, timeout=timeout, on_done=on_done, label=label,
                     splice=splice)
        for sock in (client, server):
            try:
                if sock.gettimeout() != 0.0:
                    sock.setblocking(False)
            except OSError:  # a dead socket ends the pair at its first step
                pass
        with self._lock:
            self._start()
            self._incoming.append(pair)
            self._count += 1
            self.paths["splice" if splice else "copy"] += 1
        if threading.get_ident() != self._ident:  # the loop itself looks again before waiting
            self._wake()

    def start_session(self, steps: Steps[None], client: socket.socket, label: str = "") -> None:
        """Run a session's generator of waits (perditionpy.waits) in the loop
        from now on; ``client`` is shut down if the daemon stops first."""
        task = Task(steps, client, label)
        with self._lock:
            self._start()
            self._new_tasks.append(task)
            self._count += 1
            first = len(self._new_tasks) == 1  # else a wake-up is on its way already
        if first and threading.get_ident() != self._ident:  # the loop looks before waiting
            self._wake()

    def listen(self, listeners: list[socket.socket], accept: Accept) -> None:
        """Accept on ``listeners`` in the loop from now on: ``accept(listener)``
        runs when one is readable (in the loop's thread)."""
        with self._lock:
            self._start()
            self._listen_request = (list(listeners), accept)
            self._listening = True
        self._wake()

    def stop_listening(self) -> None:
        """Let go of the listeners; returns once the loop has (they may then close)."""
        with self._lock:
            if self._thread is None:
                self._listening = False
                return
            self._listen_request = ([], None)
            self._listening = False
            applied = self._listen_applied = threading.Event()
        if threading.get_ident() == self._ident:
            self._apply_listen_request()
        else:
            self._wake()
            applied.wait(_SCAN_INTERVAL * 5)

    def listening(self) -> bool:
        with self._lock:
            return self._listening

    def active(self) -> int:
        with self._lock:
            return self._count

    def close_all(self) -> None:
        """End every pair held now (each still gets its ``on_done``)."""
        with self._lock:
            if self._thread is None:
                return
            self._close_all = True
        self._wake()

    def watch(self, callback: Callable[[], None]) -> None:
        with self._lock:
            self._watchers.append(callback)

    def _start(self) -> None:
        if self._thread is not None:
            return
        self._sel = _Poller()
        self._workers = WorkerPool(default_size(), name="blocking")
        reader, self._waker = socket.socketpair()
        reader.setblocking(False)
        self._waker.setblocking(False)
        self._sel.register(reader, _READ, None)
        self._thread = threading.Thread(target=self._run, args=(reader,), name="relay-hub",
                                        daemon=True)
        self._thread.start()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full: a wake-up is pending anyway
            assert self._waker is not None
            self._waker.send(b"\0")

    # -- the relay thread

    def _run(self, reader: socket.socket) -> None:
        assert self._sel is not None
        self._ident = threading.get_ident()
        next_scan = time.monotonic() + _SCAN_INTERVAL
        hot: list[_Pair] = []
        while True:
            try:
                hot = self._turn(reader, hot, next_scan)
                if time.monotonic() >= next_scan:
                    self._end_idle()
                    next_scan = time.monotonic() + _SCAN_INTERVAL
            except Exception:  # keep relaying the other pairs
                log.exception("Error in the relay thread")
                time.sleep(_SCAN_INTERVAL)

    def _turn(self, reader: socket.socket, hot: list[_Pair], next_scan: float) -> list[_Pair]:
        """One wait and what it woke; returns the pairs to step again at once."""
        assert self._sel is not None
        moment = min(next_scan, self._timers[0][0]) if self._timers else next_scan
        wait = 0.0 if hot else max(0.0, moment - time.monotonic())
        ready: dict[_Pair, list[int]] = {}  # the pair → events seen on client, server
        woken: list[tuple[Task, int]] = []  # with epoll's events for its socket
        for fileobj, data, mask in self._sel.select(wait):
            if type(data) is Task:
                woken.append((data, mask))
            elif type(data) is _Pair:
                seen = ready.get(data)
                if seen is None:
                    seen = ready[data] = [0, 0]
                seen[fileobj is data.server] |= _events(mask)
            elif data is None:
                try:
                    while reader.recv(4096):
                        pass
                except OSError:
                    pass
            elif callable(data):  # a listener's accept
                if self._listeners and not data(fileobj):
                    self._drop_listeners()
        if self._listen_request is not None or self._listen_applied is not None:
            self._apply_listen_request()
        for task, mask in woken:
            if not task.done:
                task.ready(self, mask)
        self._run_tasks()
        for pair in hot:
            ready[pair] = [_ALL, _ALL]
        if self._incoming or self._close_all:
            for pair in self._take_incoming():
                if pair.tls:  # OpenSSL may hold decrypted bytes no readiness will show
                    ready[pair] = [_ALL, _ALL]
                else:  # the kernel will say when either side has something
                    self._start_plain(pair)
        pairs = self._pairs
        for pair, (client_events, server_events) in ready.items():
            if pair in pairs:
                self._step(pair, client_events, server_events)
        self._sel.settle()
        # Only a read can leave bytes inside OpenSSL, and only stepped pairs read.
        return [pair for pair in ready if pair.tls and pair in pairs and pair.hot()]

    # -- listeners

    def _apply_listen_request(self) -> None:
        with self._lock:
            request, self._listen_request = self._listen_request, None
            applied, self._listen_applied = self._listen_applied, None
        if request is not None:
            self._drop_listeners()
            listeners, accept = request
            assert self._sel is not None
            for listener in listeners:
                self._sel.register(listener, _READ, accept)
            self._listeners = listeners
        if applied is not None:
            applied.set()

    def _drop_listeners(self) -> None:
        assert self._sel is not None
        for listener in self._listeners:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._sel.unregister(listener)
        self._listeners = []
        with self._lock:
            if self._listen_request is None:
                self._listening = False

    # -- sessions logging in (perditionpy.task's Loop)

    def _run_tasks(self) -> None:
        """New sessions, finished worker calls, and moments that came."""
        # Other threads only append to these (under the lock, then a wake-up):
        # one seen empty here is looked at again on the turn that wake-up brings.
        new: list[Task] = []
        if self._new_tasks or self._from_workers:
            with self._lock:
                new, self._new_tasks = self._new_tasks, []
                done, self._from_workers = self._from_workers, []
            for then in done:
                then()
        if self._timers:
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:  # wake_at may rebuild the list
                when, _, task = heapq.heappop(self._timers)
                task.alarm(self, when)
        for task in new:
            self._tasks.add(task)
            task.resume(self)

    def watch_socket(self, task: Task, sock: socket.socket | None, events: int,
                     old: socket.socket | None) -> None:
        assert self._sel is not None
        if old is not None and old is not sock:
            try:
                self._sel.unregister(old)
            except (KeyError, ValueError, OSError):
                pass
        if sock is None:
            return
        if old is sock:
            self._sel.modify(sock, events, task)
        else:
            self._sel.register(sock, events, task)

    def wake_at(self, task: Task, when: float) -> None:
        heapq.heappush(self._timers, (when, next(self._timer_order), task))
        if len(self._timers) > 64 + 4 * len(self._tasks):  # mostly sessions over by now
            self._timers = [entry for entry in self._timers
                            if entry[2].alarm_at == entry[0] and not entry[2].done]
            heapq.heapify(self._timers)

    def offload(self, task: Task, wait: Wait) -> None:
        serial = task.serial

        def job() -> None:
            value: object = None
            error: BaseException | None = None
            try:
                value = wait.run()
            except Exception as exc:
                error = exc
            self._from_worker(lambda: task.finish_offloaded(self, serial, value, error))

        assert self._workers is not None
        self._workers.submit(job)

    def hand_over(self, task: Task, wait: Blocking) -> None:
        def job() -> None:
            task.carry_on(wait)
            self._from_worker(lambda: task.finish_elsewhere(self))

        assert self._workers is not None
        self._workers.submit(job)

    def _from_worker(self, then: Callable[[], None]) -> None:
        """(a worker) Have the loop's thread run ``then`` at its next turn."""
        with self._lock:
            self._from_workers.append(then)
            first = len(self._from_workers) == 1  # else a wake-up is on its way already
        if first:
            self._wake()

    def ended(self, task: Task) -> None:
        """``task`` is over; the socket it was watching may be its back-end's,
        about to be relayed: its registration waits for that (parked)."""
        if task.sock is not None:
            assert self._sel is not None
            self._sel.park(task.sock, task.events)
        self._tasks.discard(task)
        self._one_fewer()

    def _take_incoming(self) -> list[_Pair]:
        with self._lock:
            new, self._incoming = self._incoming, []
            close_all, self._close_all = self._close_all, False
        self._pairs.update(new)
        if close_all:
            for pair in list(self._pairs):
                self._end(pair, timed_out=False)
            for task in self._tasks:  # each sees its client go and ends by itself
                with contextlib.suppress(OSError):
                    task.client.shutdown(socket.SHUT_RDWR)
            return []
        return new

    def _step(self, pair: _Pair, client_events: int = _ALL, server_events: int = _ALL) -> None:
        try:
            going = pair.step(self._pipes, client_events, server_events)
            if going == _GOING:
                self._register(pair)
        except Exception:  # a bug must cost one pair, never the relay thread
            log.exception("Fatal error relaying%s", pair.label)
            going = False
        if not going:
            self._end(pair, timed_out=False)

    def _start_plain(self, pair: _Pair) -> None:
        """Register a new pair without TLS: nothing is read yet, so each side
        waits to read (what :meth:`_step` with no events and then
        :meth:`_register` would work out); a back-end socket its session
        left parked keeps its registration."""
        assert self._sel is not None
        try:
            for side, sock in enumerate((pair.client, pair.server)):
                self._sel.register(sock, _READ, pair)
                pair.masks[side] = _READ
        except Exception:  # a socket that died meanwhile costs its pair only
            log.exception("Fatal error relaying%s", pair.label)
            self._end(pair, timed_out=False)
            return

    def _register(self, pair: _Pair) -> None:
        assert self._sel is not None
        up, down = pair.up, pair.down
        if (not (up.held or down.held or pair.ending) and pair.masks == _BOTH_READ
                and (pair.quick or (up.read_on == _READ and down.read_on == _READ))):
            return  # the usual case: both sides read, as registered already
        for side, sock in enumerate((pair.client, pair.server)):
            events = pair.wanted(sock)
            if events == pair.masks[side]:
                continue
            if not events:
                self._sel.unregister(sock)
            elif pair.masks[side]:
                self._sel.modify(sock, events, pair)
            else:
                self._sel.register(sock, events, pair)
            pair.masks[side] = events

    def _end_idle(self) -> None:
        now = time.monotonic()
        for pair in list(self._pairs):
            if pair.timeout is not None and now - pair.last >= pair.timeout:
                self._end(pair, timed_out=True)

    def _end(self, pair: _Pair, *, timed_out: bool) -> None:
        assert self._sel is not None
        self._pairs.discard(pair)
        for side, sock in enumerate((pair.client, pair.server)):
            if not pair.masks[side]:
                pass
            elif _is_tls(sock):  # on a duplicate (tls.accept): the original may stay open
                self._sel.unregister(sock)
            else:
                self._sel.forget(sock)  # closing it takes it out of the epoll set
            close_socket(sock)
        for flow in (pair.up, pair.down):
            flow.release()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("relay: %s%s spliced=%d copied=%d", "splice" if pair.up.splice else "copy",
                      pair.label, pair.up.spliced + pair.down.spliced,
                      pair.up.moved + pair.down.moved - pair.up.spliced - pair.down.spliced)
        try:
            pair.on_done(pair.result(timed_out))
        except Exception:
            log.exception("Fatal error ending the relay%s", pair.label)
        self._one_fewer()

    def _one_fewer(self) -> None:
        with self._lock:
            self._count -= 1
            watchers = list(self._watchers)
        for callback in watchers:
            callback()


_HUB: RelayHub | None = None
_HUB_LOCK = threading.Lock()


def hub() -> RelayHub:
    """The relay hub of this process (one per process, like its listeners)."""
    global _HUB
    if _HUB is not None:  # (set once, never unset: no lock needed to read it)
        return _HUB
    with _HUB_LOCK:
        if _HUB is None:
            _HUB = RelayHub()
        return _HUB
