"""A recording TCP relay on loopback, put between the proxy and a back-end.

``Tap(upstream_port)`` listens on a free loopback port; every connection to it is
relayed to ``upstream_host:upstream_port`` by two threads, and each direction's bytes
are kept, so a test can assert exactly what the back-end received
(``tap.connections[i].to_server``) and sent (``.to_client``). Half-closes are passed on
(EOF on one side becomes ``shutdown(SHUT_WR)`` on the other).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.support.ports import LOOPBACK

__all__ = ["Tap", "TapConnection"]

_CHUNK = 64 * 1024
_WAIT_TIMEOUT = 10.0


@dataclass
class TapConnection:
    """One relayed connection and the bytes seen so far in each direction."""

    index: int
    _to_server: bytearray = field(default_factory=bytearray)
    _to_client: bytearray = field(default_factory=bytearray)
    # (direction, chunk) in arrival order: "c>s" or "s>c".
    _chunks: list[tuple[str, bytes]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _closed: threading.Event = field(default_factory=threading.Event)
    upstream_refused: bool = False

    @property
    def to_server(self) -> bytes:
        """Everything the client side sent to the back-end."""
        with self._lock:
            return bytes(self._to_server)

    @property
    def to_client(self) -> bytes:
        """Everything the back-end sent to the client side."""
        with self._lock:
            return bytes(self._to_client)

    @property
    def chunks(self) -> list[tuple[str, bytes]]:
        """Each read as it happened: ``("c>s" | "s>c", bytes)``, in arrival order."""
        with self._lock:
            return list(self._chunks)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def wait_closed(self, timeout: float = _WAIT_TIMEOUT) -> TapConnection:
        """Wait until both directions have ended; raise ``TimeoutError`` otherwise."""
        if not self._closed.wait(timeout):
            raise TimeoutError(f"tap connection {self.index} still open after {timeout}s")
        return self

    def wait_for_server_bytes(self, data: bytes, timeout: float = _WAIT_TIMEOUT) -> None:
        """Wait until ``data`` appears in what the back-end received."""
        _poll(lambda: data in self.to_server, timeout, f"{data!r} never reached the server")

    def _record(self, direction: str, chunk: bytes) -> None:
        with self._lock:
            (self._to_server if direction == "c>s" else self._to_client).extend(chunk)
            self._chunks.append((direction, chunk))


class Tap:
    """A recording relay in front of ``upstream_host:upstream_port``."""

    def __init__(self, upstream_port: int, upstream_host: str = LOOPBACK) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.connections: list[TapConnection] = []
        self._listener = socket.create_server((LOOPBACK, 0))
        self.host = LOOPBACK
        self.port: int = self._listener.getsockname()[1]
        self._stopping = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._accepter = threading.Thread(target=self._accept_loop, name="tap-accept", daemon=True)
        self._accepter.start()

    def wait_for_connections(self, count: int, timeout: float = _WAIT_TIMEOUT) -> None:
        """Wait until at least ``count`` connections have been accepted."""
        _poll(lambda: len(self.connections) >= count, timeout, f"fewer than {count} connections")

    def close(self) -> None:
        """Stop accepting and cut every relayed connection."""
        self._stopping.set()
        with contextlib.suppress(OSError):
            # shutdown() wakes a thread blocked in accept(); close() alone does not.
            self._listener.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        self._accepter.join(_WAIT_TIMEOUT)

    def __enter__(self) -> Tap:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            conn = TapConnection(len(self.connections))
            self.connections.append(conn)
            threading.Thread(
                target=self._serve, args=(conn, client), name=f"tap-{conn.index}", daemon=True
            ).start()

    def _serve(self, conn: TapConnection, client: socket.socket) -> None:
        try:
            server = socket.create_connection(self.upstream, timeout=_WAIT_TIMEOUT)
        except OSError:
            conn.upstream_refused = True
            client.close()
            conn._closed.set()
            return
        server.settimeout(None)
        with self._lock:
            self._sockets += [client, server]
        pumps = [
            threading.Thread(target=_pump, args=(client, server, conn, "c>s"), daemon=True),
            threading.Thread(target=_pump, args=(server, client, conn, "s>c"), daemon=True),
        ]
        for pump in pumps:
            pump.start()
        for pump in pumps:
            pump.join()
        client.close()
        server.close()
        conn._closed.set()


def _pump(src: socket.socket, dst: socket.socket, conn: TapConnection, direction: str) -> None:
    """Copy ``src`` to ``dst`` until EOF or error, recording; then half-close ``dst``."""
    try:
        while chunk := src.recv(_CHUNK):
            conn._record(direction, chunk)
            dst.sendall(chunk)
    except OSError:
        # A reset on either side: end the other direction too, or its recv would hang.
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        return
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


def _poll(condition: Callable[[], bool], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise TimeoutError(message)
        time.sleep(0.01)  # polling state updated by relay threads
