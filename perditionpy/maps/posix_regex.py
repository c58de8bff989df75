"""The POSIX regex map: perdition's ``libperditiondb_posix_regex`` in Python.

Owns three things:

* the reader for perdition's ``popmap.re`` syntax (:func:`parse_rules`).
  perdition reads the file with libvanessa_adt's shell-like reader in its
  "multi-value, no prefix" mode, then pairs the words it gets:

  - ``#`` starts a comment, ``\\`` makes the next character literal (so a
    regex's own ``\\.`` is written ``\\\\.`` or quoted), ``\\`` before a
    newline joins lines, ``'...'`` keeps everything literally, ``"..."``
    everything but ``\\`` escapes;
  - every unquoted, unescaped blank ends a word, in the substitution too;
  - words pair up within a line: pattern, substitution, pattern,
    substitution…  A pattern loses one trailing ``:``; an odd word at the end
    of a line and an empty word (``''``) are dropped.

* :class:`Regex`, the one owner of a compiled ``regex_t`` (through the raw
  declarations in :mod:`perditionpy.maps._regex_ffi`): ``regcomp`` with
  ``REG_EXTENDED | REG_NEWLINE`` as perdition does (case-sensitive), in the
  "C" locale as perdition runs (bytes, not UTF-8 characters), ``regexec``
  with ten sub-matches, ``regfree`` exactly once.

* :class:`PosixRegexMap`, the ``Map``: the first rule whose regex matches the
  key wins; the result is the part of the key before the match followed by
  the substitution, where ``$0``..``$9`` stand for the sub-matches
  (:func:`expand`, perdition's construction, quirks included).

The file is read once, when the map is opened (and so again on SIGHUP, which
opens the map afresh).  A file that cannot be read or holds a regex that does
not compile stops start-up, as perdition's ``dbserver_init`` does.

Threads: glibc's ``regexec`` may run concurrently on one compiled ``regex_t``
(it locks the pattern's DFA internally), so lookups run in parallel; only
``close()`` waits for the lookups in progress before freeing the patterns.
Each call that compiles or matches switches its own thread to the "C" locale
with ``uselocale`` and back, which touches no other thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from perditionpy.endpoints import UserServerPort, parse_user_server_port
from perditionpy.errors import MapError
from perditionpy.maps import _regex_ffi
from perditionpy.maps._regex_ffi import RegexBinding
from perditionpy.maps.base import LookupContext
from perditionpy.protocol.base import decode_name, encode_name

__all__ = [
    "DEFAULT_PATH", "NSUB", "Token", "RuleText", "Regex", "PosixRegexMap",
    "tokenize", "pair_rules", "parse_rules", "expand", "open_posix_regex_map",
]

logger = logging.getLogger(__name__)

# Debian's perdition 2.2 was built with this path (the library's strings).
DEFAULT_PATH = "/etc/perdition/popmap.re"

# perdition asks regexec for ten sub-matches: $0 (the match) to $9.
NSUB = 10

# The flags perdition compiles every pattern with.
CFLAGS = _regex_ffi.REG_EXTENDED | _regex_ffi.REG_NEWLINE

_BLANKS = frozenset(b" \t")
_NEWLINES = frozenset(b"\n\r")
_QUOTES = frozenset(b"'\"")
_BACKSLASH = ord("\\")
_HASH = ord("#")
_SINGLE_QUOTE = ord("'")
_DOLLAR = ord("$")
_DIGITS = frozenset(b"0123456789")
_NO_SPAN = (-1, -1)

Span = tuple[int, int]


# ----------------------------------------------------------------- the file


@dataclass(frozen=True, slots=True)
class Token:
    """A word of the file, or ``text=None``: the end of a line that had words."""

    text: bytes | None
    line: int


@dataclass(frozen=True, slots=True)
class RuleText:
    """One ``pattern substitution`` pair, before compiling; ``line`` is the pattern's."""

    pattern: bytes
    substitution: bytes
    line: int


