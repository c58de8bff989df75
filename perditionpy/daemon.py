"""Becoming a daemon: the pid file, the user and group to run as, and
detaching from the terminal.  Used by perditionpy.server at start-up."""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import sys
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from perditionpy.errors import PerditionError

if TYPE_CHECKING:
    from perditionpy.options import Options

__all__ = ["EXIT_FATAL", "EXIT_PID_FILE", "StartupError", "default_pid_file",
           "write_pid_file", "remove_pid_file", "drop_privileges", "daemonize", "identity",
           "pid_file_path", "stay_in_foreground"]

logger = logging.getLogger(__name__)

EXIT_FATAL = 255  # perdition's exit(-1)
EXIT_PID_FILE = 1  # perdition exits 1 when it cannot write the pid file


class StartupError(PerditionError):
    """The daemon cannot start; ``str()`` is the line to log, ``status`` the exit status."""

    def __init__(self, message: str, status: int = EXIT_FATAL) -> None:
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------- pid file

def default_pid_file(prog: str) -> str:
    """perdition's default: ``/var/run/<basename>/<basename>.pid``."""
    base = os.path.basename(prog) or "perdition"
    return f"/var/run/{base}/{base}.pid"


def pid_file_path(options: Options, prog: str) -> str:
    """``None`` (unset) → the default; ``""`` → no pid file; never one in inetd mode."""
    if options.inetd_mode:
        return ""
    return default_pid_file(prog) if options.pid_file is None else options.pid_file


def _read_pid(path: str) -> int | None:
    try:
        with open(path, encoding="ascii", errors="replace") as file:
            text = file.read(32).strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _running(pid: int) -> bool:
    if pid == os.getpid():  # a pid reused by this very process (containers)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clear_stale_pid_file(path: str) -> None:
    pid = _read_pid(path)
    if pid is not None and _running(pid):
        raise StartupError(f"Fatal error: Pid file [{path}] exists for process [{pid}] "
                           "which appears to be running, exiting", EXIT_PID_FILE)
    os.unlink(path)
    logger.info("Removed stale pid-file [%s]", path)


def _make_pid_directory(path: str, owner: tuple[int, int] | None) -> None:
    """Create the pid file's directory (one level) so the dropped user can remove the
    file later: perdition's advice is a directory of its own under /var/run."""
    directory = os.path.dirname(path)
    if os.path.isdir(directory):
        return
    os.mkdir(directory, 0o770)
    if owner is not None:
        os.chown(directory, *owner)


def _create_pid_file(path: str) -> int:
    for _ in range(2):
        try:
            return os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            _clear_stale_pid_file(path)
    raise StartupError(f"Could not write pid file [{path}]: it keeps reappearing",
                       EXIT_PID_FILE)


def write_pid_file(path: str, owner: tuple[int, int] | None) -> None:
    """Write our pid (mode 0660, owned by ``owner`` when given); refuse if one runs."""
    try:
        _make_pid_directory(path, owner)
        fd = _create_pid_file(path)
        try:
            if owner is not None:
                os.fchown(fd, *owner)
            os.fchmod(fd, 0o660)
            os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        finally:
            os.close(fd)
    except OSError as exc:
        raise StartupError(f"Could not write pid file [{path}]: {exc.strerror}",
                           EXIT_PID_FILE) from None


def remove_pid_file(path: str) -> None:
    try:
        os.unlink(path)
    except OSError as exc:
        logger.info("Could not remove pid file [%s]: %s", path, exc.strerror)


# ---------------------------------------------------------------- identity

def _group_id(group: str) -> int:
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise StartupError(f'Fatal error: group "{group}" not found. Exiting.') from None


def _user_ids(username: str) -> tuple[int, str | None]:
    """``(uid, login name or None)`` for a name or a number."""
    try:
        if username.isdigit():
            uid = int(username)
            return uid, pwd.getpwuid(uid).pw_name
        return pwd.getpwnam(username).pw_uid, username
    except KeyError:
        if username.isdigit():
            return int(username), None
        raise StartupError(f'Fatal error: user "{username}" not found. Exiting.') from None


def identity(options: Options) -> tuple[int, int, str | None]:
    uid, name = _user_ids(options.username)
    return uid, _group_id(options.group), name


def drop_privileges(uid: int, gid: int, name: str | None) -> None:
    """initgroups, setgid, setuid: in that order, while still allowed to."""
    try:
        if name is not None:
            os.initgroups(name, gid)
        else:
            os.setgroups([gid])
        os.setgid(gid)
        os.setuid(uid)
    except OSError as exc:
        raise StartupError(f"Fatal error setting group and userid: {exc.strerror}. "
                           "Exiting.") from None
    logger.debug("uid=%d euid=%d gid=%d egid=%d",
                 os.getuid(), os.geteuid(), os.getgid(), os.getegid())


# ---------------------------------------------------------------- detaching

def _stdio_to_devnull() -> None:
    fd = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(fd, target)
    if fd > 2:
        os.close(fd)


def _await_daemon(read_fd: int) -> int:
    """In the foreground process: the daemon's start-up status (EOF: it died)."""
    data = os.read(read_fd, 1)
    return data[0] if data else EXIT_FATAL


def _report_started(write_fd: int, status: int) -> None:
    with contextlib.suppress(OSError):
        os.write(write_fd, bytes([status & 0xFF]))
        os.close(write_fd)


def stay_in_foreground(status: int) -> None:
    """The start-up report when not detached: the exit status says it all."""


def daemonize() -> Callable[[int], None]:
    """Double fork, setsid, chdir /, stdio to /dev/null.

    The foreground process waits and exits with the status the daemon reports
    through the returned function, so start-up failures reach the shell (and
    init sees the pid file only after it exists).
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    read_fd, write_fd = os.pipe()
    if os.fork() > 0:
        os.close(write_fd)
        os._exit(_await_daemon(read_fd))
    os.close(read_fd)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")
    _stdio_to_devnull()
    return partial(_report_started, write_fd)


