"""The NIS map end to end: ``python -m perditionpy -M nis -m user_mail_server`` routes a
real IMAP login to the private Dovecot by what a real ypserv answers.

libnsl finds ypserv's port through the portmapper on 127.0.0.1:111 of the network
namespace it runs in, and the proxy must reach the host's loopback Dovecot, so
everything shares the host's network namespace: rpcbind listens on the host's port
111 (the test is skipped when something already does). Only the NIS domain (a UTS
namespace) and /var/yp and /run (a mount namespace) are private, held by one
``unshare`` whose PID namespace ends rpcbind and ypserv with it; the proxy is
started inside the same UTS and mount namespaces with ``nsenter``, so that
``yp_get_default_domain`` and libnsl's binding file are the test's own.
"""

from __future__ import annotations

import contextlib
import errno
import imaplib
import os
import select
import shutil
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.dovecot import Dovecot
from tests.support.ports import LOOPBACK
from tests.support.procs import Proc, _Launch, _start
from tests.support.scenarios import backend_user
from tests.support.tap import Tap

MakeTap = Callable[[int], Tap]
DOMAIN = "perditionpy.e2e"
READY_TIMEOUT = 30.0

# Runs as PID 1 of the private namespaces: the test's /var/yp and /run, the domain,
# the map (argv[2]: "key<TAB>value" lines), rpcbind and ypserv; prints "ready" once
# ypserv is registered, then holds the namespaces until stdin closes.
HOLDER = r"""
import os, struct, subprocess, sys, tempfile, time

DOMAIN, POPMAP, WORK = sys.argv[1], sys.argv[2].encode(), sys.argv[3]


def registered(program):
    out = subprocess.run(["rpcinfo", "-p", "127.0.0.1"], capture_output=True, text=True)
    return program in out.stdout


def wait_for(what, check):
    deadline = time.monotonic() + 20
    while not check():
        if time.monotonic() > deadline:
            sys.exit(f"{what} did not start")
        time.sleep(0.05)  # polling another process's registration


subprocess.run(["domainname", DOMAIN], check=True)
for target in ("/var/yp", "/run"):
    source = tempfile.mkdtemp(dir=WORK)
    os.chmod(source, 0o755)  # the proxy reads the binding file after dropping to nobody
    subprocess.run(["mount", "--bind", source, target], check=True)
os.makedirs(f"/var/yp/{DOMAIN}")
os.makedirs("/var/yp/binding")
os.makedirs("/run/rpcbind")
subprocess.run(["/usr/lib/yp/makedbm", "-", f"/var/yp/{DOMAIN}/user_mail_server"],
               input=POPMAP, check=True)
rpcbind = subprocess.Popen(["rpcbind", "-f"])
wait_for("rpcbind", lambda: registered("portmapper"))
ypserv = subprocess.Popen(["ypserv", "-d", "/var/yp"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
wait_for("ypserv", lambda: registered("ypserv"))
# ypbind's v2 binding file (see tests/unit/test_nis_map.py): libnsl reads it instead
# of asking ypbind, then asks the portmapper for ypserv's port.
with open(f"/var/yp/binding/{DOMAIN}.2", "wb") as binding:
    binding.write(b"\0\0" + struct.pack("=i4s2s2x", 1, bytes([127, 0, 0, 1]), b"\0\0"))
os.chmod(f"/var/yp/binding/{DOMAIN}.2", 0o644)
print("ready", flush=True)
sys.stdin.read()
"""


