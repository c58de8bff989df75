"""What makegdbm and makebdb share: popmap input, arguments, writing the file.

Owns perdition 2.2's popmap input syntax (:func:`parse_popmap`), its tools'
arguments (:func:`parse_args`), the atomic replacement of the database file
(:func:`write_database`) and the ``main`` around them (:func:`run`).  Each
tool adds only how its database is opened, written and listed.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from perditionpy import __version__

# perdition reads input with fgets() into a 4096-byte buffer: a line, newline
# included, must fit in 4095 bytes or it is rejected.
POPMAP_LINE_LIMIT = 4095

# perdition exits with -1 on errors and bad usage.
EXIT_FAILURE = 255


def usage(tool: str, database: str) -> str:
    """The ``--help`` text of ``tool``, whose argument is named ``database``."""
    return (
        f"perditionpy version {__version__}\n"
        "\n"
        f"Usage: {tool} [options] {database}\n"
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


class PopmapWriter(Protocol):
    """A database open for writing: ``store`` is ``False`` for a duplicate key."""

    def store(self, key: bytes, value: bytes) -> bool: ...


def _creation_mode() -> int:
    """0644 less the umask, as the library's open(…, 0644) would create the file."""
    # The umask can only be read by setting it; the tools are single-threaded.
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


def write_database(
    tool: str,
    mapname: str,
    items: Iterable[Entry | InvalidLine],
    err: BinaryIO,
    open_new: Callable[[str], AbstractContextManager[PopmapWriter]],
) -> None:
    """Write ``items`` to a new database at ``mapname`` (atomically when possible)."""
    target = os.path.realpath(mapname)
    temporary = _temporary_path(target)
    try:
        with open_new(temporary or target) as db:
            _store_all(tool, db, items, err)
        if temporary is not None:
            _install(temporary, target)
    except BaseException:
        if temporary is not None and os.path.exists(temporary):
            os.unlink(temporary)
        raise


def _store_all(
    tool: str, db: PopmapWriter, items: Iterable[Entry | InvalidLine], err: BinaryIO
) -> None:
    prefix = tool.encode()
    for item in items:
        if isinstance(item, InvalidLine):
            err.write(prefix + b": invalid input on line: %d\n" % item.lineno)
        elif not db.store(item.key, item.value):
            err.write(prefix + b": duplicate key: " + item.key + b"\n")


def report_failure(tool: str, mapname: str, error: Exception, err: BinaryIO) -> int:
    """Write ``tool: mapname: error`` to ``err``; the exit status."""
    err.write(f"{tool}: {mapname}: {error}\n".encode("utf-8", "surrogateescape"))
    return EXIT_FAILURE


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


def run(arguments: Sequence[str], usage_text: str, dispatch: Callable[[Command], int]) -> int:
    """Parse ``arguments`` and hand them to ``dispatch``; the exit status."""
    try:
        command = parse_args(arguments)
    except UsageRequest as request:
        if request.message:
            sys.stderr.write(request.message + "\n")
        (sys.stdout if request.status == 0 else sys.stderr).write(usage_text)
        return request.status
    return dispatch(command)
