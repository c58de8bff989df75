"""What the MySQL/MariaDB and PostgreSQL maps share: ``-m``, the query, the pool, the lookup.

* :func:`split_fields` / :func:`parse_options` read perdition's option string
  ``dbhost[:dbport[:dbname[:dbtable[:dbuser[:dbpwd[:servercol[:usercol[:portcol]]]]]]]]``
  exactly as its libraries do: fields split at every ``:``, a last empty field
  dropped (so one trailing ``:`` changes nothing), ``::`` an empty field that
  *does* replace the default, missing fields taking the library's defaults.
  ``dbhost`` may list several hosts, ``,``-separated, tried in order.
* :func:`build_query` writes the ``SELECT`` each library writes, with the key
  as a bound parameter (``%s``): the key never becomes part of the SQL text.
  The table and column names are put in as the administrator wrote them, as
  perdition does (so ``schema.table`` works).
* :func:`server_text` turns a row into ``server[:port]`` the way each library
  does (the server column may itself hold ``user@server``).
* :class:`ConnectionPool`: at most ``size`` open connections per map, shared
  by the session threads, reused across lookups.
* :class:`SqlMap`: the ``Map`` itself.  A lookup takes a pooled connection;
  if that connection turns out to be dead (the server restarted) the lookup is
  retried once on a fresh one, so a restart costs no failed logins.  A server
  that cannot be reached is logged once, as a warning naming the map and the
  host, and each lookup then raises ``MapError`` (the session falls back to
  ``--outgoing_server``).  The drivers (``mysql.py``, ``postgresql.py``) only
  connect, fetch and judge whether an error killed the connection.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar

from perditionpy.endpoints import UserServerPort, parse_user_server_port
from perditionpy.errors import MapError
from perditionpy.maps.base import LookupContext

__all__ = [
    "DEFAULT_POOL_SIZE", "DEFAULT_CONNECT_TIMEOUT", "DEFAULT_QUERY_TIMEOUT",
    "SqlOptions", "Target", "Timeouts", "ConnectionPool", "PoolExhausted", "SqlMap",
    "split_fields", "parse_options", "targets", "build_query", "server_text",
]

logger = logging.getLogger(__name__)

# Connections one map keeps open at most (busy + idle).
DEFAULT_POOL_SIZE = 4
# Seconds: to reach one host; for one query (also how long a lookup waits for
# a pooled connection when all are busy).
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_QUERY_TIMEOUT = 5.0

FIELD_DELIMITER = ":"
HOST_DELIMITER = ","
# The nine fields of -m, in order.
_FIELDS = ("hosts", "port", "dbname", "table", "user", "password",
           "server_col", "user_col", "port_col")

Connection = TypeVar("Connection")


@dataclass(frozen=True, slots=True)
class SqlOptions:
    """The nine ``-m`` fields (``hosts`` still as written, ``,``-separated)."""

    hosts: str
    port: str
    dbname: str
    table: str
    user: str
    password: str = field(repr=False)
    server_col: str
    user_col: str
    port_col: str


@dataclass(frozen=True, slots=True)
class Target:
    """One server to try: ``host`` as written (``""``: the client library's default)."""

    host: str
    port: str

    def __str__(self) -> str:
        host = self.host or "default host"
        if host.startswith("/") or not self.port:
            return host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = DEFAULT_CONNECT_TIMEOUT
    query: float = DEFAULT_QUERY_TIMEOUT


# ---------------------------------------------------------------------- -m


def split_fields(text: str, delimiter: str = FIELD_DELIMITER) -> list[str]:
    """Split as perdition's splitter does: at every delimiter, a last empty field dropped.

    ``"a:b:"`` → ``["a", "b"]``; ``"a::"`` → ``["a", ""]``; ``""`` → ``[]``.
    """
    parts = text.split(delimiter)
    if parts[-1] == "":
        parts.pop()
    return parts


def parse_options(text: str, defaults: SqlOptions, map_name: str) -> SqlOptions:
    """``-m`` over ``defaults``: each field given replaces its default, even when empty."""
    fields = split_fields(text)
    if len(fields) > len(_FIELDS):
        logger.warning("%s map: -m has %d fields; those after the %d known ones are ignored",
                       map_name, len(fields), len(_FIELDS))
    given = dict(zip(_FIELDS, fields, strict=False))
    return replace(defaults, **given)


def targets(options: SqlOptions, default_port: str = "") -> tuple[Target, ...]:
    """The hosts to try, in order, each with its port.

    ``port`` is one port for every host or, like libpq's, a ``,``-list with
    one port per host.  No hosts at all means the client library's default.
    """
    hosts = split_fields(options.hosts, HOST_DELIMITER) or [""]
    port = options.port or default_port
    ports = port.split(HOST_DELIMITER) if HOST_DELIMITER in port else [port]
    if len(ports) == 1:
        ports = ports * len(hosts)
    if len(ports) != len(hosts):
        raise ValueError(f"{len(ports)} ports for {len(hosts)} hosts")
    return tuple(Target(host, host_port) for host, host_port in zip(hosts, ports, strict=True))


# ---------------------------------------------------------------------- SQL


def _verbatim(identifier: str) -> str:
    """An administrator's table/column name for a query that also has ``%s`` parameters."""
    return identifier.replace("%", "%%")


def build_query(options: SqlOptions, dialect: str) -> str:
    """The lookup ``SELECT`` for ``dialect`` (``"mysql"`` or ``"postgresql"``); key as ``%s``.

    MySQL selects user, server[, port] and compares the bare user column;
    PostgreSQL selects server[, port] and double-quotes the user column (its
    default name, ``user``, is a reserved word there).  No port column is
    selected when its name is empty.
    """
    table = _verbatim(options.table)
    user = _verbatim(options.user_col)
    columns = [_verbatim(options.server_col)]
    if options.port_col:
        columns.append(_verbatim(options.port_col))
    if dialect == "mysql":
        return f"select {','.join([user, *columns])} from {table} where {user}=%s limit 1"
    if dialect == "postgresql":
        return f'SELECT {",".join(columns)} FROM {table} WHERE "{user}"=%s LIMIT 1'
    raise ValueError(f"unknown SQL dialect {dialect!r}")


def _text(value: object) -> str | None:
    """A column value as the text the C libraries would have seen."""
    if value is None:
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "surrogateescape")
    return str(value)


