"""Our makegdbm and our GDBM map, end to end, plus the pieces of each."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from perditionpy.endpoints import UserServerPort
from perditionpy.errors import MapError
from perditionpy.maps import open_map
from perditionpy.maps._gdbm_ffi import GDBM_NEWDB, GDBM_READER, GdbmBinding
from perditionpy.maps._gdbm_ffi import load as load_gdbm
from perditionpy.maps.base import LookupContext
from perditionpy.maps.gdbm import DEFAULT_PATH, GdbmError, GdbmFile, GdbmMap
from perditionpy.tools.makegdbm import (
    POPMAP_LINE_LIMIT,
    Entry,
    InvalidLine,
    build,
    parse_args,
    parse_line,
    undo,
)

CONTEXT = LookupContext()

POPMAP = (
    b"horms:localhost\n"
    b"tymm:mail.example:143\n"
    b"rewrite:other@imap.example:993\n"
    b"v6:[2001:db8::1]:110\n"
    b"\xc3\xa9l\xc3\xa8ve:pop.example\n"
)


def make_map(path: Path, popmap: bytes) -> bytes:
    """Build ``path`` with our makegdbm; returns what it wrote to stderr."""
    err = io.BytesIO()
    assert build(str(path), io.BytesIO(popmap), err) == 0
    return err.getvalue()


def fds_open_on(path: Path) -> list[str]:
    """This process's descriptors open on ``path`` (by /proc/self/fd)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == str(path):
                found.append(name)
        except OSError:
            continue
    return found


def age(path: Path) -> None:
    """Make ``path`` look long untouched (mtime a minute ago)."""
    past = time.time() - 60
    os.utime(path, (past, past))


class CountingGdbm:
    """The real libgdbm, counting calls to gdbm_open."""

    def __init__(self, library: Any) -> None:
        self._library = library
        self.opens = 0

    def gdbm_open(self, *args: Any) -> Any:
        self.opens += 1
        return self._library.gdbm_open(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._library, name)


def counting_binding() -> tuple[GdbmBinding, CountingGdbm]:
    real = load_gdbm()
    counter = CountingGdbm(real.gdbm)
    return GdbmBinding(ffi=real.ffi, gdbm=counter, libc=real.libc), counter


@pytest.fixture
def popmap(tmp_path: Path) -> Path:
    path = tmp_path / "popmap.gdbm.db"
    make_map(path, POPMAP)
    return path


# ------------------------------------------------------------------ input parsing


@pytest.mark.parametrize(
    "line, expected",
    [
        (b"horms:localhost\n", Entry(b"horms", b"localhost", 7)),
        (b"a:b:c\n", Entry(b"a", b"b:c", 7)),
        (b"tymm: host2:143\n", Entry(b"tymm", b" host2:143", 7)),
        (b"  sp key :  val  \n", Entry(b"  sp key ", b"  val  ", 7)),
        (b"#c:x\n", Entry(b"#c", b"x", 7)),
        (b"crlf:host\r\n", Entry(b"crlf", b"host\r", 7)),
        (b"last:noeol", Entry(b"last", b"noeol", 7)),
        (b"\n", None),
        (b" \t \n", None),
        (b"", None),
        (b"# comment\n", InvalidLine(7)),
        (b"nocolon\n", InvalidLine(7)),
        (b":emptykey\n", InvalidLine(7)),
        (b"emptyval:\n", InvalidLine(7)),
        (b"\r\n", InvalidLine(7)),
    ],
)
def test_parse_line(line: bytes, expected: Entry | InvalidLine | None) -> None:
    assert parse_line(line, 7) == expected


def test_line_length_limit_is_perditions_buffer() -> None:
    longest = b"k:" + b"v" * (POPMAP_LINE_LIMIT - 3) + b"\n"
    assert len(longest) == POPMAP_LINE_LIMIT
    assert isinstance(parse_line(longest, 1), Entry)
    assert parse_line(b"k" + longest, 1) == InvalidLine(1)


# ------------------------------------------------------------------ makegdbm → map


