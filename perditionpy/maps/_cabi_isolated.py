"""The helper processes of ``-M isolated:/path/lib.so``.

:class:`perditionpy.maps.cabi.IsolatedCabiMap` starts one *spawner* as
``python -m perditionpy.maps._cabi_isolated FD PATH`` (``FD``: its end of a
socketpair).  The spawner is single-threaded and never loads the library; it
answers, one at a time:

* ``("spawn", uid, gid)`` with a socket passed alongside (SCM_RIGHTS) →
  ``("spawned", pid)``: it forks a *helper* on that socket which, if the
  spawner runs as root, first takes the identity ``uid``/``gid`` (the
  daemon's identity at that moment);
* ``("status", pid)`` → ``("status", code)``: the helper's exit (negative:
  the signal that killed it), waiting for it if need be.

A helper loads the library (after the host shim), then answers requests one
at a time, each a length-prefixed pickle:

* ``("init", options)`` → ``("init", status)``
* ``("get", key, options, peer, local, delimiter)`` → ``("answer", Answer)``
* ``("fini",)`` → ``("fini", status)``, then it exits

A load failure is answered ``("error", reason)`` to the first request.
Anything the library logs through libvanessa_logger is sent as
``("log", priority, text)`` before the reply.  End of file (the daemon went
away) ends the helper; SIGINT and SIGHUP are ignored, so a terminal's signals
reach only the daemon, which decides.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import socket
import struct
import sys

from perditionpy.errors import MapError
from perditionpy.maps import cabi


class _ForwardToParent(logging.Handler):
    """Send the library's log lines to the daemon, which logs them."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(logging.DEBUG)
        self._sock = sock

    def emit(self, record: logging.LogRecord) -> None:
        priority = {logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6}.get(record.levelno, 7)
        try:
            cabi.send_frame(self._sock, ("log", priority, record.getMessage()))
        except OSError:
            pass


def serve(sock: socket.socket, path: str) -> int:
    """Answer requests until end of file or ``fini``; the exit status."""
    library_logger = logging.getLogger(f"{cabi.__name__}.library")
    library_logger.addHandler(_ForwardToParent(sock))
    library_logger.setLevel(logging.DEBUG)
    library_logger.propagate = False
    name = "helper"
    try:
        library: cabi.CLibrary | None = cabi.CLibrary(path, name)
        failure = ""
    except MapError as exc:
        library, failure = None, str(exc).removeprefix(f"{name}: ")
    while True:
        try:
            request = cabi.recv_frame(sock)
        except (EOFError, OSError):
            return 0
        if library is None:
            cabi.send_frame(sock, ("error", failure))
            return 1
        if request[0] == "init":
            cabi.send_frame(sock, ("init", library.init(request[1])))
        elif request[0] == "get":
            cabi.send_frame(sock, ("answer", library.lookup(*request[1:])))
        elif request[0] == "fini":
            cabi.send_frame(sock, ("fini", library.fini()))
            return 0
        else:
            cabi.send_frame(sock, ("error", f"unknown request {request[0]!r}"))


def _become(uid: int, gid: int) -> None:
    if os.geteuid() == 0 and (uid, gid) != (0, 0):
        os.setgroups([gid])
        os.setgid(gid)
        os.setuid(uid)


def _fork_helper(control: socket.socket, fd: int, uid: int, gid: int, path: str) -> int:
    pid = os.fork()
    if pid == 0:  # the helper
        status = 1
        try:
            control.close()
            _become(uid, gid)
            with socket.socket(fileno=fd) as sock:
                status = serve(sock, path)
        finally:
            os._exit(status)
    os.close(fd)
    return pid


def _exit_code(status: int) -> int:
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def spawner(control: socket.socket, path: str) -> int:
    """Fork helpers on request until end of file (see the module docstring)."""
    finished: dict[int, int] = {}
    while True:
        _reap(finished)
        try:
            message, fds, _, _ = socket.recv_fds(control, _HEADER_SIZE, 4)
            if not message:
                return 0
            request = pickle.loads(_rest_of_frame(control, message))
        except (EOFError, OSError):
            return 0
        if request[0] == "spawn" and len(fds) == 1:
            try:
                _, uid, gid = request
                reply: tuple[object, ...] = ("spawned", _fork_helper(control, fds[0], uid, gid,
                                                                    path))
            except OSError as exc:
                reply = ("error", f"fork: {exc}")
        elif request[0] == "status":
            reply = ("status", _status_of(request[1], finished))
        else:
            for fd in fds:
                os.close(fd)
            reply = ("error", f"unknown request {request[0]!r}")
        cabi.send_frame(control, reply)


def _reap(finished: dict[int, int]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if len(finished) > 1024:
            finished.clear()
        finished[pid] = _exit_code(status)


def _status_of(pid: int, finished: dict[int, int]) -> int | None:
    if pid in finished:
        return finished.pop(pid)
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return None
    return _exit_code(status)


_HEADER_SIZE = 4096


def _rest_of_frame(control: socket.socket, start: bytes) -> bytes:
    """The pickle of a frame whose first bytes (with any passed fds) came in ``start``."""
    (length,) = struct.unpack("!I", start[:4])
    data = start[4:]
    while len(data) < length:
        chunk = control.recv(length - len(data))
        if not chunk:
            raise EOFError("daemon closed the connection")
        data += chunk
    return data


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    fd, path = int(argv[1]), argv[2]
    with socket.socket(fileno=fd) as control:
        return spawner(control, path)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
