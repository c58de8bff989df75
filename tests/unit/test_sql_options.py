"""The SQL maps without a database server: ``-m`` parsing, queries, results, the pool.

Lookups that need a server are in tests/integration/test_map_{mysql,postgresql}.py;
here a map pointed at a closed loopback port shows how it fails.
"""

from __future__ import annotations

import logging
import socket
import threading

import pytest

from perditionpy.endpoints import UserServerPort
from perditionpy.errors import MapError
from perditionpy.maps import open_map
from perditionpy.maps._sql import (
    ConnectionPool,
    PoolExhausted,
    Target,
    Timeouts,
    build_query,
    parse_options,
    server_text,
    split_fields,
    targets,
)
from perditionpy.maps.base import LookupContext
from perditionpy.maps.mysql import DEFAULTS as MYSQL
from perditionpy.maps.mysql import MySQLMap
from perditionpy.maps.postgresql import DEFAULTS as POSTGRESQL
from perditionpy.maps.postgresql import PostgreSQLMap

# ------------------------------------------------------------------ the splitter


@pytest.mark.parametrize(
    ("text", "fields"),
    [
        ("", []),
        ("a", ["a"]),
        ("a:", ["a"]),  # one trailing ':' changes nothing
        ("a::", ["a", ""]),  # but '::' gives an empty field
        ("a:::", ["a", "", ""]),
        (":", [""]),
        ("::", ["", ""]),
        ("a:b:c", ["a", "b", "c"]),
        (":b", ["", "b"]),
    ],
)
def test_split_fields_as_perditions_splitter(text: str, fields: list[str]) -> None:
    assert split_fields(text) == fields


def test_defaults_are_perditions() -> None:
    assert (MYSQL.hosts, MYSQL.port, MYSQL.dbname, MYSQL.table) == (
        "localhost", "", "dbPerdition", "tblPerdition")
    assert (POSTGRESQL.hosts, POSTGRESQL.dbname) == ("localhost", "dbperdition")
    for defaults in (MYSQL, POSTGRESQL):
        assert (defaults.user, defaults.password) == ("perdition", "perdition")
        assert (defaults.server_col, defaults.user_col, defaults.port_col) == (
            "servername", "user", "port")


def test_empty_option_string_means_all_defaults() -> None:
    assert parse_options("", MYSQL, "mysql") == MYSQL


def test_a_trailing_colon_keeps_the_default_and_two_empty_it() -> None:
    kept = parse_options("db1:3307:maps:popmap:u:pw:srv:login:", MYSQL, "mysql")
    emptied = parse_options("db1:3307:maps:popmap:u:pw:srv:login::", MYSQL, "mysql")
    assert kept.port_col == "port"
    assert emptied.port_col == ""
    assert (emptied.hosts, emptied.port, emptied.dbname, emptied.table) == (
        "db1", "3307", "maps", "popmap")
    assert (emptied.user, emptied.password, emptied.server_col, emptied.user_col) == (
        "u", "pw", "srv", "login")


def test_an_empty_middle_field_replaces_the_default() -> None:
    parsed = parse_options("db1::::scott", POSTGRESQL, "postgresql")
    assert (parsed.port, parsed.dbname, parsed.table, parsed.user) == ("", "", "", "scott")
    assert parsed.password == "perdition"


def test_extra_fields_are_ignored_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        parsed = parse_options("h:1:d:t:u:p:s:k:c:extra", MYSQL, "mysql")
    assert parsed.port_col == "c"
    assert "mysql map: -m has 10 fields" in caplog.text


def test_the_password_is_not_in_the_repr() -> None:
    assert "s3cret" not in repr(parse_options("h:1:d:t:u:s3cret", MYSQL, "mysql"))


# ------------------------------------------------------------------ hosts


@pytest.mark.parametrize(
    ("hosts", "port", "expected"),
    [
        ("a", "", [("a", "")]),
        ("a,b,c", "3307", [("a", "3307"), ("b", "3307"), ("c", "3307")]),
        ("a,b", "1,2", [("a", "1"), ("b", "2")]),
        ("a,", "", [("a", "")]),
        ("", "", [("", "")]),  # the client library's default
        ("/run/mysqld/mysqld.sock,db2", "", [("/run/mysqld/mysqld.sock", ""), ("db2", "")]),
    ],
)
def test_targets_in_order(hosts: str, port: str, expected: list[tuple[str, str]]) -> None:
    options = parse_options(f"{hosts}:{port}", MYSQL, "mysql")
    assert targets(options) == tuple(Target(*pair) for pair in expected)


