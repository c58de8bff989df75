"""Differential tests against perdition 2.2's own GDBM pieces.

* perdition's ``/usr/bin/makegdbm`` and ours turn the same popmap into the same
  database, rejecting the same lines;
* our map reads what perdition's makegdbm writes, and follows its in-place
  rebuilds;
* perdition's ``libperditiondb_gdbm.so.0`` (loaded with cffi, its
  ``dbserver_get`` called directly) and perdition's ``makegdbm -u`` read what
  ours writes;
* the real ``/usr/sbin/perdition`` (inetd mode, on a loopback TCP socket),
  given our file, routes logins to the server our file names.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from perditionpy.endpoints import UserServerPort
from perditionpy.errors import MapError
from perditionpy.maps import open_map
from perditionpy.maps._gdbm_ffi import GDBM_READER
from perditionpy.maps.base import LookupContext
from perditionpy.maps.gdbm import GdbmFile, GdbmMap
from perditionpy.tools.makegdbm import build

PERDITION = "/usr/sbin/perdition"
PERDITION_MAKEGDBM = "/usr/bin/makegdbm"
PERDITION_GDBM_LIBRARY = "/usr/lib/x86_64-linux-gnu/libperditiondb_gdbm.so.0"

needs_makegdbm = pytest.mark.skipif(
    not os.access(PERDITION_MAKEGDBM, os.X_OK),
    reason=f"perdition's makegdbm ({PERDITION_MAKEGDBM}) is not installed",
)
needs_library = pytest.mark.skipif(
    not os.path.exists(PERDITION_GDBM_LIBRARY),
    reason=f"perdition's GDBM map library ({PERDITION_GDBM_LIBRARY}) is not installed",
)
needs_perdition = pytest.mark.skipif(
    not os.access(PERDITION, os.X_OK) or not os.path.exists(PERDITION_GDBM_LIBRARY),
    reason=f"perdition ({PERDITION}) and its GDBM map library are not installed",
)

# Every line ends in a newline: perdition's makegdbm stores stack garbage after
# the value of a last line without one (a defect we do not reproduce).
POPMAP = b"".join(
    [
        b"horms:localhost\n",
        b"tymm:mail.example:143\n",
        b"rewrite:other@imap.example:993\n",
        b"v6:[2001:db8::1]:110\n",
        b"\xc3\xa9l\xc3\xa8ve:pop.example\n",
        b"spaced: host2:143\n",
        b"  sp key :  val  \n",
        b"#c:x\n",
        b"crlf:host\r\n",
        b"# a comment\n",
        b"\n",
        b" \t \n",
        b"nocolon\n",
        b":emptykey\n",
        b"emptyval:\n",
        b"dup:first\n",
        b"dup:second\n",
        b"long:" + b"x" * 5000 + b"\n",
        b"fits:" + b"v" * 4089 + b"\n",
        b"toolong:" + b"v" * 4087 + b"\n",
        b"after:long.example\n",
    ]
)

EXPECTED = {
    b"horms": b"localhost",
    b"tymm": b"mail.example:143",
    b"rewrite": b"other@imap.example:993",
    b"v6": b"[2001:db8::1]:110",
    b"\xc3\xa9l\xc3\xa8ve": b"pop.example",
    b"spaced": b" host2:143",
    b"  sp key ": b"  val  ",
    b"#c": b"x",
    b"crlf": b"host\r",
    b"dup": b"first",
    b"fits": b"v" * 4089,
    b"after": b"long.example",
}


def perdition_makegdbm(path: Path, popmap: bytes) -> bytes:
    """Build ``path`` with perdition's makegdbm; its stderr."""
    result = subprocess.run(
        [PERDITION_MAKEGDBM, str(path)], input=popmap, capture_output=True, timeout=60, check=True
    )
    return result.stderr


def our_makegdbm(path: Path, popmap: bytes) -> bytes:
    import io

    err = io.BytesIO()
    assert build(str(path), io.BytesIO(popmap), err) == 0
    return err.getvalue()


def contents(path: Path) -> dict[bytes, bytes | None]:
    with GdbmFile.open(str(path), GDBM_READER) as db:
        return {key: db.fetch(key) for key in db.keys()}


