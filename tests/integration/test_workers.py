"""The connection pool and ``--workers``, on a real process (the echo script of
test_server): bounded threads after many logins; several processes serving one
listener, stopped and reloaded together."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

from perditionpy.pool import default_size
from tests.integration.test_server import DEADLINE, echo, greet, script, wait_exit
from tests.support.ports import free_port

__all__ = ["script"]  # the fixture, imported for pytest


def _threads(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^Threads:\s+(\d+)$", status, re.MULTILINE)
    assert match is not None
    return int(match.group(1))


def _login_logout(port: int, run: Any) -> None:
    sock, greeting = greet(port, run=run)
    with sock:
        assert greeting.startswith("* OK hello")
        assert echo(sock, b"a LOGOUT\r\n") == b"* BYE\r\n"
        sock.settimeout(DEADLINE)
        assert sock.recv(100) == b""


def test_threads_stay_bounded_after_many_logins(script: Any) -> None:
    port = free_port()
    run = script(listen_port=port, bind_address=["127.0.0.1"])
    for _ in range(200):
        _login_logout(port, run)
    # The main thread, the pool's workers (one was enough here) and a few spares.
    assert _threads(run.popen.pid) <= default_size() + 2
    assert _threads(run.popen.pid) <= 4  # sequential logins reuse one worker


def test_concurrent_connections_reuse_workers(script: Any) -> None:
    port = free_port()
    run = script(listen_port=port, bind_address=["127.0.0.1"])
    for _ in range(5):
        held = [greet(port, run=run)[0] for _ in range(8)]
        for sock in held:
            assert echo(sock) == b"ping\r\n"
            sock.close()
        time.sleep(0.1)  # let the workers go back to the queue
    assert _threads(run.popen.pid) <= default_size() + 2


# ------------------------------------------------------------------ --workers


def _workers_of(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return sorted(int(child) for child in children)


def _connections_from(pid: int, port: int, clients: set[int]) -> int:
    """How many of ``pid``'s sockets are its end of a connection from one of the
    loopback ``clients`` ports to ``port`` (the socket inodes in /proc)."""
    inodes = set()
    with open("/proc/net/tcp") as table:
        for line in list(table)[1:]:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if int(local.split(":")[1], 16) == port and int(remote.split(":")[1], 16) in clients:
                inodes.add(f"socket:[{inode}]")
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            count += os.readlink(f"/proc/{pid}/fd/{fd}") in inodes
    return count


def _wait_for(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)  # polling another process's state


def _stop_all(run: Any) -> None:
    """Kill the parent and any worker left (a killed parent leaves them orphaned)."""
    left = _workers_of(run.popen.pid) if run.popen.poll() is None else []
    run.stop()
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _start_with_workers(tmp_path: Path, count: int, **settings: Any) -> Any:
    from tests.integration.test_server import Script

    run = Script(tmp_path, **settings)
    run.config["argv"] += ["--workers", str(count)]
    run.start()
    _wait_for(lambda: len(_workers_of(run.popen.pid)) == count, f"{count} workers")
    return run


def test_workers_share_the_listener_and_stop_together(tmp_path: Path) -> None:
    port = free_port()
    pid_file = tmp_path / "perdition.pid"
    run = _start_with_workers(tmp_path, 2, listen_port=port, bind_address=["127.0.0.1"],
                              pid_file=str(pid_file))
    try:
        workers = _workers_of(run.popen.pid)
        held = [greet(port, run=run)[0] for _ in range(24)]
        clients = {sock.getsockname()[1] for sock in held}
        served = {pid: _connections_from(pid, port, clients) for pid in workers}
        assert all(served.values()), served  # each worker took some
        assert sum(served.values()) == 24
        for sock in held:
            assert echo(sock) == b"ping\r\n"
            sock.close()
        assert pid_file.read_text() == f"{run.popen.pid}\n"
        run.popen.send_signal(signal.SIGTERM)
        assert wait_exit(run) == 0
        assert not pid_file.exists()
        for pid in workers:
            assert not Path(f"/proc/{pid}").exists()
        assert len(re.findall(r"Exiting on signal 15", run.log())) == 3
    finally:
        _stop_all(run)


def test_workers_get_sighup_and_a_dead_one_is_replaced(tmp_path: Path) -> None:
    port = free_port()
    run = _start_with_workers(tmp_path, 2, listen_port=port, bind_address=["127.0.0.1"])
    try:
        _wait_for(lambda: run.reload_file.exists()
                  and run.reload_file.read_text().count("reload") == 2, "maps reopened")
        run.popen.send_signal(signal.SIGHUP)
        _wait_for(lambda: run.reload_file.read_text().count("reload") == 4, "both reloaded")
        assert len(re.findall(r"Reopened logger", run.log())) == 3
        first, second = _workers_of(run.popen.pid)
        os.kill(first, signal.SIGKILL)
        _wait_for(lambda: first not in _workers_of(run.popen.pid)
                  and len(_workers_of(run.popen.pid)) == 2, "a replacement worker")
        run.wait_for_log(rf"Worker {first} exited \(signal 9\): starting another")
        for _ in range(8):
            _login_logout(port, run)
        assert second in _workers_of(run.popen.pid)
        run.popen.send_signal(signal.SIGTERM)
        assert wait_exit(run) == 0
    finally:
        _stop_all(run)


def test_workers_stop_when_the_parent_is_killed(tmp_path: Path) -> None:
    port = free_port()
    run = _start_with_workers(tmp_path, 2, listen_port=port, bind_address=["127.0.0.1"])
    workers = _workers_of(run.popen.pid)
    try:
        run.popen.kill()
        run.popen.wait(DEADLINE)
        _wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers),
                  "orphaned workers")
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
