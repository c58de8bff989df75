#!/usr/bin/env python3
"""The load generator: IMAP4 and POP3 clients on one asyncio loop, in a process of its own.

Three workloads, each printing one JSON object on stdout when it is done:

* ``logins``: ``--concurrency`` clients each repeat connect → login → one command
  (IMAP ``NOOP``, POP3 ``STAT``) → logout until ``--duration`` seconds or
  ``--max-logins`` logins have passed, whichever comes first. Reports logins/s, the
  connect-to-authenticated latencies (p50/p99) and the CPU this process used, so a
  saturated generator shows up in the numbers.
* ``relay``: one client logs in and fetches message 1 (IMAP ``FETCH 1 BODY.PEEK[]``, POP3
  ``RETR 1``) ``--repeat`` times; reports MB/s of the fetch alone (10^6 bytes/s) and
  the CPU share this process used meanwhile (near 1.0: the generator is the limit).
* ``idle``: opens ``--count`` authenticated connections (``--concurrency`` at a time),
  prints a ``{"ready": ...}`` line, holds them until a line arrives on stdin (or
  ``--hold`` seconds pass), then logs them all out and prints the final summary:
  ``logged_out`` counts the sessions whose LOGOUT was answered OK, i.e. that stayed
  up, end to end, for the whole hold.

``--tls`` speaks TLS from the first byte (IMAPS/POP3S) through asyncio's streams;
without it, bare sockets. Accounts are ``<prefix><n>`` for n in ``range(--users)``, all with ``--password``.
Everything is bounded: every read has ``--io-timeout``, every loop a count and a clock.
Only loopback addresses are accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import ipaddress
import json
import resource
import socket
import ssl
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

# Reads are at most this big; big enough that a 20 MiB fetch is not syscall-bound.
_RECV_SIZE = 256 * 1024
# A response line longer than this is a protocol error, not something to buffer.
_MAX_LINE = 64 * 1024
# Errors kept verbatim in the summary (the rest are only counted).
_ERROR_SAMPLES = 5
# The end of a POP3 multi-line response: CRLF, a dot, CRLF.
_POP3_END = b"\r\n.\r\n"
# A TLS stream buffers up to about twice this before it stops reading the socket.
_STREAM_LIMIT = 4 * _RECV_SIZE


class ProtocolFailure(Exception):
    """The server said something other than what a successful session expects."""


# --------------------------------------------------------------------------- one connection


class Conn:
    """One client connection on the running loop, with a line buffer.

    Subclasses move the bytes: :class:`PlainConn` on a bare socket (the cheapest
    path, so the generator is not the limit), :class:`TlsConn` through asyncio's
    TLS streams.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.buf = bytearray()

    async def recv(self, size: int) -> bytes:
        """Up to ``size`` bytes as they arrive; ``b""`` when the server has closed."""
        raise NotImplementedError

    async def send(self, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    async def _fill(self) -> None:
        data = await asyncio.wait_for(self.recv(_RECV_SIZE), self.timeout)
        if not data:
            raise ConnectionError(f"server closed; pending {bytes(self.buf[:80])!r}")
        self.buf += data

    async def line(self) -> bytes:
        """The next line, CRLF included."""
        while True:
            end = self.buf.find(b"\n")
            if end >= 0:
                out = bytes(self.buf[: end + 1])
                del self.buf[: end + 1]
                return out
            if len(self.buf) > _MAX_LINE:
                raise ProtocolFailure("response line too long")
            await self._fill()

    async def skip(self, count: int) -> None:
        """Consume ``count`` bytes of payload without keeping them."""
        while len(self.buf) < count:
            count -= len(self.buf)
            self.buf.clear()
            await self._fill()
        del self.buf[:count]

    async def skip_until(self, marker: bytes) -> int:
        """Consume bytes through ``marker``; return how many came before it."""
        # A response that starts with the marker's tail (".\r\n": empty message).
        if self.buf.startswith(marker[2:]):
            del self.buf[: len(marker) - 2]
            return 0
        size = 0
        while True:
            end = self.buf.find(marker)
            if end >= 0:
                del self.buf[: end + len(marker)]
                return size + end + 2
            keep = len(marker) - 1
            size += max(len(self.buf) - keep, 0)
            del self.buf[: max(len(self.buf) - keep, 0)]
            await self._fill()

    async def wait_close(self) -> None:
        """Read until the server closes (it closes first after LOGOUT/QUIT)."""
        with contextlib.suppress(ConnectionError, OSError, asyncio.TimeoutError):
            while await asyncio.wait_for(self.recv(4096), self.timeout):
                pass


class PlainConn(Conn):
    """A bare non-blocking socket driven with the loop's ``sock_*`` calls."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        super().__init__(timeout)
        self.sock = sock
        self.loop = asyncio.get_running_loop()

    @classmethod
    async def open(cls, host: str, port: int, timeout: float) -> PlainConn:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(loop.sock_connect(sock, (host, port)), timeout)
        except BaseException:
            sock.close()
            raise
        return cls(sock, timeout)

    async def recv(self, size: int) -> bytes:
        return await self.loop.sock_recv(self.sock, size)

    async def send(self, data: bytes) -> None:
        await asyncio.wait_for(self.loop.sock_sendall(self.sock, data), self.timeout)

    def close(self) -> None:
        self.sock.close()


class TlsConn(Conn):
    """TLS from the first byte (IMAPS/POP3S), through ``asyncio.open_connection``.

    The server's certificate is not checked: the bench's is self-signed, and only
    loopback is ever dialled.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 timeout: float) -> None:
        super().__init__(timeout)
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int, timeout: float) -> TlsConn:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=_client_context(), limit=_STREAM_LIMIT),
            timeout)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer, timeout)

    async def recv(self, size: int) -> bytes:
        try:
            return await self.reader.read(size)
        except ssl.SSLError as exc:
            raise ConnectionError(f"TLS: {exc}") from exc

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await asyncio.wait_for(self.writer.drain(), self.timeout)

    def close(self) -> None:
        # No close_notify wait: the session is over (or failed) either way.
        self.writer.transport.abort()


