"""The POSIX regex map: perdition's popmap.re syntax, regcomp/regexec through cffi,
perdition's result construction, hostile keys, errors and threads.

Differential tests against perdition's own library and libvanessa_adt's reader live
in tests/compat/test_regex_bdb_compat.py.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from perditionpy.endpoints import UserServerPort
from perditionpy.errors import MapError
from perditionpy.maps import open_map
from perditionpy.maps import posix_regex as posix_regex_module
from perditionpy.maps._regex_ffi import REGEX_T_BYTES
from perditionpy.maps._regex_ffi import load as load_regex
from perditionpy.maps.base import LookupContext
from perditionpy.maps.posix_regex import (
    PosixRegexMap,
    Regex,
    RuleText,
    Token,
    expand,
    parse_rules,
    tokenize,
)

CONTEXT = LookupContext()

# The example rules of perdition's shipped popmap.re, uncommented.
EXAMPLE = (
    b"# Example popmap.re\n"
    b"^[a-k]: localhost\n"
    b"^[^a-k]: localhost:110\n"
    b"^user: user2@localhost\n"
    b"(.*)@(.*): $1_$2@localhost\n"
)


def rules(text: bytes) -> list[tuple[bytes, bytes]]:
    return [(rule.pattern, rule.substitution) for rule in parse_rules(text)]


def write_map(tmp_path: Path, text: bytes) -> PosixRegexMap:
    path = tmp_path / "popmap.re"
    path.write_bytes(text)
    return PosixRegexMap(str(path))


def lookup(text: bytes, key: str, tmp_path: Path) -> str | None:
    """The raw destination text for ``key`` (server[:port], user@ kept)."""
    regex_map = write_map(tmp_path, text)
    try:
        found = regex_map.get(key, LookupContext(domain_delimiter="\0"))
    finally:
        regex_map.close()
    if found is None:
        return None
    assert found.user is None and found.server is not None
    return found.server + (f":{found.port}" if found.port else "")


# ----------------------------------------------------------------- the file syntax


@pytest.mark.parametrize(
    "text, expected",
    [
        (EXAMPLE, [(b"^[a-k]", b"localhost"), (b"^[^a-k]", b"localhost:110"),
                   (b"^user", b"user2@localhost"), (b"(.*)@(.*)", b"$1_$2@localhost")]),
        # The colon is optional, and only one is removed.
        (b"^a localhost\n^b:: x\n", [(b"^a", b"localhost"), (b"^b:", b"x")]),
        # Comments, blank lines, CRLF.
        (b"\n  \t\n# c\n^a: h # trailing\r\n", [(b"^a", b"h")]),
        # Escapes: a blank, a hash, a backslash (a regex's own \ must be doubled).
        (b"a\\ b: h\\#1\nx\\\\.y: z\n", [(b"a b", b"h#1"), (b"x\\.y", b"z")]),
        (b"a\\.b: z\n", [(b"a.b", b"z")]),
        # Quotes: single keep everything, double let \ escape.
        (b"'a\\.b c': \"x\\\"y\"\n", [(b"a\\.b c", b'x"y')]),
        (b"\"a#b\": 'c#d'\n", [(b"a#b", b"c#d")]),
        # A backslash before a newline joins the lines.
        (b"^ab\\\ncd: host\\\nname\n", [(b"^abcd", b"hostname")]),
        # Words pair up: blanks end a substitution too (despite popmap.re's comment).
        (b"re: a b c\n", [(b"re", b"a"), (b"b", b"c")]),
        (b"re: a b\nx: y\n", [(b"re", b"a"), (b"x", b"y")]),
        # A pattern alone, an empty substitution or an empty pattern: dropped.
        (b"lonely:\nempty: ''\n: x\n'': y\n", []),
        # A NUL ends a word (C strings).
        (b"a\0b: c\0d\n", [(b"a", b"c")]),
        # Deliberate differences: an indented line is an ordinary line, and a last
        # line without a newline counts.
        (b"  ^a: one\n^b: two", [(b"^a", b"one"), (b"^b", b"two")]),
        # An unterminated quote loses the rest, as perdition does.
        (b"^a: one\n^b: 'two\n", [(b"^a", b"one")]),
    ],
)
def test_syntax(text: bytes, expected: list[tuple[bytes, bytes]]) -> None:
    assert rules(text) == expected


def test_tokens_mark_line_ends_and_lines() -> None:
    assert tokenize(b"a: b\n\n# c\nd: e\n") == [
        Token(b"a:", 1), Token(b"b", 1), Token(None, 1), Token(b"d:", 4), Token(b"e", 4),
        Token(None, 4),
    ]
    assert parse_rules(b"\n\nx: y\n") == [RuleText(b"x", b"y", 3)]


def test_shipped_popmap_re_has_no_active_rule() -> None:
    shipped = b"".join(b"#" + line + b"\n" for line in EXAMPLE.splitlines())
    assert rules(shipped) == []


# ----------------------------------------------------------------- the result


def spans(*pairs: tuple[int, int]) -> list[tuple[int, int]]:
    return list(pairs) + [(-1, -1)] * (10 - len(pairs))


@pytest.mark.parametrize(
    "subject, match, substitution, expected",
    [
        (b"me@x", spans((0, 4), (0, 2), (3, 4)), b"$1_$2@h", b"me_x@h"),
        # The key before the match is kept, the key after it is dropped.
        (b"abcde", spans((2, 3)), b"X", b"abX"),
        # $0 is the whole match; a group that did not take part stays "$n".
        (b"mx", spans((0, 2), (1, 2)), b"$0-$1-$2-$", b"mx-x-$2-$"),
        # An empty match takes one more byte of the key; at the end: not found.
        (b"abc", spans((0, 0)), b"E", b"Ea"),
        (b"abc", spans((3, 3)), b"E", None),
        (b"", spans((0, 0)), b"E", None),
    ],
)
def test_expand(subject: bytes, match: list[tuple[int, int]], substitution: bytes,
                expected: bytes | None) -> None:
    assert expand(subject, match, substitution) == expected


@pytest.mark.parametrize(
    "key, expected",
    [
        ("abc", "localhost"),
        ("zed", "localhost:110"),
        ("user9", "localhost:110"),  # ^[^a-k] comes first: first match wins
        ("Abc", "localhost:110"),  # case-sensitive, as perdition compiles
        ("", None),
    ],
)
def test_example_rules(tmp_path: Path, key: str, expected: str | None) -> None:
    assert lookup(EXAMPLE, key, tmp_path) == expected


def test_back_references_and_user_result(tmp_path: Path) -> None:
    regex_map = write_map(tmp_path, b"^([^@]+)@([a-z]+)\\\\.example$: $1_$2@imap-$2:143\n")
    try:
        assert regex_map.get("jo@sales.example", CONTEXT) == UserServerPort(
            "jo_sales", "imap-sales", "143")
        assert regex_map.get("jo@sales.example.org", CONTEXT) is None
        assert regex_map.get("jo@salesXexample", CONTEXT) is None
    finally:
        regex_map.close()


def test_first_match_wins(tmp_path: Path) -> None:
    text = b"^a: first\n^ab: second\n.: third\n"
    assert lookup(text, "abc", tmp_path) == "first"
    assert lookup(text, "b", tmp_path) == "third"


def test_domain_delimiter_from_context(tmp_path: Path) -> None:
    regex_map = write_map(tmp_path, b"^(.*)$: $1%host:110\n")
    try:
        found = regex_map.get("bob", LookupContext(domain_delimiter="%"))
        assert found == UserServerPort("bob", "host", "110")
    finally:
        regex_map.close()


def test_bytes_not_characters(tmp_path: Path) -> None:
    """perdition runs in the "C" locale: "." is one byte, whatever Python's locale."""
    text = b"^.$: one\n^..$: two\n"
    assert lookup(text, "\u00e9", tmp_path) == "two"
    assert lookup(text, "\udce9", tmp_path) == "one"  # a lone non-UTF-8 byte