def test_ports_must_match_hosts() -> None:
    with pytest.raises(ValueError, match="3 ports for 2 hosts"):
        targets(parse_options("a,b:1,2,3", POSTGRESQL, "postgresql"))
    with pytest.raises(MapError, match="^postgresql: -m: 3 ports for 2 hosts"):
        PostgreSQLMap("a,b:1,2,3")


@pytest.mark.parametrize(("port", "number"), [("", 0), ("3307", 3307), ("3307x", 3307),
                                               ("x", 0), (" 42", 42)])
def test_mysql_port_is_read_like_atoi(port: str, number: int) -> None:
    sql_map = MySQLMap(f"127.0.0.1:{port}")
    try:
        assert sql_map._tcp_port == number
    finally:
        sql_map.close()


def test_mysql_port_out_of_range_is_refused() -> None:
    with pytest.raises(MapError, match="port out of range"):
        MySQLMap("127.0.0.1:70000")


# ------------------------------------------------------------------ queries


def test_mysql_query_is_perditions_with_the_key_bound() -> None:
    assert build_query(MYSQL, "mysql") == (
        "select user,servername,port from tblPerdition where user=%s limit 1")


def test_postgresql_query_is_perditions_with_the_key_bound() -> None:
    assert build_query(POSTGRESQL, "postgresql") == (
        'SELECT servername,port FROM tblPerdition WHERE "user"=%s LIMIT 1')


def test_no_port_column_when_it_is_emptied() -> None:
    options = parse_options("h:::popmap:::srv:login::", MYSQL, "mysql")
    assert build_query(options, "mysql") == "select login,srv from popmap where login=%s limit 1"
    pg_options = parse_options("h:::popmap:::srv:login::", POSTGRESQL, "postgresql")
    assert build_query(pg_options, "postgresql") == (
        'SELECT srv FROM popmap WHERE "login"=%s LIMIT 1')


def test_percent_in_a_name_cannot_become_a_placeholder() -> None:
    options = parse_options("h:::t%s:::s%:u", MYSQL, "mysql")
    query = build_query(options, "mysql")
    assert query == "select u,s%%,port from t%%s where u=%s limit 1"
    assert query.count("%s") - query.count("%%s") == 1


# ------------------------------------------------------------------ results


@pytest.mark.parametrize(
    ("server", "port", "cut", "text"),
    [
        ("mail.example", "143", False, "mail.example:143"),
        ("mail.example", 143, False, "mail.example:143"),
        ("mail.example", None, False, "mail.example"),
        ("mail.example", "", False, "mail.example"),
        ("bob@mail.example", "993", False, "bob@mail.example:993"),
        (None, "143", False, ""),
        ("", "143", False, ""),
        (b"mail.example", b"110", False, "mail.example:110"),
        ("mail.example" + " " * 20, "143     ", True, "mail.example:143"),
        ("mail.example other", None, True, "mail.example"),
        ("   ", "143", True, ""),
        ("mail.example", "        ", True, "mail.example"),
    ],
)
def test_server_text_as_the_libraries_build_it(server: object, port: object, cut: bool,
                                               text: str) -> None:
    assert server_text(server, port, cut_at_space=cut) == text


# ------------------------------------------------------------------ the registry


def test_perditions_library_names_open_our_maps() -> None:
    for library, kind in [
        ("/usr/lib/x86_64-linux-gnu/libperditiondb_mysql.so.0", MySQLMap),
        ("libperditiondb_mysql.so", MySQLMap),
        ("mysql", MySQLMap),
        ("libperditiondb_postgresql.so.0", PostgreSQLMap),
        ("postgresql", PostgreSQLMap),
    ]:
        opened = open_map(library, "127.0.0.1:1")
        try:
            assert isinstance(opened, kind), library
        finally:
            assert opened is not None
            opened.close()


# ------------------------------------------------------------------ a server that is not there


@pytest.fixture
def closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        return int(listener.getsockname()[1])