def complaints(stderr: bytes) -> tuple[list[int], list[bytes]]:
    """(invalid line numbers, duplicate keys) from either tool's stderr."""
    lines = [int(n) for n in re.findall(rb"invalid input on line: (\d+)", stderr)]
    duplicates = re.findall(rb"(?:dupicate|duplicate) key: (.*)", stderr)
    return lines, duplicates


# ------------------------------------------------------------------ the two makegdbms


@needs_makegdbm
def test_same_database_from_the_same_popmap(tmp_path: Path) -> None:
    theirs, ours = tmp_path / "theirs.db", tmp_path / "ours.db"
    their_err = perdition_makegdbm(theirs, POPMAP)
    our_err = our_makegdbm(ours, POPMAP)
    assert contents(theirs) == EXPECTED
    assert contents(ours) == EXPECTED
    assert complaints(our_err) == complaints(their_err) == ([10, 13, 14, 15, 18, 20], [b"dup"])


@needs_makegdbm
def test_our_map_reads_perditions_file(tmp_path: Path) -> None:
    path = tmp_path / "popmap.gdbm.db"
    perdition_makegdbm(path, POPMAP)
    gdbm = open_map(PERDITION_GDBM_LIBRARY, str(path))
    assert gdbm is not None
    context = LookupContext()
    assert gdbm.get("rewrite", context) == UserServerPort("other", "imap.example", "993")
    assert gdbm.get("v6", context) == UserServerPort(None, "2001:db8::1", "110")
    assert gdbm.get("élève", context) == UserServerPort(None, "pop.example", None)
    assert gdbm.get("dup", context) == UserServerPort(None, "first", None)
    assert gdbm.get("nocolon", context) is None
    gdbm.close()


@needs_makegdbm
def test_our_map_follows_perditions_in_place_rebuild(tmp_path: Path) -> None:
    path = tmp_path / "popmap.gdbm.db"
    perdition_makegdbm(path, b"horms:first.example\n")
    gdbm = GdbmMap(str(path))
    assert gdbm.get("horms", LookupContext()) == UserServerPort(None, "first.example", None)
    inode = path.stat().st_ino
    perdition_makegdbm(path, b"horms:second.example:110\n")
    assert path.stat().st_ino == inode
    assert gdbm.get("horms", LookupContext()) == UserServerPort(None, "second.example", "110")
    gdbm.close()


@needs_makegdbm
def test_our_map_under_load_while_perdition_rebuilds(tmp_path: Path) -> None:
    """perdition's makegdbm truncates and rewrites in place: lookups meanwhile may
    miss or fail, but never return garbage, and the map ends on the final file."""
    path = tmp_path / "popmap.gdbm.db"
    filler = b"".join(b"user%d:host%d.example\n" % (n, n) for n in range(2000))
    perdition_makegdbm(path, filler + b"horms:gen0.example\n")
    gdbm = GdbmMap(str(path))
    seen: set[str | None] = set()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                found = gdbm.get("horms", LookupContext())
            except MapError:
                continue
            seen.add(found.server if found else None)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for generation in range(1, 40):
            perdition_makegdbm(path, filler + b"horms:gen%d.example\n" % generation)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert gdbm.get("horms", LookupContext()) == UserServerPort(None, "gen39.example", None)
    assert seen <= {None} | {f"gen{n}.example" for n in range(40)}
    gdbm.close()


@needs_makegdbm
def test_perditions_undo_reads_our_file(tmp_path: Path) -> None:
    path = tmp_path / "ours.db"
    our_makegdbm(path, POPMAP)
    result = subprocess.run(
        [PERDITION_MAKEGDBM, "-u", str(path)], capture_output=True, timeout=60, check=True
    )
    # perdition's -u writes a NUL after each ':' and each newline (its defect).
    listed = result.stdout.replace(b"\0", b"").split(b"\n")
    assert sorted(line for line in listed if line) == sorted(
        key + b":" + value for key, value in EXPECTED.items()
    )


# ------------------------------------------------------------------ perdition's library


