"""A private PostgreSQL 15 server for tests: its own cluster, loopback port and socket.

``Postgres().start()`` runs ``initdb`` in a fresh directory under /tmp (the
superuser ``postgres`` gets ``SUPERUSER_PASSWORD``; TCP logins need a
scram-sha-256 password, socket logins are trusted), starts ``postgres`` on a
free 127.0.0.1 port with its unix socket in that directory, and returns once a
real client connection succeeds.  ``stop()`` / ``start()`` keep the cluster,
port and socket.  ``sql()`` runs statements as the superuser.

``shared_postgres(request)`` is the session's one cluster, holding perdition's
map database (``create_map_database``); ``put_row`` fills it.

PostgreSQL refuses to run as root: as root the cluster belongs to, and the
server runs as, the ``postgres`` system account (or ``nobody``), which is why
the directory is made outside pytest's private temporary tree.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.support.ports import LOOPBACK, free_port

__all__ = [
    "MAP_DATABASE", "MAP_PASSWORD", "MAP_TABLE", "MAP_USER", "SUPERUSER_PASSWORD",
    "Postgres", "PostgresError", "create_map_database", "map_option", "postgres_bindir",
    "put_row", "shared_postgres",
]

SUPERUSER_PASSWORD = "pg-root-pw"
_BINDIRS = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin",
            "/usr/lib/postgresql/17/bin")
_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 30.0
_POLL_INTERVAL = 0.05


class PostgresError(RuntimeError):
    """The cluster could not be set up or started; the message carries its log."""


def postgres_bindir() -> Path | None:
    """The directory holding ``initdb`` and ``postgres``, if installed."""
    for directory in _BINDIRS:
        if os.access(os.path.join(directory, "postgres"), os.X_OK):
            return Path(directory)
    return None


def _run_as() -> pwd.struct_passwd | None:
    """The account the server must run as when we are root; ``None`` otherwise."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise PostgresError("running as root and there is no postgres or nobody account")


def _demote(account: pwd.struct_passwd | None) -> Callable[[], None] | None:
    if account is None:
        return None

    def apply() -> None:
        os.setgroups([])
        os.setgid(account.pw_gid)
        os.setuid(account.pw_uid)

    return apply


