"""Running the proxy under test as a child process: perditionpy or the real perdition 2.2.

``start_perditionpy(args)`` and ``start_perdition(args)`` start the daemon in the
foreground (``--no_daemon``) logging to stderr (``-F +``), capture its output in a log
file, and return once it answers a TCP connection with a greeting. Both get the same
hermetic defaults: no config file (``-f ""``), no pid file (``--pid_file ""``), a
loopback bind address and a free port unless the caller chose one, and
RLIMIT_NOFILE 1024 as Debian's init gives a daemon.

The readiness probe is one real connection that reads the greeting and says
LOGOUT/QUIT: it shows up in the proxy's log as a ``Connect:`` line and a
``Closing NULL session:`` line before anything a test does.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.ports import LOOPBACK, free_port, wait_for_greeting

__all__ = [
    "PERDITION_BINARY",
    "REPO_ROOT",
    "Proc",
    "ProcError",
    "perdition_available",
    "start_perdition",
    "start_perditionpy",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
PERDITION_BINARY = "/usr/sbin/perdition"
DEFAULT_NOFILE = 1024
_READY_TIMEOUT = 20.0
_STOP_TIMEOUT = 10.0
_LISTEN_FLAGS = frozenset({"-l", "--listen_port", "-b", "--bind_address"})


class ProcError(RuntimeError):
    """A proxy process did not become ready; the message carries its log."""


class Proc:
    """A started proxy process with its port and captured log."""

    def __init__(
        self, argv: Sequence[str], popen: subprocess.Popen[bytes], log_path: Path, port: int
    ) -> None:
        self.argv = list(argv)
        self.popen = popen
        self.log_path = log_path
        self.port = port
        self.host = LOOPBACK

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        return self.log_path.read_bytes().decode("utf-8", "replace")

    def wait_for_log(self, pattern: str | re.Pattern[str], timeout: float = 10.0) -> re.Match[str]:
        """Poll the log until ``pattern`` matches (``re.search``); return the match."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.log_text())
            if match:
                return match
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{regex.pattern!r} not in log after {timeout}s:\n{self.log_text()}"
                )
            time.sleep(0.05)  # polling a file another process writes

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit by itself; return its exit status."""
        return self.popen.wait(timeout)

    def stop(self, timeout: float = _STOP_TIMEOUT) -> int:
        """SIGTERM, wait up to ``timeout``, then SIGKILL; also end children it left behind.

        Returns the exit status (negative: killed by that signal).
        """
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)
        # perdition forks one child per connection; they share our process group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        return self.popen.returncode

    def __enter__(self) -> Proc:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Proc pid={self.pid} port={self.port} argv={self.argv!r}>"


def perdition_available() -> bool:
    """True when the reference perdition 2.2 binary is installed."""
    return os.access(PERDITION_BINARY, os.X_OK)


def start_perditionpy(
    args: Sequence[str],
    *,
    port: int | None = None,
    greeting: bytes | None = b"",
    log_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
    nofile: int | None = DEFAULT_NOFILE,
    timeout: float = _READY_TIMEOUT,
    tree: Path | None = None,
    wrapper: Sequence[str] = (),
) -> Proc:
    """Start ``python -m perditionpy --no_daemon -F + <defaults> *args`` and wait for it.

    ``tree``: run the perditionpy of that checkout (another version, for
    bench/compare.py) instead of this repository's.  ``wrapper``: a command to
    run Python under (valgrind, for bench/instructions.py)."""
    command = [*wrapper, sys.executable, "-m", "perditionpy", "--no_daemon", "-F", "+"]
    launch = _Launch(port, greeting, log_dir, env, nofile, timeout, tree or REPO_ROOT)
    return _start("perditionpy", command, args, launch)


def start_perdition(
    args: Sequence[str],
    *,
    port: int | None = None,
    greeting: bytes | None = b"",
    log_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
    nofile: int | None = DEFAULT_NOFILE,
    timeout: float = _READY_TIMEOUT,
) -> Proc:
    """Start the real ``/usr/sbin/perdition`` the same way as ``start_perditionpy``."""
    if not perdition_available():
        raise ProcError(f"{PERDITION_BINARY} is not installed (scripts/install-deps.sh)")
    command = [PERDITION_BINARY, "--no_daemon", "-F", "+", *_identity_flags()]
    launch = _Launch(port, greeting, log_dir, env, nofile, timeout)
    return _start("perdition", command, args, launch)


def _identity_flags() -> list[str]:
    """perdition drops to nobody/nogroup; an ordinary user can only "drop" to itself."""
    if os.geteuid() == 0:
        return []
    user = pwd.getpwuid(os.geteuid()).pw_name
    return ["--username", user, "--group", grp.getgrgid(os.getegid()).gr_name]


@dataclass(frozen=True)
class _Launch:
    """How to start and probe one process (see ``start_perditionpy``).

    ``greeting``: the start of the line that ends the greeting (``b""`` = any line);
    ``None`` = only wait until the port accepts connections (e.g. IMAP4S, where the
    greeting comes after the TLS handshake).
    """

    port: int | None
    greeting: bytes | None
    log_dir: Path | None
    env: Mapping[str, str] | None
    nofile: int | None
    timeout: float
    cwd: Path = REPO_ROOT  # (python -m finds the package here)


def _start(name: str, command: list[str], args: Sequence[str], launch: _Launch) -> Proc:
    """Build the argv, spawn with output to a log file, and wait until it is ready."""
    argv = [*command, *_default_flags(args, launch.port), *args]
    port = launch.port or int(argv[argv.index("-l") + 1])
    log_dir = launch.log_dir or Path(tempfile.mkdtemp(prefix=f"{name}-"))
    log_path = _fresh_log_path(log_dir, name)
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=launch.cwd,
            env=_child_env(launch.env, launch.cwd),
            start_new_session=True,
            preexec_fn=_limit_files(launch.nofile),
        )
    proc = Proc(argv, popen, log_path, port)
    try:
        _wait_ready(proc, launch.greeting, launch.timeout)
    except (TimeoutError, ConnectionError, OSError) as exc:
        proc.stop()
        raise ProcError(
            f"{name} not ready on port {port}: {exc}\n{argv}\n{proc.log_text()}"
        ) from exc
    return proc


def _default_flags(args: Sequence[str], port: int | None) -> list[str]:
    """``-f "" --pid_file ""``, plus a loopback listener unless ``args`` choose one.

    When ``args`` carry their own ``-b``/``-l``, ``port`` must say where to probe.
    """
    defaults = ["-f", "", "--pid_file", ""]
    if any(arg.split("=")[0] in _LISTEN_FLAGS for arg in args):
        if port is None:
            raise ValueError("args set the listener: pass port= so readiness can be checked")
        return defaults
    return [*defaults, "-b", LOOPBACK, "-l", str(port or free_port())]


def _fresh_log_path(log_dir: Path, name: str) -> Path:
    log_dir.mkdir(parents=True, exist_ok=True)
    for index in range(1000):
        path = log_dir / f"{name}-{index}.log"
        if not path.exists():
            return path
    raise ProcError(f"too many logs in {log_dir}")


def _child_env(extra: Mapping[str, str] | None, tree: Path = REPO_ROOT) -> dict[str, str]:
    env = dict(os.environ)
    # perditionpy is run from the source tree even when it is not installed.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


def _limit_files(nofile: int | None) -> Callable[[], None] | None:
    if nofile is None:
        return None

    def apply() -> None:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        soft = nofile if hard == resource.RLIM_INFINITY else min(nofile, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return apply


def _wait_ready(proc: Proc, greeting: bytes | None, timeout: float) -> None:
    if greeting is None:
        _wait_accepting(proc, timeout)
        return
    wait_for_greeting(proc.port, timeout=timeout, until=greeting or b"\n", alive=proc.running)


def _wait_accepting(proc: Proc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.running():
            raise ConnectionError("process exited before it listened")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, proc.port), 1.0):
            return
        time.sleep(0.05)  # back-off between readiness attempts
    raise TimeoutError(f"port {proc.port} not accepting within {timeout}s")
