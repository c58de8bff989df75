"""The Berkeley DB map: perdition's ``libperditiondb_bdb`` in Python.

Owns two things:

* :class:`BdbFile`, the one owner of Berkeley DB handles (through the raw
  declarations in :mod:`perditionpy.maps._bdb_ffi`): open a hash database,
  get, put, walk it with a cursor, close.  Every ``DB``/``DBC`` handle is
  closed in ``finally``, also after a failed open (perdition leaks it).  It
  is not thread-safe; its users lock.
* :class:`BdbMap`, the ``Map`` built from ``-m``: the file named by the
  option (``/etc/perdition/popmap.bdb.db`` when it is empty), keys and values
  stored as perdition's makebdb writes them (no NUL terminator).

Like perdition's library, the map opens the database for every lookup
(read-only, ``DB_HASH``), so a popmap rebuilt with makebdb takes effect at once
and a missing file only makes lookups fail (the session then falls back to
``--outgoing_server``).  A Berkeley DB handle opened without an environment
keeps a private page cache, so a handle kept open would go on reading pages
of a file rewritten in place; opening per lookup costs a few tens of
microseconds and rules that out.  The file is opened with ``DB_NOMMAP`` so a
file truncated underneath gives an error rather than SIGBUS.  One lock
serialises lookups: a handle is never shared, but the map's binding (and
its error callback) is.
"""

from __future__ import annotations

import logging
import os
import threading
from types import TracebackType
from typing import Any

from perditionpy.endpoints import UserServerPort
from perditionpy.errors import MapError, PerditionError
from perditionpy.maps import _bdb_ffi
from perditionpy.maps._bdb_ffi import BdbBinding
from perditionpy.maps._popmap import Outage, c_key, load_library, parse_value
from perditionpy.maps.base import LookupContext

__all__ = ["DEFAULT_PATH", "READER_FLAGS", "BdbError", "BdbFile", "BdbMap", "load_binding",
           "open_bdb_map"]

logger = logging.getLogger(__name__)

# Debian's perdition 2.2 was built with this path (the library's strings).
DEFAULT_PATH = "/etc/perdition/popmap.bdb.db"

# How a reader opens the file: see the module docstring.
READER_FLAGS = _bdb_ffi.DB_RDONLY | _bdb_ffi.DB_NOMMAP


class BdbError(PerditionError):
    """Berkeley DB reported an error; ``code`` is its return value (an errno or DB_*)."""

    def __init__(self, message: str, code: int) -> None:
        self.code = code
        super().__init__(message)


def _log_libdb_message(message: str) -> None:
    logger.debug("libdb: %s", message)


def load_binding() -> BdbBinding:
    """A fresh libdb binding whose error messages go to this module's logger."""
    return _bdb_ffi.load(errcall=_log_libdb_message)


def _error(binding: BdbBinding, action: str, code: int) -> BdbError:
    text = binding.ffi.string(binding.db.db_strerror(code)).decode("utf-8", "replace")
    return BdbError(f"{action}: {text}", code)


