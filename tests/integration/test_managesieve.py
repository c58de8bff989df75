"""ManageSieve through perditionpy to the private Dovecot's Pigeonhole, and
side by side with perdition 2.2.

* a real client, ``sieve-connect`` (Debian package ``sieve-connect``):
  upload, list, download byte-identically, through the proxy;
* a raw client over a socket: LISTSCRIPTS, PUTSCRIPT with a literal,
  GETSCRIPT reading it back byte for byte, with the authzid logged;
* a differential run: the same dialogue through perdition 2.2 and perditionpy,
  each in front of its own tap, must give the same client bytes (greeting
  checksum masked), the same back-end bytes and the same ``Auth:`` lines.

Sieve scripts are written only on a Dovecot of the test's own (``fresh_dovecot``).
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.support.dovecot import Dovecot
from tests.support.ports import LOOPBACK
from tests.support.procs import Proc
from tests.support.tap import Tap

DEADLINE = 15.0
SCRIPT = (b'require ["fileinto", "body"];\r\n# caf\xc3\xa9 "quoted" \\ back\r\n'
          b'if header :contains "subject" "perditionpy" {\r\n  fileinto "INBOX";\r\n}\r\n')
_CHECKSUM = re.compile(rb' [0-9a-f]{8}"\r\n')
_AUTH_LINE = re.compile(r"Auth: [^\n]*")
_ENDPOINTS = re.compile(r"127\.0\.0\.1:\d+->127\.0\.0\.1:\d+")


def proxy_args(backend_port: int, *extra: str) -> list[str]:
    return ["-P", "MANAGESIEVE", "-M", "", "-s", f"{LOOPBACK}:{backend_port}", *extra]


class Sieve:
    """A raw ManageSieve client: lines, and responses with their literals."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((LOOPBACK, port), timeout=DEADLINE)
        self._buf = b""
        self.transcript = b""  # everything read

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed; buffered {self._buf!r}")
        self._buf += chunk
        self.transcript += chunk

    def line(self) -> bytes:
        while b"\n" not in self._buf:
            self._fill()
        line, _, self._buf = self._buf.partition(b"\n")
        return line + b"\n"

    def response(self) -> tuple[bytes, list[bytes]]:
        """Read to the OK/NO/BYE line; return it and the literals on the way."""
        literals = []
        while True:
            line = self.line()
            literal = re.search(rb"\{(\d+)\}\r\n$", line)
            if literal:
                size = int(literal.group(1))
                while len(self._buf) < size:
                    self._fill()
                literals.append(self._buf[:size])
                self._buf = self._buf[size:]
            elif line.startswith((b"OK", b"NO", b"BYE")):
                return line, literals

    def command(self, data: bytes) -> tuple[bytes, list[bytes]]:
        self.sock.sendall(data)
        return self.response()

    def close(self) -> None:
        self.sock.close()


def plain(authcid: str, password: str, authzid: str = "") -> bytes:
    token = base64.b64encode(f"{authzid}\0{authcid}\0{password}".encode())
    return b'AUTHENTICATE "PLAIN" {%d+}\r\n%s\r\n' % (len(token), token)


def wait_auth_lines(proxy: Proc, count: int) -> list[str]:
    deadline = time.monotonic() + DEADLINE
    while len(lines := _AUTH_LINE.findall(proxy.log_text())) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(proxy.log_text())
        time.sleep(0.02)  # polling a log file the proxy writes
    return lines


# --------------------------------------------------------------------------- raw client


def test_putscript_getscript_round_trip(run_perditionpy: Callable[..., Proc],
                                        fresh_dovecot: Dovecot) -> None:
    proxy = run_perditionpy(proxy_args(fresh_dovecot.sieve_port), greeting=b"OK")
    client = Sieve(proxy.port)
    greeting, _ = client.response()
    assert greeting.startswith(b'OK "perdition ready on ')
    assert client.command(plain("alice", "alice-pw")) == (b'OK "You are so in"\r\n', [])
    assert client.command(b"LISTSCRIPTS\r\n")[0].startswith(b"OK")
    put = b'PUTSCRIPT "perditionpy" {%d+}\r\n%s\r\n' % (len(SCRIPT), SCRIPT)
    assert client.command(put)[0].startswith(b"OK")
    assert client.command(b'SETACTIVE "perditionpy"\r\n')[0].startswith(b"OK")
    assert client.command(b"LISTSCRIPTS\r\n")[0].startswith(b"OK")
    assert b'"perditionpy" ACTIVE' in client.transcript
    line, literals = client.command(b'GETSCRIPT "perditionpy"\r\n')
    assert line.startswith(b"OK") and literals == [SCRIPT]
    assert client.command(b"LOGOUT\r\n")[0].startswith(b"OK")
    client.close()
    assert (fresh_dovecot.home("alice") / "sieve" / "perditionpy.sieve").read_bytes() == SCRIPT
    proxy.wait_for_log(r"Closing session: .* authorisation_id=NONE "
                       r'authentication_id="alice" received=\d+ sent=\d+')


