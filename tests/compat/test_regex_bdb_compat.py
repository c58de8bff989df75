"""Differential tests of the POSIX regex and Berkeley DB maps against perdition 2.2.

* libvanessa_adt's reader (what perdition's regex library reads popmap.re with) and
  ours turn the same text into the same rules;
* perdition's ``libperditiondb_posix_regex.so.0`` (loaded with cffi:
  ``dbserver_init`` then ``dbserver_get``) and our map give the same destination;
* perdition's ``/usr/bin/makebdb`` writes files our map and our ``makebdb -u`` read,
  and perdition's ``libperditiondb_bdb.so.0`` and ``makebdb -u`` read ours;
* the real ``/usr/sbin/perdition`` and perditionpy, given the same ``-M``/``-m``,
  route real logins to the private Dovecot, with and without ``-U``.
"""

from __future__ import annotations

import ctypes
import imaplib
import io
import os
import poplib
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perditionpy.endpoints import UserServerPort, parse_user_server_port
from perditionpy.maps import open_map
from perditionpy.maps.base import LookupContext
from perditionpy.maps.bdb import READER_FLAGS, BdbFile, BdbMap
from perditionpy.maps.posix_regex import PosixRegexMap, Token, pair_rules, parse_rules
from perditionpy.protocol.base import decode_name
from perditionpy.tools.makebdb import build
from tests.support.dovecot import Dovecot, Login
from tests.support.ports import LOOPBACK
from tests.support.procs import Proc
from tests.support.scenarios import backend_user, readable_dir
from tests.support.tap import Tap

LIBRARIES = "/usr/lib/x86_64-linux-gnu"
PERDITION_REGEX_LIBRARY = f"{LIBRARIES}/libperditiondb_posix_regex.so.0"
PERDITION_BDB_LIBRARY = f"{LIBRARIES}/libperditiondb_bdb.so.0"
PERDITION_MAKEBDB = "/usr/bin/makebdb"
VANESSA_ADT = "/lib/libvanessa_adt.so.1"
# vanessa_config_file_read flags perdition's regex library passes: MULTI_VALUE|BLANK.
VANESSA_MULTI_VALUE_BLANK = 5

CONTEXT = LookupContext()
RunProxy = Callable[..., Proc]
MakeTap = Callable[[int], Tap]


