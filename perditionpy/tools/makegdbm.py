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

import os
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from perditionpy import __version__
from perditionpy.maps._gdbm_ffi import GDBM_NEWDB, GDBM_READER
from perditionpy.maps.gdbm import GdbmError, GdbmFile

__all__ = ["Entry", "InvalidLine", "parse_line", "parse_popmap", "build", "undo", "main"]

# perdition reads input with fgets() into a 4096-byte buffer: a line, newline
# included, must fit in 4095 bytes or it is rejected.
POPMAP_LINE_LIMIT = 4095

# perdition exits with -1 on errors and bad usage.
EXIT_FAILURE = 255

USAGE = (
    f"perditionpy version {__version__}\n"
    "\n"
    "Usage: makegdbm [options] gdbmname\n"
    "   options: -h, --help: print this message\n"
    "            -u, --undo: print content of database file, one entry a line\n"
)


# ----------------------------------------------------------------- input


@dataclass(frozen=True, slots=True)
class Entry:
    """One ``key:value`` line."""

    key: bytes
    value: bytes
    lineno: int


@dataclass(frozen=True, slots=True)
class InvalidLine:
    """A line makegdbm reports and skips."""

    lineno: int


def parse_line(line: bytes, lineno: int) -> Entry | InvalidLine | None:
    """One input line (with or without its newline); ``None`` for a blank line."""
    body = line[:-1] if line.endswith(b"\n") else line
    if not body.strip(b" \t"):
        return None
    if len(body) + 1 > POPMAP_LINE_LIMIT:
        return InvalidLine(lineno)
    key, colon, value = body.partition(b":")
    if not colon or not key or not value:
        return InvalidLine(lineno)
    return Entry(key, value, lineno)


def parse_popmap(lines: Iterable[bytes]) -> Iterator[Entry | InvalidLine]:
    """Every entry and every invalid line of a popmap, in order."""
    for lineno, line in enumerate(lines, start=1):
        item = parse_line(line, lineno)
        if item is not None:
            yield item


# ----------------------------------------------------------------- output file


def _creation_mode() -> int:
    """0644 less the umask, as gdbm_open(…, 0644) would create the file."""
    # The umask can only be read by setting it; makegdbm is single-threaded.
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o644 & ~mask


def _temporary_path(target: str) -> str | None:
    """A fresh file next to ``target``, or ``None`` if its directory is not writable."""
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


def _write_database(mapname: str, items: Iterable[Entry | InvalidLine], err: BinaryIO) -> None:
    """Write ``items`` to a new database at ``mapname`` (atomically when possible)."""
    target = os.path.realpath(mapname)
    temporary = _temporary_path(target)
    try:
        with GdbmFile.open(temporary or target, GDBM_NEWDB, mode=0o644) as db:
            _store_all(db, items, err)
        if temporary is not None:
            _install(temporary, target)
    except BaseException:
        if temporary is not None and os.path.exists(temporary):
            os.unlink(temporary)
        raise


def _store_all(db: GdbmFile, items: Iterable[Entry | InvalidLine], err: BinaryIO) -> None:
    for item in items:
        if isinstance(item, InvalidLine):
            err.write(b"makegdbm: invalid input on line: %d\n" % item.lineno)
        elif not db.store(item.key, item.value):
            err.write(b"makegdbm: duplicate key: " + item.key + b"\n")


def build(mapname: str, source: Iterable[bytes], err: BinaryIO) -> int:
    """Create ``mapname`` from popmap lines; the exit status."""
    try:
        _write_database(mapname, parse_popmap(source), err)
    except (GdbmError, OSError) as exc:
        err.write(f"makegdbm: {mapname}: {exc}\n".encode("utf-8", "surrogateescape"))
        return EXIT_FAILURE
    return 0


def undo(mapname: str, out: BinaryIO, err: BinaryIO) -> int:
    """Print every ``key:value`` of ``mapname``; the exit status."""
    try:
        with GdbmFile.open(mapname, GDBM_READER) as db:
            for key in db.keys():
                out.write(key + b":" + (db.fetch(key) or b"") + b"\n")
    except GdbmError as exc:
        err.write(f"makegdbm: {mapname}: {exc}\n".encode("utf-8", "surrogateescape"))
        return EXIT_FAILURE
    return 0


# ----------------------------------------------------------------- arguments


class UsageRequest(Exception):
    """Print the usage (to stdout when ``status`` is 0) after ``message``, and exit."""

    def __init__(self, status: int, message: str = "") -> None:
        self.status = status
        self.message = message
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Command:
    mapname: str
    undo: bool


def _long_option(argument: str) -> None:
    """Check ``--help``/``--undo``; raises for help and anything unknown."""
    name, equals, _ = argument[2:].partition("=")
    if name not in ("help", "undo"):
        raise UsageRequest(EXIT_FAILURE, f"options: {argument}: unknown option")
    if equals:
        raise UsageRequest(EXIT_FAILURE,
                           f"options: {argument}: option does not take an argument")
    if name == "help":
        raise UsageRequest(0)


def _short_options(argument: str) -> None:
    """Check a cluster such as ``-u`` or ``-uh``, in order, as popt does."""
    for letter in argument[1:]:
        if letter == "h":
            raise UsageRequest(0)
        if letter != "u":
            raise UsageRequest(EXIT_FAILURE, f"options: -{letter}: unknown option")


def parse_args(arguments: Sequence[str]) -> Command:
    """Options may come before or after the one database name; ``--`` ends them."""
    undo_flag = False
    names: list[str] = []
    for index, argument in enumerate(arguments):
        if argument == "--":
            names.extend(arguments[index + 1:])
            break
        if argument.startswith("--"):
            _long_option(argument)
            undo_flag = True
        elif argument.startswith("-") and argument != "-":
            _short_options(argument)
            undo_flag = True
        else:
            names.append(argument)
    if len(names) != 1:
        raise UsageRequest(EXIT_FAILURE)
    return Command(mapname=names[0], undo=undo_flag)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``makegdbm`` console script."""
    arguments = sys.argv[1:] if argv is None else argv
    try:
        command = parse_args(arguments)
    except UsageRequest as request:
        if request.message:
            sys.stderr.write(request.message + "\n")
        (sys.stdout if request.status == 0 else sys.stderr).write(USAGE)
        return request.status
    if command.undo:
        return undo(command.mapname, sys.stdout.buffer, sys.stderr.buffer)
    return build(command.mapname, sys.stdin.buffer, sys.stderr.buffer)


if __name__ == "__main__":
    raise SystemExit(main())
