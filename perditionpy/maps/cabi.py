"""Legacy C map libraries (perdition's ``dbserver_*`` ABI), loaded through cffi.

Owns three things:

* :class:`CLibrary`, the one owner of a map library's pointers: ``dlopen``
  (after the host shim, :mod:`perditionpy.maps._cabi_ffi`), ``dbserver_init``,
  ``dbserver_fini`` and the lookup (``dbserver_get``, or ``dbserver_get2`` when
  ``dbserver_get`` is missing, as perdition), freeing what the library
  allocated with C ``free`` in ``finally``.  It returns raw :data:`Answer`
  tuples, which can cross a process boundary.
* :class:`CabiMap`, the in-process ``Map`` (``-M legacy:/path/lib.so`` or any
  ``.so`` that is not one of perdition's own).  The shim's ``peername`` /
  ``sockname`` / domain delimiter are process globals, so setting them and the
  call form one critical section under one process-wide lock: calls into C
  maps are serialised (these libraries assume one process per connection).
* :class:`IsolatedCabiMap` (``-M isolated[,timeout=S][,workers=N]:/path``): the
  same library in helper processes (:mod:`perditionpy.maps._cabi_isolated`),
  so that a crash or a hang costs one lookup, not the daemon.

Reload (SIGHUP) follows perdition: ``dbserver_fini`` of the old map, then
``dbserver_init`` of the new one.  The registry opens the new map before it
closes the old, so opening a library that is already initialised runs the old
instance's ``dbserver_fini`` first and that instance's ``close()`` does not
run it again.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from perditionpy.endpoints import UserServerPort, parse_user_server_port
from perditionpy.errors import MapError
from perditionpy.maps import _cabi_ffi
from perditionpy.maps.base import LookupContext, Map, MapFactory
from perditionpy.protocol.base import decode_name, encode_name

__all__ = [
    "Answer", "CLibrary", "CabiMap", "IsolatedCabiMap", "LegacySpec",
    "DEFAULT_TIMEOUT", "DEFAULT_WORKERS", "parse_spec", "factory_for",
    "sockaddr", "to_user_server_port",
]

logger = logging.getLogger(__name__)

# isolated mode: how long one lookup may take, and how many helpers run at most.
DEFAULT_TIMEOUT = 10.0
DEFAULT_WORKERS = 4

# perdition's status codes.
FOUND, ACCESS_ERROR, NOT_FOUND, OTHER_ERROR = 0, -1, -2, -3
_STATUS_TEXT = {ACCESS_ERROR: "access error (-1)", OTHER_ERROR: "error (-3)"}

# (status, "get", text) or (status, "get2", (user, server, port)), byte strings.
Answer = tuple[int, str, Any]

# The shim's globals and the libraries' own state are per process: one lock.
_CALL_LOCK = threading.RLock()
# The instance whose dbserver_init ran last, per library file (see the docstring).
_LIVE: dict[str, CabiMap] = {}

_MISSING_SYMBOL = re.compile(r"undefined symbol: (\S+)")
_SPEC = re.compile(r"(?P<mode>legacy|isolated)(?P<settings>(,[^:,]*)*):(?P<path>.+)", re.S)


def _log_sink_priority(priority: int) -> int:
    """syslog priority (vanessa_logger) → logging level."""
    if priority <= 3:
        return logging.ERROR
    if priority == 4:
        return logging.WARNING
    return logging.INFO if priority <= 6 else logging.DEBUG


# ---------------------------------------------------------------- the spec


@dataclass(frozen=True, slots=True)
class LegacySpec:
    """What ``-M`` asked for: a library, in-process or isolated, and the limits."""

    path: str
    isolated: bool = False
    timeout: float = DEFAULT_TIMEOUT
    workers: int = DEFAULT_WORKERS


def parse_spec(text: str) -> LegacySpec:
    """``/path.so``, ``legacy:/path.so`` or ``isolated[,timeout=S][,workers=N]:/path.so``.

    Raises ``ValueError`` (with the reason) for anything else.
    """
    match = _SPEC.fullmatch(text)
    if match is None:
        return LegacySpec(text)
    settings: dict[str, str] = {}
    for item in filter(None, match["settings"].split(",")):
        name, equals, value = item.partition("=")
        if not equals or name not in ("timeout", "workers"):
            raise ValueError(f"unknown setting {item!r} (timeout=SECONDS, workers=N)")
        settings[name] = value
    if settings and match["mode"] != "isolated":
        raise ValueError("timeout= and workers= apply to isolated: only")
    try:
        timeout = float(settings.get("timeout", DEFAULT_TIMEOUT))
        workers = int(settings.get("workers", DEFAULT_WORKERS))
    except ValueError:
        raise ValueError("timeout must be a number of seconds, workers a number") from None
    if not 0 < timeout <= 3600 or not 1 <= workers <= 256:
        raise ValueError("timeout must be in (0, 3600] and workers in [1, 256]")
    return LegacySpec(match["path"], match["mode"] == "isolated", timeout, workers)


def factory_for(text: str) -> MapFactory:
    """The registry's factory for ``-M text``; ``ValueError`` for a bad spec or file."""
    spec = parse_spec(text)
    if not os.path.isfile(spec.path):
        raise ValueError("no such file")

    def open_legacy(options: str) -> Map:
        if spec.isolated:
            return IsolatedCabiMap(spec.path, options, timeout=spec.timeout,
                                   workers=spec.workers)
        return CabiMap(spec.path, options)

    return open_legacy