def needs(path: str, what: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(not os.path.exists(path), reason=f"{what} ({path}) is absent")


needs_regex_library = needs(PERDITION_REGEX_LIBRARY, "perdition's regex map library")
needs_bdb_library = needs(PERDITION_BDB_LIBRARY, "perdition's bdb map library")
needs_makebdb = needs(PERDITION_MAKEBDB, "perdition's makebdb")
needs_vanessa = needs(VANESSA_ADT, "libvanessa_adt")


# ------------------------------------------------------------------ the file reader


def vanessa_tokens(data: bytes) -> list[Token]:
    """libvanessa_adt's words for ``data`` (NULL entries as ``Token(None)``)."""
    lib = ctypes.CDLL(VANESSA_ADT)
    lib.vanessa_config_file_read.restype = ctypes.c_void_p
    lib.vanessa_config_file_read.argtypes = [ctypes.c_char_p, ctypes.c_uint32]
    lib.vanessa_dynamic_array_get_count.restype = ctypes.c_ssize_t
    lib.vanessa_dynamic_array_get_count.argtypes = [ctypes.c_void_p]
    lib.vanessa_dynamic_array_get_vector.restype = ctypes.POINTER(ctypes.c_char_p)
    lib.vanessa_dynamic_array_get_vector.argtypes = [ctypes.c_void_p]
    lib.vanessa_dynamic_array_destroy.argtypes = [ctypes.c_void_p]
    with tempfile.NamedTemporaryFile(suffix=".re", delete=False) as handle:
        handle.write(data)
    try:
        array = lib.vanessa_config_file_read(handle.name.encode(), VANESSA_MULTI_VALUE_BLANK)
        assert array, "libvanessa_adt could not read its input"
        vector = lib.vanessa_dynamic_array_get_vector(array)
        count = lib.vanessa_dynamic_array_get_count(array)
        words = [Token(vector[index], 0) for index in range(count)]
        lib.vanessa_dynamic_array_destroy(array)
        return words
    finally:
        os.unlink(handle.name)


def their_rules(data: bytes) -> list[tuple[bytes, bytes]]:
    return [(rule.pattern, rule.substitution) for rule in pair_rules(vanessa_tokens(data))]


def our_rules(data: bytes) -> list[tuple[bytes, bytes]]:
    return [(rule.pattern, rule.substitution) for rule in parse_rules(data)]


# Pieces that keep quotes balanced; a line never starts with a blank (we read an
# indented line as an ordinary one, perdition runs it into the next line).
_PIECES = st.sampled_from([
    "a", "^u", "(.*)", "b:", ":", "$1", " ", "\t", "  ", "\\ ", "\\#", "\\\\", "\\'",
    "#c", "'x y'", "'\\'", '"x y"', '"\\""', "''", "\\\n", "\0",
])
_FIRST = st.sampled_from(["a", "^u", "(.*)@", "k:", "#", "'q'", '"d"', "\\ "])
_LINE = st.builds(lambda first, rest, end: first + "".join(rest) + end,
                  _FIRST, st.lists(_PIECES, max_size=8), st.sampled_from(["\n", "\r\n"]))


@needs_vanessa
@settings(max_examples=400, deadline=None)
@given(st.lists(_LINE, min_size=1, max_size=5).map("".join))
def test_reader_agrees_with_libvanessa_adt(text: str) -> None:
    data = text.encode()
    assert our_rules(data) == their_rules(data)


@needs_vanessa
@pytest.mark.parametrize(
    "data",
    [
        b"^a: localhost\n^b:: x y\n# c\n",
        b"a\\ b: h\\#1\nx\\\\.y: z\n",
        b"'a\\.b c': \"x\\\"y\"\n\"a#b\": 'c#d'\n",
        b"^ab\\\ncd: host\\\nname\n",
        b"re: a b c\nlonely:\nempty: ''\n",
        b"x: 'multi\nline' # after\ny: z\n",
    ],
)
def test_reader_corpus_agrees_with_libvanessa_adt(data: bytes) -> None:
    assert our_rules(data) == their_rules(data)


# ------------------------------------------------------------------ perdition's regex library


@pytest.fixture(scope="module")
def perdition_regex() -> Iterator[Callable[[bytes, bytes], UserServerPort | None]]:
    """perdition's libperditiondb_posix_regex: ``lookup(rules_text, key)``."""
    import cffi

    ffi = cffi.FFI()
    ffi.cdef(
        "int dbserver_init(char *options_str); int dbserver_fini(void);"
        "int dbserver_get(const char *key_str, const char *options_str, "
        "char **str_return, int *len_return); void free(void *);"
        "typedef struct __locale_struct *locale_t;"
        "locale_t newlocale(int, const char *, locale_t); locale_t uselocale(locale_t);"
        "void freelocale(locale_t);"
    )
    library, libc = ffi.dlopen(PERDITION_REGEX_LIBRARY), ffi.dlopen(None)
    directory = Path(tempfile.mkdtemp(prefix="regex-compat-"))
    # perdition never calls setlocale(): its library runs in the "C" locale, while
    # this Python process has LC_CTYPE set (UTF-8).  Give the library its own.
    c_locale = libc.newlocale(0x1FBF, b"C", ffi.NULL)

    def lookup(rules: bytes, key: bytes) -> UserServerPort | None:
        path = directory / "popmap.re"
        path.write_bytes(rules)
        previous = libc.uselocale(c_locale)
        try:
            text = _get(path, key)
        finally:
            libc.uselocale(previous)
        return parse_user_server_port(decode_name(text), "@") if text else None

    def _get(path: Path, key: bytes) -> bytes:
        assert library.dbserver_init(ffi.new("char[]", os.fsencode(path))) == 0
        try:
            result, length = ffi.new("char **"), ffi.new("int *")
            if library.dbserver_get(key, ffi.NULL, result, length) != 0:
                return b""
            try:
                return bytes(ffi.buffer(result[0], length[0]))
            finally:
                libc.free(result[0])
        finally:
            library.dbserver_fini()

    yield lookup
    libc.freelocale(c_locale)
    for leftover in directory.iterdir():
        leftover.unlink()
    directory.rmdir()


def our_regex(tmp_path: Path, rules: bytes, key: bytes) -> UserServerPort | None:
    path = tmp_path / "popmap.re"
    path.write_bytes(rules)
    regex_map = PosixRegexMap(str(path))
    try:
        return regex_map.get(decode_name(key), CONTEXT)
    finally:
        regex_map.close()


RULES = (
    b"# routing\n"
    b"^admin$: admin@mgmt.example:143\n"
    b"^([^@]+)@sales\\\\.example$: $1@imap-sales:993\n"
    b"^([a-k])(.*): $1$2@pool-$1\n"
    b"(.*)@(.*): $1_$2@localhost\n"
    b"b: c\n"
    b"x*: E\n"
)


@needs_regex_library
@pytest.mark.parametrize(
    "key",
    [b"admin", b"Admin", b"jo@sales.example", b"jo@salesXexample", b"bob", b"zed@other.org",
     b"mmb", b"zzz", b"", b"*)(uid=*", b"' OR '1'='1", b"caf\xc3\xa9", b"\xe9t\xe9",
     b"z" * 10240 + b"@big", b"z" * 10240],
)
def test_same_destination_as_perditions_library(
    tmp_path: Path, perdition_regex: Any, key: bytes
) -> None:
    assert our_regex(tmp_path, RULES, key) == perdition_regex(RULES, key)


_KEYS = st.text(alphabet="ab@.xyz(*)$\\é", max_size=12).map(str.encode)
_PATTERNS = st.sampled_from([
    "^a", "a$", "(a)(b)?", "x*", "^$", "(.*)@(.*)", "[ab]+", "z|(y)", "^(.)(.)(.)$", ".",
    "(\\\\.)", "a{2}", "^.$",
])
_SUBSTITUTIONS = st.sampled_from(["h", "$1", "$0-$2", "$9x", "u@$1:143", "$$1", "$"])


@needs_regex_library
@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(_PATTERNS, _SUBSTITUTIONS), min_size=1, max_size=4), _KEYS)
def test_random_rules_and_keys_agree(
    tmp_path: Path, perdition_regex: Any, pairs: list[tuple[str, str]], key: bytes
) -> None:
    rules = "".join(f"{pattern}: {substitution}\n" for pattern, substitution in pairs).encode()
    assert our_regex(tmp_path, rules, key) == perdition_regex(rules, key)


