"""``makebdb``: build a Berkeley DB popmap from stdin, or print one (``-u``).

Compatible with perdition 2.2's makebdb: the same arguments
(``makebdb [-h|--help] [-u|--undo] bdbname``), a Berkeley DB 5.3 *hash*
database (what perdition's ``libperditiondb_bdb`` opens), keys and values
stored without a NUL.  The input syntax is makegdbm's (see
:mod:`perditionpy.tools.makegdbm`, whose parser this reuses): one
``key:value`` a line, split at the first ``:``, both kept byte for byte; blank
lines skipped; a bad line reported and skipped; the first of duplicate keys
wins.

Where perdition's tool misbehaves we do the sane thing (see
docs/maps-regex-bdb.md): an empty key or value is reported as an invalid
line (perdition stores it), a last line without a newline is stored as written
(perdition appends stale buffer bytes), an over-long line is one invalid line,
and the new file replaces the old one atomically when the directory allows it
(perdition truncates it in place while a proxy may be reading it).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterable, Sequence
from typing import BinaryIO

from perditionpy import __version__
from perditionpy.maps._bdb_ffi import DB_CREATE, DB_TRUNCATE
from perditionpy.maps.bdb import READER_FLAGS, BdbError, BdbFile
from perditionpy.tools.makegdbm import (
    EXIT_FAILURE,
    Entry,
    InvalidLine,
    UsageRequest,
    parse_args,
    parse_popmap,
)

__all__ = ["build", "undo", "main", "USAGE"]

USAGE = (
    f"perditionpy version {__version__}\n"
    "\n"
    "Usage: makebdb [options] bdbname\n"
    "   options: -h, --help: print this message\n"
    "            -u, --undo: print content of database file, one entry a line\n"
)

_WRITER_FLAGS = DB_CREATE | DB_TRUNCATE


def _creation_mode() -> int:
    """0644 less the umask, as DB->open(…, 0644) would create the file."""
    # The umask can only be read by setting it; makebdb is single-threaded.
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o644 & ~mask


def _temporary_path(target: str) -> str | None:
    """A fresh empty file next to ``target``, or ``None`` if its directory is not writable."""
    directory, name = os.path.split(target)
    try:
        handle, path = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory or ".")
    except PermissionError:
        return None
    os.close(handle)
    return path


def _install(temporary: str, target: str) -> None:
    """Give ``temporary`` the old file's mode and owner (if any), sync it, rename it."""
    try:
        old = os.stat(target)
    except FileNotFoundError:
        os.chmod(temporary, _creation_mode())
    else:
        os.chmod(temporary, old.st_mode & 0o7777)
        try:
            os.chown(temporary, old.st_uid, old.st_gid)
        except PermissionError:
            pass  # only root can give a file away; the owner is then ours
    descriptor = os.open(temporary, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    os.replace(temporary, target)


def _store_all(db: BdbFile, items: Iterable[Entry | InvalidLine], err: BinaryIO) -> None:
    for item in items:
        if isinstance(item, InvalidLine):
            err.write(b"makebdb: invalid input on line: %d\n" % item.lineno)
        elif not db.store(item.key, item.value):
            err.write(b"makebdb: duplicate key: " + item.key + b"\n")


def _write_database(mapname: str, items: Iterable[Entry | InvalidLine], err: BinaryIO) -> None:
    """Write ``items`` to a new database at ``mapname`` (atomically when possible)."""
    target = os.path.realpath(mapname)
    temporary = _temporary_path(target)
    try:
        with BdbFile.open(temporary or target, _WRITER_FLAGS, mode=0o644) as db:
            _store_all(db, items, err)
        if temporary is not None:
            _install(temporary, target)
    except BaseException:
        if temporary is not None and os.path.exists(temporary):
            os.unlink(temporary)
        raise


def build(mapname: str, source: Iterable[bytes], err: BinaryIO) -> int:
    """Create ``mapname`` from popmap lines; the exit status."""
    try:
        _write_database(mapname, parse_popmap(source), err)
    except (BdbError, OSError) as exc:
        err.write(f"makebdb: {mapname}: {exc}\n".encode("utf-8", "surrogateescape"))
        return EXIT_FAILURE
    return 0


def undo(mapname: str, out: BinaryIO, err: BinaryIO) -> int:
    """Print every ``key:value`` of ``mapname``; the exit status."""
    try:
        with BdbFile.open(mapname, READER_FLAGS) as db:
            for key, value in db.items():
                out.write(key + b":" + value + b"\n")
    except BdbError as exc:
        err.write(f"makebdb: {mapname}: {exc}\n".encode("utf-8", "surrogateescape"))
        return EXIT_FAILURE
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The ``makebdb`` console script."""
    arguments = sys.argv[1:] if argv is None else argv
    try:
        command = parse_args(arguments)
    except UsageRequest as request:
        if request.message:
            sys.stderr.write(request.message + "\n")
        (sys.stdout if request.status == 0 else sys.stderr).write(USAGE)
        return request.status
    try:
        if command.undo:
            return undo(command.mapname, sys.stdout.buffer, sys.stderr.buffer)
        return build(command.mapname, sys.stdin.buffer, sys.stderr.buffer)
    except OSError as exc:  # libdb could not be loaded
        sys.stderr.write(f"makebdb: {exc}\n")
        return EXIT_FAILURE


if __name__ == "__main__":
    raise SystemExit(main())