def server_text(server: object, port: object, *, cut_at_space: bool) -> str:
    """``server[:port]`` from the two columns; ``""`` when there is no server.

    ``cut_at_space``: PostgreSQL's library ends each value at its first space
    (``char(n)`` columns come back padded).  An absent or empty port adds
    nothing.
    """
    server_value, port_value = _text(server), _text(port)
    if server_value is None:
        return ""
    if cut_at_space:
        server_value = server_value.split(" ", 1)[0]
        port_value = None if port_value is None else port_value.split(" ", 1)[0]
    if server_value and port_value:
        return f"{server_value}{FIELD_DELIMITER}{port_value}"
    return server_value


# ---------------------------------------------------------------------- pool


class PoolExhausted(Exception):
    """Every pooled connection stayed busy for the whole wait."""


class ConnectionPool(Generic[Connection]):
    """At most ``size`` connections (busy + idle); idle ones are reused, newest first.

    Thread-safe.  ``acquire`` returns ``(connection, reused)``; every acquired
    connection goes back through exactly one of ``release`` (still good) or
    ``discard`` (closed for good).
    """

    def __init__(self, opener: Callable[[], Connection], closer: Callable[[Connection], None],
                 *, size: int = DEFAULT_POOL_SIZE, wait: float = DEFAULT_QUERY_TIMEOUT) -> None:
        if size < 1:
            raise ValueError("a pool needs room for at least one connection")
        self.size = size
        self._opener, self._closer, self._wait = opener, closer, wait
        self._slots = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._idle: list[Connection] = []
        self._closed = False

    def acquire(self) -> tuple[Connection, bool]:
        """An idle connection, else a new one; ``PoolExhausted`` after ``wait`` seconds."""
        if not self._slots.acquire(timeout=self._wait):
            raise PoolExhausted(f"all {self.size} connections busy for {self._wait:g}s")
        with self._lock:
            idle = self._idle.pop() if self._idle else None
        if idle is not None:
            return idle, True
        try:
            return self._opener(), False
        except BaseException:
            self._slots.release()
            raise

    def release(self, connection: Connection) -> None:
        """Give back a connection that is still good."""
        with self._lock:
            keep = not self._closed
            if keep:
                self._idle.append(connection)
        if not keep:
            self._close_quietly(connection)
        self._slots.release()

    def discard(self, connection: Connection) -> None:
        """Close a connection that must not be used again."""
        self._close_quietly(connection)
        self._slots.release()

    def discard_idle(self) -> int:
        """Close every idle connection (their server went away); how many there were."""
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            self._close_quietly(connection)
        return len(idle)

    def idle_count(self) -> int:
        with self._lock:
            return len(self._idle)

    def close(self) -> None:
        """Close idle connections now and busy ones when they come back.  Idempotent."""
        with self._lock:
            self._closed = True
        self.discard_idle()

    def _close_quietly(self, connection: Connection) -> None:
        try:
            self._closer(connection)
        except Exception as exc:  # a dead connection may fail to close; it is gone either way
            logger.debug("closing a pooled connection: %s", exc)


# ---------------------------------------------------------------------- the map


class ConnectFailed(Exception):
    """No host of the list could be reached; the message lists why, host by host."""