# ---------------------------------------------------------------- addresses


def sockaddr(address: tuple[Any, ...] | None) -> bytes | None:
    """The ``struct sockaddr_in``/``sockaddr_in6`` bytes of ``(host, port, ...)``."""
    if address is None:
        return None
    host, port = str(address[0]), int(address[1])
    family_field = struct.Struct("=H")  # sa_family_t, host order
    try:
        if ":" in host:
            scope = int(address[3]) if len(address) > 3 else 0
            return (family_field.pack(socket.AF_INET6) + struct.pack("!HI", port, 0)
                    + socket.inet_pton(socket.AF_INET6, host.split("%")[0])
                    + struct.pack("=I", scope))
        return (family_field.pack(socket.AF_INET) + struct.pack("!H", port)
                + socket.inet_pton(socket.AF_INET, host) + bytes(8))
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- the library


class CLibrary:
    """One loaded map library.  Not thread-safe: callers hold ``_CALL_LOCK``."""

    def __init__(self, path: str, name: str) -> None:
        self.path = path
        self.name = name
        try:
            self._binding = _cabi_ffi.load_shim()
        except OSError as exc:
            raise MapError(name, f"{path}: cannot load the host shim: {exc}") from exc
        _install_log_sink(self._binding)
        try:
            self._lib = _cabi_ffi.open_library(self._binding, path)
        except OSError as exc:
            raise MapError(name, _load_failure(path, str(exc))) from exc
        self._get = self._symbol("dbserver_get")
        self._get2 = None if self._get is not None else self._symbol("dbserver_get2")
        if self._get is None and self._get2 is None:
            raise MapError(name, f"{path}: has neither dbserver_get nor dbserver_get2")
        self._init = self._symbol("dbserver_init")
        self._fini = self._symbol("dbserver_fini")

    def _symbol(self, name: str) -> Any:
        try:
            return getattr(self._lib, name)
        except AttributeError:
            return None

    def init(self, options: bytes | None) -> int:
        """``dbserver_init(options)`` if the library has it; its status (0 if absent)."""
        if self._init is None:
            return 0
        ffi = self._binding.ffi
        argument = ffi.NULL if options is None else ffi.new("char[]", options)
        return int(self._init(argument))

    def fini(self) -> int:
        """``dbserver_fini()`` if the library has it; its status (0 if absent)."""
        return 0 if self._fini is None else int(self._fini())

    def lookup(self, key: bytes, options: bytes | None, peer: bytes | None,
               local: bytes | None, delimiter: bytes) -> Answer:
        """One call, with the shim's globals set for it."""
        shim, ffi = self._binding.shim, self._binding.ffi
        shim.perditionpy_shim_set_names(peer or ffi.NULL, len(peer or b""),
                                        local or ffi.NULL, len(local or b""))
        shim.perditionpy_shim_set_domain_delimiter(delimiter)
        try:
            c_options = ffi.NULL if options is None else options
            if self._get is not None:
                return self._call_get(key, c_options)
            return self._call_get2(key, c_options)
        finally:
            shim.perditionpy_shim_set_names(ffi.NULL, 0, ffi.NULL, 0)

    def _call_get(self, key: bytes, options: Any) -> Answer:
        ffi, free = self._binding.ffi, self._binding.shim.free
        result = ffi.new("char **")
        length = ffi.new("size_t *")  # zeroed: libraries may store only an int
        try:
            status = int(self._get(key, options, result, length))
            text = None
            if status >= 0 and result[0] != ffi.NULL:
                text = ffi.string(result[0], length[0]) if length[0] else b""
            return status, "get", text
        finally:
            if result[0] != ffi.NULL:
                free(result[0])

    def _call_get2(self, key: bytes, options: Any) -> Answer:
        assert self._get2 is not None  # (a library without dbserver_get has it)
        ffi, free = self._binding.ffi, self._binding.shim.free
        parts = [ffi.new("char **") for _ in range(3)]
        try:
            status = int(self._get2(key, options, *parts))
            values = tuple(None if part[0] == ffi.NULL else ffi.string(part[0])
                           for part in parts)
            return status, "get2", values if status >= 0 else (None, None, None)
        finally:
            for part in parts:
                if part[0] != ffi.NULL:
                    free(part[0])


