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
renames a new file over the old one) or rewritten.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
from types import TracebackType

from perditionpy.endpoints import UserServerPort, parse_user_server_port
from perditionpy.errors import MapError, PerditionError
from perditionpy.maps.base import LookupContext
from perditionpy.protocol.base import decode_name, encode_name

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

# File timestamps advance in coarse ticks: until the file has been left alone
# this long, every lookup reopens it (see the GDBM map).
_SETTLE_SECONDS = 2.0


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


# What identifies one version of the file: replaced (inode) or rewritten in place.
_Identity = tuple[int, int, int, int, int]


def _identity(result: os.stat_result) -> _Identity:
    return (result.st_dev, result.st_ino, result.st_size, result.st_mtime_ns, result.st_ctime_ns)


class CdbMap:
    """perdition's CDB map: ``-m`` names the file, ``key`` → ``[user@]host[:port]``."""

    name = "cdb"

    def __init__(self, options: str = "") -> None:
        self.path = options or DEFAULT_PATH
        self._lock = threading.Lock()
        self._file: CdbFile | None = None
        self._opened: _Identity | None = None
        self._settled = False
        self._closed = False
        self._available = True
        with self._lock:
            self._try_first_open()

    def __repr__(self) -> str:
        return f"CdbMap({self.path!r})"

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
        """Close the file.  Idempotent; lookups afterwards raise ``MapError``."""
        with self._lock:
            self._closed = True
            self._drop_file()

    def _try_first_open(self) -> None:
        # A missing file is not fatal (perdition opens it per lookup):
        # lookups fail until it appears.  _unavailable() logs it.
        try:
            self._current_file()
        except MapError:
            pass

    def _fetch(self, key: bytes) -> bytes | None:
        with self._lock:
            if self._closed:
                raise MapError(self.name, f"{self.path}: map is closed")
            try:
                value = self._current_file().get(key)
            except CdbError as exc:
                self._drop_file()
                raise self._unavailable(str(exc)) from exc
            self._note_available()
            return value

    def _current_file(self) -> CdbFile:
        """The open database, (re)opened if the file changed since; lock held."""
        try:
            status = os.stat(self.path)
        except OSError as exc:
            self._drop_file()
            raise self._unavailable(f"{self.path}: {exc.strerror or exc}") from exc
        identity = _identity(status)
        if self._file is not None and identity == self._opened and self._settled:
            return self._file
        return self._reopen(identity, time.time() - status.st_mtime > _SETTLE_SECONDS)

    def _reopen(self, identity: _Identity, settled: bool) -> CdbFile:
        if self._file is not None and identity != self._opened:
            logger.debug("cdb map %s changed on disk; reopening it", self.path)
        self._drop_file()
        try:
            file = CdbFile.open(self.path)
        except CdbError as exc:
            raise self._unavailable(str(exc)) from exc
        self._file, self._opened, self._settled = file, identity, settled
        return file

    def _drop_file(self) -> None:
        file, self._file, self._opened = self._file, None, None
        if file is not None:
            file.close()

    def _unavailable(self, reason: str) -> MapError:
        """The error for a failed lookup; logs the first of a run of failures."""
        error = MapError(self.name, f"cannot read {reason}")
        if self._available:
            self._available = False
            logger.warning(
                "%s; lookups fail (falling back to --outgoing_server) until it can be read", error
            )
        return error

    def _note_available(self) -> None:
        if not self._available:
            self._available = True
            logger.info("cdb map %s is readable again", self.path)


def open_cdb_map(options: str) -> CdbMap:
    """The registry's factory: a :class:`CdbMap` on ``options`` (a file name)."""
    return CdbMap(options)
