"""Where log lines go and what they look like: ``-F/--log_facility``, ``-d``, ``-q``.

perdition logs through libvanessa_logger. Its lines, in a file or on stdout/stderr,
read ``Nov  4 09:07:01 perdition[1234]: Connect: ...`` (``%b %e %H:%M:%S``, the
program's basename, the pid of the process that wrote the line) and fail2ban
filters match them, so every sink here writes exactly that. Syslog gets the same
text behind a ``<PRI>`` prefix, as glibc's ``syslog()`` sends it to ``/dev/log``.

The sinks (``-F``):

* a name such as ``mail``, ``daemon``, ``local0``..``local7`` → syslog with that
  facility (stderr, with a warning, when ``/dev/log`` is absent);
* ``/path`` → that file, appended to, reopened by :func:`reopen` (SIGHUP);
* ``-`` → stdout; ``+`` → stderr (perdition looks at the first character only).

Levels: INFO by default; ``-q`` keeps errors only (perdition's LOG_ERR ceiling,
which hides the Connect/Auth/Closing lines and every other informational line);
``-d`` logs everything and wins over ``-q``. :data:`NOTICE` is syslog's notice
priority, the one perdition gives its ``Auth:`` line.

Everything goes through :mod:`logging` on the root logger; this module only
installs handlers on it. Logging is on every login's path, so it is kept
cheap: no caller lookup, thread, process or multiprocessing fields on the
records (the pid comes from :func:`_pid`, refreshed after a fork), one
``localtime`` per second, and each line is formatted before the handler's
lock is taken so threads queue only for the write.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import stat
import sys
import threading
import time
from types import MappingProxyType
from typing import Any, Protocol, TextIO

from perditionpy.errors import OptionError

__all__ = [
    "NOTICE",
    "SYSLOG_SOCKET",
    "LineFormatter",
    "level_for",
    "line",
    "make_handler",
    "reopen",
    "setup_logging",
    "writes_to_std_stream",
]

# syslog's "notice" priority, between INFO and WARNING.
NOTICE = 25
SYSLOG_SOCKET = "/dev/log"

# glibc's facilitynames table, which vanessa_logger looks names up in.
_FACILITIES = MappingProxyType({
    "auth": 4, "authpriv": 10, "cron": 9, "daemon": 3, "ftp": 11, "kern": 0,
    "lpr": 6, "mail": 2, "news": 7, "security": 4, "syslog": 5, "user": 1,
    "uucp": 8, **{f"local{n}": 16 + n for n in range(8)},
})
# English names whatever the locale, as fail2ban's date patterns expect.
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun",
           "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class LogOptions(Protocol):
    """The options this module reads."""

    @property
    def log_facility(self) -> str: ...
    @property
    def debug(self) -> bool: ...
    @property
    def quiet(self) -> bool: ...


def timestamp(when: float) -> str:
    """``%b %e %H:%M:%S`` in local time, with English month names."""
    t = time.localtime(when)
    return f"{_MONTHS[t.tm_mon - 1]} {t.tm_mday:2d} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"


# This process's pid without a system call per line (daemonize and --workers fork).
_PID = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _PID.__setitem__(0, os.getpid()))


class LineFormatter(logging.Formatter):
    """vanessa_logger's line: ``<timestamp> <ident>[<pid>]: <message>``."""

    def __init__(self, ident: str) -> None:
        super().__init__()
        self.ident = ident
        self._second: tuple[int, str] = (-1, "")  # the last second formatted, and its text
        self._prefix: tuple[int, str] = (-1, "")  # a pid, and `` <ident>[<pid>]: ``

    def _timestamp(self, when: float) -> str:
        second, text = self._second  # one tuple: read and replaced atomically
        if int(when) != second:
            text = timestamp(when)
            self._second = (int(when), text)
        return text

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info:
            text = f"{text}\n{self.formatException(record.exc_info)}"
        return self.line(text, record.created, record.process)

    def line(self, text: str, created: float, pid: int | None = None) -> str:
        """The line for the message ``text`` logged at ``created`` by ``pid``
        (this process by default)."""
        # Client input may reach a message as lone surrogates; no sink can encode those.
        if not text.isascii():
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
        second, stamp = self._second  # (as _timestamp, inlined: a line per login)
        if int(created) != second:
            stamp = self._timestamp(created)
        if pid is None:
            pid = _PID[0]
        known, prefix = self._prefix  # (a pid written out is dearer than a tuple read)
        if pid != known:
            prefix = f" {self.ident}[{pid}]: "
            self._prefix = (pid, prefix)
        return stamp + prefix + text