@dataclass(slots=True)
class _Reader:
    """libvanessa_adt's multi-value reader as a state machine, one byte at a time.

    ``in_key``: reading a line's first word; ``in_value``: any later word.
    Neither: between words, or in a comment.  ``quote`` is the open quote
    character (0 for none); ``escape``: the previous byte was an active ``\\``.
    ``protected``: trailing blanks of the word before this offset (escaped or
    quoted ones) survive the trimming when the word ends.
    """

    source: str = "popmap.re"
    tokens: list[Token] = field(default_factory=list)
    word: bytearray = field(default_factory=bytearray)
    line: int = 1
    word_line: int = 1
    in_key: bool = True
    in_value: bool = False
    comment: bool = False
    quote: int = 0
    escape: bool = False
    protected: int = 0
    line_has_key: bool = False
    at_line_start: bool = True

    def feed(self, byte: int) -> None:
        if byte in _BLANKS and self.at_line_start:
            # Deliberate difference: perdition makes an indented line's first
            # word a "value" and runs the line into the next one.
            return
        keep = self._dispatch(byte)
        if byte not in _NEWLINES:
            self.at_line_start = False
        if keep and (self.in_key or self.in_value) and not self.escape:
            if not self.word:
                self.word_line = self.line
            self.word.append(byte)
        if byte == ord("\n"):
            self.line += 1

    def _dispatch(self, byte: int) -> bool:
        """Handle ``byte``'s effect on the state; whether it may join the word."""
        if byte in _BLANKS:
            self._blank()
            return True
        if byte in _NEWLINES:
            self._newline()
            return False
        if byte == _BACKSLASH:
            self._backslash()
            return True
        if byte == _HASH:
            self._hash()
            return True
        if byte in _QUOTES:
            return self._quote(byte)
        self._begin_value()
        self._end_escape()
        return True

    # --- the reader's primitive steps

    def _emit(self, text: bytes | None) -> None:
        if text is not None:
            # The reader keeps C strings: a word ends at its first NUL.
            text = text.split(b"\0", 1)[0]
            if self.protected <= len(text):
                kept = text[:self.protected]
                text = kept + text[self.protected:].rstrip(b" \t")
        self.tokens.append(Token(text, self.word_line if text else self.line))

    def _end_escape(self) -> None:
        if self.escape:
            self.escape = False
            self.protected = len(self.word) + 1

    def _end_key(self) -> None:
        if self.escape or not self.in_key or self.quote:
            return
        if self.word:
            self._emit(bytes(self.word))
            self.line_has_key = True
        self.word.clear()
        self.in_key = False

    def _end_value(self) -> None:
        if self.escape or not self.in_value or self.quote:
            return
        self._emit(bytes(self.word))
        self.word.clear()
        self.in_value = False

    def _begin_value(self) -> None:
        self.protected = 0
        if not self.in_key and not self.comment and not self.quote:
            self.in_value = True

    def _begin_line(self) -> None:
        self.protected = 0
        if self.escape or self.comment or self.quote:
            return
        if self.line_has_key:
            self._emit(None)
        self.in_key, self.line_has_key, self.at_line_start = True, False, True

    # --- one method per class of byte

    def _blank(self) -> None:
        self._end_value()
        self._end_key()
        if self.escape:
            self._begin_value()
        self._end_escape()

    def _newline(self) -> None:
        self._end_key()
        if not self.escape:
            self.comment = False
        self._end_value()
        self._begin_line()
        self._end_escape()

    def _backslash(self) -> None:
        if self.escape or self.quote == _SINGLE_QUOTE:
            self._end_escape()
        else:
            self.escape = True
        self._begin_value()

    def _hash(self) -> None:
        if not self.escape and not self.quote:
            self.comment = True
        self._end_key()
        self._end_value()
        self._begin_value()
        self._end_escape()

    def _quote(self, byte: int) -> bool:
        self._begin_value()
        keep = True
        if not self.escape and not self.comment:
            if self.quote == byte:
                self.quote, keep = 0, False
                self.protected = len(self.word)
            elif not self.quote:
                self.quote, keep = byte, False
        self._end_escape()
        return keep

    def finish(self) -> list[Token]:
        """The tokens, once the input is over."""
        if self.quote:
            # As perdition: the unterminated word is lost.
            logger.warning("%s:%d: unterminated %s quote; ignoring the rest of the file",
                           self.source, self.word_line, chr(self.quote))
        elif self.word or self.in_value or self.line_has_key:
            # Deliberate difference: a last line without a newline counts
            # (perdition loses its last word).
            self.escape = False
            self._newline()
        return self.tokens


def tokenize(data: bytes, source: str = "popmap.re") -> list[Token]:
    """The words of a ``popmap.re`` text, with an end-of-line ``Token`` after each line.

    ``source`` names the text in log messages.
    """
    reader = _Reader(source=source)
    for byte in data:
        reader.feed(byte)
    return reader.finish()