class BdbFile:
    """One open Berkeley DB hash database.  Not thread-safe: callers hold a lock."""

    def __init__(self, binding: BdbBinding, handle: Any, path: str) -> None:
        self._binding = binding
        self._handle: Any = handle
        self.path = path

    @classmethod
    def open(cls, path: str, flags: int, *, mode: int = 0o644,
             binding: BdbBinding | None = None) -> BdbFile:
        """``db_create`` then ``DB->open(path, DB_HASH, flags, mode)``."""
        binding = binding if binding is not None else load_binding()
        ffi = binding.ffi
        holder = ffi.new("DB **")
        status = binding.db.db_create(holder, ffi.NULL, 0)
        if status != 0:
            raise _error(binding, "db_create", status)
        handle = holder[0]
        handle.set_errcall(handle, binding.errcall)
        try:
            status = handle.open(handle, ffi.NULL, os.fsencode(path), ffi.NULL,
                                 _bdb_ffi.DB_HASH, flags, mode)
        except BaseException:
            handle.close(handle, 0)
            raise
        if status != 0:
            # The handle must be closed even when open failed.
            handle.close(handle, 0)
            raise _error(binding, f"DB->open({path})", status)
        return cls(binding, handle, path)

    def _live_handle(self) -> Any:
        if self._handle is None:
            raise BdbError(f"{self.path}: database is closed", 0)
        return self._handle

    def _dbt(self, data: bytes | None = None) -> tuple[Any, Any]:
        """A zeroed DBT, pointing at a C copy of ``data`` if given (keep both alive)."""
        ffi = self._binding.ffi
        dbt = ffi.new("DBT *")
        buffer = None
        if data is not None:
            buffer = ffi.new("char[]", data)
            dbt.data = buffer
            dbt.size = len(data)
        return dbt, buffer

    def _copy(self, dbt: Any) -> bytes:
        """The bytes a DBT filled by libdb points at (libdb owns that memory)."""
        if dbt.size == 0:
            return b""
        return bytes(self._binding.ffi.buffer(dbt.data, dbt.size))

    def fetch(self, key: bytes) -> bytes | None:
        """The value stored under ``key``, or ``None`` when there is none."""
        handle = self._live_handle()
        key_dbt, _keep = self._dbt(key)
        value_dbt, _ = self._dbt()
        status = handle.get(handle, self._binding.ffi.NULL, key_dbt, value_dbt, 0)
        if status == _bdb_ffi.DB_NOTFOUND:
            return None
        if status != 0:
            raise _error(self._binding, "DB->get", status)
        return self._copy(value_dbt)

    def store(self, key: bytes, value: bytes) -> bool:
        """Insert ``key``; ``False`` (and no change) if it is already there."""
        handle = self._live_handle()
        key_dbt, _keep_key = self._dbt(key)
        value_dbt, _keep_value = self._dbt(value)
        status = handle.put(handle, self._binding.ffi.NULL, key_dbt, value_dbt,
                            _bdb_ffi.DB_NOOVERWRITE)
        if status == _bdb_ffi.DB_KEYEXIST:
            return False
        if status != 0:
            raise _error(self._binding, "DB->put", status)
        return True

    def items(self) -> list[tuple[bytes, bytes]]:
        """Every ``(key, value)``, in the database's own order."""
        handle = self._live_handle()
        ffi = self._binding.ffi
        holder = ffi.new("DBC **")
        status = handle.cursor(handle, ffi.NULL, holder, 0)
        if status != 0:
            raise _error(self._binding, "DB->cursor", status)
        cursor = holder[0]
        try:
            return self._walk(cursor)
        finally:
            cursor.close(cursor)

    def _walk(self, cursor: Any) -> list[tuple[bytes, bytes]]:
        found: list[tuple[bytes, bytes]] = []
        key_dbt, _ = self._dbt()
        value_dbt, _ = self._dbt()
        while True:
            status = cursor.get(cursor, key_dbt, value_dbt, _bdb_ffi.DB_NEXT)
            if status == _bdb_ffi.DB_NOTFOUND:
                return found
            if status != 0:
                raise _error(self._binding, "DBcursor->get", status)
            found.append((self._copy(key_dbt), self._copy(value_dbt)))

    def close(self) -> None:
        """``DB->close``; idempotent.  A writer's data is flushed to disk by it."""
        handle, self._handle = self._handle, None
        if handle is None:
            return
        status = handle.close(handle, 0)
        if status != 0:
            raise _error(self._binding, "DB->close", status)

    def __enter__(self) -> BdbFile:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


class BdbMap:
    """perdition's Berkeley DB map: ``-m`` names the file, ``key`` → ``[user@]host[:port]``."""

    quick = True  # a local file: looked up in the event loop, no thread hand-off

    name = "bdb"

    def __init__(self, options: str = "", *, binding: BdbBinding | None = None) -> None:
        self.path = options or DEFAULT_PATH
        self._binding = binding if binding is not None else _load_binding()
        self._lock = threading.Lock()
        self._closed = False
        self._outage = Outage(logger, until="it can be read",
                              recovery="bdb map %s is readable again", subject=self.path)
        with self._lock:
            self._probe()

    def __repr__(self) -> str:
        return f"BdbMap({self.path!r})"

    def _probe(self) -> None:
        # Like perdition, start without the file: _unavailable() logs it once.
        try:
            BdbFile.open(self.path, READER_FLAGS, binding=self._binding).close()
        except BdbError as exc:
            self._unavailable(str(exc))

    def get(self, key: str, context: LookupContext) -> UserServerPort | None:
        """Look ``key`` up; ``None`` if absent or empty; ``MapError`` if unreadable."""
        return parse_value(self._fetch(c_key(key)), context)

    def _fetch(self, key: bytes) -> bytes | None:
        with self._lock:
            if self._closed:
                raise MapError(self.name, f"{self.path}: map is closed")
            try:
                with BdbFile.open(self.path, READER_FLAGS, binding=self._binding) as db:
                    value = db.fetch(key)
            except BdbError as exc:
                raise self._unavailable(str(exc)) from exc
            self._outage.recovered()
            return value

    def close(self) -> None:
        """Refuse further lookups (no file is held open between them).  Idempotent."""
        with self._lock:
            self._closed = True

    def _unavailable(self, reason: str) -> MapError:
        """The error for a failed lookup; logs the first of a run of failures."""
        return self._outage.failed(MapError(self.name, f"cannot read {self.path}: {reason}"))


def _load_binding() -> BdbBinding:
    return load_library(BdbMap.name, _bdb_ffi.BDB_LIBRARY, load_binding)


def open_bdb_map(options: str) -> BdbMap:
    """The registry's factory: a :class:`BdbMap` on ``options`` (a file name)."""
    return BdbMap(options)
