"""The systems under test, each started privately on loopback in front of one Dovecot.

``bench_dovecot()`` is the shared back-end, tuned so that it is not the bottleneck:
login processes reused (``service_count = 0``), mail processes that serve many
clients each, high per-user/IP limits, no per-login debug logging. The targets:

* ``backend``   -- Dovecot itself (the ceiling);
* ``perdition`` -- perdition 2.2, RLIMIT_NOFILE 1024 as Debian's init gives it;
* ``nginx``     -- the NGINX mail proxy, auth_http answered by a fixed ``location``;
* ``perditionpy`` -- this project, ``python -m perditionpy``.

Each is a context manager yielding a :class:`Target` with its IMAP and POP3 ports,
the root pids whose process trees are charged for CPU and memory, and how it
spreads connections over processes (for the 10,000-connection feasibility check).
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.procstat import find_pids
from tests.support.dovecot import Dovecot, MailUser, big_message, make_message
from tests.support.ports import LOOPBACK, free_ports, wait_for_greeting
from tests.support.procs import perdition_available, start_perdition, start_perditionpy

__all__ = [
    "BENCH_USERS",
    "BIG_USER",
    "PASSWORD",
    "RELAY_SIZE",
    "Target",
    "backend",
    "bench_dovecot",
    "nginx",
    "nginx_available",
    "perdition",
    "perdition_available",
    "perditionpy",
]

PASSWORD = "bench-pw"
BENCH_USERS = 64          # accounts bench0 .. bench63, one small message each
BIG_USER = "big0"         # one account holding the relay test message
RELAY_SIZE = 20 * 1024 * 1024
HARD_NOFILE = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
NGINX_BINARY = "/usr/sbin/nginx"
NGINX_MAIL_MODULE = "/usr/lib/nginx/modules/ngx_mail_module.so"
NGINX_WORKERS = 2         # one per core on the 2-core bench machine
_READY_TIMEOUT = 30.0

# Appended to the test-suite Dovecot config; later sections and settings win.
_DOVECOT_TUNING = """
auth_debug = no
auth_verbose = no
info_log_path = /dev/null
mail_max_userip_connections = 20000
service imap-login {
  service_count = 0
  process_min_avail = 2
  client_limit = 5000
}
service pop3-login {
  service_count = 0
  process_min_avail = 2
  client_limit = 5000
}
service imap {
  service_count = 0
  client_limit = 100
  process_limit = 512
  process_min_avail = 2
}
service pop3 {
  service_count = 0
  client_limit = 100
  process_limit = 512
  process_min_avail = 2
}
"""


@dataclass(frozen=True)
class Target:
    """One system under test.

    ``spread``: how many processes share its connections -- ``None`` when it forks
    one per connection (perdition), else a fixed count (one for perditionpy today,
    the workers for NGINX).
    """

    name: str
    label: str
    imap_port: int
    pop3_port: int
    roots: tuple[int, ...]
    spread: int | None
    version: str

    def can_hold(self, connections: int, nofile: int = HARD_NOFILE) -> str | None:
        """Why ``connections`` idle proxied sessions cannot fit the fd limit, or None."""
        if self.spread is None or self.name == "backend":
            return None
        needed = 2 * connections // self.spread + 64  # client + back-end socket each
        if needed <= nofile:
            return None
        return (f"{self.label}: {connections:,} sessions need ~{needed:,} descriptors in "
                f"each of {self.spread} process(es); the hard limit is {nofile:,}")


def bench_users() -> tuple[MailUser, ...]:
    small = tuple(
        MailUser(f"bench{n}", PASSWORD.encode(), (make_message(n, "bench", b"Hello.\n"),))
        for n in range(BENCH_USERS)
    )
    return (*small, MailUser(BIG_USER, PASSWORD.encode(), (big_message(RELAY_SIZE),)))


def bench_dovecot(workdir: Path) -> Dovecot:
    return Dovecot(users=bench_users(), workdir=workdir, extra_config=_DOVECOT_TUNING)


def _version(package: str) -> str:
    """The installed Debian package's version, or ``?``."""
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package],
                             capture_output=True, timeout=10, check=False)
    except OSError:
        return "?"
    return out.stdout.decode("utf-8", "replace").strip() or "?"


# --------------------------------------------------------------------------- targets


@contextlib.contextmanager
def backend(dovecot: Dovecot) -> Iterator[Target]:
    assert dovecot.workdir is not None
    pids = find_pids(f"-c {dovecot.workdir / 'dovecot.conf'}")
    yield Target("backend", "Dovecot (direct)", dovecot.imap_port, dovecot.pop3_port,
                 tuple(pids), None, _version("dovecot-core"))


