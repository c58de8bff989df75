"""The GDBM map: perdition's default ``libperditiondb_gdbm`` in Python.

Owns two things:

* :class:`GdbmFile`, the one owner of libgdbm pointers (through the raw
  declarations in :mod:`perditionpy.maps._gdbm_ffi`): open, fetch, store,
  list keys, close.  Every datum libgdbm hands back is freed in ``finally``.
  It is not thread-safe; its users lock.
* :class:`GdbmMap`, the ``Map`` built from ``-m``: the file named by the
  option (``/etc/perdition/popmap.gdbm.db`` when it is empty), keys and values
  stored as makegdbm writes them (no NUL terminator).

perdition opens the database on every lookup, so a popmap rebuilt with
makegdbm takes effect at once and a missing file only makes lookups fail (the
session then falls back to ``--outgoing_server``).  We open once and keep the
handle, but ``stat()`` the file before each lookup and reopen it when it was
replaced or rewritten, which keeps both behaviours.  The handle is opened
without locks (so makegdbm is never refused while we hold it) and without
mmap (so a file truncated under us gives a read error, not SIGBUS).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from types import TracebackType
from typing import Any

from perditionpy.endpoints import UserServerPort, parse_user_server_port
from perditionpy.errors import MapError, PerditionError
from perditionpy.maps import _gdbm_ffi
from perditionpy.maps._gdbm_ffi import GdbmBinding
from perditionpy.maps.base import LookupContext
from perditionpy.protocol.base import decode_name, encode_name

__all__ = ["DEFAULT_PATH", "GdbmError", "GdbmFile", "GdbmMap", "open_gdbm_map"]

logger = logging.getLogger(__name__)

# Debian's perdition 2.2 was built with this path (perdition's own default
# sysconfdir would be /usr/local/etc/perdition).
DEFAULT_PATH = "/etc/perdition/popmap.gdbm.db"

# gdbm_error codes that end a key walk rather than report a failure.
_END_OF_KEYS = frozenset({0, _gdbm_ffi.GDBM_ITEM_NOT_FOUND})

# File timestamps advance in coarse ticks, so a write that ends in the tick we
# stat()ed the file in leaves no trace.  Until the file has been left alone
# this long, every lookup reopens it (as perdition always does).
_SETTLE_SECONDS = 2.0

# What a reader's open looks like: see the module docstring for why.
_READER_FLAGS = (
    _gdbm_ffi.GDBM_READER | _gdbm_ffi.GDBM_NOLOCK | _gdbm_ffi.GDBM_NOMMAP
    | _gdbm_ffi.GDBM_CLOEXEC
)


class GdbmError(PerditionError):
    """libgdbm reported an error; ``code`` is its gdbm_error, ``errno`` the system's."""

    def __init__(self, message: str, code: int, errno: int) -> None:
        self.code = code
        self.errno = errno
        super().__init__(message)


def _error(binding: GdbmBinding, action: str, code: int, errno: int) -> GdbmError:
    """Build the exception for a failed libgdbm call, with its system error if any."""
    ffi, lib = binding.ffi, binding.gdbm
    message = f"{action}: {ffi.string(lib.gdbm_strerror(code)).decode(errors='replace')}"
    if errno and lib.gdbm_check_syserr(code):
        message = f"{message}: {os.strerror(errno)}"
    return GdbmError(message, code, errno)