class SqlMap(Generic[Connection]):
    """A SQL map: ``-m`` → options → pooled, parameterised, fail-over lookups.

    Subclasses set ``name`` and ``dialect`` and implement the driver hooks
    ``_connect``, ``_fetch``, ``_is_broken``, ``_disconnect`` and
    ``_server_text``.  No connection is made until the first lookup, so the
    proxy starts even while the database is down (as perdition does).
    """

    name = "sql"
    dialect = ""
    driver_errors: tuple[type[BaseException], ...] = ()

    def __init__(self, options: SqlOptions, *, pool_size: int = DEFAULT_POOL_SIZE,
                 timeouts: Timeouts | None = None, default_port: str = "") -> None:
        self.options = options
        self.timeouts = timeouts or Timeouts()
        try:
            self.targets = targets(options, default_port)
        except ValueError as exc:
            raise MapError(self.name, f"-m: {exc}") from exc
        self.query = build_query(options, self.dialect)
        self._pool: ConnectionPool[Connection] = ConnectionPool(
            self._open, self._disconnect, size=pool_size, wait=self.timeouts.query)
        self._state = threading.Lock()
        self._down: set[Target] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(str(t) for t in self.targets)})"

    @property
    def pool(self) -> ConnectionPool[Connection]:
        return self._pool

    # --------------------------------------------------------------- Map

    def get(self, key: str, context: LookupContext) -> UserServerPort | None:
        """Look ``key`` up literally; ``None`` if absent; ``MapError`` if the server fails."""
        if self._closed:
            raise MapError(self.name, "map is closed")
        if not self._lookup_able(key):
            return None
        row = self._lookup(key)
        if row is None:
            return None
        text = self._server_text(row)
        if not text:
            logger.debug("%s map: %r has no server", self.name, key)
            return None
        return parse_user_server_port(text, context.domain_delimiter)

    def close(self) -> None:
        """Close the pool's connections; lookups afterwards raise ``MapError``.  Idempotent."""
        self._closed = True
        self._pool.close()

    # --------------------------------------------------------------- lookups

    def _lookup_able(self, key: str) -> bool:
        """Whether ``key`` could be stored at all: no NUL, valid UTF-8 (else: not found)."""
        if "\0" in key:
            logger.debug("%s map: key with a NUL byte: not found", self.name)
            return False
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            logger.debug("%s map: key is not UTF-8: not found", self.name)
            return False
        return True

    def _lookup(self, key: str) -> Sequence[Any] | None:
        """The first row for ``key``; one retry when a pooled connection was dead."""
        for attempt in (1, 2):
            connection, reused = self._acquire()
            try:
                row = self._fetch(connection, key)
            except self.driver_errors as exc:
                broken = self._is_broken(connection, exc)
                self._give_back(connection, broken)
                if broken and reused and attempt == 1:
                    logger.debug("%s map: pooled connection lost (%s); retrying",
                                 self.name, _one_line(exc))
                    continue
                raise MapError(self.name, f"query failed: {_one_line(exc)}") from exc
            self._pool.release(connection)
            return row
        raise AssertionError("unreachable")  # pragma: no cover

    def _acquire(self) -> tuple[Connection, bool]:
        try:
            return self._pool.acquire()
        except PoolExhausted as exc:
            raise MapError(self.name, str(exc)) from exc
        except ConnectFailed as exc:
            raise MapError(self.name, f"cannot connect: {exc}") from exc

    def _give_back(self, connection: Connection, broken: bool) -> None:
        if not broken:
            self._pool.release(connection)
            return
        self._pool.discard(connection)
        # One dead connection means the server went away: so did the idle ones.
        self._pool.discard_idle()

    # --------------------------------------------------------------- connecting

    def _open(self) -> Connection:
        """Connect to the first host that answers, in ``-m`` order."""
        failures: list[str] = []
        for target in self.targets:
            try:
                connection = self._connect(target)
            except self.driver_errors as exc:
                failures.append(f"{target}: {_one_line(exc)}")
                self._note_down(target, _one_line(exc))
                continue
            self._note_up(target)
            return connection
        raise ConnectFailed("; ".join(failures))

    def _note_down(self, target: Target, reason: str) -> None:
        """Warn once per outage of ``target``; later failures are debug lines."""
        with self._state:
            first = target not in self._down
            self._down.add(target)
        if first:
            others = len(self.targets) > 1
            logger.warning("%s map: database server %s is unreachable (%s); %s",
                           self.name, target, reason,
                           "trying the next host" if others else
                           "lookups fail (falling back to --outgoing_server) until it is back")
        else:
            logger.debug("%s map: database server %s still unreachable: %s",
                         self.name, target, reason)

    def _note_up(self, target: Target) -> None:
        with self._state:
            was_down = target in self._down
            self._down.discard(target)
        if was_down:
            logger.info("%s map: database server %s is reachable again", self.name, target)

    # --------------------------------------------------------------- driver hooks

    def _connect(self, target: Target) -> Connection:
        raise NotImplementedError

    def _fetch(self, connection: Connection, key: str) -> Sequence[Any] | None:
        raise NotImplementedError

    def _is_broken(self, connection: Connection, error: BaseException) -> bool:
        raise NotImplementedError

    def _disconnect(self, connection: Connection) -> None:
        raise NotImplementedError

    def _server_text(self, row: Sequence[Any]) -> str:
        raise NotImplementedError


def _one_line(error: BaseException) -> str:
    """A driver's (possibly multi-line) error message on one line; MySQL's as ``code: text``."""
    args = error.args
    if len(args) == 2 and isinstance(args[0], int) and isinstance(args[1], str):
        text = f"{args[0]}: {args[1]}"
    else:
        text = str(error)
    return " ".join(text.split()) or type(error).__name__
