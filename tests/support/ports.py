"""Loopback ports for tests: picking free ones and waiting until a server greets on one.

Everything here binds or connects to 127.0.0.1 only. Picking a port and handing it to
another process is racy by nature; callers that start servers retry on
"address in use" rather than trusting the pick blindly.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable

__all__ = [
    "LOOPBACK",
    "farewell_for",
    "free_port",
    "free_ports",
    "read_greeting",
    "wait_for_greeting",
]

LOOPBACK = "127.0.0.1"
# A greeting is one line; ManageSieve sends a few capability lines first, so allow some room.
_GREETING_LIMIT = 64 * 1024
_POLL_INTERVAL = 0.05
_ATTEMPT_LIMIT = 5.0


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """Return ``count`` distinct ports that were free on ``host`` a moment ago."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
        return ports


def free_port(host: str = LOOPBACK) -> int:
    """Return one port that was free on ``host`` a moment ago."""
    return free_ports(1, host)[0]


def read_greeting(sock: socket.socket, deadline: float, until: bytes = b"\n") -> bytes:
    """Read from ``sock`` until the data ends with a line that starts the final greeting line.

    ``until`` is matched against the start of the last complete line (``b"\\n"`` means
    "any complete line"). Raises ``TimeoutError`` at ``deadline`` (a ``time.monotonic``
    value) and ``ConnectionError`` if the peer closes first.
    """
    data = b""
    while not _greeting_complete(data, until):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no complete greeting before the deadline; got {data!r}")
        sock.settimeout(remaining)
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"peer closed before greeting completed; got {data!r}")
        data += chunk
        if len(data) > _GREETING_LIMIT:
            raise ConnectionError(f"greeting longer than {_GREETING_LIMIT} bytes")
    return data


def _greeting_complete(data: bytes, until: bytes) -> bool:
    if not data.endswith(b"\n"):
        return False
    if until == b"\n":
        return True
    last_line = data.rstrip(b"\r\n").rsplit(b"\n", 1)[-1]
    return last_line.startswith(until)


def wait_for_greeting(
    port: int,
    *,
    timeout: float,
    host: str = LOOPBACK,
    until: bytes = b"\n",
    alive: Callable[[], bool] | None = None,
    polite: bool = True,
) -> bytes:
    """Connect to ``host:port`` until a server answers with a greeting; return it.

    Retries refused connections until ``timeout`` seconds have passed. ``alive``, if
    given, is checked between attempts so a server that died is reported at once
    instead of after the whole timeout. ``polite``: say the protocol's goodbye
    (``farewell_for``) and wait for the close, so the probe logs as a clean session.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise ConnectionError(f"server for port {port} exited before it greeted")
        try:
            with socket.create_connection((host, port), timeout=1.0) as sock:
                # Cap each attempt so a dead server behind a stale backlog is noticed.
                attempt_deadline = min(deadline, time.monotonic() + _ATTEMPT_LIMIT)
                greeting = read_greeting(sock, attempt_deadline, until)
                if polite:
                    _say_goodbye(sock, farewell_for(greeting))
                return greeting
        except (ConnectionError, OSError) as exc:  # refused, reset, or closed early
            last_error = exc
        time.sleep(_POLL_INTERVAL)  # back-off between readiness attempts, not synchronisation
    raise TimeoutError(f"no greeting on {host}:{port} within {timeout}s: {last_error!r}")


def farewell_for(greeting: bytes) -> bytes:
    """The command that ends a session politely, guessed from the server's greeting."""
    if greeting.startswith(b"* "):
        return b"probe LOGOUT\r\n"  # IMAP
    if greeting.startswith((b"+OK", b"-ERR")):
        return b"QUIT\r\n"  # POP3
    return b"LOGOUT\r\n"  # ManageSieve


def _say_goodbye(sock: socket.socket, command: bytes, timeout: float = 2.0) -> None:
    """Send ``command`` and read until the server closes; errors do not matter here."""
    deadline = time.monotonic() + timeout
    try:
        sock.sendall(command)
        while time.monotonic() < deadline:
            sock.settimeout(max(deadline - time.monotonic(), 0.01))
            if not sock.recv(4096):
                return
    except OSError:
        return