class Postgres:
    """One private cluster; ``port``/``socket_dir`` are fixed for its whole life."""

    def __init__(self) -> None:
        bindir = postgres_bindir()
        if bindir is None:
            raise PostgresError("PostgreSQL server binaries are not installed")
        self.bindir = bindir
        self.workdir = Path(tempfile.mkdtemp(prefix="perditionpy-pg-"))
        self.datadir = self.workdir / "data"
        self.socket_dir = self.workdir
        self.log_path = self.workdir / "postgres.log"
        self.host = LOOPBACK
        self.port = free_port()
        self._account = _run_as()
        self._proc: subprocess.Popen[bytes] | None = None
        if self._account is not None:
            os.chown(self.workdir, self._account.pw_uid, self._account.pw_gid)
        self.workdir.chmod(0o755)

    # ---------------------------------------------------------------- life cycle

    def start(self, timeout: float = _START_TIMEOUT) -> Postgres:
        """Initialise (first time only), start, and wait until a client gets in."""
        if not self.datadir.exists():
            self._initdb()
        log = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            self._proc = subprocess.Popen(
                self._server_command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True, preexec_fn=_demote(self._account),
            )
        finally:
            os.close(log)
        self._wait_ready(timeout)
        return self

    def stop(self, timeout: float = _STOP_TIMEOUT) -> None:
        """Fast shutdown (SIGINT: clients are disconnected) and wait; idempotent."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def remove(self) -> None:
        """Stop and delete the cluster."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_text(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    # ---------------------------------------------------------------- clients

    def connect(self, dbname: str = "postgres", **kwargs: Any) -> Any:
        """A psycopg connection as the superuser over the unix socket (autocommit)."""
        import psycopg

        return psycopg.connect(host=str(self.socket_dir), port=self.port, user="postgres",
                               dbname=dbname, connect_timeout=5, autocommit=True, **kwargs)

    def sql(self, statements: Sequence[str] | str, params: Sequence[Any] = (),
            dbname: str = "postgres") -> list[Any]:
        """Run statement(s) as the superuser; the rows of the last one."""
        if isinstance(statements, str):
            statements = [statements]
        with self.connect(dbname) as connection:
            rows: list[Any] = []
            for statement in statements:
                cursor = connection.execute(statement, tuple(params) or None)
                rows = cursor.fetchall() if cursor.description else []
            return rows

    def connections_of(self, user: str) -> int:
        """How many client sessions the server has open for ``user``."""
        rows = self.sql("SELECT count(*) FROM pg_stat_activity"
                        " WHERE usename = %s AND backend_type = 'client backend'", (user,))
        return int(rows[0][0])

    # ---------------------------------------------------------------- internals

    def _initdb(self) -> None:
        password_file = self.workdir / "superuser-password"
        password_file.write_text(SUPERUSER_PASSWORD + "\n")
        if self._account is not None:
            os.chown(password_file, self._account.pw_uid, self._account.pw_gid)
        command = [
            str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", "postgres",
            f"--pwfile={password_file}", "--auth-local=trust", "--auth-host=scram-sha-256",
            "--encoding=UTF8", "--locale=C", "--no-sync",
        ]
        result = subprocess.run(command, capture_output=True, timeout=120, check=False,
                                preexec_fn=_demote(self._account), cwd=self.workdir)
        password_file.unlink()
        if result.returncode != 0:
            raise PostgresError(f"{command} failed:\n{result.stdout!r}\n{result.stderr!r}")

    def _server_command(self) -> list[str]:
        settings = {
            "listen_addresses": self.host, "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir), "fsync": "off",
            "synchronous_commit": "off", "full_page_writes": "off",
            "shared_buffers": "16MB", "max_connections": "100",
        }
        command = [str(self.bindir / "postgres"), "-D", str(self.datadir)]
        for name, value in settings.items():
            command += ["-c", f"{name}={value}"]
        return command

    def _wait_ready(self, timeout: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if not self.running():
                raise PostgresError(f"postgres exited while starting:\n{self.log_text()}")
            try:
                self.connect().close()
                return
            except psycopg.Error as exc:
                last = exc
            time.sleep(_POLL_INTERVAL)  # back-off between readiness attempts
        self.stop()
        raise PostgresError(f"postgres not ready in {timeout}s: {last!r}\n{self.log_text()}")


# ---------------------------------------------------------------------- the map's database

MAP_DATABASE = "dbperdition"
MAP_TABLE = "tblPerdition"
MAP_USER = "perdition"
MAP_PASSWORD = "perdition-pw"

_SHARED: list[Postgres] = []


def shared_postgres(request: Any) -> Postgres:
    """The one cluster of this test session, with the map's database; started on first use.

    ``request`` is a pytest ``FixtureRequest``: the cluster is removed when the
    session ends.  Skips (fails under ``CI``) when PostgreSQL is not installed.
    """
    if _SHARED:
        if not _SHARED[0].running():
            _SHARED[0].start()
        return _SHARED[0]
    if postgres_bindir() is None:
        _unavailable("PostgreSQL (initdb, postgres)")
    server = Postgres()
    request.config.add_cleanup(server.remove)
    server.start()
    create_map_database(server)
    _SHARED.append(server)
    return server


def _unavailable(what: str) -> None:
    import pytest

    message = f"{what} is not installed: run scripts/install-deps.sh as root"
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail(message)
    pytest.skip(message)


def create_map_database(server: Postgres) -> None:
    """perdition's schema (columns as perditiondb_postgresql_makedb names them), owned
    by ``MAP_USER``; ``char(n)`` columns, so values come back space-padded."""
    server.sql([
        f"CREATE ROLE {MAP_USER} LOGIN PASSWORD '{MAP_PASSWORD}'",
        f"CREATE DATABASE {MAP_DATABASE} OWNER {MAP_USER}",
    ])
    server.sql([
        f'CREATE TABLE {MAP_TABLE} ("user" varchar(128) NOT NULL PRIMARY KEY,'
        ' "servername" char(255) NOT NULL, "port" char(8) DEFAULT NULL)',
        f"ALTER TABLE {MAP_TABLE} OWNER TO {MAP_USER}",
    ], dbname=MAP_DATABASE)


def put_row(server: Postgres, key: str, servername: str, port: str | None = None) -> None:
    """Insert or replace the map row for ``key``."""
    server.sql(f'INSERT INTO {MAP_TABLE} VALUES (%s, %s, %s) ON CONFLICT ("user")'
               ' DO UPDATE SET servername = EXCLUDED.servername, port = EXCLUDED.port',
               (key, servername, port), dbname=MAP_DATABASE)


def map_option(server: Postgres, host: str | None = None) -> str:
    """The ``-m`` string (host to password) for the map's database over TCP."""
    return (f"{host or server.host}:{server.port}:{MAP_DATABASE}:{MAP_TABLE}:"
            f"{MAP_USER}:{MAP_PASSWORD}")
