"""The daemon's life cycle: listeners, inetd mode, detaching, the pid file,
dropping privileges, the connection limit, signals and connection threads.

The main thread only accepts and acts on signals; each connection goes to
``handle`` on a worker of a long-lived pool (perditionpy.pool). Signal handlers only record the signal and
wake the loop through a socketpair: SIGHUP reopens the log and calls ``reload``
(connections keep running); SIGTERM/SIGINT/SIGQUIT stop accepting, remove the
pid file and give connections :data:`SHUTDOWN_GRACE` seconds before their
sockets are shut down. Deliberate differences from perdition 2.2 are listed in
docs/compatibility.md and marked where they happen.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import logging
import os
import selectors
import signal
import socket
import stat
import threading
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from perditionpy import limits, relay_hub
from perditionpy import log as log_mod
from perditionpy.daemon import (
    EXIT_FATAL,
    StartupError,
    daemonize,
    default_pid_file,
    drop_privileges,
    identity,
    pid_file_path,
    remove_pid_file,
    stay_in_foreground,
    write_pid_file,
)
from perditionpy.pool import WorkerPool, default_size
from perditionpy.supervisor import supervise

if TYPE_CHECKING:
    from perditionpy.endpoints import UserServerPort
    from perditionpy.options import Options

__all__ = [
    "EXIT_FATAL",
    "SHUTDOWN_GRACE",
    "Server",
    "StartupError",
    "default_pid_file",
    "open_listeners",
    "serve",
]

logger = logging.getLogger(__name__)

Address = tuple[Any, ...]
Handler = Callable[[socket.socket, Address | None, Address | None], None]

# Seconds running connections get after SIGTERM before their sockets are shut down:
# long enough for logins in progress to finish, short of init's stop timeouts (90 s).
SHUTDOWN_GRACE = 10.0
# After shutting the sockets down, how long sessions get to log their Closing lines.
_CLOSE_WAIT = 2.0
# Connections taken from a listener per readiness, at most.
_ACCEPT_BATCH = 32
# How long accepting pauses after running out of file descriptors or memory.
_ACCEPT_PAUSE = 1.0
# How long inetd mode waits for the last bytes to reach stdout after the session ends.
_FLUSH_WAIT = 5.0

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
# perdition ignores these; their default action would kill the process.
_IGNORED_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)
_PR_SET_PDEATHSIG = 1  # prctl(2)
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def serve(options: Options, handle: Handler, *, reload: Callable[[], None],
          prog: str, grace: float = SHUTDOWN_GRACE, start: Handler | None = None) -> int:
    """Run the daemon (or the one inetd connection) until it stops; return the exit status.

    ``handle(conn, client_addr, local_addr)`` runs one connection to its end and
    closes ``conn`` (on a pool thread). ``start``, when given, is used instead by
    the daemon: it hands the connection to the event loop and returns at once
    (perditionpy.app, perditionpy.relay_hub). Logging must already be set up
    (``log.setup_logging``).
    """
    return Server(options, handle, reload=reload, prog=prog, grace=grace, start=start).run()


# ---------------------------------------------------------------- listeners

def _port_number(text: str) -> int:
    """A port given as a number or a service name (``imap2``)."""
    if text.isdigit():
        number = int(text)
        if 0 < number < 65536:
            return number
        raise StartupError(f"Fatal error: port {text} out of range. Exiting.")
    try:
        return socket.getservbyname(text, "tcp")
    except OSError:
        raise StartupError(f'Fatal error: unknown service "{text}". Exiting.') from None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _bind_target(entry: UserServerPort, default_port: int) -> tuple[str, int]:
    """``(host, port)`` for one ``-b`` entry; ``""`` is every address.

    The shared endpoint parser reads a bare IPv6 literal such as ``::1`` as host
    ``:`` and port ``1``; put such an entry back together when only the whole
    text is an address (``[::1]:143`` is the unambiguous spelling).
    """
    host, port = entry.server or "", entry.port
    if port and ":" in host and not _is_ip(host) and _is_ip(f"{host}:{port}"):
        host, port = f"{host}:{port}", None
    return host, _port_number(port) if port else default_port


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _bind_failed(host: str, port: int, exc: OSError) -> StartupError:
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return StartupError(f"Fatal error listening for connections on {_where(host, port)}: "
                        f"{reason}. Exiting.")


def _listen(family: int, sockaddr: Address, *, dualstack: bool = False,
            reuse_port: bool = False) -> socket.socket:
    # create_server sets SO_REUSEADDR, and IPV6_V6ONLY unless dual-stack.
    sock = socket.create_server(sockaddr, family=family, backlog=socket.SOMAXCONN,
                                dualstack_ipv6=dualstack, reuse_port=reuse_port)
    sock.setblocking(False)
    # Sessions coalesce their writes; Nagle would only add latency.  Linux
    # hands a listener's TCP_NODELAY (and SO_KEEPALIVE) to each accepted
    # socket: set once here, not per connection.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _listen_everywhere(port: int, reuse_port: bool = False) -> socket.socket:
    """``::`` for IPv6 and IPv4 at once where the host has IPv6, else ``0.0.0.0``."""
    if socket.has_dualstack_ipv6():
        try:
            return _listen(socket.AF_INET6, ("::", port), dualstack=True,
                           reuse_port=reuse_port)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise _bind_failed("::", port, exc) from None
            logger.debug("No IPv6 listener (%s): using 0.0.0.0", exc)
    try:
        return _listen(socket.AF_INET, ("0.0.0.0", port), reuse_port=reuse_port)
    except OSError as exc:
        raise _bind_failed("0.0.0.0", port, exc) from None


def _listen_on(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """The first address ``host`` resolves to that binds, as perdition does.

    A busy port is fatal at once rather than falling through to another family.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise _bind_failed(host, port, exc) from None
    failure = OSError(errno.EADDRNOTAVAIL, "no address")
    for family, _, _, _, sockaddr in infos:
        try:
            return _listen(family, sockaddr, reuse_port=reuse_port)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise _bind_failed(host, port, exc) from None
            failure = exc
    raise _bind_failed(host, port, failure)