# ------------------------------------------------------------------ Berkeley DB files

BDB_POPMAP = (
    b"horms:localhost\n"
    b"tymm:mail.example:143\n"
    b"rewrite:other@imap.example:993\n"
    b"v6:[2001:db8::1]:110\n"
    b"\xc3\xa9l\xc3\xa8ve:pop.example\n"
    b"spaced: host2:143\n"
    b"#c:x\n"
    b"crlf:host\r\n"
    b"dup:first\n"
    b"dup:second\n"
    b"*)(uid=*:ldapish\n"
    b"nocolon\n"
)

BDB_EXPECTED = {
    b"horms": b"localhost",
    b"tymm": b"mail.example:143",
    b"rewrite": b"other@imap.example:993",
    b"v6": b"[2001:db8::1]:110",
    b"\xc3\xa9l\xc3\xa8ve": b"pop.example",
    b"spaced": b" host2:143",
    b"#c": b"x",
    b"crlf": b"host\r",
    b"dup": b"first",
    b"*)(uid=*": b"ldapish",
}


def perdition_makebdb(path: Path, popmap: bytes) -> bytes:
    result = subprocess.run([PERDITION_MAKEBDB, str(path)], input=popmap, capture_output=True,
                            timeout=60, check=True)
    return result.stderr


def our_makebdb(path: Path, popmap: bytes) -> bytes:
    err = io.BytesIO()
    assert build(str(path), io.BytesIO(popmap), err) == 0
    return err.getvalue()


def bdb_contents(path: Path) -> dict[bytes, bytes]:
    with BdbFile.open(str(path), READER_FLAGS) as db:
        return dict(db.items())


@needs_makebdb
def test_same_database_from_the_same_popmap(tmp_path: Path) -> None:
    theirs, ours = tmp_path / "theirs.db", tmp_path / "ours.db"
    their_err = perdition_makebdb(theirs, BDB_POPMAP)
    our_err = our_makebdb(ours, BDB_POPMAP)
    assert bdb_contents(theirs) == bdb_contents(ours) == BDB_EXPECTED
    assert b"invalid input on line: 12" in their_err and b"line: 12" in our_err
    assert b"(key: dup)" in their_err and b"duplicate key: dup" in our_err