def port_111_in_use() -> str | None:
    """Why rpcbind cannot have the host's port 111, or ``None`` if it can."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as probe:
            # As rpcbind does: only a live socket, not TIME_WAIT, makes the port busy.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("0.0.0.0", 111))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return "something already listens on port 111 (a portmapper?)"
                raise
    return None


def requirements() -> str | None:
    missing = [
        t
        for t in ("rpcbind", "ypserv", "rpcinfo", "domainname", "unshare", "nsenter")
        if shutil.which(t) is None
    ]
    if missing or not os.path.exists("/usr/lib/yp/makedbm"):
        return f"needs Debian's rpcbind, ypserv and util-linux (missing: {missing or 'makedbm'})"
    if os.geteuid() != 0:
        return "needs root for namespaces and port 111"
    return port_111_in_use()


@contextlib.contextmanager
def nis_namespaces(work: Path, *entries: str) -> Iterator[int]:
    """rpcbind and ypserv serving ``entries``; yields a PID whose UTS and mount
    namespaces hold the test's NIS domain and binding file."""
    holder = subprocess.Popen(
        [
            "unshare",
            "--uts",
            "--mount",
            "--pid",
            "--fork",
            "--kill-child",
            sys.executable,
            "-c",
            textwrap.dedent(HOLDER),
            DOMAIN,
            "".join(f"{e}\n" for e in entries),
            str(work),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        ready, _, _ = select.select([holder.stdout], [], [], READY_TIMEOUT)
        line = holder.stdout.readline() if ready else b""
        if line != b"ready\n":
            holder.kill()
            _, err = holder.communicate(timeout=10)
            pytest.fail(f"NIS namespaces did not start: {err.decode(errors='replace')}")
        yield holder.pid  # unshare itself sits in the new UTS and mount namespaces
    finally:
        if holder.poll() is None:
            holder.terminate()  # --kill-child: PID 1 goes, and rpcbind and ypserv with it
        holder.communicate(timeout=10)


def run_perditionpy_in(pid: int, args: list[str], log_dir: Path) -> Proc:
    """``start_perditionpy`` behind ``nsenter -u -m`` (the network stays the host's)."""
    command = [
        "nsenter",
        "-t",
        str(pid),
        "-u",
        "-m",
        "--",
        sys.executable,
        "-m",
        "perditionpy",
        "--no_daemon",
        "-F",
        "+",
    ]
    return _start("perditionpy", command, args, _Launch(None, b"", log_dir, None, 1024, 20.0))


def domainname() -> str:
    return subprocess.run(["domainname"], capture_output=True, text=True, check=True).stdout


def imap_login(port: int, user: str, password: str) -> None:
    client = imaplib.IMAP4(LOOPBACK, port)
    try:
        assert client.login(user, password)[0] == "OK"
    finally:
        client.logout()


def received_user(tap: Tap) -> bytes | None:
    tap.wait_for_connections(1)
    return backend_user(tap.connections[0].wait_closed().to_server)


def test_imap_login_routed_by_nis_and_a_missing_user_falls_back(
    dovecot: Dovecot, make_tap: MakeTap, tmp_path: Path
) -> None:
    reason = requirements()
    if reason:
        pytest.skip(reason)
    host_domain = domainname()
    mapped, fallback = make_tap(dovecot.imap_port), make_tap(dovecot.imap_port)
    with nis_namespaces(tmp_path, f"alice\t{LOOPBACK}:{mapped.port}") as pid:
        proxy = run_perditionpy_in(
            pid,
            [
                "-P",
                "IMAP4",
                "-M",
                "nis",
                "-m",
                "user_mail_server",
                "-s",
                f"{LOOPBACK}:{fallback.port}",
            ],
            tmp_path / "logs",
        )
        try:
            imap_login(proxy.port, "alice", "alice-pw")
            imap_login(proxy.port, "bob", "bob-pw")
        finally:
            proxy.stop()
    assert received_user(mapped) == b"alice"
    assert received_user(fallback) == b"bob"
    assert len(mapped.connections) == len(fallback.connections) == 1
    assert "cannot look up in NIS" not in proxy.log_text()
    # Nothing outlives the namespaces, and the machine's NIS domain never changed.
    assert port_111_in_use() is None
    assert domainname() == host_domain != DOMAIN
