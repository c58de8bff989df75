"""A private MariaDB server for tests: its own data directory, loopback port and socket.

``MariaDB(workdir).start()`` initialises a data directory with
``mariadb-install-db`` (root without a password, no test database), starts
``mariadbd`` on a free 127.0.0.1 port with its unix socket in ``workdir``, and
returns once a real client connection succeeds.  ``stop()`` / ``start()`` again
keep the data, port and socket: that is how tests take the server away from a
running proxy and bring it back.  ``sql()`` runs statements as root.

``shared_mariadb(request)`` is the session's one server, holding perdition's
map database (``create_map_database``); ``put_row`` fills it.

The server runs as the invoking user (``--user=root`` when that is root, which
mariadbd otherwise refuses).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.support.ports import LOOPBACK, free_port

__all__ = [
    "MAP_DATABASE", "MAP_PASSWORD", "MAP_TABLE", "MAP_USER",
    "MariaDB", "MariaDBError", "create_map_database", "map_option", "mariadb_binaries",
    "put_row", "shared_mariadb",
]

_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 30.0
_POLL_INTERVAL = 0.05


class MariaDBError(RuntimeError):
    """The server could not be set up or started; the message carries its log."""


def mariadb_binaries() -> tuple[str, str] | None:
    """(mariadbd, mariadb-install-db) when both are installed."""
    server = _which("mariadbd") or _which("mysqld")
    install = _which("mariadb-install-db") or _which("mysql_install_db")
    if server is None or install is None:
        return None
    return server, install


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")


class MariaDB:
    """One private server; ``port``/``socket`` are fixed for its whole life."""

    def __init__(self, workdir: Path) -> None:
        binaries = mariadb_binaries()
        if binaries is None:
            raise MariaDBError("mariadbd / mariadb-install-db are not installed")
        self.server_binary, self.install_binary = binaries
        self.workdir = workdir
        self.datadir = workdir / "data"
        self.socket = workdir / "mysqld.sock"
        self.log_path = workdir / "mariadb.log"
        self.host = LOOPBACK
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    # ---------------------------------------------------------------- life cycle

    def start(self, timeout: float = _START_TIMEOUT) -> MariaDB:
        """Initialise (first time only), start, and wait until a client gets in."""
        if not self.datadir.exists():
            self._install()
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self._server_command(), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        self._wait_ready(timeout)
        return self

    def stop(self, timeout: float = _STOP_TIMEOUT) -> None:
        """Shut the server down (SIGTERM) and wait for it to exit; idempotent."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_text(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    # ---------------------------------------------------------------- clients

    def connect(self, **kwargs: Any) -> Any:
        """A MySQLdb connection as root over the unix socket (autocommit)."""
        import MySQLdb  # type: ignore[import-untyped]

        kwargs.setdefault("user", "root")
        connection = MySQLdb.connect(unix_socket=str(self.socket), connect_timeout=5,
                                     charset="utf8mb4", **kwargs)
        connection.autocommit(True)
        return connection

    def sql(self, statements: Sequence[str] | str, params: Sequence[Any] = ()) -> list[Any]:
        """Run statement(s) as root; the rows of the last one."""
        if isinstance(statements, str):
            statements = [statements]
        connection = self.connect()
        try:
            cursor = connection.cursor()
            rows: list[Any] = []
            for statement in statements:
                cursor.execute(statement, tuple(params) or None)
                rows = list(cursor.fetchall() or [])
            return rows
        finally:
            connection.close()

    def connections_of(self, user: str) -> int:
        """How many sessions the server has open for ``user``."""
        rows = self.sql("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = %s",
                        (user,))
        return int(rows[0][0])

    def kill_sessions(self, user: str) -> int:
        """End every session of ``user`` (and the query it runs); how many there were."""
        rows = self.sql("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s", (user,))
        for (session,) in rows:
            with contextlib.suppress(Exception):  # it may have ended meanwhile
                self.sql(f"KILL {int(session)}")
        return len(rows)

    # ---------------------------------------------------------------- internals

    def _identity(self) -> str:
        return "root" if os.geteuid() == 0 else getpass.getuser()

    def _install(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        command = [
            self.install_binary, "--no-defaults", f"--datadir={self.datadir}",
            f"--user={self._identity()}", "--auth-root-authentication-method=normal",
            "--skip-test-db", "--skip-name-resolve",
        ]
        result = subprocess.run(command, capture_output=True, timeout=120, check=False)
        if result.returncode != 0:
            raise MariaDBError(f"{command} failed:\n{result.stdout!r}\n{result.stderr!r}")

    def _server_command(self) -> list[str]:
        return [
            self.server_binary, "--no-defaults", f"--datadir={self.datadir}",
            f"--user={self._identity()}", f"--socket={self.socket}", f"--port={self.port}",
            f"--bind-address={self.host}", f"--pid-file={self.workdir / 'mariadb.pid'}",
            "--skip-name-resolve", "--skip-log-bin", "--innodb-buffer-pool-size=16M",
            "--innodb-log-file-size=8M", "--max-connections=200",
            "--character-set-server=utf8mb4", "--collation-server=utf8mb4_general_ci",
        ]

    def _wait_ready(self, timeout: float) -> None:
        import MySQLdb

        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if not self.running():
                raise MariaDBError(f"mariadbd exited while starting:\n{self.log_text()}")
            try:
                self.connect().close()
                return
            except MySQLdb.Error as exc:
                last = exc
            time.sleep(_POLL_INTERVAL)  # back-off between readiness attempts
        self.stop()
        raise MariaDBError(f"mariadbd not ready in {timeout}s: {last!r}\n{self.log_text()}")


# ---------------------------------------------------------------------- the map's database

MAP_DATABASE = "dbPerdition"
MAP_TABLE = "tblPerdition"
MAP_USER = "perdition"
MAP_PASSWORD = "perdition-pw"

_SHARED: list[MariaDB] = []


def shared_mariadb(request: Any) -> MariaDB:
    """The one server of this test session, with the map's database; started on first use.

    ``request`` is a pytest ``FixtureRequest``: the server is stopped when the
    session ends.  Skips (fails under ``CI``) when MariaDB is not installed.
    """
    if _SHARED:
        if not _SHARED[0].running():
            _SHARED[0].start()
        return _SHARED[0]
    if mariadb_binaries() is None:
        _unavailable("MariaDB (mariadbd, mariadb-install-db)")
    server = MariaDB(Path(tempfile.mkdtemp(prefix="perditionpy-mariadb-")))
    request.config.add_cleanup(lambda: _remove(server))
    server.start()
    create_map_database(server)
    _SHARED.append(server)
    return server


def _remove(server: MariaDB) -> None:
    server.stop()
    shutil.rmtree(server.workdir, ignore_errors=True)


def _unavailable(what: str) -> None:
    import pytest

    message = f"{what} is not installed: run scripts/install-deps.sh as root"
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail(message)
    pytest.skip(message)


def create_map_database(server: MariaDB) -> None:
    """perdition's schema (as perditiondb_mysql_makedb makes it), owned by ``MAP_USER``."""
    server.sql([
        f"CREATE DATABASE {MAP_DATABASE}",
        f"CREATE USER '{MAP_USER}'@'%' IDENTIFIED BY '{MAP_PASSWORD}'",
        f"GRANT ALL PRIVILEGES ON {MAP_DATABASE}.* TO '{MAP_USER}'@'%'",
        f"CREATE TABLE {MAP_DATABASE}.{MAP_TABLE} (user varchar(128) NOT NULL PRIMARY KEY,"
        " servername varchar(255) NOT NULL, port varchar(8) DEFAULT NULL)",
    ])


def put_row(server: MariaDB, key: str, servername: str, port: str | None = None) -> None:
    """Insert or replace the map row for ``key``."""
    server.sql(f"REPLACE INTO {MAP_DATABASE}.{MAP_TABLE} VALUES (%s, %s, %s)",
               (key, servername, port))


def map_option(server: MariaDB, host: str | None = None) -> str:
    """The ``-m`` string (host to password) for the map's database over TCP."""
    return (f"{host or server.host}:{server.port}:{MAP_DATABASE}:{MAP_TABLE}:"
            f"{MAP_USER}:{MAP_PASSWORD}")