# ----------------------------------------------------------------- hostile keys


@pytest.mark.parametrize(
    "key",
    ["*)(uid=*", "' OR '1'='1", ".*", "(a|b)+", "^alice$", "alice|x", "[", "\\", "$1"],
)
def test_metacharacters_in_keys_are_data(tmp_path: Path, key: str) -> None:
    text = b"^alice$: alice-host\n^(.*)$: <$1>\n"
    regex_map = write_map(tmp_path, text)
    try:
        found = regex_map.get(key, LookupContext(domain_delimiter="\0"))
        assert found is not None
        assert found.server == f"<{key}>"  # the key came back as data, not "alice-host"
    finally:
        regex_map.close()


def test_huge_key(tmp_path: Path) -> None:
    key = "u" * 10240 + "@example.org"
    regex_map = write_map(tmp_path, b"^(.*)@(.*)$: $1@$2\n")
    try:
        found = regex_map.get(key, CONTEXT)
        assert found == UserServerPort("u" * 10240, "example.org", None)
    finally:
        regex_map.close()


def test_nul_ends_the_key(tmp_path: Path) -> None:
    regex_map = write_map(tmp_path, b"^alice$: host\n")
    try:
        assert regex_map.get("alice\0bob", CONTEXT) == UserServerPort(None, "host", None)
    finally:
        regex_map.close()