@needs_makebdb
def test_our_map_reads_perditions_file(tmp_path: Path) -> None:
    path = tmp_path / "popmap.bdb.db"
    perdition_makebdb(path, BDB_POPMAP)
    bdb = open_map(PERDITION_BDB_LIBRARY, str(path))
    assert isinstance(bdb, BdbMap)
    assert bdb.get("rewrite", CONTEXT) == UserServerPort("other", "imap.example", "993")
    assert bdb.get("v6", CONTEXT) == UserServerPort(None, "2001:db8::1", "110")
    assert bdb.get("\u00e9l\u00e8ve", CONTEXT) == UserServerPort(None, "pop.example", None)
    assert bdb.get("*)(uid=*", CONTEXT) == UserServerPort(None, "ldapish", None)
    assert bdb.get("nocolon", CONTEXT) is None
    perdition_makebdb(path, b"horms:rebuilt.example\n")  # rewritten in place
    assert bdb.get("horms", CONTEXT) == UserServerPort(None, "rebuilt.example", None)
    bdb.close()


@needs_makebdb
def test_perditions_undo_reads_our_file(tmp_path: Path) -> None:
    path = tmp_path / "ours.db"
    our_makebdb(path, BDB_POPMAP)
    result = subprocess.run([PERDITION_MAKEBDB, "-u", str(path)], capture_output=True,
                            timeout=60, check=True)
    assert sorted(result.stdout.split(b"\n")[:-1]) == sorted(
        key + b":" + value for key, value in BDB_EXPECTED.items())


@pytest.fixture
def perdition_bdb() -> Callable[[bytes, bytes], tuple[int, bytes | None]]:
    import cffi

    ffi = cffi.FFI()
    ffi.cdef("int dbserver_get(const char *key_str, const char *options_str, "
             "char **str_return, int *len_return); void free(void *);")
    library, libc = ffi.dlopen(PERDITION_BDB_LIBRARY), ffi.dlopen(None)

    def lookup(key: bytes, path: bytes) -> tuple[int, bytes | None]:
        result, length = ffi.new("char **"), ffi.new("int *")
        status = library.dbserver_get(key, path, result, length)
        if status != 0:
            return status, None
        try:
            return status, bytes(ffi.buffer(result[0], length[0]))
        finally:
            libc.free(result[0])

    return lookup


@needs_bdb_library
def test_perditions_library_reads_our_file(tmp_path: Path, perdition_bdb: Any) -> None:
    path = tmp_path / "ours.db"
    our_makebdb(path, BDB_POPMAP)
    encoded = os.fsencode(path)
    for key, value in BDB_EXPECTED.items():
        assert perdition_bdb(key, encoded) == (0, value)
    assert perdition_bdb(b"nobody", encoded) == (-2, None)
    assert perdition_bdb(b"horms", os.fsencode(tmp_path / "absent.db")) == (-1, None)


# ------------------------------------------------------------------ real logins


@pytest.fixture
def map_dir() -> Iterator[Path]:
    with readable_dir() as path:
        yield path


def server(tap: Tap) -> str:
    return f"{LOOPBACK}:{tap.port}"


def imap_login(port: int, user: str, password: str) -> None:
    client = imaplib.IMAP4(LOOPBACK, port, timeout=30)
    try:
        assert client.login(user, password)[0] == "OK"
    finally:
        client.logout()


def write_popmap(kind: str, directory: Path, entries: dict[str, str]) -> list[str]:
    """``-M``/``-m`` for a map of ``kind`` holding ``key → destination``."""
    if kind == "posix_regex":
        path = directory / "popmap.re"
        path.write_text("".join(f"^{key}$: {value}\n" for key, value in entries.items()))
        library = PERDITION_REGEX_LIBRARY
    else:
        path = directory / "popmap.bdb.db"
        our_makebdb(path, "".join(f"{k}:{v}\n" for k, v in entries.items()).encode())
        library = PERDITION_BDB_LIBRARY
    path.chmod(0o644)
    return ["-M", library, "-m", str(path)]