@pytest.mark.parametrize("kind", [MySQLMap, PostgreSQLMap])
def test_unreachable_server_fails_lookups_and_warns_once(
    kind: type[MySQLMap] | type[PostgreSQLMap], closed_port: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Opening does not connect: the proxy starts while its database is down.
    sql_map = kind(f"127.0.0.1:{closed_port}:db:t:u:pw", timeouts=Timeouts(2, 2))
    try:
        with caplog.at_level(logging.WARNING):
            for _ in range(3):
                with pytest.raises(MapError) as caught:
                    sql_map.get("alice", LookupContext())
                assert str(caught.value).startswith(f"{kind.name}: cannot connect: "
                                                    f"127.0.0.1:{closed_port}: ")
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert warnings[0].startswith(
            f"{kind.name} map: database server 127.0.0.1:{closed_port} is unreachable")
    finally:
        sql_map.close()


@pytest.mark.parametrize("kind", [MySQLMap, PostgreSQLMap])
@pytest.mark.parametrize("key", ["alice\0", "\0", "alice\udce9"])
def test_keys_no_table_can_hold_are_not_found_without_a_query(
    kind: type[MySQLMap] | type[PostgreSQLMap], closed_port: int, key: str
) -> None:
    sql_map = kind(f"127.0.0.1:{closed_port}")
    try:
        assert sql_map.get(key, LookupContext()) is None  # no MapError: nothing was sent
    finally:
        sql_map.close()


def test_closed_map_refuses_lookups() -> None:
    sql_map = MySQLMap("127.0.0.1:1")
    sql_map.close()
    sql_map.close()
    with pytest.raises(MapError, match="^mysql: map is closed"):
        sql_map.get("alice", LookupContext())


def test_result_parsing_uses_the_domain_delimiter() -> None:
    from perditionpy.endpoints import parse_user_server_port

    text = server_text("bob%%mail.example", "993", cut_at_space=False)
    assert parse_user_server_port(text, "%%") == UserServerPort("bob", "mail.example", "993")


# ------------------------------------------------------------------ the pool


class _Counter:
    def __init__(self) -> None:
        self.opened = 0
        self.closed: list[int] = []
        self.lock = threading.Lock()

    def open(self) -> int:
        with self.lock:
            self.opened += 1
            return self.opened

    def close(self, connection: int) -> None:
        self.closed.append(connection)


def test_pool_reuses_idle_connections() -> None:
    counter = _Counter()
    pool = ConnectionPool(counter.open, counter.close, size=2, wait=0.1)
    first, reused = pool.acquire()
    assert (first, reused) == (1, False)
    pool.release(first)
    assert pool.acquire() == (1, True)


def test_pool_is_bounded() -> None:
    counter = _Counter()
    pool = ConnectionPool(counter.open, counter.close, size=2, wait=0.1)
    pool.acquire()
    held, _ = pool.acquire()
    with pytest.raises(PoolExhausted):
        pool.acquire()
    pool.discard(held)
    assert counter.closed == [held]
    assert pool.acquire() == (3, False)
    assert counter.opened == 3


def test_pool_frees_the_slot_when_opening_fails() -> None:
    def refuse() -> int:
        raise OSError("refused")

    pool: ConnectionPool[int] = ConnectionPool(refuse, lambda c: None, size=1, wait=0.1)
    for _ in range(3):
        with pytest.raises(OSError):
            pool.acquire()


def test_pool_close_closes_idle_now_and_busy_on_return() -> None:
    counter = _Counter()
    pool = ConnectionPool(counter.open, counter.close, size=3, wait=0.1)
    a, _ = pool.acquire()
    b, _ = pool.acquire()
    pool.release(a)
    pool.close()
    assert counter.closed == [a]
    pool.release(b)
    assert counter.closed == [a, b]
    assert pool.idle_count() == 0


def test_pool_under_threads_never_exceeds_its_size() -> None:
    counter = _Counter()
    pool = ConnectionPool(counter.open, counter.close, size=3, wait=10)
    busy, peak = [0], [0]
    lock = threading.Lock()

    def work() -> None:
        for _ in range(50):
            connection, _ = pool.acquire()
            with lock:
                busy[0] += 1
                peak[0] = max(peak[0], busy[0])
            with lock:
                busy[0] -= 1
            pool.release(connection)

    threads = [threading.Thread(target=work) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert peak[0] <= 3
    assert counter.opened <= 3