def open_listeners(options: Options, *, reuse_port: bool = False) -> list[socket.socket]:
    """Bind every ``-b`` address (all addresses when there are none); non-blocking.

    ``reuse_port``: with SO_REUSEPORT, so that each ``--workers`` process can have
    its own set and the kernel spreads connections over them."""
    targets = [_bind_target(entry, options.listen_port) for entry in options.bind_address]
    sockets: list[socket.socket] = []
    try:
        for host, port in targets or [("", options.listen_port)]:
            sockets.append(_listen_on(host, port, reuse_port) if host
                           else _listen_everywhere(port, reuse_port))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    for sock in sockets:
        if options.tcp_keepalive:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        logger.debug("Listening on %s", _where(*sock.getsockname()[:2]))
    return sockets


def _accept(listener: socket.socket, kinds: dict[socket.socket, tuple[int, int, int]]
            ) -> tuple[socket.socket, Any]:
    """``listener.accept()``, with the listener's family, type and protocol
    remembered in ``kinds`` instead of converted to enums on every call (the
    caller sets the blocking mode)."""
    kind = kinds.get(listener)
    if kind is None:
        kind = kinds[listener] = (int(listener.family), int(listener.type), listener.proto)
    fd, peer = listener._accept()  # type: ignore[attr-defined]
    try:
        return socket.socket(*kind, fileno=fd), peer
    except BaseException:
        os.close(fd)
        raise