@pytest.fixture
def perdition_library() -> Iterator[Any]:
    """perdition's libperditiondb_gdbm, with the prototype its 2.2 source declares."""
    import cffi  # type: ignore[import-untyped]

    ffi = cffi.FFI()
    ffi.cdef(
        "int dbserver_get(const char *key_str, const char *options_str, "
        "char **str_return, int *len_return); void free(void *);"
    )
    library, libc = ffi.dlopen(PERDITION_GDBM_LIBRARY), ffi.dlopen(None)

    def lookup(key: bytes, path: bytes) -> tuple[int, bytes | None]:
        result, length = ffi.new("char **"), ffi.new("int *")
        status = library.dbserver_get(key, path, result, length)
        if status != 0:
            return status, None
        try:
            return status, bytes(ffi.buffer(result[0], length[0]))
        finally:
            libc.free(result[0])

    yield lookup


@needs_library
def test_perditions_library_reads_our_file(tmp_path: Path, perdition_library: Any) -> None:
    path = tmp_path / "ours.db"
    our_makegdbm(path, POPMAP)
    encoded = os.fsencode(path)
    for key, value in EXPECTED.items():
        assert perdition_library(key, encoded) == (0, value)
    assert perdition_library(b"nobody", encoded) == (-2, None)
    assert perdition_library(b"nocolon", encoded) == (-2, None)
    assert perdition_library(b"horms", os.fsencode(tmp_path / "absent.db")) == (-1, None)


# ------------------------------------------------------------------ the real daemon


class Backend:
    """A loopback TCP listener standing in for a POP3 server: it records the USER line."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(30)
        self.port = self.listener.getsockname()[1]

    def user_line(self) -> bytes:
        """Accept one connection, greet, and return the first line sent to us."""
        connection, _ = self.listener.accept()
        with connection:
            connection.settimeout(30)
            connection.sendall(b"+OK backend ready\r\n")
            received = b""
            while not received.endswith(b"\r\n"):
                chunk = connection.recv(1024)
                if not chunk:
                    break
                received += chunk
            return received

    def close(self) -> None:
        self.listener.close()


def run_perdition_inetd(
    map_path: Path, user: bytes, flags: tuple[str, ...]
) -> subprocess.Popen[bytes]:
    """Start perdition -i on one end of a real TCP connection; log in as ``user``."""
    account, group = pwd.getpwuid(os.geteuid()).pw_name, grp.getgrgid(os.getegid()).gr_name
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=30)
        server_side, _ = listener.accept()
    with server_side:
        process = subprocess.Popen(
            [
                PERDITION,
                "-i",
                "-P",
                "POP3",
                "-f",
                "",
                "--no_lookup",
                "-u",
                account,
                "-g",
                group,
                "-M",
                PERDITION_GDBM_LIBRARY,
                "-m",
                str(map_path),
                *flags,
            ],
            stdin=server_side.fileno(),
            stdout=server_side.fileno(),
            stderr=subprocess.DEVNULL,
        )
    with client:
        greeting = client.recv(1024)
        assert greeting.startswith(b"+OK"), greeting
        client.sendall(b"USER " + user + b"\r\nPASS secret\r\n")
        client.shutdown(socket.SHUT_WR)
    return process


@needs_perdition
@pytest.mark.parametrize(
    "popmap_value, flags, expected_user",
    [
        (b"127.0.0.1:%d", (), b"alice"),
        (b"carol@127.0.0.1:%d", (), b"alice"),
        # --username_from_database: the user part of our value reaches the back-end.
        (b"carol@127.0.0.1:%d", ("-U",), b"carol"),
    ],
)
def test_perdition_routes_by_our_file(
    tmp_path: Path, popmap_value: bytes, flags: tuple[str, ...], expected_user: bytes
) -> None:
    user = b"alice"
    backend = Backend()
    try:
        path = tmp_path / "popmap.gdbm.db"
        our_makegdbm(path, user + b":" + popmap_value % backend.port + b"\n")
        process = run_perdition_inetd(path, user, flags)
        try:
            assert backend.user_line() == b"USER " + expected_user + b"\r\n"
        finally:
            process.kill()
            process.wait(timeout=30)
    finally:
        backend.close()
