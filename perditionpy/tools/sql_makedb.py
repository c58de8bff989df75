"""``perditiondb_mysql_makedb`` / ``perditiondb_postgresql_makedb``: set up a map's database.

Like perdition's two shell scripts these take no arguments (``-h`` prints
help), ask their questions one per line on the terminal (or read the answers
from stdin when it is not a terminal, one per line), show a summary, and on
``y`` (re)create the database, a user that owns it and the map's table:

* MySQL/MariaDB: the database (default ``dbPerdition``), the user (default
  ``perdition``) granted everything on it from a given client host, and
  ``tblPerdition (user varchar(128) primary key, servername varchar(255) not
  null, port varchar(8) default null)`` with an index on ``user``;
* PostgreSQL: the role, a database it owns (default ``dbperdition``, the name
  the map looks for) and the same table, created as that role.

Unlike the scripts they talk to the server through the map's own drivers
(no ``mysql``/``psql`` clients, no shell), check every name (letters, digits,
``_``, ``$``) and pass passwords as literals, never pasted into SQL.  The host
question also takes ``host:port`` or a unix socket path (MySQL) / socket
directory (PostgreSQL), for servers not on the default port.  Exit status: 0
done or declined, 1 on failure (as the scripts).
"""

from __future__ import annotations

import getpass
import re
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

__all__ = ["Prompter", "MySQLAnswers", "PostgreSQLAnswers", "mysql_main", "postgresql_main"]

EXIT_OK = 0
EXIT_FAILURE = 1

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
# What MySQL accepts after user@ (a host name, an address, % and _ wildcards).
_CLIENT_HOST = re.compile(r"[A-Za-z0-9_.%:\-]+")
_TIMEOUT = 10

MYSQL_USAGE = """Usage: perditiondb_mysql_makedb

Creates the MySQL/MariaDB database, user and table for perdition's mysql map.
Asks for: server host ([host][:port] or a socket path), the root password,
database, table, user, its password (twice) and the host it may connect from.
"""

POSTGRESQL_USAGE = """Usage: perditiondb_postgresql_makedb

Creates the PostgreSQL role, database and table for perdition's postgresql map.
Asks for: database, table, user, a numeric user id (ignored: PostgreSQL no
longer has them), its password (twice), the server host ([host][:port] or a
socket directory) and the postgres superuser's password.
"""


class Failed(Exception):
    """A step failed; the message is printed before exiting 1."""


# ---------------------------------------------------------------------- prompting


class Prompter:
    """Questions on ``output``, answers from ``source``; secrets unechoed on a terminal."""

    def __init__(self, source: TextIO, output: TextIO) -> None:
        self._source, self._output = source, output

    def say(self, text: str = "") -> None:
        print(text, file=self._output, flush=True)

    def ask(self, question: str, default: str = "") -> str:
        shown = f"{question} [{default}]: " if default else f"{question}: "
        print(shown, end="", file=self._output, flush=True)
        return self._line() or default

    def secret(self, question: str) -> str:
        if self._source.isatty():
            return getpass.getpass(f"{question}: ", stream=self._output)
        print(f"{question}: ", file=self._output, flush=True)
        return self._line()

    def new_password(self, account: str) -> str:
        """Ask until a non-empty password is typed the same twice."""
        while True:
            first = self.secret(f"Enter a password for the {account} user")
            if not first:
                self.say("Password is empty, please try again.")
                continue
            if self.secret("Enter password again to verify") != first:
                self.say("Passwords do not match, please try again.")
                continue
            return first

    def confirm(self) -> bool:
        return self.ask("Proceed (May destroy existing data in database) [y/n]?") in ("y", "Y")

    def _line(self) -> str:
        line = self._source.readline()
        if not line:
            raise Failed("end of input before all questions were answered")
        return line.rstrip("\r\n")


def _name(value: str, what: str) -> str:
    if not _NAME.fullmatch(value):
        raise Failed(f"invalid {what} {value!r}: use letters, digits, _ and $")
    return value


