"""IMAP4 command syntax for the pre-authentication phase: tags, atoms, quoted
strings and literals (RFC 3501 section 9, plus LITERAL+ from RFC 7888).

:class:`CommandReader` is a buffer plus a small state machine: bytes go in,
complete commands (a tag, a command word and arguments) or syntax problems come
out.  It knows nothing of what the commands mean.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from perditionpy import limits

__all__ = [
    "Command", "Continue", "LineTooLong", "BadLiteral", "CommandReader", "valid_tag",
]

# RFC 3501 atom-specials that a tag may not contain (besides CTLs and space).
_TAG_FORBIDDEN = frozenset(b'(){%*"\\]')
_LITERAL_RE = re.compile(rb"\{(\d{1,20})(\+?)\}$")


def valid_tag(tag: bytes) -> bool:
    """A tag is one or more printable ASCII characters other than the specials."""
    return bool(tag) and all(0x20 < c < 0x7F and c not in _TAG_FORBIDDEN for c in tag)


@dataclass(frozen=True, slots=True)
class Command:
    """One complete command.  ``tag`` may be empty or invalid (the engine
    decides).  ``bad`` names a syntax problem found inside the command (an
    unterminated quoted string, a NUL byte); it is answered with the tag."""

    tag: bytes
    name: bytes
    args: tuple[bytes, ...]
    bad: str | None = None


@dataclass(frozen=True, slots=True)
class Continue:
    """The client announced a synchronising literal: send ``+ …`` to go on."""


@dataclass(frozen=True, slots=True)
class LineTooLong:
    """A command exceeded ``limits.MAX_LINE_LENGTH``; it has been discarded."""

    tag: bytes


@dataclass(frozen=True, slots=True)
class BadLiteral:
    """A literal announced more than ``limits.MAX_LITERAL_LENGTH`` bytes.

    ``fatal``: the literal was non-synchronising, so the client is already
    sending it and the stream cannot be resynchronised: close after replying.
    """

    tag: bytes
    fatal: bool


Item = Command | Continue | LineTooLong | BadLiteral


@dataclass(slots=True)
class _Building:
    """The command being assembled across literals."""

    tokens: list[bytes] = field(default_factory=list)
    size: int = 0
    bad: str | None = None


class CommandReader:
    """Accumulates bytes and yields parsed items one at a time."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._cmd = _Building()
        self._literal_left = 0        # bytes of the current literal still to come
        self._literal = bytearray()
        self._discarding = False      # skipping the rest of an over-long line
        self.eof = False

    def feed(self, data: bytes) -> None:
        """Add bytes from the client; ``b""`` marks the end of the stream."""
        if data:
            self._buf += data
        else:
            self.eof = True

    def take_remaining(self) -> bytes:
        """Hand over the bytes received but not parsed (pipelined after LOGIN)."""
        data = bytes(self._buf)
        self._buf.clear()
        return data

    @property
    def mid_command(self) -> bool:
        """True while an unfinished command has been partly received."""
        return bool(self._buf.strip()) or bool(self._cmd.tokens) or self._literal_left > 0

    def next(self) -> Item | None:
        """The next complete item, or ``None`` when more bytes are needed."""
        while True:
            if self._literal_left and not self._take_literal():
                return None
            if self._discarding and not self._skip_to_eol():
                return None
            end = self._buf.find(b"\n")
            if end < 0:
                return self._check_pending_length()
            line = bytes(self._buf[:end]).removesuffix(b"\r")
            del self._buf[: end + 1]
            item = self._line(line)
            if item is not None:
                return item

    # -- internals -----------------------------------------------------

    def _check_pending_length(self) -> LineTooLong | None:
        if self._cmd.size + len(self._buf) <= limits.MAX_LINE_LENGTH:
            return None
        return self._too_long(bytes(self._buf), discard=True)

    def _too_long(self, text: bytes, *, discard: bool) -> LineTooLong:
        tag = self._cmd.tokens[0] if self._cmd.tokens else text.split(b" ", 1)[0]
        self._cmd = _Building()
        self._discarding = discard
        return LineTooLong(tag)

    def _skip_to_eol(self) -> bool:
        end = self._buf.find(b"\n")
        if end < 0:
            self._buf.clear()
            return False
        del self._buf[: end + 1]
        self._discarding = False
        return True

    def _line(self, line: bytes) -> Item | None:
        """Tokenize one line segment; return an item or None to keep going."""
        self._cmd.size += len(line)
        if self._cmd.size > limits.MAX_LINE_LENGTH:
            return self._too_long(line, discard=False)  # the line is consumed already
        match = _LITERAL_RE.search(line)
        text = line[: match.start()] if match else line
        self._tokenize(text, first=not self._cmd.tokens)
        if match is None:
            cmd, self._cmd = self._cmd, _Building()
            return _finish(cmd)
        return self._start_literal(int(match.group(1)), bool(match.group(2)))

    def _start_literal(self, size: int, plus: bool) -> Item | None:
        if size > limits.MAX_LITERAL_LENGTH:
            tag = self._cmd.tokens[0] if self._cmd.tokens else b""
            self._cmd = _Building()
            return BadLiteral(tag, fatal=plus)
        self._literal_left = size
        self._literal = bytearray()
        if size == 0:
            self._cmd.tokens.append(b"")
        return None if plus else Continue()

    def _take_literal(self) -> bool:
        take = min(self._literal_left, len(self._buf))
        self._literal += self._buf[:take]
        del self._buf[:take]
        self._literal_left -= take
        if self._literal_left:
            return False
        self._cmd.tokens.append(bytes(self._literal))
        self._cmd.size += len(self._literal)
        return True

    def _tokenize(self, text: bytes, *, first: bool) -> None:
        if b"\x00" in text:
            self._cmd.bad = self._cmd.bad or "NUL"
        if first:
            tag, _, text = text.partition(b" ")
            self._cmd.tokens.append(tag)
        i, n = 0, len(text)
        while i < n:
            if text[i] == 0x20:
                i += 1
            elif text[i] == 0x22:
                i = self._quoted(text, i + 1)
            else:
                j = text.find(b" ", i)
                j = n if j < 0 else j
                self._cmd.tokens.append(text[i:j])
                i = j

    def _quoted(self, text: bytes, i: int) -> int:
        end = text.find(b'"', i)
        if end >= 0 and text.find(b"\\", i, end) < 0:  # nothing quoted inside
            self._cmd.tokens.append(text[i:end])
            return end + 1
        out = bytearray()
        n = len(text)
        while i < n:
            c = text[i]
            if c == 0x5C and i + 1 < n:  # backslash quotes the next character
                out.append(text[i + 1])
                i += 2
            elif c == 0x22:
                self._cmd.tokens.append(bytes(out))
                return i + 1
            else:
                out.append(c)
                i += 1
        self._cmd.tokens.append(bytes(out))
        self._cmd.bad = self._cmd.bad or "unterminated quoted string"
        return n


def _finish(cmd: _Building) -> Command:
    tag = cmd.tokens[0] if cmd.tokens else b""
    name = cmd.tokens[1] if len(cmd.tokens) > 1 else b""
    return Command(tag, name, tuple(cmd.tokens[2:]), bad=cmd.bad)
