"""A map file kept open between lookups but reopened when it changes on disk.

perdition opens its file maps (cdb, gdbm) on every lookup, so a rebuilt
database takes effect at once and a missing file only makes lookups fail.
:class:`WatchedFile` keeps both behaviours while keeping the file open: it
``stat()``\\ s the file before each lookup and reopens it when it was replaced
(a new inode) or rewritten (size or timestamps changed).  It owns the lock,
the open file and the outage log of one map.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from perditionpy.errors import MapError
from perditionpy.maps._popmap import Outage

__all__ = ["WatchedFile"]

# File timestamps advance in coarse ticks, so a write that ends in the tick we
# stat()ed the file in leaves no trace.  Until the file has been left alone
# this long, every lookup reopens it (as perdition always does).
_SETTLE_SECONDS = 2.0

# What identifies one version of the file: replaced (inode) or rewritten in place.
_Identity = tuple[int, int, int, int, int]


class _Closable(Protocol):
    def close(self) -> None: ...


_File = TypeVar("_File", bound=_Closable)
_Value = TypeVar("_Value")


def _identity(result: os.stat_result) -> _Identity:
    return (result.st_dev, result.st_ino, result.st_size, result.st_mtime_ns,
            result.st_ctime_ns)


class WatchedFile(Generic[_File]):
    """The map ``map_name``'s file at ``path``, opened with ``open_file``.

    ``error`` is what ``open_file`` and the file's methods raise;
    ``describe`` turns one into the reason (starting with the path) that
    follows "cannot read" in the ``MapError``.  A file missing at first is
    not fatal: lookups fail until it appears.
    """

    def __init__(
        self,
        map_name: str,
        path: str,
        *,
        open_file: Callable[[str], _File],
        error: type[Exception],
        describe: Callable[[Exception], str],
        logger: logging.Logger,
    ) -> None:
        self.map_name = map_name
        self.path = path
        self._open_file = open_file
        self._error = error
        self._describe = describe
        self._logger = logger
        self._outage = Outage(logger, until="it can be read",
                              recovery=f"{map_name} map %s is readable again", subject=path)
        self._lock = threading.Lock()
        self._file: _File | None = None
        self._opened: _Identity | None = None
        self._settled = False
        self._closed = False
        with self._lock:
            try:
                self._current_file()
            except MapError:
                pass  # _unavailable() logged it

    def read(self, lookup: Callable[[_File], _Value]) -> _Value:
        """``lookup`` on the current file; ``MapError`` if it cannot be read."""
        with self._lock:
            if self._closed:
                raise MapError(self.map_name, f"{self.path}: map is closed")
            try:
                value = lookup(self._current_file())
            except self._error as exc:
                self._drop_file()
                raise self._unavailable(self._describe(exc)) from exc
            self._outage.recovered()
            return value

    def close(self) -> None:
        """Close the file.  Idempotent; lookups afterwards raise ``MapError``."""
        with self._lock:
            self._closed = True
            self._drop_file()

    def _current_file(self) -> _File:
        """The open file, (re)opened if the file changed since; lock held."""
        try:
            status = os.stat(self.path)
        except OSError as exc:
            self._drop_file()
            raise self._unavailable(f"{self.path}: {exc.strerror or exc}") from exc
        identity = _identity(status)
        if self._file is not None and identity == self._opened and self._settled:
            return self._file
        return self._reopen(identity, time.time() - status.st_mtime > _SETTLE_SECONDS)

    def _reopen(self, identity: _Identity, settled: bool) -> _File:
        if self._file is not None and identity != self._opened:
            self._logger.debug(f"{self.map_name} map %s changed on disk; reopening it", self.path)
        self._drop_file()
        try:
            file = self._open_file(self.path)
        except self._error as exc:
            raise self._unavailable(self._describe(exc)) from exc
        self._file, self._opened, self._settled = file, identity, settled
        return file

    def _drop_file(self) -> None:
        file, self._file, self._opened = self._file, None, None
        if file is not None:
            try:
                file.close()
            except self._error as exc:
                self._logger.debug(f"{self.map_name} map %s: closing: %s", self.path, exc)

    def _unavailable(self, reason: str) -> MapError:
        """The error for a failed lookup; logs the first of a run of failures."""
        return self._outage.failed(MapError(self.map_name, f"cannot read {reason}"))
