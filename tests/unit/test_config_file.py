"""The config-file reader: syntax as perdition 2.2 (libvanessa_adt) reads it, and the search.

The expected entries of the syntax table were checked against libvanessa_adt's
own reader (``vanessa_config_file_read``) on the same text.
"""

from __future__ import annotations

import ctypes
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perditionpy.config_file import (
    ConfigEntry,
    ConfigFileError,
    config_file_candidates,
    find_config_file,
    parse_config_text,
    read_config_file,
)
from perditionpy.errors import OptionError

# (text, [(key, value), ...]) -- value None: a key alone (a flag).
SYNTAX = [
    ("debug\n", [("debug", None)]),
    ("timeout 60\n", [("timeout", "60")]),
    ("timeout\t60\n", [("timeout", "60")]),
    ("ok_line You are   in  \n", [("ok_line", "You are   in")]),
    ("ok_line a # comment\n", [("ok_line", "a")]),
    ("ok_line a#b\n", [("ok_line", "a")]),
    ("# only comment\n", []),
    ("\n\n", []),
    ("ok_line 'a # b'\n", [("ok_line", "a # b")]),
    ('ok_line "a \\" b"\n', [("ok_line", 'a " b')]),
    ("ok_line 'a\\b'\n", [("ok_line", "a\\b")]),
    ('ok_line "a\\b"\n', [("ok_line", "ab")]),
    ("ok_line a\\#b\n", [("ok_line", "a#b")]),
    ("ok_line a \\\n  b\n", [("ok_line", "a   b")]),  # continuation keeps the blanks
    ("ok_line a\\\nb\n", [("ok_line", "ab")]),
    ("#c \\\nok_line x\ndebug\n", [("debug", None)]),  # a comment continues too
    ('ok_line ""\n', [("ok_line", "")]),
    ("ok_line ''\n", [("ok_line", "")]),
    ('ok_line "a"b"c"\n', [("ok_line", "abc")]),
    ('ok_line "multi\nline"\n', [("ok_line", "multiline")]),
    ("D @\nd\n", [("D", "@"), ("d", None)]),
    ("ok_line x \\ \n", [("ok_line", "x  ")]),
    ("s a,b\n", [("s", "a,b")]),
    ('ok_line "  x  "\n', [("ok_line", "  x  ")]),
    ("ok_line a\r\n", [("ok_line", "a")]),
    ("a\\ b c\n", [("a b", "c")]),
    # a continued comment after a value still drops the value's trailing blanks
    ("ok_line a b\t# note \\\nstill the note\ndebug\n", [("ok_line", "a b"), ("debug", None)]),
    ("ok_line a\\\t\t# c\n", [("ok_line", "a\t")]),  # an escaped blank is kept
    ('ok_line "a" \t""\n', [("ok_line", "a \t")]),  # blanks before a quote are inner
    ('managesieve_capability \\\n"\\"IMPLEMENTATION\\" \\"perdition\\"  "\\\n'
     '"\\"SASL\\" \\"PLAIN\\""\n',
     [("managesieve_capability", '"IMPLEMENTATION" "perdition"  "SASL" "PLAIN"')]),
]

# Debian's /etc/perdition/perdition.conf ships this block commented out: the
# trailing backslashes continue the comment, so it is all one comment.
DEBIAN_BLOCK = (
    "#managesieve_capability \\\n"
    '"\\"IMPLEMENTATION\\" \\"perdition\\"  "\\\n'
    '"\\"SIEVE\\" \\"comparator-i;octet "\\\n'
    '"\\"VERSION\\" \\"1.0\\""\n'
    "\n"
    "#imap_capability IMAP4 IMAP4REV1\n"
)


@pytest.mark.parametrize(("text", "expected"), SYNTAX)
def test_syntax_matches_perdition(text: str, expected: list[tuple[str, str | None]]) -> None:
    entries = parse_config_text(text)
    assert [(e.key, e.value) for e in entries] == expected


def test_line_numbers_point_at_the_key() -> None:
    entries = parse_config_text("# c\n\ndebug\nok_line a \\\n b\ntimeout 5\n")
    assert [(e.key, e.line) for e in entries] == [("debug", 3), ("ok_line", 4), ("timeout", 6)]


def test_indented_line_is_an_ordinary_line() -> None:
    # perdition turns it into a stray argument and exits; we read it.
    assert parse_config_text("  timeout 5\n\tdebug\n") == [
        ConfigEntry("timeout", "5", 1), ConfigEntry("debug", None, 2)]


def test_last_line_without_newline_counts() -> None:
    assert parse_config_text("debug\ntimeout 9") == [
        ConfigEntry("debug", None, 1), ConfigEntry("timeout", "9", 2)]


def test_unterminated_quote_names_file_and_line() -> None:
    with pytest.raises(ConfigFileError) as info:
        parse_config_text("debug\nok_line 'oops\n", "/x/p.conf")
    assert "/x/p.conf:2" in str(info.value)
    assert info.value.line == 2


def test_debian_commented_capability_block_is_one_comment() -> None:
    assert parse_config_text(DEBIAN_BLOCK) == []


def test_debian_default_file_reads_cleanly() -> None:
    path = Path("/etc/perdition/perdition.conf")
    if not path.exists():
        pytest.skip("perdition's Debian config is not installed")
    assert read_config_file(str(path)) == []