PROXIES = ["perdition", "perditionpy"]
KINDS = [pytest.param("posix_regex", marks=needs_regex_library),
         pytest.param("bdb", marks=needs_bdb_library)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("proxy", PROXIES)
def test_imap_login_routed_by_the_map(
    request: pytest.FixtureRequest, dovecot: Dovecot, make_tap: MakeTap, map_dir: Path,
    proxy: str, kind: str,
) -> None:
    run: RunProxy = request.getfixturevalue(f"run_{proxy}")
    tap = make_tap(dovecot.imap_port)
    args = write_popmap(kind, map_dir, {"alice": server(tap), "bob": f"{LOOPBACK}:1"})
    mark = dovecot.log_position()
    running = run(["-P", "IMAP4", *args])
    imap_login(running.port, "alice", "alice-pw")
    tap.wait_for_connections(1)
    assert backend_user(tap.connections[0].wait_closed().to_server) == b"alice"
    assert dovecot.wait_for_login("alice", since=mark) == Login("alice", True)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("proxy", PROXIES)
def test_pop3_login_with_the_user_from_the_map(
    request: pytest.FixtureRequest, dovecot: Dovecot, make_tap: MakeTap, map_dir: Path,
    proxy: str, kind: str,
) -> None:
    run: RunProxy = request.getfixturevalue(f"run_{proxy}")
    tap = make_tap(dovecot.pop3_port)
    args = write_popmap(kind, map_dir, {"mailbox-of-bob": f"bob@{server(tap)}"})
    running = run(["-P", "POP3", *args, "-U"])
    client = poplib.POP3(LOOPBACK, running.port)
    try:
        client.user("mailbox-of-bob")
        assert client.pass_("bob-pw").startswith(b"+OK")
        assert client.stat()[0] >= 1
    finally:
        client.quit()
    tap.wait_for_connections(1)
    assert backend_user(tap.connections[0].wait_closed().to_server) == b"bob"


@needs_regex_library
@pytest.mark.parametrize("proxy", PROXIES)
def test_sighup_rereads_the_regex_file(
    request: pytest.FixtureRequest, dovecot: Dovecot, make_tap: MakeTap, map_dir: Path,
    proxy: str,
) -> None:
    run: RunProxy = request.getfixturevalue(f"run_{proxy}")
    first, second = make_tap(dovecot.imap_port), make_tap(dovecot.imap_port)
    args = write_popmap("posix_regex", map_dir, {"alice": server(first)})
    running = run(["-P", "IMAP4", *args])
    imap_login(running.port, "alice", "alice-pw")
    assert len(first.connections) == 1
    write_popmap("posix_regex", map_dir, {"alice": server(second)})
    os.kill(running.pid, signal.SIGHUP)
    deadline = time.monotonic() + 30
    while not second.connections:  # readiness: the reload is done when a login takes the new route
        assert time.monotonic() < deadline, "the rewritten popmap.re was never used"
        imap_login(running.port, "alice", "alice-pw")
    assert backend_user(second.connections[0].wait_closed().to_server) == b"alice"


@needs_regex_library
def test_sighup_with_a_broken_regex_file_keeps_the_rules(
    run_perditionpy: RunProxy, dovecot: Dovecot, make_tap: MakeTap, map_dir: Path
) -> None:
    tap = make_tap(dovecot.imap_port)
    args = write_popmap("posix_regex", map_dir, {"alice": server(tap)})
    running = run_perditionpy(["-P", "IMAP4", *args])
    (map_dir / "popmap.re").write_text("^alice(: 127.0.0.1:1\n")
    os.kill(running.pid, signal.SIGHUP)
    running.wait_for_log(r"Error reloading map library .*popmap\.re:1: bad regular expression")
    imap_login(running.port, "alice", "alice-pw")
    assert len(tap.connections) == 1
    assert running.running()


def test_perditionpy_refuses_to_start_without_its_regex_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.re"
    result = subprocess.run(
        [sys.executable, "-m", "perditionpy", "--no_daemon", "-f", "", "-P", "IMAP4",
         "-b", LOOPBACK, "-l", "1", "-M", PERDITION_REGEX_LIBRARY, "-m", str(missing)],
        capture_output=True, timeout=60,
    )
    assert result.returncode != 0
    assert str(missing).encode() in result.stderr
