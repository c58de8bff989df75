"""``makebdb``: build a Berkeley DB popmap from stdin, or print one (``-u``).

Compatible with perdition 2.2's makebdb: the same arguments
(``makebdb [-h|--help] [-u|--undo] bdbname``), a Berkeley DB 5.3 *hash*
database (what perdition's ``libperditiondb_bdb`` opens), keys and values
stored without a NUL.  The input syntax is makegdbm's (see
:mod:`perditionpy.tools.makegdbm`; both use
:mod:`perditionpy.tools._popmap_tool`): one
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

import sys
from collections.abc import Iterable, Sequence
from typing import BinaryIO

from perditionpy.maps._bdb_ffi import DB_CREATE, DB_TRUNCATE
from perditionpy.maps.bdb import READER_FLAGS, BdbError, BdbFile
from perditionpy.tools._popmap_tool import (
    EXIT_FAILURE,
    Command,
    parse_popmap,
    report_failure,
    run,
    usage,
    write_database,
)

__all__ = ["build", "undo", "main", "USAGE"]

USAGE = usage("makebdb", "bdbname")

_WRITER_FLAGS = DB_CREATE | DB_TRUNCATE


def _open_new(path: str) -> BdbFile:
    return BdbFile.open(path, _WRITER_FLAGS, mode=0o644)


def build(mapname: str, source: Iterable[bytes], err: BinaryIO) -> int:
    """Create ``mapname`` from popmap lines; the exit status."""
    try:
        write_database("makebdb", mapname, parse_popmap(source), err, _open_new)
    except (BdbError, OSError) as exc:
        return report_failure("makebdb", mapname, exc, err)
    return 0


def undo(mapname: str, out: BinaryIO, err: BinaryIO) -> int:
    """Print every ``key:value`` of ``mapname``; the exit status."""
    try:
        with BdbFile.open(mapname, READER_FLAGS) as db:
            for key, value in db.items():
                out.write(key + b":" + value + b"\n")
    except BdbError as exc:
        return report_failure("makebdb", mapname, exc, err)
    return 0


def _dispatch(command: Command) -> int:
    try:
        if command.undo:
            return undo(command.mapname, sys.stdout.buffer, sys.stderr.buffer)
        return build(command.mapname, sys.stdin.buffer, sys.stderr.buffer)
    except OSError as exc:  # libdb could not be loaded
        sys.stderr.write(f"makebdb: {exc}\n")
        return EXIT_FAILURE


def main(argv: Sequence[str] | None = None) -> int:
    """The ``makebdb`` console script."""
    return run(sys.argv[1:] if argv is None else argv, USAGE, _dispatch)


if __name__ == "__main__":
    raise SystemExit(main())