class _FormatOutsideLock(logging.Handler):
    """Formats the line before taking the handler's lock; ``emit`` then finds it."""

    _pending: threading.local

    def handle(self, record: logging.LogRecord) -> bool:
        passed = self.filter(record)
        if isinstance(passed, logging.LogRecord):  # Python 3.12 filters may swap it
            record = passed
        if not passed:
            return False
        pending = self.__dict__.get("_pending") or self.__dict__.setdefault(
            "_pending", threading.local())
        pending.line = self.format_line(record)
        try:
            with self.lock:  # type: ignore[union-attr]
                self.emit(record)
        finally:
            pending.line = None
        return True

    def format(self, record: logging.LogRecord) -> str:
        pending = self.__dict__.get("_pending")
        line = getattr(pending, "line", None) if pending is not None else None
        return line if line is not None else self.format_line(record)

    def format_line(self, record: logging.LogRecord) -> str:
        return super().format(record)

    def write_message(self, level: int, text: str) -> None:
        """(:func:`line`) The line for the message ``text`` at ``level``, written
        as ``handle`` would write it, with no LogRecord made on the way."""
        formatter = self.formatter
        if not isinstance(formatter, LineFormatter):  # someone else's formatter
            self.handle(_Line(level, text))  # type: ignore[arg-type]
            return
        line = formatter.line(text, time.time())
        with self.lock:  # type: ignore[union-attr]
            try:
                self.write_line(level, line)
            except Exception:
                self.handleError(_Line(level, text))  # type: ignore[arg-type]

    def write_line(self, level: int, line: str) -> None:
        raise NotImplementedError


class _SyslogHandler(_FormatOutsideLock, logging.handlers.SysLogHandler):
    """glibc's wire format: ``<PRI>`` + the line, newline-terminated, no NUL."""

    append_nul = False

    def __init__(self, address: str, facility: int) -> None:
        super().__init__(address=address, facility=facility)

    def mapPriority(self, levelName: str) -> str:  # logging names it so
        if levelName == logging.getLevelName(NOTICE):
            return "notice"
        return super().mapPriority(levelName)

    def format_line(self, record: logging.LogRecord) -> str:
        return logging.Handler.format(self, record) + "\n"

    def write_line(self, level: int, line: str) -> None:
        """What ``emit`` sends for ``line`` at ``level``, over the same socket."""
        if not self.unixsocket:  # (never ours: a facility name means /dev/log)
            self.emit(_Line(level, line))  # type: ignore[arg-type]
            return
        priority = self.encodePriority(self.facility, self.mapPriority(logging.getLevelName(level)))
        prio = f"<{priority}>"
        data = (prio + self.ident + line + "\n").encode("utf-8")
        if not self.socket:  # type: ignore[attr-defined]  # (typeshed lacks these)
            self.createSocket()
        try:
            self.socket.send(data)  # type: ignore[attr-defined]
        except OSError:  # syslogd restarted: reconnect once, as emit does
            self.socket.close()  # type: ignore[attr-defined]
            self._connect_unixsocket(self.address)  # type: ignore[attr-defined]
            self.socket.send(data)  # type: ignore[attr-defined]


class _FileHandler(_FormatOutsideLock, logging.FileHandler):
    """An appended log file that SIGHUP reopens (after logrotate moved it)."""

    def __init__(self, path: str) -> None:
        super().__init__(path, mode="a", encoding="utf-8", errors="backslashreplace")

    def write_line(self, level: int, line: str) -> None:
        if self.stream is None:  # (delay=True is never used here, as in emit)
            self.stream = self._open()
        _write_to_stream(self, line)

    def reopen(self) -> None:
        """Switch to a fresh handle on the path; keep the old one if that fails."""
        try:
            fresh = self._open()
        except OSError as exc:
            logging.getLogger(__name__).error("Could not reopen log file %s: %s",
                                              self.baseFilename, exc.strerror)
            return
        self.acquire()
        try:
            old, self.stream = self.stream, fresh
        finally:
            self.release()
        if old is not None:
            old.close()


class _StreamHandler(_FormatOutsideLock, logging.StreamHandler[TextIO]):
    """stdout or stderr (``-F -`` / ``-F +``)."""

    def write_line(self, level: int, line: str) -> None:
        self.stream.write(line + self.terminator)  # (as _write_to_stream)
        self.stream.flush()


def _write_to_stream(handler: logging.StreamHandler[Any], line: str) -> None:
    """What StreamHandler.emit writes for ``line``."""
    handler.stream.write(line + handler.terminator)
    handler.stream.flush()


_OUR_HANDLERS = (_SyslogHandler, _FileHandler, _StreamHandler)