def test_authzid_is_passed_through_and_logged(run_perditionpy: Callable[..., Proc],
                                              make_tap: Callable[[int], Tap],
                                              dovecot: Dovecot) -> None:
    tap = make_tap(dovecot.sieve_port)
    proxy = run_perditionpy(proxy_args(tap.port, "-o"), greeting=b"OK")
    client = Sieve(proxy.port)
    client.response()
    reply, _ = client.command(plain("alice", "alice-pw", authzid="alice"))
    assert reply.startswith(b"OK")  # -o: Dovecot's own line
    assert client.command(b"LOGOUT\r\n")[0].startswith(b"OK")
    client.close()
    [auth] = wait_auth_lines(proxy, 1)
    assert 'authorisation_id="alice" authentication_id="alice"' in auth
    tap.wait_for_connections(1)
    assert tap.connections[0].wait_closed().to_server.startswith(
        b'AUTHENTICATE "PLAIN" "YWxpY2UAYWxpY2UAYWxpY2UtcHc="\r\n')


# --------------------------------------------------------------------------- sieve-connect


def _sieve_connect(port: int, password: str, *args: str, cwd: Path) -> str:
    binary = shutil.which("sieve-connect")
    if binary is None:
        pytest.skip("sieve-connect is not installed (Debian package sieve-connect)")
    read, write = os.pipe()
    os.write(write, password.encode() + b"\n")
    os.close(write)
    try:
        done = subprocess.run(
            [binary, "--server", LOOPBACK, "--port", str(port), "--user", "alice",
             "--passwordfd", str(read), "--authmech", "PLAIN",
             "--notlsverify", *args],  # no STARTTLS on offer: plain text is fine
            pass_fds=(read,), capture_output=True, timeout=DEADLINE, cwd=cwd, check=False)
    finally:
        os.close(read)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


def test_sieve_connect_upload_list_download(run_perditionpy: Callable[..., Proc],
                                            fresh_dovecot: Dovecot, tmp_path: Path) -> None:
    proxy = run_perditionpy(proxy_args(fresh_dovecot.sieve_port), greeting=b"OK")
    (tmp_path / "up.sieve").write_bytes(SCRIPT)
    _sieve_connect(proxy.port, "alice-pw", "--upload", "--localsieve", "up.sieve",
                   "--remotesieve", "via-proxy", cwd=tmp_path)
    assert "via-proxy" in _sieve_connect(proxy.port, "alice-pw", "--list", cwd=tmp_path)
    _sieve_connect(proxy.port, "alice-pw", "--download", "--remotesieve", "via-proxy",
                   "--localsieve", "down.sieve", cwd=tmp_path)
    assert (tmp_path / "down.sieve").read_bytes() == SCRIPT
    assert len(wait_auth_lines(proxy, 3)) == 3


# --------------------------------------------------------------------------- differential


def _dialogue(proxy: Proc, tap: Tap) -> tuple[bytes, tuple[bytes, ...], list[str]]:
    """Pre-auth commands, a refused login, an authzid login, a session, LOGOUT."""
    client = Sieve(proxy.port)
    client.response()
    for command in (b"CAPABILITY\r\n", b"NOOP\r\n", plain("alice", "wrong"),
                    plain("alice", "alice-pw", authzid="alice"), b"LISTSCRIPTS\r\n",
                    b'GETSCRIPT "none"\r\n', b"LOGOUT\r\n"):
        client.command(command)
    client.close()
    for conn in tap.connections:
        conn.wait_closed()
    auth = [_ENDPOINTS.sub("<ends>", line).replace(str(tap.port), "<tap>")
            for line in wait_auth_lines(proxy, 2)]
    everything = _CHECKSUM.sub(b' XXXXXXXX"\r\n', client.transcript)
    backend = tuple(conn.to_server for conn in tap.connections)
    return everything, backend, auth


def test_same_as_perdition(run_perdition: Callable[..., Proc],
                           run_perditionpy: Callable[..., Proc],
                           make_tap: Callable[[int], Tap], dovecot: Dovecot) -> None:
    sides: list[tuple[Callable[..., Proc], Tap]] = [
        (run_perdition, make_tap(dovecot.sieve_port)),
        (run_perditionpy, make_tap(dovecot.sieve_port))]
    procs = [run(proxy_args(tap.port), greeting=b"OK") for run, tap in sides]

    def one(index: int) -> Any:
        return _dialogue(procs[index], sides[index][1])

    with ThreadPoolExecutor(max_workers=2) as pool:  # one 3-second pause, not two
        theirs, ours = pool.map(one, range(2))
    assert ours[0] == theirs[0]  # every byte the client received, greeting included
    assert ours[1] == theirs[1]  # every byte each back-end received
    assert ours[2] == theirs[2]  # the Auth: lines
    assert len(ours[1]) == 2 and ours[1][1].startswith(b'AUTHENTICATE "PLAIN" "YWxp')
    assert 'authorisation_id="alice" authentication_id="alice"' in ours[2][1]