class GdbmFile:
    """One open GDBM database.  Not thread-safe: callers hold a lock."""

    def __init__(self, binding: GdbmBinding, handle: Any, path: str) -> None:
        self._binding = binding
        self._handle = handle
        self.path = path

    @classmethod
    def open(cls, path: str, flags: int, *, mode: int = 0o644,
             binding: GdbmBinding | None = None) -> GdbmFile:
        """``gdbm_open`` ``path`` with ``flags`` (a ``GDBM_READER``/``GDBM_NEWDB`` …)."""
        binding = binding if binding is not None else _gdbm_ffi.load()
        ffi, lib = binding.ffi, binding.gdbm
        handle = lib.gdbm_open(os.fsencode(path), 0, flags, mode, ffi.NULL)
        if handle == ffi.NULL:
            errno = ffi.errno
            raise _error(binding, "gdbm_open", lib.gdbm_errno_location()[0], errno)
        return cls(binding, handle, path)

    def _live_handle(self) -> Any:
        if self._handle is None:
            raise GdbmError(f"{self.path}: database is closed", 0, 0)
        return self._handle

    def _failure(self, action: str) -> GdbmError:
        errno = self._binding.ffi.errno
        code = self._binding.gdbm.gdbm_last_errno(self._live_handle())
        return _error(self._binding, action, code, errno)

    def _take(self, datum: Any) -> bytes:
        """Copy a datum libgdbm allocated and free it."""
        ffi = self._binding.ffi
        try:
            return bytes(ffi.buffer(datum.dptr, datum.dsize))
        finally:
            self._binding.libc.free(datum.dptr)

    def _datum(self, data: bytes) -> tuple[Any, Any]:
        """A datum pointing into a fresh C copy of ``data`` (keep both alive)."""
        ffi = self._binding.ffi
        buffer = ffi.new("char[]", data)
        datum = ffi.new("datum *")
        datum.dptr = buffer
        datum.dsize = len(data)
        return datum, buffer

    def fetch(self, key: bytes) -> bytes | None:
        """The value stored under ``key``, or ``None`` when there is none."""
        handle = self._live_handle()
        datum, _keep = self._datum(key)
        result = self._binding.gdbm.gdbm_fetch(handle, datum[0])
        if result.dptr == self._binding.ffi.NULL:
            error = self._failure("gdbm_fetch")
            if error.code == _gdbm_ffi.GDBM_ITEM_NOT_FOUND:
                return None
            raise error
        return self._take(result)

    def store(self, key: bytes, value: bytes) -> bool:
        """Insert ``key``; ``False`` (and no change) if it is already there."""
        handle = self._live_handle()
        key_datum, _keep_key = self._datum(key)
        value_datum, _keep_value = self._datum(value)
        status: int = self._binding.gdbm.gdbm_store(
            handle, key_datum[0], value_datum[0], _gdbm_ffi.GDBM_INSERT)
        if status < 0:
            raise self._failure("gdbm_store")
        return status == 0

    def keys(self) -> list[bytes]:
        """Every key, in the database's own order."""
        handle = self._live_handle()
        lib, ffi = self._binding.gdbm, self._binding.ffi
        keys: list[bytes] = []
        current = lib.gdbm_firstkey(handle)
        while current.dptr != ffi.NULL:
            try:
                keys.append(bytes(ffi.buffer(current.dptr, current.dsize)))
                following = lib.gdbm_nextkey(handle, current)
            finally:
                self._binding.libc.free(current.dptr)
            current = following
        error = self._failure("gdbm_nextkey")
        if error.code not in _END_OF_KEYS:
            raise error
        return keys

    def close(self) -> None:
        """``gdbm_close``; idempotent.  A writer's data is synced to disk by it."""
        handle, self._handle = self._handle, None
        if handle is None:
            return
        lib = self._binding.gdbm
        if lib.gdbm_close(handle) != 0:
            errno = self._binding.ffi.errno
            raise _error(self._binding, "gdbm_close", lib.gdbm_errno_location()[0], errno)

    def __enter__(self) -> GdbmFile:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


# What identifies one version of the file: replaced (inode) or rewritten in place.
_Identity = tuple[int, int, int, int, int]


def _identity(result: os.stat_result) -> _Identity:
    return (result.st_dev, result.st_ino, result.st_size, result.st_mtime_ns,
            result.st_ctime_ns)


