"""The systems under test, each started privately on loopback in front of one Dovecot.

``bench_dovecot()`` is the shared back-end, tuned so that it is not the bottleneck:
login processes reused (``service_count = 0``), mail processes that serve many
clients each, high per-user/IP limits, no per-login debug logging. The targets:

* ``backend``   -- Dovecot itself (the ceiling);
* ``perdition`` -- perdition 2.2, RLIMIT_NOFILE 1024 as Debian's init gives it;
* ``nginx``     -- the NGINX mail proxy, auth_http answered by a fixed ``location``;
* ``perditionpy`` -- this project, ``python -m perditionpy`` (``--workers N``: a
  supervisor and N processes sharing each port through SO_REUSEPORT).

Each is a context manager yielding a :class:`Target` with its IMAP and POP3 ports,
the root pids whose process trees are charged for CPU and memory, and how it
spreads connections over processes (for the 10,000-connection feasibility check).
Given a certificate (:func:`make_certificate`), each also listens for TLS from the
first byte (IMAPS/POP3S, back-end plain) on ports of its own -- in processes of
their own for perdition and perditionpy, outside the charged trees -- so the plain
figures are untouched.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.procstat import find_pids
from tests.support.dovecot import Dovecot, MailUser, TlsFiles, big_message, make_message
from tests.support.ports import LOOPBACK, free_ports, wait_for_greeting
from tests.support.procs import Proc, perdition_available, start_perdition, start_perditionpy

__all__ = [
    "BENCH_USERS",
    "BIG_USER",
    "PASSWORD",
    "RELAY_SIZE",
    "Target",
    "TlsFiles",
    "backend",
    "bench_dovecot",
    "make_certificate",
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
# SO_REUSEPORT (perditionpy) and nginx's accept() race spread connections unevenly:
# the feasibility check lets one process take this much more than its fair share.
_SPREAD_SKEW = 1.1

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


def stop_cleanly_on_sigterm() -> None:
    """Make SIGTERM (``timeout``, ``kill``) unwind like Ctrl-C does, through every
    ``with`` that stops a Dovecot, a proxy or a load generator: they run in
    sessions of their own and would outlive a process killed outright."""
    def leave(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, leave)


@dataclass(frozen=True)
class Target:
    """One system under test.

    ``spread``: how many processes share its connections -- ``None`` when it forks
    one per connection (perdition), else a fixed count (perditionpy's and NGINX's
    workers). ``imaps_port``/``pop3s_port``: its TLS-from-the-first-byte listeners,
    ``None`` without a certificate.
    """

    name: str
    label: str
    imap_port: int
    pop3_port: int
    roots: tuple[int, ...]
    spread: int | None
    version: str
    imaps_port: int | None = None
    pop3s_port: int | None = None

    def port(self, proto: str, *, tls: bool = False) -> int | None:
        if proto == "imap":
            return self.imaps_port if tls else self.imap_port
        return self.pop3s_port if tls else self.pop3_port

    def can_hold(self, connections: int, nofile: int = HARD_NOFILE) -> str | None:
        """Why ``connections`` idle proxied sessions cannot fit the fd limit, or None."""
        if self.spread is None or self.name == "backend":
            return None
        share = connections if self.spread == 1 else math.ceil(
            connections / self.spread * _SPREAD_SKEW)
        needed = 2 * share + 64  # client + back-end socket each
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


def bench_dovecot(workdir: Path, tls: TlsFiles | None = None) -> Dovecot:
    """The shared back-end; with ``tls`` it also serves IMAPS and POP3S (the TLS ceiling)."""
    return Dovecot(users=bench_users(), workdir=workdir, tls=tls, extra_config=_DOVECOT_TUNING)


def make_certificate(directory: Path) -> TlsFiles:
    """A fresh self-signed certificate and key for ``localhost`` (the generator does not
    verify it); made with ``openssl`` so nothing beyond the OS is needed."""
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(directory / "cert.pem", directory / "key.pem")
    done = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-keyout", str(files.key), "-out", str(files.cert)],
        capture_output=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"openssl req failed: {done.stderr.decode(errors='replace')}")
    return files


def _version(package: str) -> str:
    """The installed Debian package's version, or ``?``."""
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package],
                             capture_output=True, timeout=10, check=False)
    except OSError:
        return "?"
    return out.stdout.decode("utf-8", "replace").strip() or "?"


# --------------------------------------------------------------------------- targets


def dovecot_roots(dovecot: Dovecot) -> tuple[int, ...]:
    """The processes of ``dovecot`` (its children are found under them when sampled)."""
    assert dovecot.workdir is not None
    return tuple(find_pids(f"-c {dovecot.workdir / 'dovecot.conf'}"))


@contextlib.contextmanager
def backend(dovecot: Dovecot) -> Iterator[Target]:
    tls = dovecot.tls is not None
    yield Target("backend", "Dovecot (direct)", dovecot.imap_port, dovecot.pop3_port,
                 dovecot_roots(dovecot), None, _version("dovecot-core"),
                 dovecot.imaps_port if tls else None, dovecot.pop3s_port if tls else None)


def _proxy_args(protocol: str, port: int, tls: TlsFiles | None = None) -> list[str]:
    """The same flags for perdition and perditionpy; with ``tls``, SSL towards clients."""
    args = ["-P", protocol, "-M", "", "-s", f"{LOOPBACK}:{port}"]
    if tls is not None:
        args += ["--ssl_mode", "ssl_listen", "--ssl_cert_file", str(tls.cert),
                 "--ssl_key_file", str(tls.key)]
    return args


# (protocol flag, which Dovecot port, TLS towards clients) for each listener a proxy runs.
_LISTENERS = (("IMAP4", "imap", False), ("POP3", "pop3", False),
              ("IMAP4", "imap", True), ("POP3", "pop3", True))


