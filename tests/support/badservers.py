"""Tiny hostile back-ends for bad-input tests, each on a free loopback port.

``BadServer(behaviour)`` accepts connections and runs ``behaviour(peer)`` for each in a
thread; ``peer`` records every byte the proxy sent. Ready-made behaviours:

* ``closes_at_once()``        accept, then close without a word;
* ``greets_then_drops(g)``    send greeting ``g``, read ``lines`` client lines, drop;
* ``never_answers()``         accept and stay silent until the proxy gives up;
* ``sends_garbage(data)``     send ``data`` (default: binary junk), then close;
* ``greets_with(line)``       answer with a given greeting line, then only LOGOUT/QUIT;
                              given the proxy's own greeting: loop detection.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable

from tests.support.ports import LOOPBACK

__all__ = [
    "IMAP_GREETING",
    "POP3_GREETING",
    "SIEVE_GREETING",
    "BadServer",
    "Peer",
    "closes_at_once",
    "goodbye_reply",
    "greets_then_drops",
    "greets_with",
    "never_answers",
    "sends_garbage",
]

IMAP_GREETING = b"* OK [CAPABILITY IMAP4rev1] fake back-end ready\r\n"
POP3_GREETING = b"+OK fake back-end ready\r\n"
SIEVE_GREETING = b'"IMPLEMENTATION" "fake"\r\n"SASL" "PLAIN"\r\nOK "fake back-end ready"\r\n'
GARBAGE = bytes(range(256)) * 4 + b"\x00\xff no line end"
_WAIT_TIMEOUT = 10.0
# A silent server keeps the connection this long at most, so threads always end.
_HOLD_LIMIT = 120.0

Behaviour = Callable[["Peer"], None]


class Peer:
    """The back-end's view of one proxy connection; keeps what the proxy sent."""

    def __init__(self, sock: socket.socket, index: int) -> None:
        self.sock = sock
        self.index = index
        self.received = b""
        self.closed_by_proxy = False
        self._pending = b""  # received but not yet returned by read_line()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_line(self, timeout: float = _WAIT_TIMEOUT) -> bytes:
        """Read one ``\\n``-terminated line (b"" if the proxy closed first)."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._pending:
            if not self._recv_until(deadline):
                return b""
        line, _, self._pending = self._pending.partition(b"\n")
        return line + b"\n"

    def read_until_closed(self, timeout: float = _HOLD_LIMIT) -> bytes:
        """Keep reading until the proxy closes (or ``timeout``); return all received."""
        deadline = time.monotonic() + timeout
        while self._recv_until(deadline):
            pass
        return self.received

    def _recv_until(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            return False
        except OSError:
            chunk = b""
        if not chunk:
            self.closed_by_proxy = True
            return False
        self.received += chunk
        self._pending += chunk
        return True


class BadServer:
    """Listens on a free loopback port and runs ``behaviour`` for every connection."""

    def __init__(self, behaviour: Behaviour, name: str = "bad") -> None:
        self.behaviour = behaviour
        self.name = name
        self.peers: list[Peer] = []
        self._listener = socket.create_server((LOOPBACK, 0))
        self.host = LOOPBACK
        self.port: int = self._listener.getsockname()[1]
        self._done: list[threading.Event] = []
        self._thread = threading.Thread(target=self._accept_loop, name=name, daemon=True)
        self._thread.start()

    def wait_for_connections(self, count: int, timeout: float = _WAIT_TIMEOUT) -> None:
        """Wait until ``count`` connections were accepted."""
        _poll(lambda: len(self.peers) >= count, timeout, f"{self.name}: < {count} connections")

    def wait_finished(self, index: int, timeout: float = _WAIT_TIMEOUT) -> Peer:
        """Wait until the behaviour for connection ``index`` returned; return its peer."""
        self.wait_for_connections(index + 1, timeout)
        if not self._done[index].wait(timeout):
            raise TimeoutError(f"{self.name}: connection {index} still being served")
        return self.peers[index]

    def close(self) -> None:
        """Stop listening and cut every open connection."""
        with contextlib.suppress(OSError):
            # shutdown() wakes a thread blocked in accept(); close() alone does not.
            self._listener.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._listener.close()
        for peer in list(self.peers):
            with contextlib.suppress(OSError):
                peer.sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(_WAIT_TIMEOUT)

    def __enter__(self) -> BadServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _accept_loop(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            peer = Peer(sock, len(self.peers))
            done = threading.Event()
            self._done.append(done)
            self.peers.append(peer)
            threading.Thread(target=self._serve, args=(peer, done), daemon=True).start()

    def _serve(self, peer: Peer, done: threading.Event) -> None:
        try:
            self.behaviour(peer)
        except OSError:
            pass  # the proxy hung up on us: that is its right
        finally:
            with contextlib.suppress(OSError):
                peer.sock.close()
            done.set()


def closes_at_once() -> BadServer:
    """Accept and close at once: the proxy sees EOF before any greeting."""
    return BadServer(lambda peer: None, "closes-at-once")


def greets_then_drops(greeting: bytes, lines: int = 1) -> BadServer:
    """Greet, read ``lines`` lines of the proxy's login dialogue, then drop the connection."""

    def behaviour(peer: Peer) -> None:
        peer.send(greeting)
        for _ in range(lines):
            if not peer.read_line():
                return

    return BadServer(behaviour, "greets-then-drops")


def never_answers() -> BadServer:
    """Accept and say nothing, reading until the proxy gives up (or a hard limit)."""

    def behaviour(peer: Peer) -> None:
        peer.read_until_closed()

    return BadServer(behaviour, "never-answers")


def sends_garbage(data: bytes = GARBAGE, *, then_close: bool = True) -> BadServer:
    """Send ``data`` instead of a greeting, then close (or listen on, if not ``then_close``)."""

    def behaviour(peer: Peer) -> None:
        peer.send(data)
        if not then_close:
            peer.read_until_closed()

    return BadServer(behaviour, "sends-garbage")


def greets_with(line: bytes | Callable[[], bytes]) -> BadServer:
    """Greet with ``line`` (CRLF added if missing), then answer only LOGOUT/QUIT.

    Give it the proxy's own greeting and the proxy is talking to itself: loop
    detection. Like the proxy would, it answers a goodbye (perdition says LOGOUT or
    QUIT after detecting the loop and waits for the reply) and closes; any other line
    gets no answer. ``line`` may be a function, called per connection, for a greeting
    only known after the proxy started.
    """

    def behaviour(peer: Peer) -> None:
        greeting = line() if callable(line) else line
        peer.send(greeting if greeting.endswith(b"\n") else greeting + b"\r\n")
        while command := peer.read_line(_HOLD_LIMIT):
            reply = goodbye_reply(command)
            if reply is not None:
                peer.send(reply)
                return

    return BadServer(behaviour, "greets-with")


def goodbye_reply(command: bytes) -> bytes | None:
    """The reply to an IMAP ``<tag> LOGOUT``, POP3 ``QUIT`` or ManageSieve ``LOGOUT``."""
    words = command.upper().split()
    if words == [b"QUIT"]:
        return b"+OK bye\r\n"
    if words == [b"LOGOUT"]:
        return b'OK "bye"\r\n'
    if len(words) == 2 and words[1] == b"LOGOUT":
        return b"* BYE logging out\r\n" + command.split()[0] + b" OK LOGOUT completed\r\n"
    return None


def _poll(condition: Callable[[], bool], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise TimeoutError(message)
        time.sleep(0.01)  # polling state set by server threads