def _load_failure(path: str, error: str) -> str:
    missing = _MISSING_SYMBOL.search(error)
    if missing is not None:
        return (f"{path}: needs the symbol {missing[1].rstrip('.,;')}, which perditionpy's host "
                "does not provide")
    return f"{path}: cannot load: {error}"


_sink_installed = False
_sink_callback: Any = None


def _install_log_sink(binding: _cabi_ffi.Binding) -> None:
    """Route the libraries' libvanessa_logger output to ``logging`` (once)."""
    global _sink_installed, _sink_callback
    with _CALL_LOCK:
        if _sink_installed:
            return
        _sink_installed = True
        library_logger = logging.getLogger(f"{__name__}.library")

        def sink(priority: int, line: Any) -> None:
            text = binding.ffi.string(line).decode("utf-8", "replace").rstrip("\n")
            library_logger.log(_log_sink_priority(priority), "%s", text)

        _sink_callback = binding.ffi.callback("void(int, const char *)", sink)
        binding.shim.perditionpy_shim_set_log_sink(_sink_callback)
        if binding.shim.perditionpy_shim_hook_vanessa_logger() < 0:
            logger.warning("cannot hook libvanessa_logger: map libraries will not log")


def to_user_server_port(answer: Answer, name: str, delimiter: str) -> UserServerPort | None:
    """perdition's reading of an answer: ``None`` for -2, ``MapError`` for other
    failures, an all-``None`` result for "0 with an empty string" (ends the search)."""
    status, kind, value = answer
    if status == NOT_FOUND:
        return None
    if status < 0:
        raise MapError(name, f"lookup failed: {_STATUS_TEXT.get(status, f'status {status}')}")
    empty = UserServerPort(None, None, None)
    if kind == "get":
        if not value:
            return empty
        return parse_user_server_port(decode_name(value), delimiter)
    user, server, port = (decode_name(part) if part else None for part in value)
    if user is None and server is None and port is None:
        return empty
    return UserServerPort(user, server, port)


def _key_bytes(key: str) -> bytes:
    return encode_name(key).split(b"\0", 1)[0]


def _options_bytes(options: str) -> bytes | None:
    # perdition passes NULL when -m is not given; libraries then use defaults.
    return encode_name(options).split(b"\0", 1)[0] if options else None


def _library_name(path: str) -> str:
    return f"legacy {os.path.basename(path)}"


# ---------------------------------------------------------------- in process


class CabiMap:
    """A C map library called in this process (``-M legacy:/path``)."""

    def __init__(self, path: str, options: str = "") -> None:
        self.name = _library_name(path)
        self.path = path
        self._options = _options_bytes(options)
        self._key = os.path.realpath(path)
        self._closed = False
        with _CALL_LOCK:
            self._library = CLibrary(path, self.name)
            previous = _LIVE.pop(self._key, None)
            if previous is not None:
                previous._finish()
            status = self._library.init(self._options)
            if status != 0:
                raise MapError(self.name, f"{path}: dbserver_init failed (status {status})")
            _LIVE[self._key] = self

    def __repr__(self) -> str:
        return f"CabiMap({self.path!r})"

    def get(self, key: str, context: LookupContext) -> UserServerPort | None:
        peer, local = sockaddr(context.client), sockaddr(context.local)
        delimiter = encode_name(context.domain_delimiter)
        with _CALL_LOCK:
            if self._closed:
                raise MapError(self.name, "map is closed")
            answer = self._library.lookup(_key_bytes(key), self._options, peer, local,
                                          delimiter)
        return to_user_server_port(answer, self.name, context.domain_delimiter)

    def close(self) -> None:
        """``dbserver_fini`` unless a newer instance already ran it; idempotent."""
        with _CALL_LOCK:
            self._closed = True
            if _LIVE.get(self._key) is self:
                del _LIVE[self._key]
                self._finish()

    def _finish(self) -> None:
        status = self._library.fini()
        if status != 0:
            logger.warning("%s: dbserver_fini failed (status %d)", self.name, status)