def test_lookups(popmap: Path) -> None:
    gdbm = GdbmMap(str(popmap))
    try:
        assert gdbm.get("horms", CONTEXT) == UserServerPort(None, "localhost", None)
        assert gdbm.get("tymm", CONTEXT) == UserServerPort(None, "mail.example", "143")
        assert gdbm.get("rewrite", CONTEXT) == UserServerPort("other", "imap.example", "993")
        assert gdbm.get("v6", CONTEXT) == UserServerPort(None, "2001:db8::1", "110")
        assert gdbm.get("élève", CONTEXT) == UserServerPort(None, "pop.example", None)
        assert gdbm.get("nobody", CONTEXT) is None
        assert gdbm.get("", CONTEXT) is None
    finally:
        gdbm.close()


def test_keys_are_exact_bytes(popmap: Path) -> None:
    gdbm = GdbmMap(str(popmap))
    assert gdbm.get("Horms", CONTEXT) is None
    assert gdbm.get("horms ", CONTEXT) is None
    undecodable = b"\xff\xfeuser".decode("utf-8", "surrogateescape")
    make_map(popmap, b"\xff\xfeuser:raw.example\n")
    assert gdbm.get(undecodable, CONTEXT) == UserServerPort(None, "raw.example", None)


def test_domain_delimiter_from_context(tmp_path: Path) -> None:
    path = tmp_path / "map.db"
    make_map(path, b"alice:bob%imap.example:143\n")
    gdbm = GdbmMap(str(path))
    found = gdbm.get("alice", LookupContext(domain_delimiter="%"))
    assert found == UserServerPort("bob", "imap.example", "143")
    assert gdbm.get("alice", CONTEXT) == UserServerPort(None, "bob%imap.example", "143")


def test_c_string_semantics_for_nul(tmp_path: Path) -> None:
    """perdition hands C strings around: key and value end at the first NUL."""
    path = tmp_path / "nul.db"
    with GdbmFile.open(str(path), GDBM_NEWDB) as db:
        assert db.store(b"alice", b"imap.example\0garbage")
        assert db.store(b"empty", b"\0junk")
    gdbm = GdbmMap(str(path))
    assert gdbm.get("alice", CONTEXT) == UserServerPort(None, "imap.example", None)
    assert gdbm.get("alice\0tail", CONTEXT) == UserServerPort(None, "imap.example", None)
    assert gdbm.get("empty", CONTEXT) is None


def test_default_path_when_option_is_empty() -> None:
    gdbm = GdbmMap("")
    try:
        assert gdbm.path == DEFAULT_PATH == "/etc/perdition/popmap.gdbm.db"
    finally:
        gdbm.close()


def test_opened_once_and_reused(popmap: Path) -> None:
    age(popmap)
    binding, counter = counting_binding()
    gdbm = GdbmMap(str(popmap), binding=binding)
    for _ in range(50):
        assert gdbm.get("horms", CONTEXT) is not None
    assert counter.opens == 1
    assert len(fds_open_on(popmap)) == 1
    gdbm.close()
    assert fds_open_on(popmap) == []


def test_fresh_file_is_reopened_until_it_settles(popmap: Path) -> None:
    """A write ending in the same timestamp tick as our stat() must not be missed."""
    binding, counter = counting_binding()
    gdbm = GdbmMap(str(popmap), binding=binding)
    for _ in range(3):
        assert gdbm.get("horms", CONTEXT) is not None
    assert counter.opens == 4
    age(popmap)
    for _ in range(3):
        assert gdbm.get("horms", CONTEXT) is not None
    assert counter.opens == 5


def test_close_is_idempotent_and_final(popmap: Path) -> None:
    gdbm = GdbmMap(str(popmap))
    gdbm.close()
    gdbm.close()
    with pytest.raises(MapError, match="closed"):
        gdbm.get("horms", CONTEXT)


def test_missing_file_is_not_fatal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "later.db"
    with caplog.at_level(logging.WARNING, logger="perditionpy.maps.gdbm"):
        gdbm = open_map("libperditiondb_gdbm.so.0", str(path))
    assert gdbm is not None
    assert any(
        str(path) in record.getMessage() and record.levelno == logging.WARNING
        for record in caplog.records
    )
    with pytest.raises(MapError) as caught:
        gdbm.get("horms", CONTEXT)
    assert caught.value.map_name == "gdbm"
    assert str(path) in str(caught.value) and "No such file" in str(caught.value)
    make_map(path, POPMAP)
    assert gdbm.get("horms", CONTEXT) == UserServerPort(None, "localhost", None)


