"""The PostgreSQL map against a real PostgreSQL 15 (one cluster for the whole session).

Lookups and results (``char(n)`` padding cut off), hostile keys (perdition's
own library pastes them into the SQL unescaped; ours binds them), ``-m``
quirks, fail-over, a server restarted under a live map, ``statement_timeout``,
connection counts under load, and full logins through ``python -m perditionpy
-M libperditiondb_postgresql.so.0`` to the private Dovecot.
"""

from __future__ import annotations

import imaplib
import io
import logging
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from perditionpy.endpoints import UserServerPort
from perditionpy.errors import MapError
from perditionpy.maps import open_map
from perditionpy.maps._sql import DEFAULT_POOL_SIZE, Timeouts
from perditionpy.maps.base import LookupContext
from perditionpy.maps.postgresql import PostgreSQLMap
from perditionpy.tools.sql_makedb import POSTGRESQL_USAGE, postgresql_main
from tests.support import postgres as db
from tests.support.dovecot import Dovecot
from tests.support.ports import LOOPBACK, free_port
from tests.support.postgres import SUPERUSER_PASSWORD
from tests.support.procs import Proc
from tests.support.scenarios import backend_user
from tests.support.tap import Tap

LIBRARY = "/usr/lib/x86_64-linux-gnu/libperditiondb_postgresql.so.0"
CONTEXT = LookupContext()
HOSTILE_KEYS = [
    "*)(uid=*",
    "' OR '1'='1",
    "x' OR '1'='1",
    "alice' -- ",
    "alice'#",
    "alice\\",
    "%",
    "al_ce",
    "alice\0junk",
    "x" * 10240,
    "alice'; DROP TABLE tblPerdition; --",
]


@pytest.fixture
def server(request: pytest.FixtureRequest) -> db.Postgres:
    return db.shared_postgres(request)


@pytest.fixture
def sql_map(server: db.Postgres) -> Iterator[PostgreSQLMap]:
    opened = PostgreSQLMap(db.map_option(server), timeouts=Timeouts(3, 3))
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def rows(server: db.Postgres) -> None:
    db.put_row(server, "alice", "127.0.0.1", "143")
    db.put_row(server, "bob", "carol@mail.example", None)
    db.put_row(server, "v6", "[2001:db8::1]", "110")
    db.put_row(server, "noport", "mail.example", "")
    db.put_row(server, "empty", "", "143")
    db.put_row(server, "y' OR 'a'='a", "literal.example", "25")


# ------------------------------------------------------------------ lookups


@pytest.mark.usefixtures("rows")
@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("alice", UserServerPort(None, "127.0.0.1", "143")),
        ("bob", UserServerPort("carol", "mail.example", None)),
        ("v6", UserServerPort(None, "2001:db8::1", "110")),
        ("noport", UserServerPort(None, "mail.example", None)),
        # PostgreSQL compares exactly.
        ("ALICE", None),
        ("alice ", None),
        ("empty", None),
        ("nobody", None),
        ("", None),
    ],
)
def test_lookup(sql_map: PostgreSQLMap, key: str, expected: UserServerPort | None) -> None:
    assert sql_map.get(key, CONTEXT) == expected


@pytest.mark.usefixtures("rows")
@pytest.mark.parametrize("key", HOSTILE_KEYS, ids=lambda key: repr(key[:24]))
def test_hostile_keys_are_looked_up_literally(sql_map: PostgreSQLMap, key: str,
                                              server: db.Postgres) -> None:
    assert sql_map.get(key, CONTEXT) is None
    assert server.sql(f"SELECT COUNT(*) FROM {db.MAP_TABLE}", dbname=db.MAP_DATABASE)[0][0] >= 6


@pytest.mark.usefixtures("rows")
def test_a_key_that_looks_like_sql_finds_only_its_own_row(sql_map: PostgreSQLMap) -> None:
    assert sql_map.get("y' OR 'a'='a", CONTEXT) == UserServerPort(None, "literal.example", "25")
    assert sql_map.get("y' OR 'a'='b", CONTEXT) is None


