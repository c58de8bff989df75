"""The config-file reader: syntax as perdition 2.2 (libvanessa_adt) reads it, and the search.

The expected entries of the syntax table were checked against libvanessa_adt's
own reader (``vanessa_config_file_read``) on the same text.
"""

from __future__ import annotations

from pathlib import Path

import pytest

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