class GdbmMap:
    """perdition's GDBM map: ``-m`` names the file, ``key`` → ``[user@]host[:port]``."""

    name = "gdbm"

    def __init__(self, options: str = "", *, binding: GdbmBinding | None = None) -> None:
        self.path = options or DEFAULT_PATH
        self._binding = binding if binding is not None else _load_binding()
        self._lock = threading.Lock()
        self._file: GdbmFile | None = None
        self._opened: _Identity | None = None
        self._settled = False
        self._closed = False
        self._available = True
        with self._lock:
            self._try_first_open()

    def __repr__(self) -> str:
        return f"GdbmMap({self.path!r})"

    def get(self, key: str, context: LookupContext) -> UserServerPort | None:
        """Look ``key`` up; ``None`` if absent or empty; ``MapError`` if unreadable."""
        # perdition passes C strings: a key or value ends at its first NUL.
        raw_key = encode_name(key).split(b"\0", 1)[0]
        value = self._fetch(raw_key)
        if value is None:
            return None
        text = decode_name(value.split(b"\0", 1)[0])
        if not text:
            return None
        return parse_user_server_port(text, context.domain_delimiter)

    def close(self) -> None:
        """Close the database file.  Idempotent; lookups afterwards raise ``MapError``."""
        with self._lock:
            self._closed = True
            self._drop_file()

    def _try_first_open(self) -> None:
        # Like perdition, start without the file: lookups fail (and sessions fall
        # back to --outgoing_server) until it appears.  _unavailable() logs it.
        try:
            self._current_file()
        except MapError:
            pass

    def _fetch(self, key: bytes) -> bytes | None:
        with self._lock:
            if self._closed:
                raise MapError(self.name, f"{self.path}: map is closed")
            try:
                value = self._current_file().fetch(key)
            except GdbmError as exc:
                self._drop_file()
                raise self._unavailable(str(exc)) from exc
            self._note_available()
            return value

    def _current_file(self) -> GdbmFile:
        """The open database, (re)opened if the file changed since; lock held."""
        try:
            status = os.stat(self.path)
        except OSError as exc:
            self._drop_file()
            raise self._unavailable(exc.strerror or str(exc)) from exc
        identity = _identity(status)
        if self._file is not None and identity == self._opened and self._settled:
            return self._file
        return self._reopen(identity, time.time() - status.st_mtime > _SETTLE_SECONDS)

    def _reopen(self, identity: _Identity, settled: bool) -> GdbmFile:
        if self._file is not None and identity != self._opened:
            logger.debug("gdbm map %s changed on disk; reopening it", self.path)
        self._drop_file()
        try:
            file = GdbmFile.open(self.path, _READER_FLAGS, binding=self._binding)
        except GdbmError as exc:
            raise self._unavailable(str(exc)) from exc
        self._file, self._opened, self._settled = file, identity, settled
        return file

    def _drop_file(self) -> None:
        file, self._file, self._opened = self._file, None, None
        if file is not None:
            try:
                file.close()
            except GdbmError as exc:
                logger.debug("gdbm map %s: closing: %s", self.path, exc)

    def _unavailable(self, reason: str) -> MapError:
        """The error for a failed lookup; logs the first of a run of failures."""
        error = MapError(self.name, f"cannot read {self.path}: {reason}")
        if self._available:
            self._available = False
            logger.warning("%s; lookups fail (falling back to --outgoing_server) "
                           "until it can be read", error)
        return error

    def _note_available(self) -> None:
        if not self._available:
            self._available = True
            logger.info("gdbm map %s is readable again", self.path)


def _load_binding() -> GdbmBinding:
    try:
        return _gdbm_ffi.load()
    except OSError as exc:
        raise MapError(GdbmMap.name, f"cannot load {_gdbm_ffi.GDBM_LIBRARY}: {exc}") from exc


def open_gdbm_map(options: str) -> GdbmMap:
    """The registry's factory: a :class:`GdbmMap` on ``options`` (a file name)."""
    return GdbmMap(options)
