"""server.serve() as a real process: listeners, -L, signals, the pid file, inetd mode,
detaching and dropping privileges.

Each test runs a tiny script (written to the test's directory) that calls
``log.setup_logging`` and ``server.serve`` with a handler that greets
(``* OK hello client=... local=... nodelay=N keepalive=N``), echoes lines, and
answers ``LOGOUT`` with ``* BYE`` before closing; its ``reload`` appends a line
to a file.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.ports import LOOPBACK, free_port, read_greeting
from tests.support.procs import REPO_ROOT

DEADLINE = 10.0

SCRIPT = r'''
import dataclasses, json, socket, sys
from perditionpy import log, options, server

def handle(conn, client, local):
    nodelay = keepalive = -1
    if conn.family != socket.AF_UNIX:
        nodelay = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        keepalive = conn.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
    conn.sendall(f"* OK hello client={client!r} local={local!r} "
                 f"nodelay={int(bool(nodelay > 0))} keepalive={int(bool(keepalive > 0))}\r\n"
                 .encode())
    with conn, conn.makefile("rb") as lines:
        for line in lines:
            if b"LOGOUT" in line:
                conn.sendall(b"* BYE\r\n")
                return
            if b"CRASH" in line:
                raise RuntimeError("handler bug")
            conn.sendall(line)

def main():
    config = json.loads(sys.argv[1])
    opts = options.load(config["argv"], "perdition")
    # load() refuses -a until PAM exists; the server only reads the flag.
    opts = dataclasses.replace(opts, **config["replace"])
    log.setup_logging(opts, "perdition")

    def reload():
        with open(config["reload_file"], "a") as file:
            file.write("reload\n")

    return server.serve(opts, handle, reload=reload, prog="perdition", grace=config["grace"])

sys.exit(main())
'''

_VALUED = {"listen_port": "-l", "connection_limit": "-L", "log_facility": "-F",
           "pid_file": "--pid_file", "username": "-u", "group": "-g"}
_SWITCHES = {"tcp_keepalive": "--tcp_keepalive", "inetd_mode": "-i", "debug": "-d",
             "quiet": "-q"}


def _own_identity() -> dict[str, str]:
    """Run as whoever runs the tests (root would otherwise drop to nobody)."""
    return {"username": pwd.getpwuid(os.geteuid()).pw_name,
            "group": grp.getgrgid(os.getegid()).gr_name}


def perdition_argv(settings: dict[str, Any]) -> list[str]:
    """Command-line flags for option attribute values (``no_daemon`` defaults to on)."""
    settings = dict(settings)
    argv = ["-f", "", "-M", ""]
    if settings.pop("no_daemon", True):
        argv.append("--no_daemon")
    if "bind_address" in settings:
        argv += ["-b", ",".join(settings.pop("bind_address"))]
    for name, value in settings.items():
        if name in _SWITCHES:
            argv += [_SWITCHES[name]] if value else []
        else:
            argv += [_VALUED[name], str(value)]
    return argv


class Script:
    """One run of the script: its config, process and captured output."""

    def __init__(self, tmp_path: Path, *, grace: float = 10.0, authenticate_in: bool = False,
                 **settings: Any) -> None:
        self.dir = tmp_path
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.reload_file = tmp_path / "reloads"
        self.log_path = tmp_path / "output.log"
        (tmp_path / "serve_script.py").write_text(SCRIPT)
        self.settings = {"log_facility": "+", "pid_file": "", **_own_identity(), **settings}
        self.config = {"argv": perdition_argv(self.settings), "grace": grace,
                       "replace": {"authenticate_in": authenticate_in},
                       "reload_file": str(self.reload_file)}
        self.popen: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        return [sys.executable, str(self.dir / "serve_script.py"), json.dumps(self.config)]

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(REPO_ROOT)}

    def start(self, **popen_args: Any) -> subprocess.Popen[bytes]:
        popen_args.setdefault("stdin", subprocess.DEVNULL)
        if "stdout" not in popen_args:
            log = self.log_path.open("ab")
            popen_args.update(stdout=log, stderr=subprocess.STDOUT)
        self.popen = subprocess.Popen(self.argv(), env=self.env(), **popen_args)
        return self.popen

    def log(self) -> str:
        """What it logged: its -F file if it has one, else its captured stdout/stderr."""
        sink = str(self.settings["log_facility"])
        path = Path(sink) if sink.startswith("/") else self.log_path
        return path.read_text() if path.exists() else ""

    def wait_for_log(self, pattern: str) -> None:
        deadline = time.monotonic() + DEADLINE
        while not re.search(pattern, self.log()):
            assert time.monotonic() < deadline, f"{pattern!r} not logged:\n{self.log()}"
            time.sleep(0.05)  # polling a file another process writes

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(DEADLINE)


@pytest.fixture
def script(tmp_path: Path) -> Iterator[Any]:
    """``script(**config)``: a started Script, killed after the test if still running."""
    started: list[Script] = []

    def make(**config: Any) -> Script:
        run = Script(tmp_path / f"run{len(started)}", **config)
        started.append(run)
        run.start()
        return run

    yield make
    for run in started:
        run.stop()


def connect(port: int, host: str = LOOPBACK, run: Script | None = None) -> socket.socket:
    """Connect once the server greets, giving up at the deadline or if it exited."""
    deadline = time.monotonic() + DEADLINE
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=DEADLINE)
        except OSError:
            if run is not None and run.popen is not None and run.popen.poll() is not None:
                raise AssertionError(f"server exited:\n{run.log()}") from None
            assert time.monotonic() < deadline, f"nothing listening on {host}:{port}"
            time.sleep(0.05)  # back-off between readiness attempts
            continue
        return sock


def greet(port: int, host: str = LOOPBACK, run: Script | None = None) -> tuple[socket.socket, str]:
    sock = connect(port, host, run)
    return sock, read_greeting(sock, time.monotonic() + DEADLINE).decode()


def echo(sock: socket.socket, text: bytes = b"ping\r\n") -> bytes:
    sock.sendall(text)
    return read_greeting(sock, time.monotonic() + DEADLINE)


def ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def wait_exit(run: Script) -> int:
    assert run.popen is not None
    return run.popen.wait(DEADLINE)


# ------------------------------------------------------------------ listeners


def test_bind_list_with_ipv4_ipv6_and_per_entry_port(script: Any) -> None:
    if not ipv6_loopback():
        pytest.skip("no IPv6 loopback")
    port, other = free_port(), free_port()
    run = script(listen_port=port, bind_address=["127.0.0.1", "::1", f"[::1]:{other}"])
    for host, target in ((LOOPBACK, port), ("::1", port), ("::1", other)):
        sock, greeting = greet(target, host, run)
        with sock:
            assert greeting.startswith(f"* OK hello client=('{host}', ")
            assert f"local=('{host}', {target}" in greeting
            assert echo(sock) == b"ping\r\n"


def test_port_given_as_service_name(script: Any) -> None:
    name, number = _free_named_port()
    run = script(listen_port=free_port(), bind_address=[f"127.0.0.1:{name}"])
    sock, greeting = greet(number, run=run)
    with sock:
        assert f"local=('127.0.0.1', {number})" in greeting


def _free_named_port() -> tuple[str, int]:
    """A service name from /etc/services whose TCP port is free on loopback."""
    services = Path("/etc/services").read_text().splitlines()
    for line in services:
        fields = line.split("#")[0].split()
        if len(fields) < 2 or not fields[1].endswith("/tcp"):
            continue
        number = int(fields[1].split("/")[0])
        if number < 10000:
            continue
        with socket.socket() as probe:
            try:
                probe.bind((LOOPBACK, number))
            except OSError:
                continue
        if socket.getservbyname(fields[0], "tcp") == number:
            return fields[0], number
    pytest.skip("no free named port above 10000 in /etc/services")


def test_no_bind_address_listens_dual_stack(script: Any) -> None:
    if not (ipv6_loopback() and socket.has_dualstack_ipv6()):
        pytest.skip("no dual-stack IPv6")
    port = free_port()
    run = script(listen_port=port)
    sock, greeting = greet(port, run=run)
    with sock:
        # IPv4 clients of the "::" listener are shown as plain IPv4, as perdition logs them.
        assert greeting.startswith("* OK hello client=('127.0.0.1', ")
    sock, greeting = greet(port, "::1", run)
    with sock:
        assert greeting.startswith("* OK hello client=('::1', ")


def test_busy_port_is_fatal_and_names_the_address(script: Any) -> None:
    with socket.socket() as holder:
        holder.bind((LOOPBACK, 0))
        holder.listen()
        port = holder.getsockname()[1]
        run = script(listen_port=port, bind_address=["127.0.0.1"])
        assert wait_exit(run) == 255
    assert re.search(rf"perdition\[\d+\]: Fatal error listening for connections on "
                     rf"127\.0\.0\.1:{port}: Address already in use", run.log()), run.log()


def test_accepted_sockets_get_nodelay_and_keepalive(script: Any) -> None:
    port = free_port()
    run = script(listen_port=port, bind_address=["127.0.0.1"], tcp_keepalive=True)
    sock, greeting = greet(port, run=run)
    sock.close()
    assert "nodelay=1 keepalive=1" in greeting
    port = free_port()
    run = script(listen_port=port, bind_address=["127.0.0.1"])
    sock, greeting = greet(port, run=run)
    sock.close()
    assert "nodelay=1 keepalive=0" in greeting


# ------------------------------------------------------------------ -L


def test_connection_limit_holds_extra_clients_until_a_slot_frees(script: Any) -> None:
    port = free_port()
    run = script(listen_port=port, bind_address=["127.0.0.1"], connection_limit=2)
    first, _ = greet(port, run=run)
    second, _ = greet(port, run=run)
    third = connect(port)  # the kernel's backlog takes it; the server does not
    third.settimeout(0.5)
    with pytest.raises(socket.timeout):
        third.recv(100)  # bounded check that nothing is sent while at the limit
    run.wait_for_log(r"Connection limit of 2 reached")
    first.close()
    greeting = read_greeting(third, time.monotonic() + DEADLINE)
    assert greeting.startswith(b"* OK hello")
    assert echo(second) == b"ping\r\n"
    assert run.popen.poll() is None
    second.close()
    third.close()


def test_a_failing_handler_is_logged_and_the_server_carries_on(script: Any) -> None:
    port = free_port()
    run = script(listen_port=port, bind_address=["127.0.0.1"], connection_limit=1)
    sock, _ = greet(port, run=run)
    with sock:
        sock.sendall(b"CRASH\r\n")
        sock.settimeout(DEADLINE)
        assert sock.recv(100) == b""  # closed for the handler
    run.wait_for_log(r"Fatal error in the connection from \('127\.0\.0\.1', \d+\)")
    assert "RuntimeError: handler bug" in run.log()
    sock, greeting = greet(port, run=run)  # the only -L slot was given back
    sock.close()
    assert greeting.startswith("* OK hello")


def test_running_out_of_descriptors_pauses_accepting(tmp_path: Path) -> None:
    port = free_port()
    run = Script(tmp_path, listen_port=port, bind_address=["127.0.0.1"], debug=True)
    run.start()
    run.wait_for_log(r"Listening on 127\.0\.0\.1")
    baseline = len(os.listdir(f"/proc/{run.popen.pid}/fd"))  # type: ignore[union-attr]
    run.stop()
    run = Script(tmp_path / "limited", listen_port=port, bind_address=["127.0.0.1"])
    limit = baseline + 2  # room for two connections
    run.start(preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit)))
    try:
        held = [greet(port, run=run)[0], greet(port, run=run)[0]]
        extra = connect(port)  # accept() now fails with EMFILE
        run.wait_for_log(r"Error accepting a connection: Too many open files")
        for sock in held:
            sock.close()
        greeting = read_greeting(extra, time.monotonic() + DEADLINE)
        assert greeting.startswith(b"* OK hello")
        extra.close()
    finally:
        run.stop()


# ------------------------------------------------------------------ signals


def test_sighup_reopens_log_reloads_and_keeps_connections(script: Any, tmp_path: Path) -> None:
    port = free_port()
    log_file = tmp_path / "perdition.log"
    run = script(listen_port=port, bind_address=["127.0.0.1"], log_facility=str(log_file),
                 debug=True)
    held, _ = greet(port, run=run)
    with held:
        run.wait_for_log(r"Listening on 127\.0\.0\.1")
        log_file.rename(tmp_path / "perdition.log.1")  # logrotate, then its postrotate HUP
        run.popen.send_signal(signal.SIGHUP)
        run.wait_for_log(r'Reloading map library "" with options ""')
        assert re.search(r"perdition\[\d+\]: Reopened logger\n", log_file.read_text())
        assert "Listening on" in (tmp_path / "perdition.log.1").read_text()
        assert run.reload_file.read_text() == "reload\n"
        assert echo(held) == b"ping\r\n"
        newcomer, greeting = greet(port, run=run)
        newcomer.close()
        assert greeting.startswith("* OK hello")


def test_sigterm_removes_pid_file_and_exits_zero(script: Any, tmp_path: Path) -> None:
    port = free_port()
    pid_file = tmp_path / "run" / "perdition.pid"  # the directory is created
    run = script(listen_port=port, bind_address=["127.0.0.1"], pid_file=str(pid_file))
    sock, _ = greet(port, run=run)
    sock.close()
    assert pid_file.read_text() == f"{run.popen.pid}\n"
    assert pid_file.stat().st_mode & 0o777 == 0o660
    run.popen.send_signal(signal.SIGTERM)
    assert wait_exit(run) == 0
    assert not pid_file.exists()
    assert re.search(r"perdition\[\d+\]: Exiting on signal 15", run.log())


def test_sigterm_grace_lets_a_connection_finish_then_closes_it(script: Any) -> None:
    port = free_port()
    run = script(listen_port=port, bind_address=["127.0.0.1"], grace=1.0)
    held, _ = greet(port, run=run)
    with held:
        run.popen.send_signal(signal.SIGTERM)
        run.wait_for_log(r"Exiting on signal 15")
        assert echo(held) == b"ping\r\n"  # still served during the grace period
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((LOOPBACK, port), timeout=DEADLINE).close()
        held.settimeout(DEADLINE)
        assert held.recv(100) == b""  # shut down once the grace period is over
    assert wait_exit(run) == 0
    assert "Closing 1 connection(s) still open" in run.log()


def test_second_sigterm_does_not_wait_for_the_grace(script: Any) -> None:
    port = free_port()
    run = script(listen_port=port, bind_address=["127.0.0.1"], grace=600.0)
    held, _ = greet(port, run=run)
    with held:
        run.popen.send_signal(signal.SIGTERM)
        run.wait_for_log(r"Waiting up to 600 seconds for 1 connection")
        run.popen.send_signal(signal.SIGINT)
        assert wait_exit(run) == 0


def test_stale_pid_file_is_replaced_but_a_live_one_refuses(script: Any, tmp_path: Path) -> None:
    pid_file = tmp_path / "perdition.pid"
    pid_file.write_text(f"{os.getpid()}\n")  # a live process: this test
    run = script(listen_port=free_port(), bind_address=["127.0.0.1"], pid_file=str(pid_file))
    assert wait_exit(run) == 1
    assert "appears to be running" in run.log()
    assert pid_file.read_text() == f"{os.getpid()}\n"
    pid_file.write_text("999999999\n")  # no such process
    port = free_port()
    run = script(listen_port=port, bind_address=["127.0.0.1"], pid_file=str(pid_file))
    greet(port, run=run)[0].close()
    assert pid_file.read_text() == f"{run.popen.pid}\n"
    assert "Removed stale pid-file" in run.log()


# ------------------------------------------------------------------ inetd mode


def test_inetd_mode_over_a_tcp_socket(tmp_path: Path) -> None:
    with socket.create_server((LOOPBACK, 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        served, _ = listener.accept()
    run = Script(tmp_path, inetd_mode=True)
    with client, served:
        popen = run.start(stdin=served.fileno(), stdout=served.fileno(),
                          stderr=run.log_path.open("ab"))
        served.close()  # the child has it now
        greeting = read_greeting(client, time.monotonic() + DEADLINE).decode()
        assert greeting.startswith(f"* OK hello client=('127.0.0.1', {client.getsockname()[1]})")
        assert f"local=('127.0.0.1', {client.getpeername()[1]})" in greeting
        assert echo(client, b"a1 NOOP\r\n") == b"a1 NOOP\r\n"
        assert echo(client, b"a2 LOGOUT\r\n") == b"* BYE\r\n"
        assert popen.wait(DEADLINE) == 0
        client.settimeout(DEADLINE)
        assert client.recv(100) == b""


def test_inetd_mode_over_a_unix_socketpair(tmp_path: Path) -> None:
    ours, theirs = socket.socketpair()
    run = Script(tmp_path, inetd_mode=True)
    with ours:
        popen = run.start(stdin=theirs.fileno(), stdout=theirs.fileno(),
                          stderr=run.log_path.open("ab"))
        theirs.close()
        greeting = read_greeting(ours, time.monotonic() + DEADLINE)
        assert greeting.startswith(b"* OK hello client=None local=None nodelay=0")
        assert echo(ours, b"x LOGOUT\r\n") == b"* BYE\r\n"
        assert popen.wait(DEADLINE) == 0


def test_inetd_mode_over_pipes(tmp_path: Path) -> None:
    run = Script(tmp_path, inetd_mode=True)
    popen = run.start(stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                      stderr=run.log_path.open("ab"))
    out, _ = popen.communicate(b"one\r\ntwo\r\n", timeout=DEADLINE)  # then EOF
    assert popen.returncode == 0, run.log()
    assert out == b"* OK hello client=None local=None nodelay=0 keepalive=0\r\none\r\ntwo\r\n"


def test_inetd_mode_pipes_session_ends_before_stdin_does(tmp_path: Path) -> None:
    run = Script(tmp_path, inetd_mode=True)
    popen = run.start(stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                      stderr=run.log_path.open("ab"))
    assert popen.stdin is not None and popen.stdout is not None
    popen.stdin.write(b"hi\r\nz LOGOUT\r\n")
    popen.stdin.flush()  # stdin stays open: the session itself ends the process
    assert popen.stdout.read() == (b"* OK hello client=None local=None nodelay=0 "
                                   b"keepalive=0\r\nhi\r\n* BYE\r\n")
    assert popen.wait(DEADLINE) == 0
    popen.stdin.close()


# ------------------------------------------------------------------ daemon


def _process_gone(pid: int) -> bool:
    """Exited, or a zombie nobody reaps (init in a container may not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return bool(re.search(r"^State:\s+Z", status, re.M))


def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + DEADLINE
    while not _process_gone(pid):
        assert time.monotonic() < deadline, f"process {pid} still running"
        time.sleep(0.05)  # polling another process's state


def test_daemon_detaches_and_writes_pid_file(tmp_path: Path) -> None:
    port = free_port()
    pid_file = tmp_path / "perdition.pid"
    log_file = tmp_path / "perdition.log"
    run = Script(tmp_path, listen_port=port, bind_address=["127.0.0.1"], no_daemon=False,
                 log_facility=str(log_file), pid_file=str(pid_file))
    popen = run.start(stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                      stderr=subprocess.STDOUT)
    out, _ = popen.communicate(timeout=DEADLINE)  # the foreground part returns
    assert popen.returncode == 0, out
    daemon = int(pid_file.read_text())  # written before the foreground part exited
    try:
        assert daemon != popen.pid
        assert os.getsid(daemon) != os.getsid(0)  # a session of its own
        assert os.getsid(daemon) != daemon  # and not its leader: no controlling tty ever
        assert os.readlink(f"/proc/{daemon}/cwd") == "/"
        assert os.readlink(f"/proc/{daemon}/fd/0") == "/dev/null"
        assert os.readlink(f"/proc/{daemon}/fd/1") == "/dev/null"
        sock, greeting = greet(port)
        sock.close()
        assert greeting.startswith("* OK hello")
    finally:
        os.kill(daemon, signal.SIGTERM)
    _wait_gone(daemon)
    assert not pid_file.exists()
    assert re.search(rf"perdition\[{daemon}\]: Exiting on signal 15", log_file.read_text())


def test_daemon_start_up_failure_reaches_the_shell(tmp_path: Path) -> None:
    pid_file = tmp_path / "perdition.pid"
    pid_file.write_text(f"{os.getpid()}\n")
    log_file = tmp_path / "perdition.log"
    run = Script(tmp_path, listen_port=free_port(), bind_address=["127.0.0.1"],
                 no_daemon=False, log_facility=str(log_file), pid_file=str(pid_file))
    popen = run.start(stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    assert popen.wait(DEADLINE) == 1
    assert "appears to be running" in log_file.read_text()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can change its identity")
def test_root_drops_to_username_and_group(script: Any, tmp_path: Path) -> None:
    port = free_port()
    pid_file = tmp_path / "perdition.pid"
    run = script(listen_port=port, bind_address=["127.0.0.1"], username="nobody",
                 group="nogroup", debug=True, pid_file=str(pid_file))
    sock, _ = greet(port, run=run)
    sock.close()
    # Written before the drop, owned by the new identity so it could remove it later.
    owner = pid_file.stat()
    assert (owner.st_uid, owner.st_gid) == (pwd.getpwnam("nobody").pw_uid,
                                            grp.getgrnam("nogroup").gr_gid)
    status = dict(line.split(":", 1) for line in
                  Path(f"/proc/{run.popen.pid}/status").read_text().splitlines())
    nobody = pwd.getpwnam("nobody").pw_uid
    nogroup = grp.getgrnam("nogroup").gr_gid
    assert [int(n) for n in status["Uid"].split()] == [nobody] * 4
    assert [int(n) for n in status["Gid"].split()] == [nogroup] * 4
    # initgroups: nobody's own groups, none of root's
    assert {int(n) for n in status["Groups"].split()} == set(os.getgrouplist("nobody", nogroup))
    assert f"uid={nobody} euid={nobody}" in run.log()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can change its identity")
def test_local_authentication_keeps_root(script: Any) -> None:
    port = free_port()
    run = script(listen_port=port, bind_address=["127.0.0.1"], username="nobody",
                 group="nogroup", authenticate_in=True)
    sock, _ = greet(port, run=run)
    sock.close()
    status = Path(f"/proc/{run.popen.pid}/status").read_text()
    assert re.search(r"^Uid:\s+0\s", status, re.M)  # PAM needs root for every login


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can change its identity")
def test_unknown_user_is_fatal(script: Any) -> None:
    run = script(listen_port=free_port(), bind_address=["127.0.0.1"],
                 username="no-such-user-here")
    assert wait_exit(run) == 255
    assert 'user "no-such-user-here" not found' in run.log()


def test_signal_handlers_are_restored_after_serve() -> None:
    code = (
        "import grp, os, pwd, signal, threading\n"
        "from perditionpy import server\n"
        "class O:\n"
        "    inetd_mode=False; no_daemon=True; log_facility='+'; pid_file=''\n"
        "    listen_port=0; bind_address=(); connection_limit=0; tcp_keepalive=False\n"
        "    authenticate_in=False; map_library=''; map_library_opt=''\n"
        "    username=pwd.getpwuid(os.geteuid()).pw_name\n"
        "    group=grp.getgrgid(os.getegid()).gr_name\n"
        "before = signal.getsignal(signal.SIGTERM)\n"
        "s = server.Server(O(), lambda *a: None, reload=lambda: None, prog='p')\n"
        "threading.Timer(0.2, s.stop).start()\n"
        "assert s.run() == 0\n"
        "assert signal.getsignal(signal.SIGTERM) is before\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                            timeout=DEADLINE, check=False)
    assert result.stdout == b"ok\n", result.stderr