class _Line:
    """The little of a LogRecord that our handlers read (LineFormatter, emit,
    handleError), for a message already made: what :func:`line` hands them when
    it cannot write the line itself."""

    __slots__ = ("msg", "args", "levelno", "levelname", "created", "exc_info", "exc_text",
                 "stack_info", "process")

    def __init__(self, level: int, text: str) -> None:
        self.msg, self.args = text, ()
        self.levelno, self.levelname = level, logging.getLevelName(level)
        self.created = time.time()
        self.exc_info = self.exc_text = self.stack_info = self.process = None

    def getMessage(self) -> str:  # noqa: N802 (LogRecord's name)
        return self.msg


def _sole_handler(logger: logging.Logger, level: int) -> _FormatOutsideLock | None:
    """Our handler on the root logger, if it is all that a line from ``logger``
    at ``level`` would reach: no filters or other handlers on the way (a test's
    capturing handler, say), nothing stopping propagation."""
    root = logging.root
    node: logging.Logger | None = logger
    while node is not root:
        assert node is not None
        if node.filters or node.handlers or not node.propagate:
            return None
        node = node.parent
    handlers = root.handlers
    if root.filters or len(handlers) != 1:
        return None
    handler = handlers[0]
    if type(handler) not in _OUR_HANDLERS or handler.filters or level < handler.level:
        return None
    return handler  # type: ignore[return-value]  # (one of _OUR_HANDLERS; no cast() call)


def line(logger: logging.Logger, level: int, msg: str, *args: object) -> None:
    """``logger.log(level, msg, *args)``: the same line in the same sink, for
    the lines every login writes (Connect, Auth, Closing).  When one handler
    of ours is all the line would reach, it gets the line without a LogRecord
    being built and passed down the logger hierarchy."""
    if not logger.isEnabledFor(level):
        return
    handler = _sole_handler(logger, level)
    if handler is None:
        logger.log(level, msg, *args)
    else:
        handler.write_message(level, msg % args if args else msg)


def writes_to_std_stream(log_facility: str) -> bool:
    """True for ``-F -`` and ``-F +``, which keep the process in the foreground."""
    return log_facility[:1] in ("-", "+")


def level_for(options: LogOptions) -> int:
    """``-d`` → DEBUG (wins over ``-q``); ``-q`` → ERROR; otherwise INFO."""
    if options.debug:
        return logging.DEBUG
    return logging.ERROR if options.quiet else logging.INFO


def _facility_number(name: str) -> int:
    try:
        return _FACILITIES[name.lower()]
    except KeyError:
        raise OptionError("log_facility", name,
                          "not a syslog facility, a /path, - or +") from None


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def _syslog_handler(name: str, address: str) -> logging.Handler:
    facility = _facility_number(name)
    if not _is_socket(address):
        # Warned about once the handler is installed, so the warning goes through it.
        return _StreamHandler(sys.stderr)
    return _SyslogHandler(address, facility)


def _file_handler(path: str) -> logging.Handler:
    try:
        return _FileHandler(path)
    except OSError as exc:
        raise OptionError("log_facility", path,
                          f"cannot open log file: {exc.strerror}") from None


def make_handler(log_facility: str, syslog_address: str = SYSLOG_SOCKET) -> logging.Handler:
    """The handler for one ``-F`` value (raises ``OptionError`` for a bad one)."""
    if log_facility.startswith("-"):
        return _StreamHandler(sys.stdout)
    if log_facility.startswith("+"):
        return _StreamHandler(sys.stderr)
    if log_facility.startswith("/"):
        return _file_handler(log_facility)
    return _syslog_handler(log_facility, syslog_address)


def setup_logging(options: LogOptions, prog: str, *,
                  syslog_address: str = SYSLOG_SOCKET) -> None:
    """Point the root logger at the sink ``-F`` names, with the ``-d``/``-q`` level.

    Calling it again replaces the handlers an earlier call installed.
    Raises ``OptionError`` for an unknown facility or a log file that cannot be opened.
    """
    logging.addLevelName(NOTICE, "NOTICE")
    _lighter_records()
    handler = make_handler(options.log_facility, syslog_address)
    handler.setFormatter(LineFormatter(os.path.basename(prog) or "perdition"))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _OUR_HANDLERS)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level_for(options))
    if _wanted_syslog(options.log_facility) and not isinstance(handler, _SyslogHandler):
        logging.getLogger(__name__).warning(
            "%s is not a socket: logging to stderr instead of syslog", syslog_address)


def _lighter_records() -> None:
    """Records without the fields no line shows (each costs a call per record)."""
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None  # no stack walk for the caller's file and line


def _wanted_syslog(log_facility: str) -> bool:
    return log_facility[:1] not in ("-", "+", "/")


def reopen() -> None:
    """Reopen the log file, if logging goes to one (SIGHUP, after log rotation)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, _FileHandler):
            handler.reopen()
