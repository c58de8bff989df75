"""A POP3 back-end that tells who logged in, and a client for it: for tests of
maps that choose a server per user or per client address (C and Python map
examples)."""

from __future__ import annotations

import socket
import threading

from tests.support.ports import LOOPBACK
from tests.support.procs import Proc

TIMEOUT = 30.0


class WhoAmI:
    """A POP3 back-end that accepts any login and answers ``WHO`` with the user name."""

    def __init__(self) -> None:
        self.listener = socket.create_server((LOOPBACK, 0), backlog=128)
        self.port = self.listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _serve(conn: socket.socket) -> None:
        try:
            WhoAmI._converse(conn)
        except OSError:
            pass  # a prober's connect-and-close, or a client gone

    @staticmethod
    def _converse(conn: socket.socket) -> None:
        user = b"?"
        with conn, conn.makefile("rb") as lines:
            conn.settimeout(TIMEOUT)
            conn.sendall(b"+OK whoami ready\r\n")
            for line in lines:
                verb, _, rest = line.rstrip(b"\r\n").partition(b" ")
                verb = verb.upper()
                if verb == b"USER":
                    user = rest
                if verb == b"WHO":
                    conn.sendall(b"+OK " + user + b"\r\n")
                elif verb == b"QUIT":
                    conn.sendall(b"+OK bye\r\n")
                    return
                else:
                    conn.sendall(b"+OK\r\n")

    def close(self) -> None:
        self.listener.close()


def pop3_session(proxy: Proc, user: str, source: str = LOOPBACK) -> bytes:
    """Log in through ``proxy`` from ``source``; the WHO answer, or the failure line."""
    with socket.create_connection((LOOPBACK, proxy.port), timeout=TIMEOUT,
                                  source_address=(source, 0)) as conn, \
            conn.makefile("rb") as lines:
        assert lines.readline().startswith(b"+OK")
        conn.sendall(f"USER {user}\r\n".encode())
        assert lines.readline().startswith(b"+OK")
        conn.sendall(b"PASS secret\r\n")
        reply = lines.readline()
        if not reply.startswith(b"+OK"):
            return reply.rstrip(b"\r\n")
        conn.sendall(b"WHO\r\nQUIT\r\n")
        return lines.readline().rstrip(b"\r\n")