def test_repeated_failures_log_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="perditionpy.maps.gdbm"):
        gdbm = GdbmMap(str(tmp_path / "absent.db"))
        for _ in range(5):
            with pytest.raises(MapError):
                gdbm.get("x", CONTEXT)
        make_map(tmp_path / "absent.db", POPMAP)
        assert gdbm.get("horms", CONTEXT) is not None
    levels = [record.levelno for record in caplog.records]
    assert levels == [logging.WARNING, logging.INFO]


def test_removed_file_fails_lookups(popmap: Path) -> None:
    gdbm = GdbmMap(str(popmap))
    assert gdbm.get("horms", CONTEXT) is not None
    popmap.unlink()
    with pytest.raises(MapError, match="No such file"):
        gdbm.get("horms", CONTEXT)


def test_not_a_gdbm_file(tmp_path: Path) -> None:
    path = tmp_path / "popmap"
    path.write_bytes(b"horms:localhost\n" * 100)
    gdbm = GdbmMap(str(path))
    with pytest.raises(MapError) as caught:
        gdbm.get("horms", CONTEXT)
    assert str(path) in str(caught.value)


def test_replaced_file_is_picked_up(popmap: Path) -> None:
    gdbm = GdbmMap(str(popmap))
    assert gdbm.get("horms", CONTEXT) == UserServerPort(None, "localhost", None)
    inode = popmap.stat().st_ino
    make_map(popmap, b"horms:moved.example:110\n")
    assert popmap.stat().st_ino != inode, "makegdbm should replace the file atomically"
    assert gdbm.get("horms", CONTEXT) == UserServerPort(None, "moved.example", "110")
    assert gdbm.get("tymm", CONTEXT) is None


def test_file_rewritten_in_place_is_picked_up(popmap: Path) -> None:
    gdbm = GdbmMap(str(popmap))
    assert gdbm.get("tymm", CONTEXT) is not None
    inode = popmap.stat().st_ino
    with GdbmFile.open(str(popmap), GDBM_NEWDB) as db:
        db.store(b"horms", b"inplace.example")
    assert popmap.stat().st_ino == inode
    assert gdbm.get("horms", CONTEXT) == UserServerPort(None, "inplace.example", None)
    assert gdbm.get("tymm", CONTEXT) is None


def test_concurrent_lookups(popmap: Path) -> None:
    gdbm = GdbmMap(str(popmap))
    expected = {
        "horms": "localhost",
        "tymm": "mail.example",
        "rewrite": "imap.example",
        "nobody": None,
    }
    wrong: list[tuple[str, object]] = []

    def worker() -> None:
        for _ in range(200):
            for key, server in expected.items():
                found = gdbm.get(key, CONTEXT)
                if (found.server if found else None) != server:
                    wrong.append((key, found))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert wrong == []


def test_lookups_while_the_file_is_rebuilt(popmap: Path) -> None:
    """Rebuilding under load gives old or new answers, never a crash or garbage."""
    gdbm = GdbmMap(str(popmap))
    seen: set[str | None] = set()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                found = gdbm.get("horms", CONTEXT)
            except MapError:
                continue
            seen.add(found.server if found else None)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for generation in range(20):
            make_map(popmap, b"horms:gen%d.example\n" % generation)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert gdbm.get("horms", CONTEXT) == UserServerPort(None, "gen19.example", None)
    assert seen <= {"localhost"} | {f"gen{n}.example" for n in range(20)}


# ------------------------------------------------------------------ makegdbm itself


def test_build_reports_bad_lines_and_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "out.db"
    err = make_map(path, b"dup:first\nbad line\n\n:x\ndup:second\nok:yes")
    assert err.splitlines() == [
        b"makegdbm: invalid input on line: 2",
        b"makegdbm: invalid input on line: 4",
        b"makegdbm: duplicate key: dup",
    ]
    with GdbmFile.open(str(path), GDBM_READER) as db:
        assert {key: db.fetch(key) for key in db.keys()} == {b"dup": b"first", b"ok": b"yes"}