# ---------------------------------------------------------------- isolated

_FRAME = struct.Struct("!I")
_FRAME_LIMIT = 1 << 20


def send_frame(sock: socket.socket, message: object) -> None:
    """One length-prefixed pickle (our own two processes talk; nothing else)."""
    data = pickle.dumps(message)
    sock.sendall(_FRAME.pack(len(data)) + data)


def recv_frame(sock: socket.socket) -> Any:
    """The next message; ``EOFError`` when the peer is gone."""
    (length,) = _FRAME.unpack(_recv_exactly(sock, _FRAME.size))
    if length > _FRAME_LIMIT:
        raise EOFError("oversized frame")
    return pickle.loads(_recv_exactly(sock, length))


def _recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise EOFError("helper closed the connection")
        data += chunk
    return data


class _HelperFailed(Exception):
    """The helper crashed, hung or broke the protocol; it has been stopped."""


class _Spawner:
    """The process that forks helpers (``_cabi_isolated --spawner``).

    Started once, as the start-up user, while the daemon is still
    single-threaded; it stays single-threaded, so forking there is safe, and a
    helper it forks takes the identity the daemon has *now* (after a privilege
    drop the daemon may not even be allowed to exec Python again).
    """

    def __init__(self, path: str) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "perditionpy.maps._cabi_isolated",
                 str(theirs.fileno()), path],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, close_fds=True)
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        self._sock = ours
        self._lock = threading.Lock()

    def _ask(self, request: tuple[Any, ...], fds: list[int] = []) -> Any:  # noqa: B006
        with self._lock:
            try:
                self._sock.settimeout(DEFAULT_TIMEOUT)
                data = pickle.dumps(request)
                socket.send_fds(self._sock, [_FRAME.pack(len(data)) + data], fds)
                return recv_frame(self._sock)
            except (OSError, EOFError) as exc:
                raise OSError(f"the helper spawner is gone: {exc}") from exc

    def spawn(self, their_end: socket.socket) -> int:
        """Fork a helper on ``their_end`` with our current identity; its pid."""
        reply = self._ask(("spawn", os.geteuid(), os.getegid()), [their_end.fileno()])
        if reply[0] != "spawned":
            raise OSError(reply[1])
        return int(reply[1])

    def exit_status(self, pid: int) -> int | None:
        """The helper's wait status (negative: killed by that signal), if known."""
        try:
            reply = self._ask(("status", pid))
        except OSError:
            return None
        return reply[1] if reply[0] == "status" else None

    def close(self) -> None:
        """End of file ends the spawner (its helpers go on until theirs)."""
        self._sock.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class _Helper:
    """One helper process holding the library (see :mod:`_cabi_isolated`)."""

    def __init__(self, spawner: _Spawner) -> None:
        self.uid = os.geteuid()
        self._spawner = spawner
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.pid = spawner.spawn(theirs)
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock = ours

    def call(self, request: tuple[Any, ...], timeout: float) -> Any:
        """Send ``request``, relay log lines, return the reply; ``_HelperFailed`` else."""
        deadline = time.monotonic() + timeout
        try:
            self.sock.settimeout(timeout)
            send_frame(self.sock, request)
            while True:
                self.sock.settimeout(max(deadline - time.monotonic(), 0.001))
                message = recv_frame(self.sock)
                if message[0] != "log":
                    return message
                logging.getLogger(f"{__name__}.library").log(
                    _log_sink_priority(message[1]), "%s", message[2])
        except TimeoutError:
            self.stop()
            raise _HelperFailed(f"no answer within {timeout:g}s; helper restarted") from None
        except (OSError, EOFError, pickle.UnpicklingError) as exc:
            raise _HelperFailed(self._death(exc)) from None

    def _death(self, exc: BaseException) -> str:
        self.stop()
        code = self._spawner.exit_status(self.pid)
        if code is not None and code < 0:
            try:
                return f"helper killed by {signal.Signals(-code).name}; restarted"
            except ValueError:
                return f"helper killed by signal {-code}; restarted"
        return f"helper failed ({exc}); restarted"

    def stop(self, *, kill: bool = True) -> None:
        """Close our end (an idle helper exits on that); kill it if it may be busy."""
        self.sock.close()
        if kill:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