@functools.cache
def _client_context() -> ssl.SSLContext:
    """One client context for the whole run (building one per connection is costly)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


# --------------------------------------------------------------------------- dialogues


class Imap:
    """The IMAP4 side of a session: greeting, LOGIN, one command, LOGOUT, FETCH."""

    command = b"NOOP"

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.number = 0

    async def tagged(self, command: bytes) -> bytes:
        """Send ``command``; return the tagged reply line, which must be OK."""
        self.number += 1
        tag = b"b%d" % self.number
        await self.conn.send(tag + b" " + command + b"\r\n")
        while True:
            line = await self.conn.line()
            if line.startswith(tag + b" "):
                if not line.startswith(tag + b" OK"):
                    raise ProtocolFailure(f"{command.split()[0]!r}: {line.strip()!r}")
                return line

    async def greeting(self) -> None:
        line = await self.conn.line()
        if not line.startswith(b"* OK"):
            raise ProtocolFailure(f"greeting: {line.strip()!r}")

    async def login(self, user: str, password: str) -> None:
        await self.tagged(b'LOGIN "%s" "%s"' % (user.encode(), password.encode()))

    async def one_command(self) -> None:
        await self.tagged(self.command)

    async def logout(self) -> None:
        await self.tagged(b"LOGOUT")
        await self.conn.wait_close()

    async def fetch_first(self) -> int:
        """``SELECT INBOX`` once, then ``FETCH 1 BODY.PEEK[]``; return the literal's size."""
        if self.number < 2:
            await self.tagged(b"SELECT INBOX")
        self.number += 1
        tag = b"b%d" % self.number
        await self.conn.send(tag + b" FETCH 1 BODY.PEEK[]\r\n")
        size = 0
        while True:
            line = await self.conn.line()
            if line.startswith(tag + b" "):
                if size == 0 or not line.startswith(tag + b" OK"):
                    raise ProtocolFailure(f"FETCH: {line.strip()!r}")
                return size
            if line.rstrip().endswith(b"}") and b"{" in line:
                size = int(line.rstrip()[line.rindex(b"{") + 1 : -1])
                await self.conn.skip(size)