def pair_rules(tokens: Iterable[Token]) -> Iterator[RuleText]:
    """perdition's pairing: pattern then substitution; line ends and empty words reset."""
    pattern: Token | None = None
    for token in tokens:
        if not token.text:
            if pattern is not None and pattern.text:
                logger.debug("line %d: %r has no substitution; ignored",
                             pattern.line, pattern.text)
            pattern = None
            continue
        if pattern is None:
            pattern = token
            continue
        assert pattern.text is not None
        text = pattern.text[:-1] if pattern.text.endswith(b":") else pattern.text
        if text:
            yield RuleText(text, token.text, pattern.line)
        pattern = None


def parse_rules(data: bytes, source: str = "popmap.re") -> list[RuleText]:
    """Every rule of a ``popmap.re`` text, in file order."""
    return list(pair_rules(tokenize(data, source)))


# ----------------------------------------------------------------- regex_t


class RegexCompileError(MapError):
    """A pattern that ``regcomp`` refuses."""


class Regex:
    """One compiled POSIX extended regex; ``free()`` it exactly once."""

    def __init__(self, binding: RegexBinding, locale: Any, pattern: bytes,
                 cflags: int = CFLAGS) -> None:
        self._binding = binding
        self._locale = locale
        self.pattern = pattern
        compiled = binding.ffi.new("regex_t *")
        status = self._in_c_locale(binding.libc.regcomp, compiled, pattern, cflags)
        if status != 0:
            raise RegexCompileError("posix_regex", self._message(status, compiled))
        self._compiled: Any = compiled

    def _in_c_locale(self, function: Any, *args: Any) -> Any:
        """Call ``function`` with this thread in the "C" locale, as perdition runs."""
        libc = self._binding.libc
        previous = libc.uselocale(self._locale)
        try:
            return function(*args)
        finally:
            libc.uselocale(previous)

    def _message(self, status: int, compiled: Any) -> str:
        ffi, libc = self._binding.ffi, self._binding.libc
        size = libc.regerror(status, compiled, ffi.NULL, 0)
        buffer = ffi.new("char[]", max(size, 1))
        libc.regerror(status, compiled, buffer, size)
        return str(ffi.string(buffer).decode("utf-8", "replace"))

    def search(self, subject: bytes) -> list[Span] | None:
        """The ten ``(start, end)`` sub-matches of the first match, or ``None``.

        Groups that did not take part (or that the pattern does not have) are
        ``(-1, -1)``.  ``subject`` must not contain a NUL byte.
        """
        compiled = self._compiled
        if compiled is None:
            raise MapError("posix_regex", "regex used after it was freed")
        matches = self._binding.ffi.new("regmatch_t[]", NSUB)
        status = self._in_c_locale(self._binding.libc.regexec, compiled, subject,
                                   NSUB, matches, 0)
        if status == _regex_ffi.REG_NOMATCH:
            return None
        if status != 0:
            raise MapError("posix_regex", f"regexec: {self._message(status, compiled)}")
        return [(match.rm_so, match.rm_eo) for match in matches]

    def free(self) -> None:
        """``regfree``; idempotent."""
        compiled, self._compiled = self._compiled, None
        if compiled is not None:
            self._binding.libc.regfree(compiled)


# ----------------------------------------------------------------- substitution


def _group(subject: bytes, spans: list[Span], number: int) -> bytes | None:
    start, end = spans[number] if number < len(spans) else _NO_SPAN
    if start < 0 or end < 0:
        return None
    return subject[start:end]


def expand(subject: bytes, spans: list[Span], substitution: bytes) -> bytes | None:
    """perdition's result for a match: the key before the match, then the substitution.

    ``$0``..``$9`` become the sub-matches; a ``$n`` whose group did not match
    stays as written.  The key after the match is dropped.  After an empty
    match one more byte of the key follows; an empty match at the very end of
    the key means "not found" (``None``) — all as perdition 2.2 does.
    """
    start, end = spans[0]
    result = bytearray(subject[:start])
    index = 0
    while index < len(substitution):
        byte = substitution[index]
        following = substitution[index + 1] if index + 1 < len(substitution) else -1
        if byte == _DOLLAR and following in _DIGITS:
            group = _group(subject, spans, following - ord("0"))
            if group is not None:
                result += group
                index += 2
                continue
        result.append(byte)
        index += 1
    if start == end:
        if start >= len(subject):
            return None
        result.append(subject[end])
    return bytes(result)


