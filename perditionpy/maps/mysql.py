"""The MySQL/MariaDB map: perdition's ``libperditiondb_mysql`` in Python (mysqlclient).

``-m`` is ``dbhost[:dbport[:dbname[:dbtable[:dbuser[:dbpwd[:servercol[:usercol[:portcol]]]]]]]]``
(see :mod:`perditionpy.maps._sql` for the splitting rules) with the defaults of
perdition's MySQL library: ``localhost``, the client library's default port,
database ``dbPerdition``, table ``tblPerdition``, user and password
``perdition``, columns ``servername``, ``user`` and ``port``.  ``dbhost`` may be
a ``,``-list tried in order.  ``localhost`` means the server's unix socket, as
with every MySQL client; a host that starts with ``/`` is taken as the path of
a unix socket (an addition: perdition's library cannot name a socket).

The lookup is perdition's ``select user,servername,port from tblPerdition
where user=<key>`` with the key bound by the driver; the result is
``servername[:port]`` (no port when the column is NULL or empty, or when the
port column is configured as empty).  The comparison is the server's, so with
the usual collations it ignores case and trailing spaces, as under perdition.
"""

from __future__ import annotations

import logging
import re
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

__all__ = ["DEFAULTS", "MySQLMap", "open_mysql_map"]

logger = logging.getLogger(__name__)

DEFAULTS = SqlOptions(
    hosts="localhost", port="", dbname="dbPerdition", table="tblPerdition",
    user="perdition", password="perdition",
    server_col="servername", user_col="user", port_col="port",
)

# Client errors (CR_*, 2000-2999) and the server's "you are disconnected"
# errors: the connection is unusable after them.
_CLIENT_ERRORS = range(2000, 3000)
_DISCONNECTED = frozenset({1053, 1927, 4031})  # shutdown, killed, idle timeout
_ATOI = re.compile(r"\s*([+-]?\d+)")
_MAX_PORT = 65535


def _atoi(text: str) -> int:
    """C's ``atoi``, as perdition reads the port: leading digits, else 0."""
    match = _ATOI.match(text)
    return int(match.group(1)) if match else 0


def _port(text: str) -> int:
    port = _atoi(text)
    if not 0 <= port <= _MAX_PORT:
        raise MapError(MySQLMap.name, f"-m: port out of range: {text!r}")
    return port


def _error_code(error: BaseException) -> int | None:
    code = error.args[0] if error.args else None
    return code if isinstance(code, int) else None


class MySQLMap(SqlMap[Any]):
    """perdition's MySQL map over a small pool of mysqlclient connections."""

    name = "mysql"
    dialect = "mysql"

    def __init__(self, options: str = "", *, pool_size: int = DEFAULT_POOL_SIZE,
                 timeouts: Timeouts | None = None) -> None:
        try:
            # MySQLdb imports these on the first connect; the proxy may have
            # dropped the privileges to read the Python installation by then.
            import MySQLdb  # type: ignore[import-untyped]
            import MySQLdb.connections  # type: ignore[import-untyped]
            import MySQLdb.converters  # type: ignore[import-untyped]
            import MySQLdb.cursors  # type: ignore[import-untyped]
        except ImportError as exc:
            raise MapError(self.name, f"mysqlclient (MySQLdb) is not installed: {exc}") from exc
        self._driver = MySQLdb
        self.driver_errors = (MySQLdb.Error,)
        parsed = parse_options(options, DEFAULTS, self.name)
        self._tcp_port = _port(parsed.port)
        super().__init__(parsed, pool_size=pool_size, timeouts=timeouts)

    def _connect(self, target: Target) -> Any:
        options = self.options
        place: dict[str, Any] = {"host": target.host, "port": self._tcp_port}
        if target.host.startswith("/"):
            place = {"host": "localhost", "unix_socket": target.host}
        # Whole seconds; 0 would mean "no timeout" to the client library.
        connect_timeout = max(1, round(self.timeouts.connect))
        io_timeout = max(1, round(self.timeouts.query))
        return self._driver.connect(
            user=options.user, passwd=options.password, db=options.dbname,
            connect_timeout=connect_timeout, read_timeout=io_timeout,
            write_timeout=io_timeout, charset="utf8mb4", autocommit=True, **place,
        )

    def _fetch(self, connection: Any, key: str) -> Sequence[Any] | None:
        cursor = connection.cursor()
        try:
            cursor.execute(self.query, (key,))
            row: Sequence[Any] | None = cursor.fetchone()
            return row
        finally:
            cursor.close()

    def _is_broken(self, connection: Any, error: BaseException) -> bool:
        if isinstance(error, self._driver.InterfaceError):
            return True
        code = _error_code(error)
        return code is not None and (code in _CLIENT_ERRORS or code in _DISCONNECTED)

    def _disconnect(self, connection: Any) -> None:
        connection.close()

    def _server_text(self, row: Sequence[Any]) -> str:
        # The row is (user, server[, port]).
        port = row[2] if self.options.port_col and len(row) > 2 else None
        return server_text(row[1], port, cut_at_space=False)


def open_mysql_map(options: str) -> MySQLMap:
    """The registry's factory: a :class:`MySQLMap` on the ``-m`` string."""
    return MySQLMap(options)
