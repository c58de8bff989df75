"""The CDB map: our reader against files built by tinycdb's ``cdb`` tool and by hand."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from perditionpy.endpoints import UserServerPort
from perditionpy.errors import MapError
from perditionpy.maps import open_map
from perditionpy.maps.base import LookupContext
from perditionpy.maps.cdb import DEFAULT_PATH, CdbError, CdbFile, CdbMap, cdb_hash

CONTEXT = LookupContext()
CDB_TOOL = shutil.which("cdb")

needs_cdb_tool = pytest.mark.skipif(CDB_TOOL is None, reason="tinycdb's cdb tool is not installed")

POPMAP = (
    "horms localhost\n"
    "tymm mail.example:143\n"
    "rewrite other@imap.example:993\n"
    "v6 [2001:db8::1]:110\n"
    "élève pop.example\n"
)


def cdb_make(path: Path, lines: str | bytes) -> Path:
    """Build ``path`` with ``cdb -c -m`` (one ``key value`` a line) from tinycdb."""
    data = lines.encode() if isinstance(lines, str) else lines
    assert CDB_TOOL is not None
    subprocess.run([CDB_TOOL, "-c", "-m", str(path)], input=data, check=True, timeout=10)
    return path


def cdb_native(path: Path, records: list[tuple[bytes, bytes]]) -> Path:
    """Build ``path`` with ``cdb -c`` from native ``+klen,vlen:key->value`` records
    (the only input form that carries NUL bytes)."""
    data = b"".join(b"+%d,%d:%s->%s\n" % (len(k), len(v), k, v) for k, v in records) + b"\n"
    assert CDB_TOOL is not None
    subprocess.run([CDB_TOOL, "-c", str(path)], input=data, check=True, timeout=10)
    return path


def cdb_write(path: Path, records: list[tuple[bytes, bytes]]) -> Path:
    """A minimal independent cdb writer (the published format), for hand-made files."""
    body = bytearray()
    slots: list[list[tuple[int, int]]] = [[] for _ in range(256)]
    for key, value in records:
        slots[cdb_hash(key) & 0xFF].append((cdb_hash(key), 2048 + len(body)))
        body += struct.pack("<II", len(key), len(value)) + key + value
    header, tables = bytearray(), bytearray()
    for entries in slots:
        size = 2 * len(entries)
        table = [(0, 0)] * size
        for hashed, position in entries:
            index = (hashed >> 8) % size
            while table[index][1] != 0:
                index = (index + 1) % size
            table[index] = (hashed, position)
        header += struct.pack("<II", 2048 + len(body) + len(tables), size)
        tables += b"".join(struct.pack("<II", h, p) for h, p in table)
    path.write_bytes(bytes(header) + bytes(body) + bytes(tables))
    return path


def age(path: Path) -> None:
    """Make ``path`` look long untouched (mtime a minute ago)."""
    past = time.time() - 60
    os.utime(path, (past, past))


def fds_open_on(path: Path) -> list[str]:
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == str(path):
                found.append(name)
        except OSError:
            continue
    return found


# ------------------------------------------------------------------ the format


@pytest.mark.parametrize(
    ("key", "expected"),
    [(b"", 5381), (b"a", (5381 * 33) ^ 0x61), (b"ab", (((5381 * 33) ^ 0x61) * 33) ^ 0x62)],
)
def test_hash_is_djb_xor_variant(key: bytes, expected: int) -> None:
    assert cdb_hash(key) == expected


def test_hash_wraps_at_32_bits() -> None:
    assert cdb_hash(b"x" * 100) < 2**32


@needs_cdb_tool
def test_reads_files_built_by_tinycdb(tmp_path: Path) -> None:
    with CdbFile.open(str(cdb_make(tmp_path / "popmap.cdb", POPMAP))) as db:
        assert db.get(b"horms") == b"localhost"
        assert db.get(b"rewrite") == b"other@imap.example:993"
        assert db.get("élève".encode()) == b"pop.example"
        assert db.get(b"nobody") is None
        assert db.get(b"") is None


@needs_cdb_tool
def test_agrees_with_tinycdb_on_many_keys(tmp_path: Path) -> None:
    """Enough keys for collisions in every table and long probe chains."""
    keys = [f"user{i}@example.com" for i in range(3000)]
    path = cdb_make(tmp_path / "big.cdb", "".join(f"{k} host{i}:{i}\n" for i, k in enumerate(keys)))
    with CdbFile.open(str(path)) as db:
        for i, key in enumerate(keys):
            assert db.get(key.encode()) == f"host{i}:{i}".encode()
        assert db.get(b"user3000@example.com") is None
    query = subprocess.run(
        [CDB_TOOL or "cdb", "-q", str(path), "user1234@example.com"],
        capture_output=True,
        check=True,
        timeout=10,
    )
    assert query.stdout == b"host1234:1234"


@needs_cdb_tool
def test_first_of_duplicate_keys_wins_like_cdb_seek(tmp_path: Path) -> None:
    path = cdb_make(tmp_path / "dup.cdb", "alice first\nalice second\n")
    with CdbFile.open(str(path)) as db:
        assert db.get(b"alice") == b"first"


def test_reads_an_independently_written_file(tmp_path: Path) -> None:
    records = [(b"k%d" % i, b"v%d" % i) for i in range(500)]
    with CdbFile.open(str(cdb_write(tmp_path / "own.cdb", records))) as db:
        assert all(db.get(k) == v for k, v in records)
        assert db.get(b"k500") is None


def test_empty_database(tmp_path: Path) -> None:
    with CdbFile.open(str(cdb_write(tmp_path / "empty.cdb", []))) as db:
        assert db.get(b"anything") is None


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: data[:100], id="shorter-than-header"),
        pytest.param(lambda data: data[:-8], id="table-cut-off"),
        pytest.param(lambda data: data[: 2048 + 10], id="records-cut-off"),
    ],
)
def test_damaged_files_are_errors_not_hangs(tmp_path: Path, damage: object) -> None:
    path = cdb_write(tmp_path / "ok.cdb", [(b"alice", b"imap.example")])
    path.write_bytes(damage(path.read_bytes()))  # type: ignore[operator]
    with pytest.raises(CdbError, match="not a cdb file"):
        with CdbFile.open(str(path)) as db:
            db.get(b"alice")


def test_table_pointing_beyond_the_file_is_an_error(tmp_path: Path) -> None:
    data = bytearray(cdb_write(tmp_path / "ok.cdb", [(b"alice", b"x")]).read_bytes())
    table = cdb_hash(b"alice") & 0xFF
    struct.pack_into("<II", data, 8 * table, 10**6, 2**31)
    (tmp_path / "bad.cdb").write_bytes(bytes(data))
    with CdbFile.open(str(tmp_path / "bad.cdb")) as db, pytest.raises(CdbError):
        db.get(b"alice")


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CdbError, match="No such file"):
        CdbFile.open(str(tmp_path / "absent.cdb"))


# ------------------------------------------------------------------ the map


@needs_cdb_tool
def test_lookups(tmp_path: Path) -> None:
    cdb = CdbMap(str(cdb_make(tmp_path / "popmap.cdb", POPMAP)))
    try:
        assert cdb.get("horms", CONTEXT) == UserServerPort(None, "localhost", None)
        assert cdb.get("tymm", CONTEXT) == UserServerPort(None, "mail.example", "143")
        assert cdb.get("rewrite", CONTEXT) == UserServerPort("other", "imap.example", "993")
        assert cdb.get("v6", CONTEXT) == UserServerPort(None, "2001:db8::1", "110")
        assert cdb.get("élève", CONTEXT) == UserServerPort(None, "pop.example", None)
        assert cdb.get("nobody", CONTEXT) is None
        assert cdb.get("Horms", CONTEXT) is None
        assert cdb.get("", CONTEXT) is None
    finally:
        cdb.close()


@needs_cdb_tool
def test_keys_have_no_nul_terminator_and_values_are_c_strings(tmp_path: Path) -> None:
    path = cdb_native(
        tmp_path / "nul.cdb",
        [
            (b"alice", b"imap.example\0garbage"),
            (b"bob\0", b"with-nul-key.example"),
            (b"empty", b"\0junk"),
            (b"blank", b""),
        ],
    )
    cdb = CdbMap(str(path))
    assert cdb.get("alice", CONTEXT) == UserServerPort(None, "imap.example", None)
    assert cdb.get("alice\0tail", CONTEXT) == UserServerPort(None, "imap.example", None)
    assert cdb.get("bob", CONTEXT) is None
    assert cdb.get("empty", CONTEXT) is None
    assert cdb.get("blank", CONTEXT) is None


def test_domain_delimiter_from_context(tmp_path: Path) -> None:
    cdb = CdbMap(str(cdb_write(tmp_path / "d.cdb", [(b"alice", b"bob%imap.example:143")])))
    found = cdb.get("alice", LookupContext(domain_delimiter="%"))
    assert found == UserServerPort("bob", "imap.example", "143")


def test_default_path_when_option_is_empty() -> None:
    cdb = CdbMap("")
    try:
        assert cdb.path == DEFAULT_PATH == "/etc/perdition/popmap.cdb"
    finally:
        cdb.close()


@pytest.mark.parametrize(
    "library",
    ["cdb", "libperditiondb_cdb.so.0", "/usr/lib/x86_64-linux-gnu/libperditiondb_cdb.so.0"],
)
def test_registry_opens_the_cdb_map(tmp_path: Path, library: str) -> None:
    path = str(cdb_write(tmp_path / "r.cdb", [(b"alice", b"h")]))
    opened = open_map(library, path)
    try:
        assert isinstance(opened, CdbMap)
        assert opened.path == path
    finally:
        assert opened is not None
        opened.close()


def test_missing_file_is_not_fatal_and_is_used_once_it_appears(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "later.cdb"
    cdb = CdbMap(str(path))
    assert "later.cdb" in caplog.text and "falling back" in caplog.text
    with pytest.raises(MapError, match=r"^cdb: cannot read .*later\.cdb: No such file"):
        cdb.get("alice", CONTEXT)
    cdb_write(path, [(b"alice", b"imap.example")])
    assert cdb.get("alice", CONTEXT) == UserServerPort(None, "imap.example", None)


def test_corrupt_file_is_a_map_error(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.cdb"
    path.write_bytes(b"not a database")
    cdb = CdbMap(str(path))
    with pytest.raises(MapError, match="not a cdb file"):
        cdb.get("alice", CONTEXT)


def test_opened_once_and_reused(tmp_path: Path) -> None:
    path = cdb_write(tmp_path / "once.cdb", [(b"alice", b"h")])
    age(path)
    cdb = CdbMap(str(path))
    for _ in range(50):
        assert cdb.get("alice", CONTEXT) is not None
    assert len(fds_open_on(path)) == 1
    cdb.close()
    assert fds_open_on(path) == []
    with pytest.raises(MapError, match="closed"):
        cdb.get("alice", CONTEXT)


@needs_cdb_tool
def test_file_replaced_by_cdb_tool_is_reopened(tmp_path: Path) -> None:
    path = cdb_make(tmp_path / "popmap.cdb", "alice old.example\n")
    age(path)
    cdb = CdbMap(str(path))
    assert cdb.get("alice", CONTEXT) == UserServerPort(None, "old.example", None)
    cdb_make(path, "alice new.example\nbob b.example\n")  # writes popmap.cdb.tmp, renames
    age(path)
    assert cdb.get("alice", CONTEXT) == UserServerPort(None, "new.example", None)
    assert cdb.get("bob", CONTEXT) == UserServerPort(None, "b.example", None)


def test_rewrite_in_place_within_one_timestamp_tick_is_seen(tmp_path: Path) -> None:
    """A same-size in-place rewrite with the mtime put back is still picked up
    while the file is younger than the settle time."""
    path = cdb_write(tmp_path / "inplace.cdb", [(b"alice", b"aaaa.example")])
    cdb = CdbMap(str(path))
    assert cdb.get("alice", CONTEXT) == UserServerPort(None, "aaaa.example", None)
    before = os.stat(path)
    cdb_write(path, [(b"alice", b"bbbb.example")])
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert cdb.get("alice", CONTEXT) == UserServerPort(None, "bbbb.example", None)


def test_concurrent_lookups_while_the_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "busy.cdb"
    records = [(b"u%d" % i, b"h%d.example" % i) for i in range(200)]
    cdb_write(path, records)
    cdb = CdbMap(str(path))
    errors: list[BaseException] = []

    def lookups() -> None:
        try:
            for i in range(400):
                found = cdb.get(f"u{i % 200}", CONTEXT)
                assert found == UserServerPort(None, f"h{i % 200}.example", None)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=lookups) for _ in range(6)]
    for thread in threads:
        thread.start()
    for n in range(20):
        cdb_write(tmp_path / "next.cdb", records)
        os.replace(tmp_path / "next.cdb", path)
        assert n >= 0
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    cdb.close()