def test_build_keeps_mode_of_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "popmap.db"
    make_map(path, b"a:b\n")
    os.chmod(path, 0o640)
    make_map(path, b"a:c\n")
    assert path.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["popmap.db"], "no temporary file left"


def test_build_through_a_symlink_replaces_the_target(tmp_path: Path) -> None:
    real = tmp_path / "real.db"
    link = tmp_path / "link.db"
    make_map(real, b"a:b\n")
    link.symlink_to(real)
    make_map(link, b"a:linked\n")
    assert link.is_symlink()
    assert GdbmMap(str(real)).get("a", CONTEXT) == UserServerPort(None, "linked", None)


def test_build_failure(tmp_path: Path) -> None:
    err = io.BytesIO()
    assert build(str(tmp_path / "no" / "dir.db"), io.BytesIO(b"a:b\n"), err) == 255
    assert b"makegdbm: " in err.getvalue() and b"No such file" in err.getvalue()


def test_undo_lists_every_entry(popmap: Path) -> None:
    out, err = io.BytesIO(), io.BytesIO()
    assert undo(str(popmap), out, err) == 0
    assert sorted(out.getvalue().splitlines(keepends=True)) == sorted(
        POPMAP.splitlines(keepends=True)
    )
    assert err.getvalue() == b""


def test_undo_of_missing_file(tmp_path: Path) -> None:
    out, err = io.BytesIO(), io.BytesIO()
    assert undo(str(tmp_path / "absent.db"), out, err) == 255
    assert b"File open error" in err.getvalue()


def test_gdbm_file_rejects_use_after_close(popmap: Path) -> None:
    db = GdbmFile.open(str(popmap), GDBM_READER)
    db.close()
    db.close()
    with pytest.raises(GdbmError, match="closed"):
        db.fetch(b"horms")


@pytest.mark.parametrize(
    "argv, mapname, undo_flag",
    [
        (["x.db"], "x.db", False),
        (["-u", "x.db"], "x.db", True),
        (["x.db", "--undo"], "x.db", True),
        (["-uu", "x.db"], "x.db", True),
        (["--", "-u"], "-u", False),
        (["-"], "-", False),
    ],
)
def test_parse_args(argv: list[str], mapname: str, undo_flag: bool) -> None:
    command = parse_args(argv)
    assert (command.mapname, command.undo) == (mapname, undo_flag)


def run_makegdbm(
    *args: str, stdin: bytes = b"", cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "perditionpy.tools.makegdbm", *args],
        input=stdin,
        capture_output=True,
        timeout=60,
        cwd=cwd,
    )


@pytest.mark.parametrize(
    "argv, status, stream, message",
    [
        (["-h"], 0, "stdout", b""),
        (["--help", "x.db"], 0, "stdout", b""),
        (["-uh"], 0, "stdout", b""),
        ([], 255, "stderr", b""),
        (["a.db", "b.db"], 255, "stderr", b""),
        (["-u"], 255, "stderr", b""),
        (["-x", "a.db"], 255, "stderr", b"options: -x: unknown option"),
        (["--undo=1", "a.db"], 255, "stderr", b"option does not take an argument"),
    ],
)
def test_cli_usage(
    argv: list[str], status: int, stream: str, message: bytes, tmp_path: Path
) -> None:
    result = run_makegdbm(*argv, cwd=tmp_path)
    assert result.returncode == status
    assert b"Usage: makegdbm [options] gdbmname" in getattr(result, stream)
    assert message in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_cli_round_trip(tmp_path: Path) -> None:
    built = run_makegdbm("popmap.db", stdin=POPMAP, cwd=tmp_path)
    assert (built.returncode, built.stderr) == (0, b"")
    dumped = run_makegdbm("--undo", "popmap.db", cwd=tmp_path)
    assert dumped.returncode == 0
    assert sorted(dumped.stdout.splitlines()) == sorted(POPMAP.splitlines())
