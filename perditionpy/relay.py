"""The byte pump after login: client ⇄ back-end until either side closes or
the connection idles out.  No parsing, no buffering beyond one read.

This is deliberately a small, replaceable piece: the session calls
:func:`relay` and gets the byte counts back for its ``Closing session`` line.
Only inetd mode (one session, one process) relays here, in the session's
thread; the daemon hands every pair to :mod:`perditionpy.relay_hub`, which
shares :class:`RelayResult`.

Either side may be an ``ssl.SSLSocket``.  Readiness of its file descriptor then
says little: decrypted bytes may wait inside OpenSSL (``pending()``) while the
descriptor is quiet, and a readable descriptor may carry only TLS bookkeeping
(a session ticket) and no data.  So such sockets are read without blocking,
and their pending bytes are drained before waiting again.
"""

from __future__ import annotations

import selectors
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from perditionpy import limits

__all__ = ["RelayResult", "relay"]


@dataclass(frozen=True, slots=True)
class RelayResult:
    """``received``: bytes read from the client; ``sent``: bytes written to it."""

    received: int
    sent: int
    timed_out: bool


def relay(client: socket.socket, server: socket.socket, *, timeout: float | None,
          on_tick: Callable[[], None] | None = None) -> RelayResult:
    """Copy bytes both ways until EOF or error on either side.

    ``timeout``: seconds without traffic in either direction before giving up
    (perdition's ``-t``; ``None`` for no limit).  ``on_tick`` is called at
    least every ``limits.RELAY_TICK`` seconds (for perdition's periodic
    re-logging of the Auth line).
    """
    counts = {client: 0, server: 0}
    peer = {client: server, server: client}
    for sock in (client, server):
        sock.settimeout(timeout)  # bounds a send to a peer that stopped reading
    with selectors.DefaultSelector() as sel:
        sel.register(client, selectors.EVENT_READ)
        sel.register(server, selectors.EVENT_READ)
        last = time.monotonic()
        while True:
            wait = _wait_time(last, timeout)
            if wait is not None and wait <= 0:
                return RelayResult(counts[client], counts[server], timed_out=True)
            busy = [sock for sock in (client, server) if _pending(sock)]
            ready = sel.select(0 if busy else wait)
            if on_tick is not None:
                on_tick()
            sources = busy + [key.fileobj for key, _ in ready if key.fileobj not in busy]
            moved = False
            for src in sources:
                outcome = _pump(src, peer[src], counts, timeout)  # type: ignore[index,arg-type]
                if outcome is False:
                    return RelayResult(counts[client], counts[server], timed_out=False)
                moved = moved or bool(outcome)
            if moved:
                last = time.monotonic()


def _wait_time(last: float, timeout: float | None) -> float | None:
    tick = limits.RELAY_TICK
    if timeout is None:
        return tick
    return min(tick, last + timeout - time.monotonic())


def _pending(sock: socket.socket) -> bool:
    return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0


def _pump(src: socket.socket, dst: socket.socket, counts: dict[socket.socket, int],
          timeout: float | None) -> bool | None:
    """Move one read's worth of bytes: True if some moved, None if there was
    nothing to move after all (TLS bookkeeping), False when the connection is over."""
    try:
        data = _receive(src, timeout)
        if data is None:
            return None
        if not data:
            return False
        dst.sendall(data)
    except OSError:
        return False
    counts[src] += len(data)
    return True


def _receive(src: socket.socket, timeout: float | None) -> bytes | None:
    if not isinstance(src, ssl.SSLSocket):
        return src.recv(limits.RELAY_BUFFER_SIZE)
    src.settimeout(0.0)
    try:
        return src.recv(limits.RELAY_BUFFER_SIZE)
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
        return None
    finally:
        src.settimeout(timeout)