def test_the_map_sees_changes_at_once(sql_map: PostgreSQLMap, server: db.Postgres) -> None:
    db.put_row(server, "mover", "first.example")
    assert sql_map.get("mover", CONTEXT) == UserServerPort(None, "first.example", None)
    db.put_row(server, "mover", "second.example", "993")
    assert sql_map.get("mover", CONTEXT) == UserServerPort(None, "second.example", "993")


def test_trailing_colon_keeps_port_column_double_colon_drops_it(server: db.Postgres) -> None:
    server.sql(["CREATE TABLE IF NOT EXISTS popmap (login varchar(64) PRIMARY KEY,"
                " srv varchar(64))",
                "ALTER TABLE popmap OWNER TO perdition",
                "INSERT INTO popmap VALUES ('dave', 'dave.example') ON CONFLICT DO NOTHING"],
               dbname=db.MAP_DATABASE)
    base = f"{server.host}:{server.port}:{db.MAP_DATABASE}:popmap:" \
           f"{db.MAP_USER}:{db.MAP_PASSWORD}:srv:login"
    kept, emptied = PostgreSQLMap(base + ":"), PostgreSQLMap(base + "::")
    try:
        with pytest.raises(MapError, match='column "port" does not exist'):
            kept.get("dave", CONTEXT)
        assert emptied.get("dave", CONTEXT) == UserServerPort(None, "dave.example", None)
        # A failed query leaves the connection usable: no retry, no reconnect.
        assert kept.pool.idle_count() == 1
    finally:
        kept.close()
        emptied.close()


def test_char_padding_is_cut_at_the_first_space(server: db.Postgres,
                                                sql_map: PostgreSQLMap) -> None:
    db.put_row(server, "padded", "mail.example", "993")
    assert server.sql(f"SELECT servername FROM {db.MAP_TABLE} WHERE \"user\" = 'padded'",
                      dbname=db.MAP_DATABASE)[0][0].startswith("mail.example ")
    assert sql_map.get("padded", CONTEXT) == UserServerPort(None, "mail.example", "993")


def test_through_the_registry_by_perditions_library_path(server: db.Postgres) -> None:
    db.put_row(server, "alice", "127.0.0.1", "143")
    opened = open_map(LIBRARY, db.map_option(server))
    assert opened is not None
    try:
        assert opened.get("alice", CONTEXT) == UserServerPort(None, "127.0.0.1", "143")
    finally:
        opened.close()


def test_socket_directory_as_host(server: db.Postgres) -> None:
    db.put_row(server, "alice", "127.0.0.1", "143")
    option = f"{server.socket_dir}:{server.port}:{db.MAP_DATABASE}:{db.MAP_TABLE}:{db.MAP_USER}:{db.MAP_PASSWORD}"
    with_socket = PostgreSQLMap(option)
    try:
        assert with_socket.get("alice", CONTEXT) == UserServerPort(None, "127.0.0.1", "143")
    finally:
        with_socket.close()


def test_fails_over_to_the_next_host(server: db.Postgres,
                                     caplog: pytest.LogCaptureFixture) -> None:
    db.put_row(server, "alice", "127.0.0.1", "143")
    dead = free_port()
    # As in libpq: several hosts, one port each.
    option = db.map_option(server, host=f"{server.host},{server.host}")
    option = option.replace(f":{server.port}:", f":{dead},{server.port}:", 1)
    failing_over = PostgreSQLMap(option)
    try:
        with caplog.at_level(logging.WARNING):
            assert failing_over.get("alice", CONTEXT) == UserServerPort(None, "127.0.0.1", "143")
        assert f"postgresql map: database server {server.host}:{dead} is unreachable" \
            in caplog.text
        assert "trying the next host" in caplog.text
    finally:
        failing_over.close()


# ------------------------------------------------------------------ restarts, timeouts, load


def test_survives_a_server_restart_without_a_failed_lookup(sql_map: PostgreSQLMap,
                                                           server: db.Postgres) -> None:
    db.put_row(server, "alice", "127.0.0.1", "143")
    _warm_pool(sql_map)
    assert sql_map.pool.idle_count() > 1
    server.stop()
    server.start()
    # Every pooled connection is dead now: the lookup retries on a fresh one.
    assert sql_map.get("alice", CONTEXT) == UserServerPort(None, "127.0.0.1", "143")
    assert sql_map.get("alice", CONTEXT) == UserServerPort(None, "127.0.0.1", "143")


