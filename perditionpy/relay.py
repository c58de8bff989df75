"""The byte pump after login: client ⇄ back-end until either side closes or
the connection idles out.  No parsing, no buffering beyond one read.

This is deliberately a small, replaceable piece: the session calls
:func:`relay` and gets the byte counts back for its ``Closing session`` line.
"""

from __future__ import annotations

import selectors
import socket
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
            ready = sel.select(wait)
            if on_tick is not None:
                on_tick()
            for key, _ in ready:
                if not _pump(key.fileobj, peer[key.fileobj], counts):  # type: ignore[index]
                    return RelayResult(counts[client], counts[server], timed_out=False)
            if ready:
                last = time.monotonic()


def _wait_time(last: float, timeout: float | None) -> float | None:
    tick = limits.RELAY_TICK
    if timeout is None:
        return tick
    return min(tick, last + timeout - time.monotonic())


def _pump(src: socket.socket, dst: socket.socket, counts: dict[socket.socket, int]) -> bool:
    """Move one read's worth of bytes; False when the connection is over."""
    try:
        data = src.recv(limits.RELAY_BUFFER_SIZE)
        if not data:
            return False
        dst.sendall(data)
    except OSError:
        return False
    counts[src] += len(data)
    return True