class IsolatedCabiMap:
    """A C map library run in up to ``workers`` helper processes.

    Each lookup borrows an idle helper (starting one if fewer than ``workers``
    run), so a hang holds one helper for ``timeout`` seconds while lookups go
    on in the others.  A helper that crashes or times out is stopped and that
    lookup fails (``MapError``); the next lookup starts a fresh one, which runs
    ``dbserver_init`` again.  A helper started before a privilege drop is
    replaced on its next use.
    """

    def __init__(self, path: str, options: str = "", *, timeout: float = DEFAULT_TIMEOUT,
                 workers: int = DEFAULT_WORKERS) -> None:
        self.name = _library_name(path)
        self.path = path
        self.timeout = timeout
        self.workers = workers
        self._options = _options_bytes(options)
        self._ready = threading.Condition()
        self._idle: list[_Helper] = []
        self._running = 0
        self._closed = False
        try:
            self._spawner = _Spawner(path)
        except OSError as exc:
            raise MapError(self.name, f"cannot start the helper spawner: {exc}") from exc
        # A helper now, as perdition runs dbserver_init at start-up: errors stop the start.
        try:
            self._give_back(self._start_helper())
        except MapError:
            self._spawner.close()
            raise

    def __repr__(self) -> str:
        return f"IsolatedCabiMap({self.path!r})"

    def get(self, key: str, context: LookupContext) -> UserServerPort | None:
        request = ("get", _key_bytes(key), self._options, sockaddr(context.client),
                   sockaddr(context.local), encode_name(context.domain_delimiter))
        helper = self._borrow()
        try:
            reply = helper.call(request, self.timeout)
        except _HelperFailed as exc:
            self._discard(helper)
            logger.warning("%s: lookup failed: %s", self.name, exc)
            raise MapError(self.name, f"lookup failed: {exc}") from None
        self._give_back(helper)
        if reply[0] != "answer":
            raise MapError(self.name, f"lookup failed: {reply[1]}")
        return to_user_server_port(reply[1], self.name, context.domain_delimiter)

    def close(self) -> None:
        """Run ``dbserver_fini`` in idle helpers and stop them; busy ones stop when
        their lookup ends.  Idempotent."""
        with self._ready:
            self._closed = True
            idle, self._idle = self._idle, []
            self._running -= len(idle)
            self._ready.notify_all()
        for helper in idle:
            self._finish(helper)
        self._spawner.close()

    def _finish(self, helper: _Helper) -> None:
        try:
            helper.call(("fini",), self.timeout)
        except _HelperFailed as exc:
            logger.warning("%s: dbserver_fini: %s", self.name, exc)
            return
        helper.stop(kill=False)

    def _start_helper(self) -> _Helper:
        try:
            helper = _Helper(self._spawner)
        except OSError as exc:
            raise MapError(self.name, f"cannot start a helper: {exc}") from exc
        try:
            reply = helper.call(("init", self._options), self.timeout)
        except _HelperFailed as exc:
            raise MapError(self.name, f"{self.path}: dbserver_init: {exc}") from None
        if reply[0] == "error":
            helper.stop()
            raise MapError(self.name, reply[1])
        if reply[0] != "init" or reply[1] != 0:
            helper.stop()
            raise MapError(self.name, f"{self.path}: dbserver_init failed (status {reply[1]})")
        with self._ready:
            self._running += 1
        return helper

    def _borrow(self) -> _Helper:
        deadline = time.monotonic() + self.timeout
        with self._ready:
            while True:
                if self._closed:
                    raise MapError(self.name, "map is closed")
                while self._idle:
                    helper = self._idle.pop()
                    if helper.uid == os.geteuid():
                        return helper
                    self._running -= 1  # started under another identity: it exits
                    helper.stop(kill=False)
                if self._running < self.workers:
                    self._running += 1  # reserved; _start_helper counts it again
                    break
                if not self._ready.wait(max(deadline - time.monotonic(), 0)):
                    raise MapError(self.name, f"no helper free within {self.timeout:g}s")
        try:
            return self._start_helper()
        finally:
            with self._ready:
                self._running -= 1
                self._ready.notify()

    def _give_back(self, helper: _Helper) -> None:
        with self._ready:
            if not self._closed:
                self._idle.append(helper)
                self._ready.notify()
                return
            self._running -= 1
        self._finish(helper)

    def _discard(self, helper: _Helper) -> None:
        with self._ready:
            self._running -= 1
            self._ready.notify()
