"""Login scenarios for the username/server-choice tests: raw client dialogues, GDBM
popmaps, what the back-end received, and perdition's ``Auth:`` line made comparable.

A scenario is one client connection that logs in (once or more) and logs out over a
raw socket, so every byte the client received is kept. ``run_dialogue`` returns a
``Transcript``: the greeting, the rest of what the client received, what each tap
passed on to the back-end, and the proxy's ``Auth:`` lines with the parts that differ
between two runs (timestamp, pid, ephemeral ports, tap ports) replaced by names.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.ports import LOOPBACK, read_greeting
from tests.support.procs import REPO_ROOT, Proc
from tests.support.tap import Tap

__all__ = [
    "PERDITION_GDBM_LIBRARY",
    "Transcript",
    "backend_user",
    "build_popmap",
    "mask_checksum",
    "readable_dir",
    "run_dialogue",
]

# perditionpy maps any libperditiondb_gdbm.so* to its native GDBM map, so the same
# -M value works for both proxies.
PERDITION_GDBM_LIBRARY = "/usr/lib/x86_64-linux-gnu/libperditiondb_gdbm.so.0"
_TIMEOUT = 15.0
_AUTH_LINE = re.compile(r"Auth: [^\n]*")
_ENDPOINTS = re.compile(r"127\.0\.0\.1:\d+->127\.0\.0\.1:\d+")
_CHECKSUM = re.compile(rb" [0-9a-f]{8}(\r\n)")
_IMAP_LOGIN = re.compile(rb"LOGIN \{(\d+)\}\r\n")
_POP3_USER = re.compile(rb"USER ([^\r\n]*)\r\n")


@dataclass(frozen=True)
class Transcript:
    """What one client connection saw and caused."""

    greeting: bytes
    client: bytes  # everything after the greeting, tap ports replaced by <tapN>
    backend: tuple[bytes, ...]  # to_server of every tap connection, taps in order
    auth: tuple[str, ...]  # Auth: lines, normalised

    @property
    def backend_users(self) -> tuple[bytes | None, ...]:
        return tuple(backend_user(sent) for sent in self.backend)


@contextlib.contextmanager
def readable_dir() -> Iterator[Path]:
    """A fresh directory under /tmp that the proxies can read after dropping to
    ``nobody`` (pytest's own temporary directories are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="perditionpy-popmap-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def build_popmap(path: Path, lines: Sequence[str]) -> Path:
    """Build a GDBM popmap from ``key:value`` lines with perditionpy's makegdbm tool.

    ``path`` must be readable by the proxy's unprivileged user (see ``readable_dir``).
    """
    text = "".join(line + "\n" for line in lines).encode()
    subprocess.run(
        [sys.executable, "-m", "perditionpy.tools.makegdbm", str(path)],
        input=text,
        check=True,
        capture_output=True,
        cwd=REPO_ROOT,
        timeout=_TIMEOUT,
    )
    path.chmod(0o644)
    return path


def backend_user(sent: bytes) -> bytes | None:
    """The user name of the first login in what a back-end received (IMAP or POP3)."""
    literal = _IMAP_LOGIN.search(sent)
    if literal:
        start = literal.end()
        return sent[start : start + int(literal.group(1))]
    user = _POP3_USER.search(sent)
    return user.group(1) if user else None


def mask_checksum(greeting: bytes) -> bytes:
    """The greeting with its 8-hex-digit checksum replaced by ``XXXXXXXX``."""
    return _CHECKSUM.sub(rb" XXXXXXXX\1", greeting)


def run_dialogue(
    proxy: Proc, protocol: str, logins: Sequence[tuple[str, str]], taps: Sequence[Tap]
) -> Transcript:
    """Connect, try each (user, password) in turn, log out; collect the ``Transcript``.

    Every tap connection must have closed and one ``Auth:`` line per login must have
    been logged before this returns.
    """
    with socket.create_connection((LOOPBACK, proxy.port), timeout=_TIMEOUT) as sock:
        greeting = read_greeting(sock, time.monotonic() + _TIMEOUT)
        talk = _imap_talk if protocol.startswith("IMAP") else _pop3_talk
        received = talk(sock, logins)
    for tap in taps:
        for conn in tap.connections:
            conn.wait_closed()
    auth = _wait_auth_lines(proxy, len(logins))
    return Transcript(
        greeting=greeting,
        client=_normalise_ports(received, taps),
        backend=tuple(conn.to_server for tap in taps for conn in tap.connections),
        auth=tuple(_normalise(line, proxy, taps) for line in auth),
    )


def _imap_talk(sock: socket.socket, logins: Sequence[tuple[str, str]]) -> bytes:
    received = b""
    for number, (user, password) in enumerate(logins):
        tag = b"a%d" % number
        sock.sendall(b"%s LOGIN %s %s\r\n" % (tag, _quote(user), _quote(password)))
        reply = read_greeting(sock, time.monotonic() + _TIMEOUT, until=tag + b" ")
        received += reply
        if reply.rstrip(b"\r\n").rsplit(b"\n", 1)[-1].startswith(tag + b" OK"):
            break
    sock.sendall(b"z LOGOUT\r\n")
    return received + _read_to_eof(sock)


def _pop3_talk(sock: socket.socket, logins: Sequence[tuple[str, str]]) -> bytes:
    received = b""
    for user, password in logins:
        sock.sendall(b"USER %s\r\n" % user.encode())
        received += read_greeting(sock, time.monotonic() + _TIMEOUT)
        sock.sendall(b"PASS %s\r\n" % password.encode())
        reply = read_greeting(sock, time.monotonic() + _TIMEOUT)
        received += reply
        if reply.startswith(b"+OK"):
            break
    sock.sendall(b"QUIT\r\n")
    return received + _read_to_eof(sock)


def _quote(text: str) -> bytes:
    return b'"' + text.encode().replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def _read_to_eof(sock: socket.socket) -> bytes:
    data = b""
    sock.settimeout(_TIMEOUT)
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _wait_auth_lines(proxy: Proc, count: int) -> list[str]:
    deadline = time.monotonic() + _TIMEOUT
    while True:
        lines = _AUTH_LINE.findall(proxy.log_text())
        if len(lines) >= count:
            return lines
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{count} Auth lines expected:\n{proxy.log_text()}")
        time.sleep(0.02)  # polling a log file the proxy writes


def _normalise_ports(data: bytes, taps: Sequence[Tap]) -> bytes:
    """Tap ports a client wrote (``user@host:port``) come back in some replies."""
    for index, tap in enumerate(taps):
        data = re.sub(rb"(?<!\d)%d(?!\d)" % tap.port, b"<tap%d>" % index, data)
    return data


def _normalise(line: str, proxy: Proc, taps: Sequence[Tap]) -> str:
    """Drop what legitimately differs between runs: ephemeral ports and tap ports."""
    line = _ENDPOINTS.sub("<client>-><proxy>", line)
    for index, tap in enumerate(taps):
        line = re.sub(rf"(?<!\d){tap.port}(?!\d)", f"<tap{index}>", line)
    return line.replace(f":{proxy.port}", ":<proxy>")