def _start_listeners(stack: contextlib.ExitStack, start: Callable[..., Proc], dovecot: Dovecot,
                     tls: TlsFiles | None, extra: Sequence[str], *, log_dir: Path,
                     nofile: int) -> list[Proc]:
    """One process per listener of ``_LISTENERS`` (the TLS ones only given ``tls``)."""
    procs = []
    for protocol, proto, secure in _LISTENERS:
        if secure and tls is None:
            continue
        back = dovecot.imap_port if proto == "imap" else dovecot.pop3_port
        args = [*_proxy_args(protocol, back, tls if secure else None), *extra]
        # With TLS from the first byte, readiness can only be "accepts connections".
        procs.append(stack.enter_context(start(args, log_dir=log_dir, nofile=nofile,
                                               greeting=None if secure else b"")))
    return procs


def _target(name: str, label: str, procs: Sequence[Proc], spread: int | None,
            version: str) -> Target:
    """The plain pair is charged; the TLS pair, if any, only gives its ports."""
    imap, pop3, *secure = procs
    imaps, pop3s = (secure[0].port, secure[1].port) if secure else (None, None)
    return Target(name, label, imap.port, pop3.port, (imap.pid, pop3.pid), spread, version,
                  imaps, pop3s)


@contextlib.contextmanager
def perdition(dovecot: Dovecot, log_dir: Path, tls: TlsFiles | None = None) -> Iterator[Target]:
    with contextlib.ExitStack() as stack:
        procs = _start_listeners(stack, start_perdition, dovecot, tls, (),
                                 log_dir=log_dir, nofile=1024)
        yield _target("perdition", "perdition 2.2", procs, None, _version("perdition"))


@contextlib.contextmanager
def perditionpy(dovecot: Dovecot, log_dir: Path, *, workers: int = 1,
                tls: TlsFiles | None = None) -> Iterator[Target]:
    """``workers`` > 1: ``--workers N``, whose processes are children of the charged root.

    Each process holds its connections' sockets itself: give it the hard limit
    (perdition's 1024 is per forked child)."""
    extra = ["--workers", str(workers)] if workers > 1 else []
    how = f"working tree, --workers {workers}" if workers > 1 else "working tree, one process"
    with contextlib.ExitStack() as stack:
        procs = _start_listeners(stack, start_perditionpy, dovecot, tls, extra,
                                 log_dir=log_dir, nofile=HARD_NOFILE)
        yield _target("perditionpy", "perditionpy", procs, workers, how)


# --------------------------------------------------------------------------- nginx


def nginx_available() -> bool:
    return os.access(NGINX_BINARY, os.X_OK) and os.path.exists(NGINX_MAIL_MODULE)


def _nginx_tls_servers(tls: TlsFiles | None, imaps: int, pop3s: int) -> str:
    """The IMAPS/POP3S ``server`` blocks of the mail section ('' without ``tls``)."""
    if tls is None:
        return ""
    return f"""
  ssl_certificate {tls.cert};
  ssl_certificate_key {tls.key};
  server {{
    listen {LOOPBACK}:{imaps} ssl;
    protocol imap;
    imap_auth login plain;
  }}
  server {{
    listen {LOOPBACK}:{pop3s} ssl;
    protocol pop3;
    pop3_auth plain;
  }}"""


def nginx_config(prefix: Path, ports: Sequence[int], dovecot: Dovecot,
                 tls: TlsFiles | None = None) -> str:
    """A private nginx.conf: the mail proxy and the fixed-answer auth_http location.

    ``ports``: IMAP, POP3, auth_http, then (used only with ``tls``) IMAPS and POP3S."""
    imap, pop3, auth, imaps, pop3s = ports
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
  }}{_nginx_tls_servers(tls, imaps, pop3s)}
}}
"""


@contextlib.contextmanager
def nginx(dovecot: Dovecot, log_dir: Path, tls: TlsFiles | None = None) -> Iterator[Target]:
    """One nginx (master and workers) for every listener, the TLS ones included."""
    log_dir.mkdir(parents=True, exist_ok=True)
    prefix = Path(tempfile.mkdtemp(prefix="nginx-", dir=log_dir))
    (prefix / "tmp").mkdir()
    ports = free_ports(5)
    imap, pop3, _, imaps, pop3s = ports
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_config(prefix, ports, dovecot, tls))
    with (prefix / "stderr.log").open("wb") as log:
        proc = subprocess.Popen([NGINX_BINARY, "-p", str(prefix), "-c", str(conf)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        for port, first in ((imap, b"* OK"), (pop3, b"+OK")):
            wait_for_greeting(port, timeout=_READY_TIMEOUT, until=first,
                              alive=lambda: proc.poll() is None)
        if tls is not None:
            for port in (imaps, pop3s):
                _wait_accepting(port, alive=lambda: proc.poll() is None)
        yield Target("nginx", "NGINX mail", imap, pop3, (proc.pid,), NGINX_WORKERS,
                     _version("libnginx-mod-mail"), *((imaps, pop3s) if tls else (None, None)))
    finally:
        _stop(proc)
        shutil.rmtree(prefix, ignore_errors=True)


def _wait_accepting(port: int, *, alive: Callable[[], bool]) -> None:
    """Until ``port`` accepts a connection (a TLS listener greets only after a handshake)."""
    deadline = time.monotonic() + _READY_TIMEOUT
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"nginx exited before port {port} listened")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 1.0):
            return
        time.sleep(0.05)  # back-off between readiness attempts
    raise TimeoutError(f"nginx: port {port} not accepting within {_READY_TIMEOUT}s")


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