# ----------------------------------------------------------------- opening, errors


def test_registry_names(tmp_path: Path) -> None:
    path = tmp_path / "popmap.re"
    path.write_bytes(EXAMPLE)
    for library in ("posix_regex", "libperditiondb_posix_regex.so.0",
                    "/usr/lib/x86_64-linux-gnu/libperditiondb_posix_regex.so.0"):
        opened = open_map(library, str(path))
        assert isinstance(opened, PosixRegexMap)
        assert opened.get("abc", CONTEXT) == UserServerPort(None, "localhost", None)
        opened.close()


def test_default_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "default.re"
    path.write_bytes(b"x: y\n")
    monkeypatch.setattr(posix_regex_module, "DEFAULT_PATH", str(path))
    regex_map = PosixRegexMap("")
    assert regex_map.path == str(path)
    assert regex_map.rules == [(b"x", b"y")]
    regex_map.close()


def test_missing_file_is_fatal_and_named(tmp_path: Path) -> None:
    missing = tmp_path / "absent.re"
    with pytest.raises(MapError) as caught:
        open_map("posix_regex", str(missing))
    assert str(missing) in str(caught.value)
    assert "No such file" in str(caught.value)


def test_directory_is_fatal(tmp_path: Path) -> None:
    with pytest.raises(MapError, match="cannot read"):
        PosixRegexMap(str(tmp_path))


def test_bad_regex_is_fatal_and_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "popmap.re"
    path.write_bytes(b"^ok: h\n\n^bad(: h\n")
    with pytest.raises(MapError) as caught:
        PosixRegexMap(str(path))
    message = str(caught.value)
    assert f"{path}:3" in message and "'^bad('" in message


def test_empty_file_matches_nothing(tmp_path: Path) -> None:
    assert lookup(b"", "alice", tmp_path) is None


def test_close_is_idempotent_and_final(tmp_path: Path) -> None:
    regex_map = write_map(tmp_path, EXAMPLE)
    regex_map.close()
    regex_map.close()
    with pytest.raises(MapError, match="closed"):
        regex_map.get("abc", CONTEXT)


def test_regex_free_is_idempotent_and_final() -> None:
    binding = load_regex()
    locale = binding.libc.newlocale(0x1FBF, b"C", binding.ffi.NULL)
    try:
        regex = Regex(binding, locale, b"a(b)")
        assert regex.search(b"xab") is not None
        regex.free()
        regex.free()
        with pytest.raises(MapError):
            regex.search(b"ab")
    finally:
        binding.libc.freelocale(locale)


def test_regex_t_fits_in_our_buffer() -> None:
    """glibc writes only the start of what we allocate for a regex_t (64 bytes on LP64)."""
    binding = load_regex()
    compiled = binding.ffi.new("regex_t *")
    assert binding.libc.regcomp(compiled, b"(a|b)*c[[:alpha:]]", 1) == 0
    try:
        written = bytes(binding.ffi.buffer(compiled))
        assert written[:64] != bytes(64)
        assert written[128:] == bytes(REGEX_T_BYTES - 128)
    finally:
        binding.libc.regfree(compiled)


def test_reload_reads_the_file_again(tmp_path: Path) -> None:
    path = tmp_path / "popmap.re"
    path.write_bytes(b"^a: first\n")
    old = open_map("posix_regex", str(path))
    path.write_bytes(b"^a: second\n")
    new = open_map("posix_regex", str(path))
    assert old is not None and new is not None
    assert old.get("a", CONTEXT) == UserServerPort(None, "first", None)
    assert new.get("a", CONTEXT) == UserServerPort(None, "second", None)
    old.close()
    new.close()


def test_dropped_pattern_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="perditionpy.maps.posix_regex"):
        assert rules(b"lonely:\n") == []
    assert "has no substitution" in caplog.text


# ----------------------------------------------------------------- threads


def test_concurrent_lookups_and_close(tmp_path: Path) -> None:
    text = b"".join(b"^user%d$: host%d\n" % (n, n) for n in range(50)) + b"(.*): other\n"
    regex_map = write_map(tmp_path, text)
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def worker(offset: int) -> None:
        start.wait()
        try:
            for n in range(200):
                number = (n + offset) % 60
                found = regex_map.get(f"user{number}", CONTEXT)
                expected = f"host{number}" if number < 50 else "other"
                assert found == UserServerPort(None, expected, None)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    regex_map.close()
    with pytest.raises(MapError):
        regex_map.get("user1", CONTEXT)
