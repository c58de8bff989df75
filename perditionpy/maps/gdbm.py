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
replaced or rewritten, which keeps both behaviours
(:class:`~perditionpy.maps._watched_file.WatchedFile`).  The handle is opened
without locks (so makegdbm is never refused while we hold it) and without
mmap (so a file truncated under us gives a read error, not SIGBUS).
"""

from __future__ import annotations

import logging
import os
from types import TracebackType
from typing import Any

from perditionpy.endpoints import UserServerPort
from perditionpy.errors import PerditionError
from perditionpy.maps import _gdbm_ffi
from perditionpy.maps._gdbm_ffi import GdbmBinding
from perditionpy.maps._popmap import c_key, load_library, parse_value
from perditionpy.maps._watched_file import WatchedFile
from perditionpy.maps.base import LookupContext

__all__ = ["DEFAULT_PATH", "GdbmError", "GdbmFile", "GdbmMap", "open_gdbm_map"]

logger = logging.getLogger(__name__)

# Debian's perdition 2.2 was built with this path (perdition's own default
# sysconfdir would be /usr/local/etc/perdition).
DEFAULT_PATH = "/etc/perdition/popmap.gdbm.db"

# gdbm_error codes that end a key walk rather than report a failure.
_END_OF_KEYS = frozenset({0, _gdbm_ffi.GDBM_ITEM_NOT_FOUND})

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


class GdbmMap:
    """perdition's GDBM map: ``-m`` names the file, ``key`` → ``[user@]host[:port]``."""

    quick = True  # a local file: looked up in the event loop, no thread hand-off

    name = "gdbm"

    def __init__(self, options: str = "", *, binding: GdbmBinding | None = None) -> None:
        self.path = options or DEFAULT_PATH
        self._binding = binding if binding is not None else _load_binding()
        # Like perdition, start without the file: lookups fail (and sessions
        # fall back to --outgoing_server) until it appears.
        self._watched = WatchedFile(self.name, self.path, open_file=self._open,
                                    error=GdbmError, describe=self._describe, logger=logger)

    def __repr__(self) -> str:
        return f"GdbmMap({self.path!r})"

    def get(self, key: str, context: LookupContext) -> UserServerPort | None:
        """Look ``key`` up; ``None`` if absent or empty; ``MapError`` if unreadable."""
        raw_key = c_key(key)
        return parse_value(self._watched.read(lambda file: file.fetch(raw_key)), context)

    def close(self) -> None:
        """Close the database file.  Idempotent; lookups afterwards raise ``MapError``."""
        self._watched.close()

    def _open(self, path: str) -> GdbmFile:
        return GdbmFile.open(path, _READER_FLAGS, binding=self._binding)

    def _describe(self, error: Exception) -> str:
        # libgdbm's messages do not name the file.
        return f"{self.path}: {error}"


def _load_binding() -> GdbmBinding:
    return load_library(GdbmMap.name, _gdbm_ffi.GDBM_LIBRARY, _gdbm_ffi.load)


def open_gdbm_map(options: str) -> GdbmMap:
    """The registry's factory: a :class:`GdbmMap` on ``options`` (a file name)."""
    return GdbmMap(options)