def _proxy_args(protocol: str, port: int) -> list[str]:
    return ["-P", protocol, "-M", "", "-s", f"{LOOPBACK}:{port}"]


@contextlib.contextmanager
def perdition(dovecot: Dovecot, log_dir: Path) -> Iterator[Target]:
    with contextlib.ExitStack() as stack:
        imap = stack.enter_context(start_perdition(
            _proxy_args("IMAP4", dovecot.imap_port), log_dir=log_dir, nofile=1024))
        pop3 = stack.enter_context(start_perdition(
            _proxy_args("POP3", dovecot.pop3_port), log_dir=log_dir, nofile=1024))
        yield Target("perdition", "perdition 2.2", imap.port, pop3.port,
                     (imap.pid, pop3.pid), None, _version("perdition"))


@contextlib.contextmanager
def perditionpy(dovecot: Dovecot, log_dir: Path) -> Iterator[Target]:
    # A threaded server holds every connection's sockets itself: give it the hard
    # limit (perdition's 1024 is per forked child).
    with contextlib.ExitStack() as stack:
        imap = stack.enter_context(start_perditionpy(
            _proxy_args("IMAP4", dovecot.imap_port), log_dir=log_dir, nofile=HARD_NOFILE))
        pop3 = stack.enter_context(start_perditionpy(
            _proxy_args("POP3", dovecot.pop3_port), log_dir=log_dir, nofile=HARD_NOFILE))
        yield Target("perditionpy", "perditionpy", imap.port, pop3.port,
                     (imap.pid, pop3.pid), 1, "working tree")


# --------------------------------------------------------------------------- nginx


def nginx_available() -> bool:
    return os.access(NGINX_BINARY, os.X_OK) and os.path.exists(NGINX_MAIL_MODULE)


def nginx_config(prefix: Path, imap: int, pop3: int, auth: int, dovecot: Dovecot) -> str:
    """A private nginx.conf: the mail proxy and the fixed-answer auth_http location."""
    worker_connections = max(1024, HARD_NOFILE - 64)
    return f"""
load_module {NGINX_MAIL_MODULE};
daemon off;
master_process on;
worker_processes {NGINX_WORKERS};
worker_rlimit_nofile {HARD_NOFILE};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections {worker_connections}; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/tmp/body;
  proxy_temp_path {prefix}/tmp/proxy;
  fastcgi_temp_path {prefix}/tmp/fastcgi;
  uwsgi_temp_path {prefix}/tmp/uwsgi;
  scgi_temp_path {prefix}/tmp/scgi;
  map $http_auth_protocol $bench_port {{
    imap {dovecot.imap_port};
    pop3 {dovecot.pop3_port};
  }}
  server {{
    listen {LOOPBACK}:{auth};
    location = /auth {{
      add_header Auth-Status OK always;
      add_header Auth-Server {LOOPBACK} always;
      add_header Auth-Port $bench_port always;
      return 204;
    }}
  }}
}}
mail {{
  auth_http {LOOPBACK}:{auth}/auth;
  proxy_pass_error_message on;
  server {{
    listen {LOOPBACK}:{imap};
    protocol imap;
    imap_auth login plain;
  }}
  server {{
    listen {LOOPBACK}:{pop3};
    protocol pop3;
    pop3_auth plain;
  }}
}}
"""


@contextlib.contextmanager
def nginx(dovecot: Dovecot, log_dir: Path) -> Iterator[Target]:
    prefix = Path(tempfile.mkdtemp(prefix="nginx-", dir=log_dir))
    (prefix / "tmp").mkdir()
    imap, pop3, auth = free_ports(3)
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_config(prefix, imap, pop3, auth, dovecot))
    with (prefix / "stderr.log").open("wb") as log:
        proc = subprocess.Popen([NGINX_BINARY, "-p", str(prefix), "-c", str(conf)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        for port, first in ((imap, b"* OK"), (pop3, b"+OK")):
            wait_for_greeting(port, timeout=_READY_TIMEOUT, until=first,
                              alive=lambda: proc.poll() is None)
        yield Target("nginx", "NGINX mail", imap, pop3, (proc.pid,), NGINX_WORKERS,
                     _version("libnginx-mod-mail"))
    finally:
        _stop(proc)
        shutil.rmtree(prefix, ignore_errors=True)


def _stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()  # nginx: fast shutdown
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # any worker left behind