# ----------------------------------------------------------------- the map


@dataclass(frozen=True, slots=True)
class _Rule:
    regex: Regex
    substitution: bytes
    line: int


class _Users:
    """Counts lookups in progress so that ``close()`` frees nothing in use."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._active = 0
        self._closed = False

    @contextmanager
    def use(self, what: str) -> Iterator[None]:
        with self._condition:
            if self._closed:
                raise MapError("posix_regex", f"{what}: map is closed")
            self._active += 1
        try:
            yield
        finally:
            with self._condition:
                self._active -= 1
                self._condition.notify_all()

    def close(self) -> bool:
        """Refuse new lookups and wait for the others; ``False`` if already closed."""
        with self._condition:
            if self._closed:
                return False
            self._closed = True
            self._condition.wait_for(lambda: self._active == 0)
            return True


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise MapError("posix_regex", f"cannot read {path}: {exc.strerror or exc}") from exc


class PosixRegexMap:
    """perdition's POSIX regex map: ``-m`` names the rules file."""

    quick = True  # a local file: looked up in the event loop, no thread hand-off

    name = "posix_regex"

    def __init__(self, options: str = "", *, binding: RegexBinding | None = None) -> None:
        self.path = options or DEFAULT_PATH
        self._binding = binding if binding is not None else _load_binding()
        self._users = _Users()
        texts = parse_rules(_read(self.path), self.path)
        self._locale = self._new_c_locale()
        try:
            self._rules = self._compile(texts)
        except BaseException:
            self._binding.libc.freelocale(self._locale)
            raise
        logger.debug("posix_regex map %s: %d rules", self.path, len(self._rules))

    def __repr__(self) -> str:
        return f"PosixRegexMap({self.path!r})"

    @property
    def rules(self) -> list[tuple[bytes, bytes]]:
        """``(pattern, substitution)`` of every rule, in the order they are tried."""
        return [(rule.regex.pattern, rule.substitution) for rule in self._rules]

    def _new_c_locale(self) -> Any:
        ffi, libc = self._binding.ffi, self._binding.libc
        locale = libc.newlocale(_regex_ffi.LC_ALL_MASK, b"C", ffi.NULL)
        if locale == ffi.NULL:
            raise MapError(self.name, f"newlocale(C) failed (errno {ffi.errno})")
        return locale

    def _compile(self, texts: list[RuleText]) -> list[_Rule]:
        rules: list[_Rule] = []
        try:
            for text in texts:
                rules.append(_Rule(self._compiled(text), text.substitution, text.line))
        except BaseException:
            for rule in rules:
                rule.regex.free()
            raise
        return rules

    def _compiled(self, text: RuleText) -> Regex:
        try:
            return Regex(self._binding, self._locale, text.pattern)
        except RegexCompileError as exc:
            pattern = decode_name(text.pattern)
            raise MapError(self.name, f"{self.path}:{text.line}: bad regular expression "
                           f"{pattern!r}: {str(exc).split(': ', 1)[-1]}") from exc

    def get(self, key: str, context: LookupContext) -> UserServerPort | None:
        """The first matching rule's result; ``None`` if no rule matches."""
        # perdition passes a C string: the key ends at its first NUL.
        subject = encode_name(key).split(b"\0", 1)[0]
        with self._users.use(self.path):
            result = self._lookup(subject)
        if not result:
            return None
        return parse_user_server_port(decode_name(result), context.domain_delimiter)

    def _lookup(self, subject: bytes) -> bytes | None:
        for rule in self._rules:
            spans = rule.regex.search(subject)
            if spans is not None:
                return expand(subject, spans, rule.substitution)
        return None

    def close(self) -> None:
        """Free every compiled regex once no lookup uses them.  Idempotent."""
        if not self._users.close():
            return
        for rule in self._rules:
            rule.regex.free()
        self._binding.libc.freelocale(self._locale)


def _load_binding() -> RegexBinding:
    try:
        return _regex_ffi.load()
    except OSError as exc:
        raise MapError(PosixRegexMap.name, f"cannot load the C library: {exc}") from exc


def open_posix_regex_map(options: str) -> PosixRegexMap:
    """The registry's factory: a :class:`PosixRegexMap` on ``options`` (a file name)."""
    return PosixRegexMap(options)
