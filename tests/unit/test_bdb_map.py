"""Our makebdb and our Berkeley DB map, end to end, plus the pieces of each.

Differential tests against perdition's makebdb and libperditiondb_bdb live in
tests/compat/test_regex_bdb_compat.py.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from perditionpy.endpoints import UserServerPort
from perditionpy.errors import MapError
from perditionpy.maps import _bdb_ffi, open_map
from perditionpy.maps import bdb as bdb_module
from perditionpy.maps._bdb_ffi import DB_CREATE
from perditionpy.maps.base import LookupContext
from perditionpy.maps.bdb import READER_FLAGS, BdbError, BdbFile, BdbMap
from perditionpy.tools.makebdb import build, main, undo

CONTEXT = LookupContext()

POPMAP = (
    b"horms:localhost\n"
    b"tymm:mail.example:143\n"
    b"rewrite:other@imap.example:993\n"
    b"v6:[2001:db8::1]:110\n"
    b"\xc3\xa9l\xc3\xa8ve:pop.example\n"
)


def make_map(path: Path, popmap: bytes) -> bytes:
    """Build ``path`` with our makebdb; returns what it wrote to stderr."""
    err = io.BytesIO()
    assert build(str(path), io.BytesIO(popmap), err) == 0
    return err.getvalue()


def contents(path: Path) -> dict[bytes, bytes]:
    with BdbFile.open(str(path), READER_FLAGS) as db:
        return dict(db.items())


@pytest.fixture
def popmap(tmp_path: Path) -> Path:
    path = tmp_path / "popmap.bdb.db"
    make_map(path, POPMAP)
    return path


# ----------------------------------------------------------------- declarations


def test_cdef_offsets_match_db_h() -> None:
    binding = bdb_module.load_binding()
    for (struct, member), offset in _bdb_ffi.OFFSETS.items():
        assert binding.ffi.offsetof(struct, member) == offset, (struct, member)
    assert binding.ffi.sizeof("DBT") == 40


def test_library_is_5_3() -> None:
    binding = bdb_module.load_binding()
    major = binding.ffi.new("int *")
    minor = binding.ffi.new("int *")
    text = binding.ffi.string(binding.db.db_version(major, minor, binding.ffi.NULL))
    assert (major[0], minor[0]) == (5, 3)
    assert text.startswith(b"Berkeley DB 5.3")


# ----------------------------------------------------------------- the map


def test_lookups(popmap: Path) -> None:
    bdb = open_map("bdb", str(popmap))
    assert bdb is not None
    assert bdb.get("horms", CONTEXT) == UserServerPort(None, "localhost", None)
    assert bdb.get("tymm", CONTEXT) == UserServerPort(None, "mail.example", "143")
    assert bdb.get("rewrite", CONTEXT) == UserServerPort("other", "imap.example", "993")
    assert bdb.get("v6", CONTEXT) == UserServerPort(None, "2001:db8::1", "110")
    assert bdb.get("\u00e9l\u00e8ve", CONTEXT) == UserServerPort(None, "pop.example", None)
    assert bdb.get("nobody", CONTEXT) is None
    bdb.close()


@pytest.mark.parametrize(
    "library",
    ["bdb", "libperditiondb_bdb.so.0", "/usr/lib/x86_64-linux-gnu/libperditiondb_bdb.so.0"],
)
def test_registry_names(popmap: Path, library: str) -> None:
    opened = open_map(library, str(popmap))
    assert isinstance(opened, BdbMap)
    assert opened.get("horms", CONTEXT) == UserServerPort(None, "localhost", None)
    opened.close()


@pytest.mark.parametrize(
    "key", ["HORMS", "horms ", " horms", "horm", "*)(uid=*", "' OR '1'='1", "h.rms", "x" * 10240]
)
def test_keys_are_exact_bytes(popmap: Path, key: str) -> None:
    bdb = BdbMap(str(popmap))
    assert bdb.get(key, CONTEXT) is None
    bdb.close()


def test_hostile_keys_stored_and_found(tmp_path: Path) -> None:
    path = tmp_path / "popmap.bdb.db"
    huge = b"k" * 10240
    make_map(path, b"*)(uid=*:a\n' OR '1'='1:b\n.*:c\n" + huge + b":d\n")
    bdb = BdbMap(str(path))
    assert bdb.get("*)(uid=*", CONTEXT) == UserServerPort(None, "a", None)
    assert bdb.get("' OR '1'='1", CONTEXT) == UserServerPort(None, "b", None)
    assert bdb.get(".*", CONTEXT) == UserServerPort(None, "c", None)
    assert bdb.get("anything", CONTEXT) is None
    assert bdb.get("k" * 10240, CONTEXT) is None  # longer than a popmap line may be
    bdb.close()


def test_domain_delimiter_from_context(tmp_path: Path) -> None:
    path = tmp_path / "popmap.bdb.db"
    make_map(path, b"alice:bob%host:110\n")
    bdb = BdbMap(str(path))
    assert bdb.get("alice", LookupContext(domain_delimiter="%")) == UserServerPort(
        "bob", "host", "110")
    bdb.close()


def test_c_string_semantics_for_nul_and_empty_values(tmp_path: Path) -> None:
    path = tmp_path / "popmap.bdb.db"
    with BdbFile.open(str(path), DB_CREATE) as db:
        assert db.store(b"alice", b"host\0junk")
        assert db.store(b"empty", b"")
        assert db.store(b"nul", b"\0host")
        assert not db.store(b"alice", b"other")
    bdb = BdbMap(str(path))
    assert bdb.get("alice", CONTEXT) == UserServerPort(None, "host", None)
    assert bdb.get("alice\0bob", CONTEXT) == UserServerPort(None, "host", None)
    assert bdb.get("empty", CONTEXT) is None
    assert bdb.get("nul", CONTEXT) is None
    bdb.close()


def test_default_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "default.db"
    make_map(path, b"x:y\n")
    monkeypatch.setattr(bdb_module, "DEFAULT_PATH", str(path))
    bdb = BdbMap("")
    assert bdb.path == str(path)
    assert bdb.get("x", CONTEXT) == UserServerPort(None, "y", None)
    bdb.close()


def test_missing_file_is_not_fatal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "later.db"
    with caplog.at_level(logging.WARNING, logger="perditionpy.maps.bdb"):
        bdb = BdbMap(str(path))
    assert str(path) in caplog.text and "falling back" in caplog.text
    with pytest.raises(MapError, match="No such file"):
        bdb.get("horms", CONTEXT)
    make_map(path, b"horms:appeared\n")
    assert bdb.get("horms", CONTEXT) == UserServerPort(None, "appeared", None)
    bdb.close()


def test_repeated_failures_log_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="perditionpy.maps.bdb"):
        bdb = BdbMap(str(tmp_path / "absent.db"))
        for _ in range(3):
            with pytest.raises(MapError):
                bdb.get("x", CONTEXT)
    assert caplog.text.count("falling back") == 1  # at open; the lookups add nothing
    bdb.close()


def test_not_a_bdb_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not a database\n" * 100)
    with caplog.at_level(logging.DEBUG, logger="perditionpy.maps.bdb"):
        bdb = BdbMap(str(path))
        with pytest.raises(MapError, match="cannot read"):
            bdb.get("x", CONTEXT)
    assert "libdb: BDB" in caplog.text  # libdb's own messages go to our log, not stderr
    bdb.close()


def test_rebuilt_file_is_used_at_once(popmap: Path) -> None:
    bdb = BdbMap(str(popmap))
    assert bdb.get("horms", CONTEXT) == UserServerPort(None, "localhost", None)
    make_map(popmap, b"horms:rebuilt.example\n")
    assert bdb.get("horms", CONTEXT) == UserServerPort(None, "rebuilt.example", None)
    bdb.close()


def test_close_is_idempotent_and_final(popmap: Path) -> None:
    bdb = BdbMap(str(popmap))
    bdb.close()
    bdb.close()
    with pytest.raises(MapError, match="closed"):
        bdb.get("horms", CONTEXT)


def test_no_descriptor_left_open(popmap: Path) -> None:
    before = len(os.listdir("/proc/self/fd"))
    bdb = BdbMap(str(popmap))
    for _ in range(50):
        bdb.get("horms", CONTEXT)
        bdb.get("nobody", CONTEXT)
    bdb.close()
    assert len(os.listdir("/proc/self/fd")) == before


def test_bdb_file_rejects_use_after_close(popmap: Path) -> None:
    db = BdbFile.open(str(popmap), READER_FLAGS)
    db.close()
    db.close()
    with pytest.raises(BdbError, match="closed"):
        db.fetch(b"horms")


def test_read_only_handle_refuses_writes(popmap: Path) -> None:
    with BdbFile.open(str(popmap), READER_FLAGS) as db, pytest.raises(BdbError):
        db.store(b"new", b"value")
    assert b"new" not in contents(popmap)


def test_concurrent_lookups(popmap: Path) -> None:
    bdb = BdbMap(str(popmap))
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(100):
                assert bdb.get("tymm", CONTEXT) == UserServerPort(None, "mail.example", "143")
                assert bdb.get("nobody", CONTEXT) is None
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    bdb.close()


# ----------------------------------------------------------------- makebdb


def test_build_reports_bad_lines_and_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "popmap.bdb.db"
    err = make_map(path, b"a:1\nnocolon\n:emptykey\nemptyval:\n\n \t\na:2\nb:x:y\n" + b"l:"
                   + b"v" * 5000 + b"\nlast:nonewline")
    assert err == (
        b"makebdb: invalid input on line: 2\n"
        b"makebdb: invalid input on line: 3\n"
        b"makebdb: invalid input on line: 4\n"
        b"makebdb: duplicate key: a\n"
        b"makebdb: invalid input on line: 9\n"
    )
    assert contents(path) == {b"a": b"1", b"b": b"x:y", b"last": b"nonewline"}


def test_build_is_a_hash_database(popmap: Path) -> None:
    # Berkeley DB hash meta page: magic 0x061561 at offset 12.
    assert popmap.read_bytes()[12:16] == (0x061561).to_bytes(4, sys.byteorder)


def test_build_replaces_atomically_and_keeps_mode(popmap: Path) -> None:
    popmap.chmod(0o600)
    inode = popmap.stat().st_ino
    make_map(popmap, b"x:y\n")
    assert popmap.stat().st_ino != inode
    assert popmap.stat().st_mode & 0o777 == 0o600
    assert contents(popmap) == {b"x": b"y"}
    assert [p.name for p in popmap.parent.iterdir()] == [popmap.name]


def test_build_failure(tmp_path: Path) -> None:
    err = io.BytesIO()
    assert build(str(tmp_path / "missing-dir" / "x.db"), io.BytesIO(b"a:b\n"), err) == 255
    assert err.getvalue().startswith(b"makebdb: ")


def test_undo_lists_every_entry(popmap: Path) -> None:
    out, err = io.BytesIO(), io.BytesIO()
    assert undo(str(popmap), out, err) == 0
    assert sorted(out.getvalue().splitlines(keepends=True)) == sorted(
        POPMAP.splitlines(keepends=True))
    assert err.getvalue() == b""


def test_undo_of_missing_file(tmp_path: Path) -> None:
    out, err = io.BytesIO(), io.BytesIO()
    assert undo(str(tmp_path / "absent.db"), out, err) == 255
    assert b"No such file" in err.getvalue()


@pytest.mark.parametrize(
    "argv, status, stream",
    [(["-h"], 0, "out"), (["--help"], 0, "out"), ([], 255, "err"), (["a", "b"], 255, "err"),
     (["-x", "a"], 255, "err")],
)
def test_cli_usage(argv: list[str], status: int, stream: str,
                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == status
    captured = capsys.readouterr()
    assert "Usage: makebdb [options] bdbname" in (captured.out if stream == "out"
                                                  else captured.err)


def test_cli_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "popmap.bdb.db"
    command = [sys.executable, "-m", "perditionpy.tools.makebdb"]
    subprocess.run([*command, str(path)], input=POPMAP, check=True, timeout=60)
    listed = subprocess.run([*command, "-u", str(path)], capture_output=True, check=True,
                            timeout=60)
    assert sorted(listed.stdout.splitlines()) == sorted(POPMAP.splitlines())
