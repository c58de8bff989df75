"""The PostgreSQL map: perdition's ``libperditiondb_postgresql`` in Python (psycopg 3).

``-m`` is ``dbhost[:dbport[:dbname[:dbtable[:dbuser[:dbpwd[:servercol[:usercol[:portcol]]]]]]]]``
(see :mod:`perditionpy.maps._sql` for the splitting rules) with the defaults of
perdition's PostgreSQL library: host ``localhost`` (over TCP), libpq's default
port, database ``dbperdition``, table ``tblPerdition``, user and password
``perdition``, columns ``servername``, ``user`` and ``port``.  ``dbhost`` may be
a ``,``-list tried in order (``dbport`` then one port or one per host, as in
libpq); a host starting with ``/`` is a socket directory, an empty one libpq's
default.

The lookup is perdition's ``SELECT servername,port FROM tblPerdition WHERE
"user"=<key>``, but with the key as a bound parameter: perdition's library
pastes the key into the SQL unescaped, ours cannot be steered by it.  Values
end at their first space (``char(n)`` padding), the result is
``servername[:port]``; a NULL server is "not found".

Time limits: ``connect_timeout``, a server-side ``statement_timeout``, and a
client-side deadline that shuts the socket of a query the server never answers
(a hung or stopped server), so no lookup blocks a session for long.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Sequence
from typing import Any

from perditionpy.errors import MapError
from perditionpy.maps._sql import (
    DEFAULT_POOL_SIZE,
    SqlMap,
    SqlOptions,
    Target,
    Timeouts,
    parse_options,
    server_text,
)

__all__ = ["DEFAULTS", "PostgreSQLMap", "open_postgresql_map"]

logger = logging.getLogger(__name__)

DEFAULTS = SqlOptions(
    hosts="localhost", port="", dbname="dbperdition", table="tblPerdition",
    user="perdition", password="perdition",
    server_col="servername", user_col="user", port_col="port",
)

# How much longer than statement_timeout the client waits before giving up on
# the server altogether.
_GRACE_SECONDS = 1.0
_MIN_CONNECT_TIMEOUT = 2  # libpq's own minimum


class _Deadline:
    """Shut ``connection``'s socket if the query is still running after ``seconds``."""

    def __init__(self, connection: Any, seconds: float) -> None:
        self._connection = connection
        self._lock = threading.Lock()
        self._done = False
        self.expired = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self._done = True
        self._timer.cancel()

    def _expire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.expired = True
            _shutdown(self._connection)


def _shutdown(connection: Any) -> None:
    """Make a blocked read on ``connection`` fail at once."""
    try:
        duplicate = os.dup(connection.fileno())
    except Exception as exc:  # already closed: nothing to wake
        logger.debug("postgresql map: no socket to shut: %s", exc)
        return
    with socket.socket(fileno=duplicate) as sock:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError as exc:
            logger.debug("postgresql map: shutting a stuck connection: %s", exc)


class PostgreSQLMap(SqlMap[Any]):
    """perdition's PostgreSQL map over a small pool of psycopg connections."""

    name = "postgresql"
    dialect = "postgresql"

    def __init__(self, options: str = "", *, pool_size: int = DEFAULT_POOL_SIZE,
                 timeouts: Timeouts | None = None) -> None:
        try:
            import psycopg
            import psycopg.conninfo
        except ImportError as exc:
            raise MapError(self.name, f"psycopg is not installed: {exc}") from exc
        self._driver = psycopg
        self.driver_errors = (psycopg.Error,)
        parsed = parse_options(options, DEFAULTS, self.name)
        super().__init__(parsed, pool_size=pool_size, timeouts=timeouts)

    def _connect(self, target: Target) -> Any:
        options = self.options
        statement_ms = max(1, round(self.timeouts.query * 1000))
        params = {
            "host": target.host, "port": target.port, "dbname": options.dbname,
            "user": options.user, "password": options.password,
        }
        conninfo = self._driver.conninfo.make_conninfo(
            "", **{name: value for name, value in params.items() if value})
        return self._driver.connect(
            conninfo, connect_timeout=max(_MIN_CONNECT_TIMEOUT, round(self.timeouts.connect)),
            options=f"-c statement_timeout={statement_ms}",
            application_name="perditionpy", autocommit=True,
        )

    def _fetch(self, connection: Any, key: str) -> Sequence[Any] | None:
        with _Deadline(connection, self.timeouts.query + _GRACE_SECONDS) as deadline:
            try:
                row: Sequence[Any] | None = connection.execute(self.query, (key,)).fetchone()
            except self._driver.Error:
                if deadline.expired:
                    logger.warning("postgresql map: no answer in %gs; dropping the connection",
                                   self.timeouts.query + _GRACE_SECONDS)
                raise
        return row

    def _is_broken(self, connection: Any, error: BaseException) -> bool:
        return bool(connection.closed or connection.broken)

    def _disconnect(self, connection: Any) -> None:
        connection.close()

    def _server_text(self, row: Sequence[Any]) -> str:
        # The row is (server[, port]).
        port = row[1] if len(row) > 1 else None
        return server_text(row[0], port, cut_at_space=True)


def open_postgresql_map(options: str) -> PostgreSQLMap:
    """The registry's factory: a :class:`PostgreSQLMap` on the ``-m`` string."""
    return PostgreSQLMap(options)