def test_unreadable_file_is_an_option_error(tmp_path: Path) -> None:
    with pytest.raises(OptionError) as info:
        read_config_file(str(tmp_path / "missing.conf"))
    assert "missing.conf" in str(info.value)


def test_non_utf8_bytes_survive(tmp_path: Path) -> None:
    path = tmp_path / "p.conf"
    path.write_bytes(b"ok_line caf\xe9\n")
    [entry] = read_config_file(str(path))
    assert entry.value is not None
    assert entry.value.encode("utf-8", "surrogateescape") == b"caf\xe9"


def test_candidates_in_perdition_order() -> None:
    assert config_file_candidates("perdition.imaps", "IMAP4S", "/etc/p") == [
        "/etc/p/perdition.imaps.conf", "/etc/p/perdition.imap4s.conf", "/etc/p/perdition.conf"]
    # plain "perdition" skips the program-name file (it would be perdition.conf twice)
    assert config_file_candidates("perdition", "POP3", "/etc/p") == [
        "/etc/p/perdition.pop3.conf", "/etc/p/perdition.conf"]


def test_first_existing_candidate_wins(tmp_path: Path) -> None:
    assert find_config_file("perdition.imap4", "IMAP4", str(tmp_path)) is None
    (tmp_path / "perdition.conf").write_text("")
    assert find_config_file("perdition.imap4", "IMAP4", str(tmp_path)) == str(
        tmp_path / "perdition.conf")
    (tmp_path / "perdition.imap4.conf").write_text("")
    assert find_config_file("perdition.imap4", "IMAP4", str(tmp_path)) == str(
        tmp_path / "perdition.imap4.conf")


# ---------------------------------------------------------------- against libvanessa_adt

_VANESSA = "/lib/libvanessa_adt.so.1"


def _vanessa_argv(text: str) -> list[str]:
    """The argv perdition builds from ``text``: libvanessa_adt's reader, called directly."""
    lib = ctypes.CDLL(_VANESSA)
    lib.vanessa_config_file_read.restype = ctypes.c_void_p
    lib.vanessa_config_file_read.argtypes = [ctypes.c_char_p, ctypes.c_uint32]
    lib.vanessa_dynamic_array_get_count.restype = ctypes.c_ssize_t
    lib.vanessa_dynamic_array_get_count.argtypes = [ctypes.c_void_p]
    lib.vanessa_dynamic_array_get_vector.restype = ctypes.POINTER(ctypes.c_char_p)
    lib.vanessa_dynamic_array_get_vector.argtypes = [ctypes.c_void_p]
    lib.vanessa_dynamic_array_destroy.argtypes = [ctypes.c_void_p]
    with tempfile.NamedTemporaryFile(suffix=".conf", delete=False) as handle:
        handle.write(text.encode())
    try:
        array = lib.vanessa_config_file_read(handle.name.encode(), 0)
        assert array, "libvanessa_adt could not read its input"
        vector = lib.vanessa_dynamic_array_get_vector(array)
        words = [vector[i].decode() for i in range(lib.vanessa_dynamic_array_get_count(array))]
        lib.vanessa_dynamic_array_destroy(array)
        return words
    finally:
        os.unlink(handle.name)


def _our_argv(text: str) -> list[str]:
    words = [""]  # libvanessa_adt puts a dummy argv[0] first
    for entry in parse_config_text(text):
        words.append(("-" if len(entry.key) == 1 else "--") + entry.key)
        words += [] if entry.value is None else [entry.value]
    return words


# Logical lines that start with a key and end in an unescaped newline: the text
# on which perditionpy promises to read exactly what perdition reads.
_CHARS = st.sampled_from(["a", "k", " ", "\t", "\\", "#", '"', "'", "x y", "\n"])
_LINE = st.builds(lambda key, rest: key + "".join(rest) + "\n",
                  st.sampled_from(["a", "k", "debug", "ok_line"]), st.lists(_CHARS, max_size=12))


@pytest.mark.skipif(not os.path.exists(_VANESSA), reason="perdition's libvanessa_adt is absent")
@settings(max_examples=300, deadline=None)
@given(st.lists(_LINE, min_size=1, max_size=4).map("".join))
def test_reader_agrees_with_libvanessa_adt(text: str) -> None:
    try:
        ours = _our_argv(text)
    except ConfigFileError:
        return  # unterminated quote or empty key: we refuse what perdition drops
    ends_continued = text.endswith("\\\n")  # the last line then has no end: perdition drops it
    starts_blank = any(line[:1] in (" ", "\t") for line in text.split("\n"))
    if ends_continued or starts_blank:
        return
    # perdition trims a key's trailing blanks after choosing "-" or "--" by its length.
    theirs = [w.rstrip(" \t") if w.startswith("-") else w for w in _vanessa_argv(text)]
    assert [w.lstrip("-") for w in ours] == [w.lstrip("-") for w in theirs]


@pytest.mark.skipif(not os.path.exists(_VANESSA), reason="perdition's libvanessa_adt is absent")
@pytest.mark.parametrize(("text", "expected"), SYNTAX)
def test_syntax_table_is_what_libvanessa_adt_reads(text: str,
                                                   expected: list[tuple[str, str | None]]) -> None:
    assert _our_argv(text) == _vanessa_argv(text)