def split_server(answer: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``:port`` or a path → (host, port or None)."""
    if answer.startswith("/") or answer.count(":") != 1:
        return answer, None
    host, port = answer.split(":")
    if not port.isdigit():
        raise Failed(f"invalid port in {answer!r}")
    return host or "localhost", int(port)


# ---------------------------------------------------------------------- MySQL


@dataclass(frozen=True)
class MySQLAnswers:
    server: str
    root_password: str
    dbname: str
    table: str
    user: str
    password: str
    client_host: str


def _mysql_connect(server: str, user: str, password: str, dbname: str = "") -> Any:
    import MySQLdb  # type: ignore[import-untyped]

    host, port = split_server(server)
    where: dict[str, Any] = {"host": host}
    if host.startswith("/"):
        where = {"host": "localhost", "unix_socket": host}
    elif port is not None:
        where["port"] = port
    return MySQLdb.connect(user=user, passwd=password, db=dbname, charset="utf8mb4",
                           connect_timeout=_TIMEOUT, autocommit=True, **where)


def ask_mysql(prompt: Prompter) -> MySQLAnswers:
    server = prompt.ask("Enter host name", "localhost")
    root_password = prompt.secret("Enter the password for the MySQL root user")
    _mysql_check_root(server, root_password)
    dbname = _name(prompt.ask("Enter database name", "dbPerdition"), "database name")
    table = _name(prompt.ask("Enter table name", "tblPerdition"), "table name")
    user = _name(prompt.ask("Enter database user", "perdition"), "user name")
    password = prompt.new_password(user)
    default_client = "localhost" if split_server(server)[0] == "localhost" \
        else socket.gethostname()
    client_host = prompt.ask("Enter hostname the user may connect from", default_client)
    if not _CLIENT_HOST.fullmatch(client_host):
        raise Failed(f"invalid host {client_host!r}")
    return MySQLAnswers(server, root_password, dbname, table, user, password, client_host)


def _mysql_check_root(server: str, password: str) -> None:
    import MySQLdb

    try:
        _mysql_connect(server, "root", password).close()
    except MySQLdb.Error as exc:
        raise Failed("Error cannot connect to MySQL server using given password. "
                     f"Bailing ({exc})") from exc


def create_mysql(answers: MySQLAnswers, prompt: Prompter) -> None:
    """Drop and create the database, grant the user, create the table as that user."""
    import MySQLdb

    db, account = answers.dbname, (answers.user, answers.client_host)
    try:
        root = _mysql_connect(answers.server, "root", answers.root_password)
        with root.cursor() as cursor:
            prompt.say(f"Dropping and creating database {db}...")
            cursor.execute(f"DROP DATABASE IF EXISTS `{db}`")
            cursor.execute(f"CREATE DATABASE `{db}`")
            prompt.say(f"Granting access to {db} for user {answers.user}...")
            cursor.execute("CREATE USER IF NOT EXISTS %s@%s", account)
            cursor.execute("ALTER USER %s@%s IDENTIFIED BY %s", (*account, answers.password))
            cursor.execute(f"GRANT ALL PRIVILEGES ON `{db}`.* TO %s@%s WITH GRANT OPTION",
                           account)
        root.close()
        prompt.say(f"Creating table {answers.table} in database {db}...")
        owner = _mysql_connect(answers.server, answers.user, answers.password, db)
        with owner.cursor() as cursor:
            for statement in _mysql_table(answers.table):
                cursor.execute(statement)
        owner.close()
    except MySQLdb.Error as exc:
        raise Failed(f"Error: {exc}. Bailing") from exc


def _mysql_table(table: str) -> list[str]:
    return [
        f"DROP TABLE IF EXISTS `{table}`",
        f"CREATE TABLE `{table}` (user varchar(128) NOT NULL PRIMARY KEY, "
        "servername varchar(255) NOT NULL, port varchar(8) DEFAULT NULL)",
        f"CREATE INDEX `idx{table}_user` ON `{table}` (user)",
    ]


def _mysql_summary(answers: MySQLAnswers) -> list[str]:
    return [
        f"Database server:          {answers.server}",
        f"Database name:            {answers.dbname}",
        f"Database table:           {answers.table}",
        f"Database user:            {answers.user}",
        f"Connections allowed from: {answers.client_host}",
    ]


def _mysql_done(answers: MySQLAnswers) -> list[str]:
    option = _map_option(answers.server, answers.dbname, answers.table, answers.user)
    return [
        f"You may now add entries to {answers.table} in {answers.dbname}, e.g.:",
        f"  insert into {answers.table} values ('user', 'servername', 'port');",
        "The matching perdition options:",
        f"  -M libperditiondb_mysql.so.0 -m '{option}'",
    ]


def _map_option(server: str, dbname: str, table: str, user: str) -> str:
    """The ``-m`` string for the database just made (password hidden)."""
    host, port = split_server(server)
    return f"{host}:{port or ''}:{dbname}:{table}:{user}:****"


# ---------------------------------------------------------------------- PostgreSQL


@dataclass(frozen=True)
class PostgreSQLAnswers:
    dbname: str
    table: str
    user: str
    password: str
    server: str
    root_password: str


def _pg_connect(server: str, user: str, password: str, dbname: str) -> Any:
    import psycopg

    host, port = split_server(server)
    params: dict[str, Any] = {"host": host, "user": user, "dbname": dbname}
    if port is not None:
        params["port"] = port
    if password:
        params["password"] = password
    return psycopg.connect(connect_timeout=_TIMEOUT, autocommit=True, **params)


def ask_postgresql(prompt: Prompter) -> PostgreSQLAnswers:
    dbname = _name(prompt.ask("Enter database name", "dbperdition"), "database name")
    table = _name(prompt.ask("Enter table name", "tblPerdition"), "table name")
    user = _name(prompt.ask("Enter database user", "perdition"), "user name")
    while not prompt.ask(f"Enter a numeric userid for the {user} user (ignored)",
                         "0").isdigit():
        prompt.say("Userid is contains non-numbers, please try again.")
    password = prompt.new_password(user)
    server = prompt.ask("Enter host name", "localhost")
    return PostgreSQLAnswers(dbname, table, user, password, server, "")


def create_postgresql(answers: PostgreSQLAnswers, prompt: Prompter) -> None:
    """Drop and create the role and its database, then the table as that role."""
    import psycopg
    from psycopg import sql

    role, db = sql.Identifier(answers.user), sql.Identifier(answers.dbname)
    try:
        with _pg_connect(answers.server, "postgres", answers.root_password,
                         "postgres") as admin:
            prompt.say(f"Dropping database {answers.dbname} and user {answers.user}...")
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(db))
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(role))
            prompt.say(f"Adding user {answers.user} and database {answers.dbname}...")
            admin.execute(sql.SQL("CREATE ROLE {} LOGIN NOCREATEDB NOCREATEROLE PASSWORD {}")
                          .format(role, sql.Literal(answers.password)))
            admin.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(db, role))
        prompt.say(f"Creating table {answers.table} in database {answers.dbname}...")
        with _pg_connect(answers.server, answers.user, answers.password,
                         answers.dbname) as owner:
            # Unquoted, as the map names it: PostgreSQL folds it to lower case.
            owner.execute(f"DROP TABLE IF EXISTS {answers.table}")
            owner.execute(f'CREATE TABLE {answers.table} ("user" varchar(128) NOT NULL '
                          'PRIMARY KEY, "servername" varchar(255) NOT NULL, '
                          '"port" varchar(8) DEFAULT NULL)')
    except psycopg.Error as exc:
        raise Failed(f"Error: {' '.join(str(exc).split())}. Bailing") from exc


def _pg_summary(answers: PostgreSQLAnswers) -> list[str]:
    return [
        f"Database name:            {answers.dbname}",
        f"Database table:           {answers.table}",
        f"Database user:            {answers.user}",
        f"Database server:          {answers.server}",
    ]


def _pg_done(answers: PostgreSQLAnswers) -> list[str]:
    option = _map_option(answers.server, answers.dbname, answers.table, answers.user)
    return [
        f"You may now add entries to {answers.table} in {answers.dbname}, e.g.:",
        f"  INSERT INTO {answers.table} VALUES ('user', 'servername', 'port');",
        "The matching perdition options:",
        f"  -M libperditiondb_postgresql.so.0 -m '{option}'",
    ]


# ---------------------------------------------------------------------- main


@dataclass(frozen=True)
class _Tool:
    usage: str
    ask: Callable[[Prompter], Any]
    summary: Callable[[Any], list[str]]
    create: Callable[[Any, Prompter], None]
    done: Callable[[Any], list[str]]
    root_password: Callable[[Any, Prompter], Any] | None = None


def _pg_root_password(answers: PostgreSQLAnswers, prompt: Prompter) -> PostgreSQLAnswers:
    password = prompt.secret("Enter the password of the postgres database superuser")
    return PostgreSQLAnswers(answers.dbname, answers.table, answers.user, answers.password,
                             answers.server, password)


def _run(tool: _Tool, argv: Sequence[str], source: TextIO, output: TextIO) -> int:
    if argv and argv[0] in ("-h", "--help"):
        output.write(tool.usage)
        return EXIT_OK
    if argv:
        sys.stderr.write(tool.usage)
        return EXIT_FAILURE
    prompt = Prompter(source, output)
    try:
        answers = tool.ask(prompt)
        for line in tool.summary(answers):
            prompt.say(line)
        if not prompt.confirm():
            return EXIT_OK
        if tool.root_password is not None:
            answers = tool.root_password(answers, prompt)
        tool.create(answers, prompt)
    except Failed as exc:
        prompt.say(str(exc))
        return EXIT_FAILURE
    for line in ["", *tool.done(answers)]:
        prompt.say(line)
    return EXIT_OK


_MYSQL = _Tool(MYSQL_USAGE, ask_mysql, _mysql_summary, create_mysql, _mysql_done)
_POSTGRESQL = _Tool(POSTGRESQL_USAGE, ask_postgresql, _pg_summary, create_postgresql,
                    _pg_done, _pg_root_password)


def mysql_main(argv: Sequence[str] | None = None, source: TextIO | None = None,
               output: TextIO | None = None) -> int:
    """``perditiondb_mysql_makedb``."""
    return _run(_MYSQL, sys.argv[1:] if argv is None else argv,
                source or sys.stdin, output or sys.stdout)


def postgresql_main(argv: Sequence[str] | None = None, source: TextIO | None = None,
                    output: TextIO | None = None) -> int:
    """``perditiondb_postgresql_makedb``."""
    return _run(_POSTGRESQL, sys.argv[1:] if argv is None else argv,
                source or sys.stdin, output or sys.stdout)

