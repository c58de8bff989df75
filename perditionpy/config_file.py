"""perdition's config file: where it is looked for, and its syntax.

perdition reads its file with libvanessa_adt's shell-like reader; this module
reproduces that syntax and leaves the meaning of each line to ``options``:

* each line is ``key [value]``; the key is an option's long name, or its short
  letter; everything after the blanks following the key is the value, inner
  blanks included, trailing blanks dropped;
* ``#`` starts a comment (also after a value), ``\\`` makes the next character
  literal, and ``\\`` before a newline joins the lines, keeping the next line's
  leading blanks -- also inside a comment, which then continues;
* ``'...'`` keeps everything literally; ``"..."`` keeps everything but ``\\``
  escapes; quotes may span lines (the newline itself is dropped).

Deliberate differences from perdition (docs/compatibility.md lists them): an
indented line is an ordinary line (perdition turns it into a stray argument and
exits); a last line without a newline counts (perdition loses its value); an
unterminated quote is an error naming the line (perdition drops the rest); no
value is cut at 4093 characters.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from perditionpy.errors import OptionError

__all__ = ["ConfigEntry", "ConfigFileError", "parse_config_text", "read_config_file",
           "config_file_candidates", "find_config_file"]

_BLANKS = " \t"
_NEWLINES = "\n\r"
_QUOTES = "'\""


class ConfigFileError(OptionError):
    """A config-file line perditionpy refuses; names the file, the line and the option."""

    def __init__(self, path: str, line: int, option: str | None, value: object,
                 reason: str) -> None:
        super().__init__(option or "config_file", value, reason)
        self.path = path
        self.line = line
        where = f"{path}:{line}: "
        self.args = (where + (super().__str__() if option else reason),)


@dataclass(frozen=True, slots=True)
class ConfigEntry:
    """One ``key [value]`` line; ``value`` is ``None`` when the line has only a key."""

    key: str
    value: str | None
    line: int


@dataclass(slots=True)
class _Scanner:
    """The state of the character-by-character reader (see the module docstring)."""

    path: str
    line: int = 1
    entries: list[ConfigEntry] = field(default_factory=list)
    key: list[str] = field(default_factory=list)
    key_line: int = 0
    key_done: bool = False
    value: list[str] | None = None
    keep: int = 0  # value characters protected from trailing-blank trimming
    comment: bool = False
    escape: bool = False
    quote: str | None = None
    quote_line: int = 0

    def feed(self, char: str) -> None:
        if self.escape:
            self._escaped(char)
        elif char == "\\" and self.quote != "'":
            self.escape = True
            self._begin_value_here()
        elif char in _NEWLINES:
            self._newline(char)
        elif self.comment:
            return
        elif char in _QUOTES and self.quote in (None, char):
            self._toggle_quote(char)
        elif char in _BLANKS and self.quote is None:
            self._blank(char)
        elif char == "#" and self.quote is None:
            self._end_token()
            self.comment = True
        else:
            self._append(char)

    def finish(self) -> list[ConfigEntry]:
        if self.quote is not None:
            raise ConfigFileError(self.path, self.quote_line, None, None,
                                  f"unterminated {self.quote} quote")
        self.escape = False
        self._end_line()
        return self.entries

    # -- one method per kind of character

    def _escaped(self, char: str) -> None:
        self.escape = False
        if self.comment:
            self._count(char)
        elif char in _NEWLINES:
            self._count(char)
            self.keep = len(self.value) if self.value is not None else 0
        else:
            self._append(char)
            self.keep = len(self.value) if self.value is not None else 0

    def _newline(self, char: str) -> None:
        self._count(char)
        if self.quote is None:
            self._end_line()

    def _toggle_quote(self, char: str) -> None:
        if self.quote is None:
            self.quote, self.quote_line = char, self.line
            self._begin_value_here()
            self._mark_key()
        else:
            self.quote = None
            self.keep = len(self.value) if self.value is not None else 0

    def _blank(self, char: str) -> None:
        if self.value is not None:
            self.value.append(char)
        elif self.key_line and not self.key_done:
            self.key_done = True

    def _append(self, char: str) -> None:
        self._begin_value_here()
        if self.value is not None:
            self.value.append(char)
            self.keep = len(self.value)
        else:
            self._mark_key()
            self.key.append(char)

    # -- tokens and lines

    def _mark_key(self) -> None:
        if not self.key_line:
            self.key_line = self.line

    def _begin_value_here(self) -> None:
        """A character after the key (and its blanks) starts the value."""
        if self.key_done and self.value is None and not self.comment:
            self.value, self.keep = [], 0

    def _end_token(self) -> None:
        if self.key_line:
            self.key_done = True

    def _count(self, char: str) -> None:
        if char == "\n":
            self.line += 1

    def _end_line(self) -> None:
        if self.key_line:
            self.entries.append(self._entry())
        self.key, self.key_line, self.key_done = [], 0, False
        self.value, self.keep, self.comment = None, 0, False

    def _entry(self) -> ConfigEntry:
        key = "".join(self.key).rstrip(_BLANKS)
        if not key:
            raise ConfigFileError(self.path, self.key_line, None, None, "empty option name")
        if self.value is None:
            return ConfigEntry(key, None, self.key_line)
        kept, tail = self.value[:self.keep], "".join(self.value[self.keep:])
        return ConfigEntry(key, "".join(kept) + tail.rstrip(_BLANKS), self.key_line)


def parse_config_text(text: str, path: str = "<config>") -> list[ConfigEntry]:
    """Split config-file text into its ``key [value]`` entries, in order."""
    scanner = _Scanner(path)
    for char in text:
        scanner.feed(char)
    return scanner.finish()


def read_config_file(path: str) -> list[ConfigEntry]:
    """Read and split the file at ``path``; unreadable files are an ``OptionError``."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise OptionError("config_file", path, f"cannot read it ({exc.strerror})") from None
    return parse_config_text(data.decode("utf-8", "surrogateescape"), path)


def config_file_candidates(program: str, protocol: str, sysconfdir: str) -> list[str]:
    """Where perdition looks for its file, in order, for ``program`` (argv[0]'s basename)."""
    names = [] if program == "perdition" else [f"{program}.conf"]
    names += [f"perdition.{protocol.lower()}.conf", "perdition.conf"]
    return [os.path.join(sysconfdir, name) for name in names]


def find_config_file(program: str, protocol: str, sysconfdir: str) -> str | None:
    """The first candidate that exists, or ``None``."""
    for candidate in config_file_candidates(program, protocol, sysconfdir):
        if os.path.isfile(candidate):
            return candidate
    return None