def test_server_down_fails_then_recovers(sql_map: PostgreSQLMap, server: db.Postgres,
                                         caplog: pytest.LogCaptureFixture) -> None:
    db.put_row(server, "alice", "127.0.0.1", "143")
    assert sql_map.get("alice", CONTEXT) is not None
    caplog.set_level(logging.INFO)
    server.stop()
    try:
        with pytest.raises(MapError, match=f"^postgresql: cannot connect: {server.host}:"):
            sql_map.get("alice", CONTEXT)
    finally:
        server.start()
    assert sql_map.get("alice", CONTEXT) == UserServerPort(None, "127.0.0.1", "143")
    where = f"{server.host}:{server.port}"
    assert f"postgresql map: database server {where} is unreachable" in caplog.text
    assert f"postgresql map: database server {where} is reachable again" in caplog.text


def test_a_query_that_hangs_is_cut_off(server: db.Postgres) -> None:
    db.put_row(server, "alice", "127.0.0.1", "143")
    slow = f"(SELECT * FROM {db.MAP_TABLE} WHERE pg_sleep(8) IS NOT NULL) AS slow"
    option = db.map_option(server).split(":")
    option[3] = slow
    slow_map = PostgreSQLMap(":".join(option), timeouts=Timeouts(2, 1))
    try:
        started = time.monotonic()
        with pytest.raises(MapError, match="query failed: canceling statement due to "
                                           "statement timeout"):
            slow_map.get("alice", CONTEXT)
        assert time.monotonic() - started < 6
    finally:
        slow_map.close()


def test_no_connection_leaks_under_load(server: db.Postgres) -> None:
    db.put_row(server, "alice", "127.0.0.1", "143")
    loaded = PostgreSQLMap(db.map_option(server))
    results = _hammer(loaded, threads=16, lookups=200)
    try:
        assert results == {UserServerPort(None, "127.0.0.1", "143")}
        assert 1 <= server.connections_of(db.MAP_USER) <= DEFAULT_POOL_SIZE
    finally:
        loaded.close()
    _wait_for(lambda: server.connections_of(db.MAP_USER) == 0, "connections closed")


def _warm_pool(sql_map: PostgreSQLMap) -> None:
    """Leave several idle connections in the pool."""
    _hammer(sql_map, threads=8, lookups=40)


