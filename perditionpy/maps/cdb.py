"""The CDB map: perdition's ``libperditiondb_cdb`` (tinycdb) in pure Python.

Owns two things:

* :class:`CdbFile`, a reader for D. J. Bernstein's constant database format
  (the format tinycdb's ``cdb -c`` writes): a 2048-byte header of 256
  ``(position, slot count)`` pairs, hash tables of ``(hash, record position)``
  slots and records of ``key length, value length, key, value``; every number
  a little-endian 32-bit word.  It reads with ``os.pread`` (no shared file
  offset, and no mmap, so a file truncated underneath gives an error rather
  than SIGBUS) and checks every position against the file size, so a damaged
  file is an error, never a hang or a crash.
* :class:`CdbMap`, the ``Map`` built from ``-m``: the file it names
  (``/etc/perdition/popmap.cdb`` when empty), keys looked up as perdition's
  library does (the key's bytes, no NUL terminator), the value parsed as
  ``[user@]server[:port]``.

perdition opens the file on every lookup, so a rebuilt database takes effect
at once and a missing file only makes lookups fail.  We keep the file open but
``stat()`` it before each lookup and reopen it when it was replaced (``cdb -c``
renames a new file over the old one) or rewritten
(:class:`~perditionpy.maps._watched_file.WatchedFile`).
"""

from __future__ import annotations

import logging
import os
import struct
from types import TracebackType

from perditionpy.endpoints import UserServerPort
from perditionpy.errors import PerditionError
from perditionpy.maps._popmap import c_key, parse_value
from perditionpy.maps._watched_file import WatchedFile
from perditionpy.maps.base import LookupContext

__all__ = ["DEFAULT_PATH", "CdbError", "CdbFile", "CdbMap", "cdb_hash", "open_cdb_map"]

logger = logging.getLogger(__name__)

# perdition's library uses <sysconfdir>/perdition/popmap.cdb; Debian's
# sysconfdir is /etc (as for the GDBM map's default).
DEFAULT_PATH = "/etc/perdition/popmap.cdb"

_HEADER_SIZE = 2048
_TABLES = 256
_PAIR = struct.Struct("<II")
_HASH_START = 5381
_WORD = 0xFFFFFFFF

class CdbError(PerditionError):
    """A CDB file could not be opened or is not a well-formed constant database."""


def cdb_hash(key: bytes) -> int:
    """The cdb hash: ``h = ((h << 5) + h) ^ c`` from 5381, kept to 32 bits."""
    value = _HASH_START
    for byte in key:
        value = (((value << 5) + value) & _WORD) ^ byte
    return value


class CdbFile:
    """One open constant database.  Lookups never move a file offset, but
    :meth:`close` must not race them: callers that share a file lock."""

    def __init__(self, fd: int, path: str) -> None:
        self._fd: int | None = fd
        self.path = path
        self._size = os.fstat(fd).st_size
        try:
            header = self._read(0, _HEADER_SIZE)
        except CdbError:
            self.close()
            raise
        self._tables = [_PAIR.unpack_from(header, 8 * i) for i in range(_TABLES)]

    @classmethod
    def open(cls, path: str) -> CdbFile:
        """Open ``path`` for reading; ``CdbError`` if it cannot be opened or is too short."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise CdbError(f"{path}: {exc.strerror or exc}") from exc
        return cls(fd, path)

    def get(self, key: bytes) -> bytes | None:
        """The value of the first record whose key is ``key``; ``None`` if there is none."""
        hashed = cdb_hash(key)
        position, slots = self._tables[hashed & 0xFF]
        if slots == 0:
            return None
        if position + 8 * slots > self._size:
            raise CdbError(f"{self.path}: not a cdb file (hash table beyond its end)")
        start = (hashed >> 8) % slots
        for probe in range(slots):
            slot = position + 8 * ((start + probe) % slots)
            slot_hash, record = _PAIR.unpack(self._read(slot, 8))
            if record == 0:
                return None
            if slot_hash == hashed:
                value = self._record(record, key)
                if value is not None:
                    return value
        return None

    def _record(self, position: int, key: bytes) -> bytes | None:
        """The value of the record at ``position`` if its key is ``key``."""
        key_length, value_length = _PAIR.unpack(self._read(position, 8))
        if key_length != len(key):
            return None
        if self._read(position + 8, key_length) != key:
            return None
        return self._read(position + 8 + key_length, value_length)

    def _read(self, position: int, length: int) -> bytes:
        if self._fd is None:
            raise CdbError(f"{self.path}: database is closed")
        if position + length > self._size:
            raise CdbError(f"{self.path}: not a cdb file (truncated or corrupt)")
        try:
            data = os.pread(self._fd, length, position)
        except OSError as exc:
            raise CdbError(f"{self.path}: {exc.strerror or exc}") from exc
        if len(data) != length:
            raise CdbError(f"{self.path}: file shrank while being read")
        return data

    def close(self) -> None:
        """Close the file descriptor; idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> CdbFile:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class CdbMap:
    """perdition's CDB map: ``-m`` names the file, ``key`` → ``[user@]host[:port]``."""

    quick = True  # a local file: looked up in the event loop, no thread hand-off

    name = "cdb"

    def __init__(self, options: str = "") -> None:
        self.path = options or DEFAULT_PATH
        self._watched = WatchedFile(self.name, self.path, open_file=CdbFile.open,
                                    error=CdbError, describe=str, logger=logger)

    def __repr__(self) -> str:
        return f"CdbMap({self.path!r})"

    def get(self, key: str, context: LookupContext) -> UserServerPort | None:
        """Look ``key`` up; ``None`` if absent or empty; ``MapError`` if unreadable."""
        raw_key = c_key(key)
        return parse_value(self._watched.read(lambda file: file.get(raw_key)), context)

    def close(self) -> None:
        """Close the file.  Idempotent; lookups afterwards raise ``MapError``."""
        self._watched.close()


def open_cdb_map(options: str) -> CdbMap:
    """The registry's factory: a :class:`CdbMap` on ``options`` (a file name)."""
    return CdbMap(options)
