#!/usr/bin/env python3
"""How fast can Python proxy a login here at all?  A reference, not a product.

``bench/floor.py`` starts the bench Dovecot, perditionpy (one process) and a
*floor proxy*: about a hundred lines of single-threaded Python in this file that
does what perditionpy does on the wire for a plain login with no map (greeting,
LOGIN or USER/PASS, connect, perdition's back-end dialogue, the OK, three log
lines, the relay by ``os.splice``) with the same system calls, and nothing else:
no options, no layers, no deadlines, no error handling.  It then runs the load
generator's logins workload against each, alternately, and prints logins/s and
the proxy's CPU per login (user and system).

The gap between the two is what perditionpy's structure costs per login in
Python (sessions as generators, protocol engines, the event loop's tasks and
pairs, the logging module); the floor's distance from NGINX is what Python
itself costs.

    .venv/bin/python bench/floor.py [--concurrency 16,64] [--rounds 3] [--seconds 4]

The floor proxy alone: ``bench/floor.py serve --proto imap --port P --backend B``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench import targets as tg  # noqa: E402
from bench.run import LOADGEN  # noqa: E402
from tests.support.ports import LOOPBACK, free_port, wait_for_greeting  # noqa: E402

_SPLICE = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK if hasattr(os, "splice") else 0
_IMAP_LOGIN = re.compile(rb'^(\S+) LOGIN "([^"]*)" "([^"]*)"\r\n', re.IGNORECASE)
# The back-end dialogue: (what to send once the previous reply is complete).
_IMAP_STEPS = (lambda c: b"flim07 CAPABILITY\r\n",
               lambda c: b"flim08 LOGIN {%d}\r\n" % len(c.user),
               lambda c: c.user + b" {%d}\r\n" % len(c.password),
               lambda c: c.password + b"\r\n")
_POP3_STEPS = (lambda c: b"USER " + c.user + b"\r\n",
               lambda c: b"PASS " + c.password + b"\r\n")


class _Conn:
    __slots__ = ("client", "backend", "peer", "step", "data", "tag", "user", "password")

    def __init__(self, client: socket.socket, peer: tuple[str, int]) -> None:
        self.client, self.peer = client, peer
        self.backend: socket.socket | None = None
        self.step, self.data = -2, b""  # -2: client login; -1: connecting; 0..: back-end steps
        self.tag = self.user = self.password = b""


class Floor:
    """The floor proxy: one epoll loop, one dict of connections by descriptor."""

    def __init__(self, proto: str, port: int, backend: int) -> None:
        self.imap = proto == "imap"
        self.port, self.backend_port = port, backend
        self.steps = _IMAP_STEPS if self.imap else _POP3_STEPS
        self.epoll = select.epoll()
        self.listener = socket.create_server((LOOPBACK, port), backlog=1024)
        self.listener.setblocking(False)
        self.listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.epoll.register(self.listener.fileno(), select.EPOLLIN)
        self.conns: dict[int, _Conn] = {}
        self.pipes: list[tuple[int, int]] = []

    def log(self, text: str) -> None:
        sys.stderr.write(f"{time.strftime('%b %e %H:%M:%S')} perdition[{os.getpid()}]: {text}\n")
        sys.stderr.flush()

    def serve(self) -> None:
        while True:
            for fd, _ in self.epoll.poll():
                if fd == self.listener.fileno():
                    self.accept()
                elif fd in self.conns:
                    self.event(fd, self.conns[fd])

    def accept(self) -> None:
        while True:
            try:
                client, peer = self.listener.accept()
            except BlockingIOError:
                return
            client.setblocking(False)
            conn = _Conn(client, peer)
            self.log(f"Connect: {peer[0]}:{peer[1]}->{LOOPBACK}:{self.port}")
            client.send(b"* OK [CAPABILITY IMAP4 IMAP4REV1 LITERAL+] floor ready\r\n" if self.imap
                        else b"+OK POP3 floor ready\r\n")
            self.conns[client.fileno()] = conn
            self.epoll.register(client.fileno(), select.EPOLLIN)

    def event(self, fd: int, conn: _Conn) -> None:
        if conn.step == -2:
            self.client_login(fd, conn)
        elif conn.step == -1:
            assert conn.backend is not None
            conn.backend.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            conn.backend.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.epoll.modify(fd, select.EPOLLIN)
            conn.step = 0
        elif conn.step <= len(self.steps):
            self.backend_reply(conn)
        else:
            self.relay(fd, conn)

    def client_login(self, fd: int, conn: _Conn) -> None:
        data = conn.client.recv(4096)
        if not data:
            self.close(conn)
            return
        conn.data += data
        if self.imap:
            match = _IMAP_LOGIN.match(conn.data)
            if match is None:
                return
            conn.tag, conn.user, conn.password = match.groups()
        elif conn.data.upper().startswith(b"USER "):
            conn.user, conn.data = conn.data[5:].strip(), b""
            conn.client.send(b"+OK USER " + conn.user + b" set\r\n")
            return
        elif conn.data.upper().startswith(b"PASS "):
            conn.password = conn.data[5:].strip()
        else:
            return
        conn.data = b""
        backend = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        backend.connect_ex((LOOPBACK, self.backend_port))
        conn.backend, conn.step = backend, -1
        self.epoll.unregister(fd)
        del self.conns[fd]
        self.conns[backend.fileno()] = conn
        self.epoll.register(backend.fileno(), select.EPOLLOUT)

    def backend_reply(self, conn: _Conn) -> None:
        assert conn.backend is not None
        conn.data += conn.backend.recv(4096)
        if not conn.data.endswith(b"\n") or (self.imap and conn.step == 1
                                             and b"flim07 " not in conn.data):
            return
        reply, conn.data = conn.data, b""
        if conn.step < len(self.steps):
            conn.backend.send(self.steps[conn.step](conn))
            conn.step += 1
            return
        untagged = reply[:reply.find(b"flim08 ")] if self.imap else b""
        conn.client.send(untagged + (conn.tag + b" OK" if self.imap else b"+OK")
                         + b" You are so in\r\n")
        self.log(f"Auth: {conn.peer[0]}:{conn.peer[1]}->{LOOPBACK}:{self.port} "
                 f'authentication_id="{conn.user.decode()}" status="ok"')
        conn.step += 1
        self.conns[conn.client.fileno()] = conn
        self.epoll.register(conn.client.fileno(), select.EPOLLIN)

    def relay(self, fd: int, conn: _Conn) -> None:
        assert conn.backend is not None
        src, dst = ((conn.client, conn.backend) if fd == conn.client.fileno()
                    else (conn.backend, conn.client))
        pipe = self.pipes.pop() if self.pipes else os.pipe2(os.O_NONBLOCK)
        try:
            count = os.splice(src.fileno(), pipe[1], 65536, flags=_SPLICE)
            if count:
                os.splice(pipe[0], dst.fileno(), count, flags=_SPLICE)
        except BlockingIOError:
            count = -1
        self.pipes.append(pipe)
        if count == 0:
            self.log(f"Closing session: {conn.peer[0]}:{conn.peer[1]}->{LOOPBACK}:{self.port}")
            self.close(conn)

    def close(self, conn: _Conn) -> None:
        for sock in (conn.client, conn.backend):
            if sock is not None:
                self.conns.pop(sock.fileno(), None)
                sock.close()


# --------------------------------------------------------------- the comparison


def _running(proc: subprocess.Popen[bytes]) -> bool:
    return proc.poll() is None


def cpu_ticks(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return int(fields[11]), int(fields[12])


def logins(proto: str, port: int, concurrency: int, seconds: float) -> int:
    out = subprocess.run([sys.executable, str(LOADGEN), "logins", "--proto", proto,
                          "--port", str(port), "--password", tg.PASSWORD,
                          "--users", str(tg.BENCH_USERS), "--concurrency", str(concurrency),
                          "--duration", str(seconds)],
                         capture_output=True, text=True, check=True, timeout=seconds + 120)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["errors"]:
        raise RuntimeError(f"logins failed: {result['error_samples']}")
    return int(result["logins"])


def compare(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="perditionpy-floor-") as top, \
            contextlib.ExitStack() as stack:
        work = Path(top)
        dovecot = stack.enter_context(tg.bench_dovecot(work / "dovecot"))
        proxy = stack.enter_context(tg.perditionpy(dovecot, work / "logs"))
        targets: dict[tuple[str, str], tuple[int, int]] = {
            ("perditionpy", "imap"): (proxy.imap_port, proxy.roots[0]),
            ("perditionpy", "pop3"): (proxy.pop3_port, proxy.roots[1])}
        for proto, backend in (("imap", dovecot.imap_port), ("pop3", dovecot.pop3_port)):
            port = free_port()
            floor = subprocess.Popen([sys.executable, __file__, "serve", "--proto", proto,
                                      "--port", str(port), "--backend", str(backend)],
                                     stderr=(work / f"floor-{proto}.log").open("wb"))
            stack.callback(floor.kill)
            wait_for_greeting(port, timeout=20.0, until=b"* OK" if proto == "imap" else b"+OK",
                              alive=partial(_running, floor))
            targets["floor", proto] = (port, floor.pid)
        by_turns(targets, ("perditionpy", "floor"), "proxy", args)


def by_turns(proxies: dict[tuple[str, str], tuple[int, int]], names: Sequence[str],
             column: str, args: argparse.Namespace) -> None:
    """The logins workload against each of ``names`` in turn, per protocol and
    ``args.concurrency``, ``args.rounds`` times (every other round the other way
    round); prints the medians.  ``proxies``: (name, proto) → (port, pid)."""
    ticks = os.sysconf("SC_CLK_TCK")
    print(f"| proto | concurrency | {column} | logins/s | user ms/login | system ms/login |")
    print("|---|---|---|---|---|---|")
    for proto in ("imap", "pop3"):
        for concurrency in args.concurrency:
            runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in names}
            for round_ in range(args.rounds):
                for name in names if round_ % 2 == 0 else names[::-1]:
                    port, pid = proxies[name, proto]
                    user0, system0 = cpu_ticks(pid)
                    count = logins(proto, port, concurrency, args.seconds)
                    user1, system1 = cpu_ticks(pid)
                    runs[name].append((count / args.seconds,
                                       (user1 - user0) * 1000 / ticks / count,
                                       (system1 - system0) * 1000 / ticks / count))
            for name, figures in runs.items():
                rate, user, system = (statistics.median(f[i] for f in figures) for i in range(3))
                print(f"| {proto} | {concurrency} | {name} | {rate:,.0f} | {user:.3f} "
                      f"| {system:.3f} |", flush=True)


def counts(text: str) -> list[int]:
    return [int(count) for count in text.split(",")]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="run the floor proxy")
    serve.add_argument("--proto", choices=("imap", "pop3"), required=True)
    serve.add_argument("--port", type=int, required=True)
    serve.add_argument("--backend", type=int, required=True)
    parser.add_argument("--concurrency", type=counts, default=[16, 64])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    tg.stop_cleanly_on_sigterm()
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "serve":
        Floor(args.proto, args.port, args.backend).serve()
    else:
        compare(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