def _hammer(sql_map: PostgreSQLMap, *, threads: int, lookups: int) -> set[UserServerPort | None]:
    seen: set[UserServerPort | None] = set()
    errors: list[BaseException] = []
    lock = threading.Lock()
    share = lookups // threads
    extra = lookups - share * threads

    def work(count: int) -> None:
        for _ in range(count):
            try:
                found = sql_map.get("alice", CONTEXT)
            except BaseException as exc:  # collected and asserted below
                errors.append(exc)
                return
            with lock:
                seen.add(found)

    workers = [threading.Thread(target=work, args=(share + (index < extra),))
               for index in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert not errors
    return seen


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(0.05)  # polling a server-side counter


# ------------------------------------------------------------------ through the proxy


@pytest.fixture
def imap_tap(dovecot: Dovecot, make_tap: Callable[[int], Tap]) -> Tap:
    return make_tap(dovecot.imap_port)


def _login(proxy: Proc, user: str, password: str) -> str:
    client = imaplib.IMAP4(LOOPBACK, proxy.port)
    try:
        typ, _ = client.login(user, password)
        return str(typ)
    except imaplib.IMAP4.error as exc:
        return f"NO {exc}"
    finally:
        client.logout()


def _received(tap: Tap) -> bytes | None:
    tap.wait_for_connections(1)
    return backend_user(tap.connections[0].wait_closed().to_server)


def test_login_routed_by_the_map(server: db.Postgres, imap_tap: Tap,
                                 run_perditionpy: Callable[..., Proc]) -> None:
    db.put_row(server, "alice", LOOPBACK, str(imap_tap.port))
    proxy = run_perditionpy(["-P", "IMAP4", "-M", "libperditiondb_postgresql.so.0",
                             "-m", db.map_option(server)])
    assert _login(proxy, "alice", "alice-pw") == "OK"
    assert _received(imap_tap) == b"alice"


def test_login_with_username_from_database(server: db.Postgres, imap_tap: Tap,
                                           run_perditionpy: Callable[..., Proc]) -> None:
    db.put_row(server, "dave", f"bob@{LOOPBACK}", str(imap_tap.port))
    proxy = run_perditionpy(["-P", "IMAP4", "-M", "libperditiondb_postgresql.so.0",
                             "-m", db.map_option(server), "-U"])
    assert _login(proxy, "dave", "bob-pw") == "OK"
    assert _received(imap_tap) == b"bob"


def test_login_falls_back_to_outgoing_server_while_the_database_is_down(
    server: db.Postgres, imap_tap: Tap, run_perditionpy: Callable[..., Proc]
) -> None:
    dead = free_port()
    option = db.map_option(server).replace(f":{server.port}:", f":{dead}:", 1)
    proxy = run_perditionpy(["-P", "IMAP4", "-M", "libperditiondb_postgresql.so.0", "-m", option,
                             "-s", f"{LOOPBACK}:{imap_tap.port}"])
    assert _login(proxy, "alice", "alice-pw") == "OK"
    assert _received(imap_tap) == b"alice"
    proxy.wait_for_log(rf"postgresql map: database server {LOOPBACK}:{dead} is unreachable")


# ------------------------------------------------------------------ perditiondb_postgresql_makedb


def _makedb(answers: list[str], argv: list[str] | None = None) -> tuple[int, str]:
    output = io.StringIO()
    status = postgresql_main([] if argv is None else argv,
                             io.StringIO("\n".join(answers) + "\n"), output)
    return status, output.getvalue()


def test_makedb_creates_what_the_map_reads(server: db.Postgres) -> None:
    where = f"{server.host}:{server.port}"
    answers = ["made_db", "tblMade", "made_user", "x1", "1001",  # a bad uid: asked again
               "made-pw", "made-pw", where, "y", SUPERUSER_PASSWORD]
    status, output = _makedb(answers)
    assert status == 0, output
    assert "Userid is contains non-numbers" in output
    assert f"-m '{where}:made_db:tblMade:made_user:****'" in output
    server.sql("INSERT INTO tblMade VALUES ('erin', 'erin.example', '110')", dbname="made_db")
    made = PostgreSQLMap(f"{where}:made_db:tblMade:made_user:made-pw")
    try:
        assert made.get("erin", CONTEXT) == UserServerPort(None, "erin.example", "110")
        # A user name longer than perdition's char(16) fits.
        server.sql("INSERT INTO tblMade VALUES ('carol@example.org', 'c.example', NULL)",
                   dbname="made_db")
        assert made.get("carol@example.org", CONTEXT) == UserServerPort(None, "c.example", None)
    finally:
        made.close()
    # Run again: everything is dropped and made afresh.
    assert _makedb(answers)[0] == 0
    assert server.sql("SELECT COUNT(*) FROM tblmade", dbname="made_db")[0][0] == 0


def test_makedb_declined_changes_nothing(server: db.Postgres) -> None:
    status, _ = _makedb(["declined_db", "", "", "", "pw", "pw", "", "n"])
    assert status == 0
    assert server.sql("SELECT datname FROM pg_database WHERE datname = 'declined_db'") == []


def test_makedb_wrong_superuser_password_bails(server: db.Postgres) -> None:
    status, output = _makedb(["other_db", "", "other_user", "", "pw", "pw",
                              f"{server.host}:{server.port}", "y", "wrong"])
    assert status == 1
    assert "password authentication failed" in output
    assert output.rstrip().endswith("Bailing")


@pytest.mark.parametrize("name", ['x"y', "a b", "drop;table"])
def test_makedb_refuses_names_that_are_not_identifiers(name: str) -> None:
    status, output = _makedb(["dbperdition", name])
    assert status == 1
    assert "invalid table name" in output


def test_makedb_help_and_arguments() -> None:
    assert _makedb([], ["--help"]) == (0, POSTGRESQL_USAGE)
    assert _makedb([], ["-x"])[0] == 1
