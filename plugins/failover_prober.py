"""The classic fail-over prober as a perditionpy map: try each of a user's
servers and answer the first that accepts a TCP connection.

    perdition -M /path/to/plugins/failover_prober.py -m /etc/perdition/failover.map

The file has the same format as ``cplugins/failover.c``'s: one line per key,
``<key> <server>[:<port>] <server>[:<port>] ...``, ``#`` starting a comment.
A server without a port is probed on 143 and answered without one (so
``--outgoing_port`` applies).  Each probe waits at most ``PROBE_TIMEOUT``
seconds; the file is re-read when it changes.

A known key whose servers are all down raises ``MapError``, so the session
falls back to ``--outgoing_server`` (or answers "Could not determine server").
"""

from __future__ import annotations

import os
import socket
import threading

from perditionpy.endpoints import UserServerPort, parse_user_server_port
from perditionpy.errors import MapError
from perditionpy.maps.base import LookupContext

PROBE_TIMEOUT = 1.0
DEFAULT_PROBE_PORT = 143
DEFAULT_PATH = "/etc/perdition/failover.map"


def read_table(path: str) -> dict[str, list[str]]:
    """key → candidate servers, in order (the first line of a key wins)."""
    table: dict[str, list[str]] = {}
    with open(path, encoding="utf-8", errors="surrogateescape") as lines:
        for line in lines:
            words = line.split()
            if len(words) >= 2 and not words[0].startswith("#"):
                table.setdefault(words[0], words[1:])
    return table


def answers(candidate: UserServerPort, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether something accepts a TCP connection at the candidate's server and port."""
    port = int(candidate.port) if candidate.port else DEFAULT_PROBE_PORT
    try:
        with socket.create_connection((candidate.server or "", port), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


class FailoverProber:
    name = "failover_prober"

    def __init__(self, options: str) -> None:
        self.path = options or DEFAULT_PATH
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._table: dict[str, list[str]] = {}
        self._current()  # a missing file is a start-up error

    def _current(self) -> dict[str, list[str]]:
        try:
            status = os.stat(self.path)
            with self._lock:
                if self._stamp != (status.st_ino, status.st_mtime_ns):
                    self._table = read_table(self.path)
                    self._stamp = (status.st_ino, status.st_mtime_ns)
                return self._table
        except OSError as exc:
            raise MapError(self.name, f"cannot read {self.path}: {exc.strerror}") from exc

    def get(self, key: str, context: LookupContext) -> UserServerPort | None:
        servers = self._current().get(key)
        if servers is None:
            return None
        for text in servers:
            candidate = parse_user_server_port(text, context.domain_delimiter)
            if answers(candidate):
                return candidate
        raise MapError(self.name, f"no server of {key!r} answers: {' '.join(servers)}")

    def close(self) -> None:
        pass


map_factory = FailoverProber