class Pop3:
    """The POP3 side of a session: greeting, USER/PASS, STAT, QUIT, RETR."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    async def ok(self, command: bytes) -> bytes:
        await self.conn.send(command + b"\r\n")
        line = await self.conn.line()
        if not line.startswith(b"+OK"):
            raise ProtocolFailure(f"{command.split()[0]!r}: {line.strip()!r}")
        return line

    async def greeting(self) -> None:
        line = await self.conn.line()
        if not line.startswith(b"+OK"):
            raise ProtocolFailure(f"greeting: {line.strip()!r}")

    async def login(self, user: str, password: str) -> None:
        await self.ok(b"USER " + user.encode())
        await self.ok(b"PASS " + password.encode())

    async def one_command(self) -> None:
        await self.ok(b"STAT")

    async def logout(self) -> None:
        await self.ok(b"QUIT")
        await self.conn.wait_close()

    async def fetch_first(self) -> int:
        """``RETR 1``; return the bytes of the multi-line answer up to the final dot.

        Scans whole reads for the terminator rather than splitting lines, so the
        generator keeps up with a fast relay.
        """
        await self.ok(b"RETR 1")
        return await self.conn.skip_until(_POP3_END)


PROTOCOLS: dict[str, type[Imap] | type[Pop3]] = {"imap": Imap, "pop3": Pop3}


@dataclass
class Target:
    """Where to connect and as whom."""

    proto: str
    host: str
    port: int
    users: tuple[str, ...]
    password: str
    timeout: float
    tls: bool = False

    def user(self, index: int) -> str:
        return self.users[index % len(self.users)]

    async def session(self, index: int) -> tuple[Imap | Pop3, float]:
        """Connect and log in; return the dialogue and the connect-to-authenticated time."""
        started = time.perf_counter()
        opener = TlsConn.open if self.tls else PlainConn.open
        conn: Conn = await opener(self.host, self.port, self.timeout)
        try:
            dialogue = PROTOCOLS[self.proto](conn)
            await dialogue.greeting()
            await dialogue.login(self.user(index), self.password)
        except BaseException:
            conn.close()
            raise
        return dialogue, time.perf_counter() - started


# --------------------------------------------------------------------------- results


@dataclass
class Tally:
    """Counts, latencies and a few sample errors from one workload."""

    ok: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)

    def error(self, exc: BaseException) -> None:
        self.errors += 1
        if len(self.samples) < _ERROR_SAMPLES:
            self.samples.append(f"{type(exc).__name__}: {exc}")


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile; ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(fraction * len(ordered) + 0.999999)))
    return ordered[rank - 1]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 3)


# --------------------------------------------------------------------------- workloads


async def _login_worker(target: Target, worker: int, stop_at: float, budget: list[int],
                        tally: Tally) -> None:
    index = worker
    while time.monotonic() < stop_at and budget[0] > 0:
        budget[0] -= 1
        try:
            dialogue, latency = await target.session(index)
            try:
                await dialogue.one_command()
                await dialogue.logout()
            finally:
                dialogue.conn.close()
        except (TimeoutError, OSError, ProtocolFailure, ValueError) as exc:
            tally.error(exc)
            await asyncio.sleep(0.01)  # do not spin on a refusing server
        else:
            tally.ok += 1
            tally.latencies.append(latency)
        index += 1 << 10


async def run_logins(target: Target, concurrency: int, duration: float,
                     max_logins: int) -> dict[str, object]:
    tally = Tally()
    budget = [max_logins]
    cpu0, wall0 = cpu_seconds(), time.monotonic()
    stop_at = wall0 + duration
    await asyncio.gather(*(_login_worker(target, w, stop_at, budget, tally)
                           for w in range(concurrency)))
    wall, cpu = time.monotonic() - wall0, cpu_seconds() - cpu0
    return {
        "workload": "logins", "proto": target.proto, "concurrency": concurrency,
        "logins": tally.ok, "errors": tally.errors, "error_samples": tally.samples,
        "seconds": round(wall, 3), "logins_per_s": round(tally.ok / wall, 1),
        "p50_ms": _ms(percentile(tally.latencies, 0.50)),
        "p99_ms": _ms(percentile(tally.latencies, 0.99)),
        "loadgen_cpu_s": round(cpu, 3), "loadgen_cpu_share": round(cpu / wall, 3),
    }


async def run_relay(target: Target, repeat: int) -> dict[str, object]:
    dialogue, _ = await target.session(0)
    rates, size, busy, fetching = [], 0, 0.0, 0.0
    try:
        for _ in range(repeat):
            cpu0, started = cpu_seconds(), time.perf_counter()
            size = await dialogue.fetch_first()
            elapsed = time.perf_counter() - started
            busy, fetching = busy + cpu_seconds() - cpu0, fetching + elapsed
            rates.append(size / elapsed / 1e6)
        await dialogue.logout()
    finally:
        dialogue.conn.close()
    return {"workload": "relay", "proto": target.proto, "tls": target.tls, "bytes": size,
            "mb_per_s": [round(r, 1) for r in rates],
            "best_mb_per_s": round(max(rates), 1),
            "median_mb_per_s": round(sorted(rates)[len(rates) // 2], 1),
            "loadgen_cpu_share": round(busy / fetching, 3) if fetching else None}


async def _open_idle(target: Target, count: int, concurrency: int, deadline: float,
                     tally: Tally) -> list[Imap | Pop3]:
    held: list[Imap | Pop3] = []
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int) -> None:
        async with gate:
            if time.monotonic() >= deadline:
                tally.error(TimeoutError("setup deadline passed"))
                return
            try:
                dialogue, latency = await target.session(index)
            except (TimeoutError, OSError, ProtocolFailure) as exc:
                tally.error(exc)
                return
            held.append(dialogue)
            tally.ok += 1
            tally.latencies.append(latency)

    await asyncio.gather(*(one(i) for i in range(count)))
    return held


async def _wait_release(hold: float) -> None:
    loop = asyncio.get_running_loop()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.readline), hold)


async def _close_all(held: list[Imap | Pop3], concurrency: int) -> Tally:
    """Log every held session out; ``ok`` counts those that did so cleanly."""
    gate, tally = asyncio.Semaphore(concurrency), Tally()

    async def one(dialogue: Imap | Pop3) -> None:
        async with gate:
            try:
                await dialogue.logout()
                tally.ok += 1
            except (TimeoutError, OSError, ProtocolFailure) as exc:
                tally.error(exc)
            finally:
                dialogue.conn.close()

    await asyncio.gather(*(one(d) for d in held))
    return tally


async def run_idle(target: Target, count: int, concurrency: int, setup: float,
                   hold: float) -> dict[str, object]:
    tally = Tally()
    wall0 = time.monotonic()
    held = await _open_idle(target, count, concurrency, wall0 + setup, tally)
    ready = {"ready": len(held), "errors": tally.errors, "error_samples": tally.samples,
             "setup_s": round(time.monotonic() - wall0, 2)}
    print(json.dumps(ready), flush=True)
    await _wait_release(hold)
    closed = await _close_all(held, concurrency)
    return {"workload": "idle", "proto": target.proto, **ready, "logged_out": closed.ok,
            "logout_errors": closed.errors, "logout_error_samples": closed.samples}


# --------------------------------------------------------------------------- command line


def _loopback(text: str) -> str:
    if not ipaddress.ip_address(text).is_loopback:
        raise argparse.ArgumentTypeError("the load generator only talks to loopback")
    return text


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workload", choices=("logins", "relay", "idle"))
    parser.add_argument("--proto", choices=sorted(PROTOCOLS), required=True)
    parser.add_argument("--host", type=_loopback, default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user-prefix", default="bench")
    parser.add_argument("--users", type=int, default=1, help="accounts <prefix>0..N-1")
    parser.add_argument("--password", default="bench-pw")
    parser.add_argument("--io-timeout", type=float, default=30.0)
    parser.add_argument("--tls", action="store_true",
                        help="TLS from the first byte (IMAPS/POP3S); the certificate is not checked")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0, help="logins: seconds")
    parser.add_argument("--max-logins", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="relay: fetches")
    parser.add_argument("--count", type=int, default=1000, help="idle: connections")
    parser.add_argument("--setup", type=float, default=120.0, help="idle: seconds to open")
    parser.add_argument("--hold", type=float, default=120.0, help="idle: longest hold")
    return parser.parse_args(argv)


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def amain(args: argparse.Namespace) -> dict[str, object]:
    users = tuple(f"{args.user_prefix}{n}" for n in range(args.users))
    target = Target(args.proto, args.host, args.port, users, args.password, args.io_timeout,
                    args.tls)
    if args.workload == "logins":
        return await run_logins(target, args.concurrency, args.duration, args.max_logins)
    if args.workload == "relay":
        return await run_relay(target, args.repeat)
    return await run_idle(target, args.count, args.concurrency, args.setup, args.hold)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    _raise_nofile()
    result = asyncio.run(amain(args))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