def _fixed_local_address(listener: socket.socket) -> Address | None:
    """The local address of every connection ``listener`` accepts, if it is
    bound to one address (``None`` for a wildcard: ask each connection)."""
    address = listener.getsockname()
    if not isinstance(address, tuple):
        return None
    if ipaddress.ip_address(address[0].split("%")[0]).is_unspecified:
        return None
    return plain_address(address)


def plain_address(address: object) -> Address | None:
    """An address tuple for the session: IPv4-mapped IPv6 shown as IPv4, as perdition
    (listening on 0.0.0.0) logs it; ``None`` for non-IP sockets."""
    if not isinstance(address, tuple) or not address:
        return None
    host = address[0]
    if isinstance(host, str) and host.startswith("::ffff:") and "." in host:
        return (host[len("::ffff:"):], address[1])
    return address


# ---------------------------------------------------------------- inetd mode

def _same_socket(fd_a: int, fd_b: int) -> bool:
    try:
        a, b = os.fstat(fd_a), os.fstat(fd_b)
    except OSError:
        return False
    return stat.S_ISSOCK(a.st_mode) and (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class _StdioBridge:
    """Joins fds 0 and 1 (pipes, e.g. tcpserver or a test) to one end of a
    socketpair, which the session gets as its connection."""

    def __init__(self) -> None:
        self.inner, self._outer = socket.socketpair()
        self._flushed = threading.Event()
        start_thread(self._copy_in, "inetd-stdin")
        start_thread(self._copy_out, "inetd-stdout")

    def _copy_in(self) -> None:
        with contextlib.suppress(OSError):
            while chunk := os.read(0, limits.RELAY_BUFFER_SIZE):
                self._outer.sendall(chunk)
            self._outer.shutdown(socket.SHUT_WR)

    def _copy_out(self) -> None:
        try:
            while chunk := self._outer.recv(limits.RELAY_BUFFER_SIZE):
                _write_all(1, chunk)
        except OSError:
            pass
        finally:
            self._flushed.set()

    def finish(self) -> None:
        """After the session closed ``inner``: wait for its last bytes to reach fd 1."""
        self._flushed.wait(_FLUSH_WAIT)
        self._outer.close()


def inetd_connection() -> tuple[socket.socket, Callable[[], None]]:
    """The connection on stdin/stdout, and what to call once the session is over."""
    if _same_socket(0, 1):
        return socket.socket(fileno=0), lambda: None
    bridge = _StdioBridge()
    return bridge.inner, bridge.finish


def _addresses(conn: socket.socket) -> tuple[Address | None, Address | None]:
    try:
        return plain_address(conn.getpeername()), plain_address(conn.getsockname())
    except OSError:
        return None, None


# ---------------------------------------------------------------- threads

def start_thread(target: Callable[[], None], name: str) -> None:
    """A dedicated thread (inetd mode's stdio bridge); connections use the pool."""
    threading.Thread(target=target, name=name, daemon=True).start()


class _Wakeup:
    """Self-pipe: signal handlers record the signal, the C-level handler and
    finishing connections write a byte, the main loop wakes and acts."""

    def __init__(self) -> None:
        self.reader, self._writer = socket.socketpair()
        self.reader.setblocking(False)
        self._writer.setblocking(False)
        self.signals: deque[int] = deque()
        self._saved: dict[int, Any] = {}
        self._saved_fd: int | None = None

    def _record(self, signum: int, frame: object) -> None:
        self.signals.append(signum)

    def install(self) -> None:
        """Route our signals here; only possible on the main thread."""
        if threading.current_thread() is not threading.main_thread():
            logger.debug("Not on the main thread: signals are not handled")
            return
        self._saved_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGHUP, *_STOP_SIGNALS):
            self._swap_handler(signum, self._record)
        for signum in _IGNORED_SIGNALS:
            self._swap_handler(signum, signal.SIG_IGN)

    def _swap_handler(self, signum: int, handler: Any) -> None:
        previous = signal.signal(signum, handler)
        # None: a handler installed outside Python, which cannot be put back.
        self._saved[signum] = signal.SIG_DFL if previous is None else previous

    def restore(self) -> None:
        for signum, previous in self._saved.items():
            signal.signal(signum, previous)
        if self._saved_fd is not None:
            signal.set_wakeup_fd(self._saved_fd)
        self._saved.clear()

    def post(self, signum: int | None = None) -> None:
        """Wake the main loop (from any thread), optionally as if ``signum`` arrived."""
        if signum is not None:
            self.signals.append(signum)
        with contextlib.suppress(OSError):  # full: a wake-up is pending anyway
            self._writer.send(b"\0")

    def drain(self) -> None:
        with contextlib.suppress(OSError):
            while self.reader.recv(4096):
                pass

    def close(self) -> None:
        self.reader.close()
        self._writer.close()


