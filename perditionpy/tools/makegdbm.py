"""``makegdbm``: build a GDBM popmap from stdin, or print one (``-u``).

Compatible with perdition 2.2's makegdbm: the same arguments
(``makegdbm [-h|--help] [-u|--undo] gdbmname``) and the same input syntax —
one ``key:value`` a line, split at the first ``:``, both kept byte for byte
(no trimming, no comments: a ``#`` line is an ordinary line); lines of only
spaces and tabs are skipped; a line with no ``:``, an empty key or an empty
value, or longer than perdition's line buffer, is reported and skipped; the
first of duplicate keys wins.  Keys and values are stored without a NUL, so
perdition's own libperditiondb_gdbm reads the result.

Where perdition's tool misbehaves we do the sane thing (see docs/maps.md): a
last line without a newline is stored as written, ``-u`` prints plain
``key:value`` lines (perdition's contain stray NUL bytes), and the new file
replaces the old one atomically when the directory allows it, so a running
proxy never reads a half-written popmap.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import BinaryIO

from perditionpy.maps._gdbm_ffi import GDBM_NEWDB, GDBM_READER
from perditionpy.maps.gdbm import GdbmError, GdbmFile
from perditionpy.tools._popmap_tool import (  # noqa lines: still importable from here
    EXIT_FAILURE,  # noqa: F401
    POPMAP_LINE_LIMIT,  # noqa: F401
    Command,
    Entry,
    InvalidLine,
    UsageRequest,  # noqa: F401
    parse_args,  # noqa: F401
    parse_line,
    parse_popmap,
    report_failure,
    run,
    usage,
    write_database,
)

__all__ = ["Entry", "InvalidLine", "parse_line", "parse_popmap", "build", "undo", "main"]

USAGE = usage("makegdbm", "gdbmname")


def _open_new(path: str) -> GdbmFile:
    return GdbmFile.open(path, GDBM_NEWDB, mode=0o644)


def build(mapname: str, source: Iterable[bytes], err: BinaryIO) -> int:
    """Create ``mapname`` from popmap lines; the exit status."""
    try:
        write_database("makegdbm", mapname, parse_popmap(source), err, _open_new)
    except (GdbmError, OSError) as exc:
        return report_failure("makegdbm", mapname, exc, err)
    return 0


def undo(mapname: str, out: BinaryIO, err: BinaryIO) -> int:
    """Print every ``key:value`` of ``mapname``; the exit status."""
    try:
        with GdbmFile.open(mapname, GDBM_READER) as db:
            for key in db.keys():
                out.write(key + b":" + (db.fetch(key) or b"") + b"\n")
    except GdbmError as exc:
        return report_failure("makegdbm", mapname, exc, err)
    return 0


def _dispatch(command: Command) -> int:
    if command.undo:
        return undo(command.mapname, sys.stdout.buffer, sys.stderr.buffer)
    return build(command.mapname, sys.stdin.buffer, sys.stderr.buffer)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``makegdbm`` console script."""
    return run(sys.argv[1:] if argv is None else argv, USAGE, _dispatch)


if __name__ == "__main__":
    raise SystemExit(main())