class _Connections:
    """The connections being handled, for ``-L`` and for shutting down: those
    with a thread of their own, and those the relay hub holds after login."""

    def __init__(self, on_change: Callable[[], None]) -> None:
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._on_change = on_change
        relay_hub.hub().watch(on_change)

    def add(self, conn: socket.socket) -> None:
        with self._lock:
            self._open.add(conn)

    def discard(self, conn: socket.socket) -> None:
        with self._lock:
            self._open.discard(conn)
        self._on_change()

    def __len__(self) -> int:
        with self._lock:
            return len(self._open) + relay_hub.hub().active()

    def shutdown_all(self) -> None:
        """Shut (not close) every socket: sessions see EOF and finish by themselves."""
        with self._lock:
            conns = list(self._open)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        relay_hub.hub().close_all()


def _stop_with_parent(parent: int) -> None:
    """A worker gets SIGTERM (a graceful stop) if its parent dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:  # it died before prctl
        os.kill(os.getpid(), signal.SIGTERM)


def _tune_client_socket(conn: socket.socket, keepalive: bool, *, blocking: bool,
                        from_listener: bool = False) -> None:
    """TCP_NODELAY (and SO_KEEPALIVE with -K), unless ``from_listener`` (accepted
    from one of ours: it has them already); blocking for a thread of its own,
    non-blocking for the event loop."""
    conn.setblocking(blocking)
    if not from_listener and conn.family in (socket.AF_INET, socket.AF_INET6):
        # Sessions coalesce their writes; Nagle would only add latency.
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if keepalive:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


# ---------------------------------------------------------------- the server

class Server:
    """One daemon (or one inetd connection) from start-up to exit."""

    def __init__(self, options: Options, handle: Handler, *,
                 reload: Callable[[], None], prog: str,
                 grace: float = SHUTDOWN_GRACE, start: Handler | None = None) -> None:
        self._options = options
        self._handle = handle
        self._start = start
        self._reload = reload
        self._prog = prog
        self._grace = grace
        self._wakeup = _Wakeup()
        self._connections = _Connections(self._connection_ended)
        self._selector = selectors.DefaultSelector()
        self._listeners: list[socket.socket] = []
        self._local_of: dict[socket.socket, Address | None] = {}  # see _fixed_local_address
        self._kind_of: dict[socket.socket, tuple[int, int, int]] = {}  # see _accept
        self._accepting = False
        self._paused_until = 0.0
        self._stop_at: float | None = None  # when the grace period ends
        self._closed_all = False
        self._pid_file = ""
        self._worker_listeners: list[list[socket.socket]] = []  # --workers: one set each
        self._pool = WorkerPool(default_size(options.connection_limit), name="connection")

    def stop(self) -> None:
        """Ask the server to stop, as SIGTERM does; callable from any thread."""
        self._wakeup.post(signal.SIGTERM)

    def _connection_ended(self) -> None:
        """(any thread) The main loop counts connections only under -L or while
        stopping, or in inetd mode: otherwise it need not wake."""
        if (self._options.connection_limit > 0 or self._stop_at is not None
                or self._options.inetd_mode):
            self._wakeup.post()

    def run(self) -> int:
        """Start, serve until stopped, clean up; return the exit status."""
        try:
            if self._options.inetd_mode:
                return self._run_inetd()
            return self._run_standalone()
        except StartupError as exc:
            logger.error("%s", exc)
            return exc.status
        finally:
            self._cleanup()

    # -- start-up

    def _should_detach(self) -> bool:
        opt = self._options
        return not (opt.no_daemon or opt.inetd_mode
                    or log_mod.writes_to_std_stream(opt.log_facility))

    def _run_standalone(self) -> int:
        workers = max(1, getattr(self._options, "workers", 1))
        if workers > 1:
            self._worker_listeners = [open_listeners(self._options, reuse_port=True)
                                      for _ in range(workers)]
        else:
            self._listeners = open_listeners(self._options)
        report = daemonize() if self._should_detach() else stay_in_foreground
        if workers == 1:
            self._wakeup.install()  # not before: the foreground process must stay killable
        try:
            self._become_daemon()
        except StartupError as exc:
            logger.error("%s", exc)  # before the foreground process exits and reports it
            report(exc.status)
            return exc.status
        report(0)
        if workers > 1:
            return supervise(workers, self._start_worker, on_hup=self._parent_hup,
                             on_stop=self._parent_stop)
        return self._main_loop()

    # -- --workers: the parent and its worker processes

    def _parent_hup(self) -> None:
        log_mod.reopen()
        logger.info("Reopened logger")

    def _parent_stop(self, signum: int) -> None:
        logger.info("Exiting on signal %d", signum)
        self._remove_pid_file()

    def _start_worker(self, slot: int, mask: set[int | signal.Signals]) -> int:
        """Fork the worker serving listener set ``slot``; in the child, serve and exit."""
        parent = os.getpid()
        pid = os.fork()
        if pid:
            return pid
        status = EXIT_FATAL
        try:
            _stop_with_parent(parent)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            status = self._serve_as_worker(slot)
        except BaseException:
            logger.exception("Fatal error in worker %d", os.getpid())
        finally:
            os._exit(status)
        return 0  # not reached

    def _serve_as_worker(self, slot: int) -> int:
        """The child's own wake-up pipe, selector and listener set; the parent keeps
        the pid file. Maps are reopened so no connection to a database is shared."""
        for index, listeners in enumerate(self._worker_listeners):
            if index != slot:
                for listener in listeners:
                    listener.close()
        self._listeners, self._worker_listeners = self._worker_listeners[slot], []
        self._pid_file = ""
        self._wakeup.close()
        self._selector.close()
        self._wakeup = _Wakeup()
        self._connections = _Connections(self._connection_ended)
        self._selector = selectors.DefaultSelector()
        self._wakeup.install()
        try:
            self._reload()
        except Exception as exc:
            logger.error("Worker %d keeps the map it inherited: %s", os.getpid(), exc)
        return self._main_loop()

    def _become_daemon(self) -> None:
        """Pid file (owned by the user we become, so it can be removed), then the drop."""
        identity = self._identity_to_assume()
        path = pid_file_path(self._options, self._prog)
        if path:
            write_pid_file(path, identity[:2] if identity else None)
            self._pid_file = path
        if identity is not None:
            drop_privileges(*identity)

    def _identity_to_assume(self) -> tuple[int, int, str | None] | None:
        """Who to become: only root can change, and PAM (``-a``) needs root throughout
        (perdition switches after PAM in each forked child; threads cannot)."""
        if self._options.authenticate_in:
            if os.geteuid() != 0:
                logger.info("Warning: not invoked as root, local authentication may fail")
            return None
        if os.geteuid() != 0:
            return None
        return identity(self._options)

    def _run_inetd(self) -> int:
        self._wakeup.install()
        identity = self._identity_to_assume()
        if identity is not None:
            drop_privileges(*identity)
        conn, finish = inetd_connection()
        client, local = _addresses(conn)

        def handle_then_flush(sock: socket.socket, peer: Address | None,
                              ours: Address | None) -> None:
            try:
                self._handle(sock, peer, ours)
            finally:
                sock.close()
                finish()

        self._spawn(conn, client, local, handle_then_flush)
        return self._main_loop()

    # -- connections

    def _spawn(self, conn: socket.socket, client: Address | None, local: Address | None,
               handle: Handler) -> None:
        self._connections.add(conn)
        try:
            self._pool.submit(partial(self._run_connection, handle, conn, client, local))
        except RuntimeError as exc:  # no more threads
            logger.error("Cannot start a thread for a connection: %s", exc)
            conn.close()
            self._connections.discard(conn)

    def _run_connection(self, handle: Handler, conn: socket.socket,
                        client: Address | None, local: Address | None) -> None:
        try:
            handle(conn, client, local)
        except Exception:
            logger.exception("Fatal error in the connection from %s", client)
        finally:
            conn.close()
            self._connections.discard(conn)

    def _accept_waiting(self, listener: socket.socket) -> None:
        """Take the connections waiting on ``listener``, a bounded batch at a time
        (the event loop then starts them together)."""
        for _ in range(_ACCEPT_BATCH):
            if not (self._may_accept() and self._accept(listener)):
                return

    def _accept(self, listener: socket.socket) -> bool:
        """Take one connection; False when none was waiting (or accepting failed)."""
        try:
            conn, peer = _accept(listener, self._kind_of)
        except (BlockingIOError, InterruptedError):
            return False
        except ConnectionAbortedError:
            return True  # the client gave up: look for the next one
        except OSError as exc:
            self._accept_failed(exc)
            return False
        try:
            _tune_client_socket(conn, self._options.tcp_keepalive,
                                blocking=self._start is None, from_listener=True)
            client = plain_address(peer)
            if listener not in self._local_of:
                self._local_of[listener] = _fixed_local_address(listener)
            local = self._local_of[listener] or plain_address(conn.getsockname())
        except OSError as exc:  # reset before we got to it
            logger.debug("Dropping a connection that went away: %s", exc)
            conn.close()
            return True
        if self._start is None:
            self._spawn(conn, client, local, self._handle)
            return True
        try:
            self._start(conn, client, local)
        except Exception:  # one connection lost, never the daemon
            logger.exception("Fatal error starting the connection from %s", client)
            conn.close()
        return True

    def _accept_failed(self, exc: OSError) -> None:
        logger.error("Error accepting a connection: %s", exc.strerror or exc)
        if exc.errno in _OUT_OF_RESOURCES:
            # The listener stays readable; without a pause this would spin.
            self._paused_until = time.monotonic() + _ACCEPT_PAUSE

    # -- the main loop

    def _main_loop(self) -> int:
        self._selector.register(self._wakeup.reader, selectors.EVENT_READ, None)
        self._update_accepting()
        while not self._finished():
            for key, _ in self._selector.select(self._select_timeout()):
                if key.data is None:
                    self._wakeup.drain()
                elif self._may_accept():
                    self._accept_waiting(key.fileobj)  # type: ignore[arg-type]
            self._act_on_signals()
            self._check_grace()
            self._update_accepting()
        return 0

    def _finished(self) -> bool:
        """Stopping (or inetd mode) and every connection is over, or waited out."""
        if self._stop_at is None:
            return self._options.inetd_mode and len(self._connections) == 0
        if len(self._connections) == 0:
            return True
        return self._closed_all and time.monotonic() >= self._stop_at + _CLOSE_WAIT

    def _select_timeout(self) -> float | None:
        now = time.monotonic()
        moments = [self._paused_until] if self._paused_until > now else []
        if self._stop_at is not None:
            moments.append(self._stop_at + (_CLOSE_WAIT if self._closed_all else 0.0))
        return max(min(moments) - now, 0.0) if moments else None

    def _may_accept(self) -> bool:
        limit = self._options.connection_limit
        return (self._stop_at is None and time.monotonic() >= self._paused_until
                and (limit <= 0 or len(self._connections) < limit))

    def _update_accepting(self) -> None:
        wanted = self._may_accept() and bool(self._listeners)
        if self._start is not None and self._listeners:
            # The event loop accepts (and stops by itself at -L); follow it.
            hub = relay_hub.hub()
            if wanted != hub.listening():
                if wanted:
                    hub.listen(self._listeners, self._accept_in_loop)
                else:
                    hub.stop_listening()
        if wanted == self._accepting:
            return
        self._accepting = wanted
        if self._start is None:
            for listener in self._listeners:
                if wanted:
                    self._selector.register(listener, selectors.EVENT_READ, "listen")
                else:
                    self._selector.unregister(listener)
        self._log_accepting(wanted)

    def _accept_in_loop(self, listener: socket.socket) -> bool:
        """(the event loop's thread) Take what waits on ``listener``; False to stop
        listening (-L reached, or stopping): the main loop is told, and resumes
        listening when it may."""
        self._accept_waiting(listener)
        if self._may_accept():
            return True
        self._wakeup.post()
        return False

    def _log_accepting(self, accepting: bool) -> None:
        limit = self._options.connection_limit
        if self._stop_at is not None or limit <= 0:
            return
        if not accepting and len(self._connections) >= limit:
            logger.warning("Connection limit of %d reached: new connections wait "
                           "until one closes", limit)
        elif accepting:
            logger.debug("Below the connection limit of %d again: accepting", limit)

    # -- signals

    def _act_on_signals(self) -> None:
        while self._wakeup.signals:
            signum = self._wakeup.signals.popleft()
            if signum == signal.SIGHUP:
                self._reload_everything()
            else:
                self._begin_stop(signum)

    def _reload_everything(self) -> None:
        log_mod.reopen()
        logger.info("Reopened logger")
        opt = self._options
        logger.info('Reloading map library "%s" with options "%s"',
                    opt.map_library, opt.map_library_opt)
        try:
            self._reload()
        except Exception as exc:  # a bad map must not take the running daemon down
            logger.error('Error reloading map library "%s": %s: keeping the map in use',
                         opt.map_library, exc)

    def _begin_stop(self, signum: int) -> None:
        now = time.monotonic()
        if self._stop_at is not None:  # asked twice: do not wait out the grace
            self._stop_at = min(self._stop_at, now)
            return
        logger.info("Exiting on signal %d", signum)
        self._stop_at = now + self._grace
        self._close_listeners()
        self._remove_pid_file()
        if len(self._connections):
            logger.info("Waiting up to %g seconds for %d connection(s) to finish",
                        self._grace, len(self._connections))

    def _check_grace(self) -> None:
        if self._stop_at is None or self._closed_all or time.monotonic() < self._stop_at:
            return
        self._closed_all = True
        if len(self._connections):
            logger.info("Closing %d connection(s) still open", len(self._connections))
            self._connections.shutdown_all()

    # -- clean-up

    def _close_listeners(self) -> None:
        if self._start is not None:
            relay_hub.hub().stop_listening()  # before they close: the loop lets go of them
        elif self._accepting:
            for listener in self._listeners:
                self._selector.unregister(listener)
        self._accepting = False
        for listener in self._listeners:
            listener.close()
        self._listeners = []

    def _remove_pid_file(self) -> None:
        if self._pid_file:
            remove_pid_file(self._pid_file)
            self._pid_file = ""

    def _cleanup(self) -> None:
        self._wakeup.restore()
        self._close_listeners()
        for listeners in self._worker_listeners:
            for listener in listeners:
                listener.close()
        self._worker_listeners = []
        self._remove_pid_file()
        self._selector.close()
        self._wakeup.close()
