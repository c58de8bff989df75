"""Server choice: map lookups, query keys, -c, -U, --outgoing_server round robin, ports."""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from dataclasses import dataclass, field

import pytest

from perditionpy.endpoints import UserServerPort, parse_user_server_port
from perditionpy.errors import MapError
from perditionpy.maps.base import LookupContext, Map
from perditionpy.resolve import (
    ConnectTargetError,
    ResolveError,
    Resolver,
    Route,
    default_service_lookup,
    local_auth_user,
    port_number,
)
from perditionpy.usernames import LOCAL_AUTHENTICATION, REMOTE_LOGIN, SERVERNAME_LOOKUP, STATES

LOCAL = "192.0.2.10"
CONTEXT = LookupContext(client=("198.51.100.7", 40000), local=(LOCAL, 143))
SERVICES = {"pop3": 110, "imap2": 143}


@dataclass(frozen=True)
class Opts:
    """The attributes of ``Options`` that resolve.py and usernames.py read."""

    strip_domain: frozenset[str] = field(default_factory=frozenset)
    add_domain: frozenset[str] = field(default_factory=frozenset)
    add_domain_strip_depth: int = 1
    explicit_domain: str | None = None
    lower_case: frozenset[str] = field(default_factory=frozenset)
    domain_delimiter: str = "@"
    client_server_specification: bool = False
    query_key: tuple[str, ...] = ()
    username_from_database: bool = False
    outgoing_server: tuple[UserServerPort, ...] = ()
    outgoing_port: int = 143


class DictMap:
    """A map held in a dict, implementing our Map protocol; remembers what it was asked."""

    def __init__(
        self,
        entries: dict[str, str] | None = None,
        *,
        name: str = "dictmap",
        failing: frozenset[str] = frozenset(),
        empty: frozenset[str] = frozenset(),
    ) -> None:
        self.name = name
        self.entries = dict(entries or {})
        self.failing = failing
        self.empty = empty
        self.asked: list[str] = []

    def get(self, key: str, context: LookupContext) -> UserServerPort | None:
        self.asked.append(key)
        if key in self.failing:
            raise MapError(self.name, "connection refused")
        if key in self.empty:
            return UserServerPort(None, None, None)
        value = self.entries.get(key)
        return None if value is None else parse_user_server_port(value, context.domain_delimiter)

    def close(self) -> None:
        self.entries.clear()


def servers(*texts: str) -> tuple[UserServerPort, ...]:
    return tuple(parse_user_server_port(text) for text in texts)


def hosts(address: str) -> str | None:
    return {LOCAL: "mail.au.example.net"}.get(address)


def services(name: str) -> int:
    try:
        return SERVICES[name]
    except KeyError:
        raise OSError(f"unknown service {name}") from None


def resolver(opts: Opts, first_default: int | None = 0) -> Resolver:
    return Resolver(
        opts, reverse_lookup=hosts, service_lookup=services, first_default=first_default
    )


def resolve(opts: Opts, user: str, map: Map | None, context: LookupContext = CONTEXT) -> Route:
    return resolver(opts).new_session().resolve(user, map, context)


def test_dict_map_is_a_map() -> None:
    assert isinstance(DictMap(), Map)


# ------------------------------------------------------------------ plain map lookups


def test_map_hit_gives_server_and_port() -> None:
    route = resolve(Opts(), "bob", DictMap({"bob": "imap1.example.org:1143"}))
    assert route == Route("bob", "imap1.example.org", 1143, "bob", "1143")


def test_map_hit_without_port_uses_outgoing_port() -> None:
    route = resolve(Opts(outgoing_port=993), "bob", DictMap({"bob": "imap1"}))
    assert (route.server, route.port, route.port_text) == ("imap1", 993, "993")


def test_map_port_may_be_a_service_name() -> None:
    route = resolve(Opts(), "bob", DictMap({"bob": "imap1:pop3"}))
    assert (route.port, route.port_text) == (110, "pop3")


def test_map_ipv6_literal() -> None:
    route = resolve(Opts(), "bob", DictMap({"bob": "[2001:db8::5]:1143"}))
    assert (route.server, route.port) == ("2001:db8::5", 1143)


def test_map_miss_without_outgoing_server_cannot_determine_server() -> None:
    with pytest.raises(ResolveError) as info:
        resolve(Opts(), "bob", DictMap({"alice": "imap1"}))
    assert str(info.value) == "Could not determine server"
    assert info.value.client_text == "Could not determine server"


def test_no_map_and_no_outgoing_server_cannot_determine_server() -> None:
    with pytest.raises(ResolveError):
        resolve(Opts(), "bob", None)


def test_map_miss_falls_back_to_outgoing_server() -> None:
    opts = Opts(outgoing_server=servers("pop.example.org:1110"))
    assert resolve(opts, "bob", DictMap()) == Route("bob", "pop.example.org", 1110, "bob", "1110")


def test_no_map_uses_outgoing_server_and_its_port_or_outgoing_port() -> None:
    opts = Opts(outgoing_server=servers("fallback"), outgoing_port=110)
    assert resolve(opts, "bob", None) == Route("bob", "fallback", 110, "bob", "110")


def test_outgoing_server_user_part_is_ignored() -> None:
    opts = Opts(outgoing_server=servers("carol@fallback:1110"), username_from_database=True)
    route = resolve(opts, "bob", None)
    assert (route.login_user, route.authorisation_id, route.server) == ("bob", "bob", "fallback")


def test_map_answer_with_port_but_no_server_uses_the_default_server_and_its_port() -> None:
    opts = Opts(outgoing_server=servers("fallback"), outgoing_port=110)
    route = resolve(opts, "bob", DictMap({"bob": ":1143"}))
    assert (route.server, route.port) == ("fallback", 110)


def test_empty_map_answer_ends_the_search() -> None:
    opts = Opts(query_key=("\\u", "\\U"), outgoing_server=servers("fallback"))
    table = DictMap({"bob@example.org": "imap1"}, empty=frozenset({"bob"}))
    route = resolve(opts, "bob@example.org", table)
    assert route.server == "fallback"
    assert table.asked == ["bob"]


# ------------------------------------------------------------------ query keys


def test_query_keys_are_tried_in_order_until_one_is_found() -> None:
    opts = Opts(query_key=("\\u", "\\D\\d", "\\U"))
    table = DictMap({"@example.org": "imap2:1143", "bob@example.org": "imap3"})
    route = resolve(opts, "bob@example.org", table)
    assert (route.server, route.port) == ("imap2", 1143)
    assert table.asked == ["bob", "@example.org"]


def test_first_query_key_hit_wins() -> None:
    opts = Opts(query_key=("\\U", "\\u"))
    table = DictMap({"bob@example.org": "imap1", "bob": "imap2"})
    assert resolve(opts, "bob@example.org", table).server == "imap1"
    assert table.asked == ["bob@example.org"]


def test_query_key_with_connection_addresses() -> None:
    opts = Opts(query_key=("\\i>\\I:\\P",))
    table = DictMap({f"198.51.100.7>{LOCAL}:143": "imap-by-ip"})
    assert resolve(opts, "bob", table).server == "imap-by-ip"


def test_lookup_uses_the_servername_lookup_name_and_login_keeps_the_client_name() -> None:
    opts = Opts(
        strip_domain=frozenset({SERVERNAME_LOOKUP}), lower_case=frozenset({SERVERNAME_LOOKUP})
    )
    table = DictMap({"bob": "imap1"})
    route = resolve(opts, "Bob@Example.org", table)
    assert table.asked == ["bob"]
    assert (route.login_user, route.authorisation_id) == ("Bob@Example.org", "Bob@Example.org")


def test_login_user_is_mangled_for_remote_login() -> None:
    opts = Opts(strip_domain=frozenset({REMOTE_LOGIN}), lower_case=frozenset({REMOTE_LOGIN}))
    table = DictMap({"Bob@Example.org": "imap1"})
    route = resolve(opts, "Bob@Example.org", table)
    assert table.asked == ["Bob@Example.org"]
    assert (route.login_user, route.authorisation_id) == ("bob", "Bob@Example.org")


def test_add_domain_for_remote_login_uses_the_local_address() -> None:
    opts = Opts(add_domain=frozenset({REMOTE_LOGIN}), outgoing_server=servers("fallback"))
    assert resolve(opts, "bob", None).login_user == "bob@au.example.net"
    unknown_local = LookupContext(client=CONTEXT.client, local=None)
    assert resolve(opts, "bob", None, unknown_local).login_user == "bob"


# ------------------------------------------------------------------ map failures


def test_map_error_ends_the_search_and_falls_back(caplog: pytest.LogCaptureFixture) -> None:
    opts = Opts(query_key=("\\u", "\\U"), outgoing_server=servers("fallback:1110"))
    table = DictMap({"bob@example.org": "imap1"}, name="ldapmap", failing=frozenset({"bob"}))
    with caplog.at_level(logging.WARNING, logger="perditionpy.resolve"):
        route = resolve(opts, "bob@example.org", table)
    assert (route.server, route.port) == ("fallback", 1110)
    assert table.asked == ["bob"]
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "ldapmap" in record.getMessage()
    assert "198.51.100.7" in record.getMessage()
    assert "using --outgoing_server" in record.getMessage()


def test_map_error_without_outgoing_server(caplog: pytest.LogCaptureFixture) -> None:
    table = DictMap(name="ldapmap", failing=frozenset({"bob"}))
    with (
        caplog.at_level(logging.WARNING, logger="perditionpy.resolve"),
        pytest.raises(ResolveError),
    ):
        resolve(Opts(), "bob", table)
    [record] = caplog.records
    assert "ldapmap" in record.getMessage()
    assert "no --outgoing_server" in record.getMessage()


def test_bad_query_key_format_ends_the_search_when_reached(
    caplog: pytest.LogCaptureFixture,
) -> None:
    opts = Opts(query_key=("\\u", "\\x", "\\U"), outgoing_server=servers("fallback"))
    table = DictMap({"bob@example.org": "imap1"})
    with caplog.at_level(logging.WARNING, logger="perditionpy.resolve"):
        assert resolve(opts, "bob@example.org", table).server == "fallback"
    assert table.asked == ["bob"]
    assert "\\x" in caplog.records[0].getMessage()
    # A hit before the bad format is used as usual.
    assert resolve(opts, "bob@example.org", DictMap({"bob": "imap1"})).server == "imap1"


# ------------------------------------------------------------------ --username_from_database


def test_username_from_database_replaces_the_name() -> None:
    table = DictMap({"bob": "alice@imap1:1143"})
    with_u = resolve(Opts(username_from_database=True), "bob", table)
    assert with_u == Route("alice", "imap1", 1143, "alice", "1143")
    without_u = resolve(Opts(), "bob", table)
    assert without_u == Route("bob", "imap1", 1143, "bob", "1143")


def test_username_from_database_name_is_then_mangled_for_remote_login() -> None:
    opts = Opts(
        username_from_database=True,
        strip_domain=frozenset({REMOTE_LOGIN}),
        lower_case=frozenset({REMOTE_LOGIN}),
    )
    route = resolve(opts, "bob", DictMap({"bob": "Alice@corp@imap1"}))
    assert (route.login_user, route.authorisation_id, route.server) == (
        "alice",
        "Alice@corp",
        "imap1",
    )


def test_username_from_database_with_user_only_keeps_the_default_server() -> None:
    opts = Opts(username_from_database=True, outgoing_server=servers("fallback:1110"))
    route = resolve(opts, "bob", DictMap({"bob": "alice@"}))
    assert route == Route("alice", "fallback", 1110, "alice", "1110")


# ------------------------------------------------------------------ --client_server_specification


def test_client_server_specification_picks_server_and_port() -> None:
    table = DictMap({"bob": "imap1"})
    route = resolve(Opts(client_server_specification=True), "bob@imap9.example.org:1993", table)
    assert route == Route("bob", "imap9.example.org", 1993, "bob", "1993")
    assert table.asked == []


def test_client_server_specification_without_port_or_with_ipv6() -> None:
    opts = Opts(client_server_specification=True, outgoing_port=110)
    assert resolve(opts, "bob@imap9", None).port == 110
    route = resolve(opts, "bob@home@[2001:db8::9]:1110", None)
    assert (route.server, route.port, route.login_user) == ("2001:db8::9", 1110, "bob@home")


def test_client_server_specification_without_delimiter_asks_the_map() -> None:
    table = DictMap({"bob": "imap1"})
    route = resolve(Opts(client_server_specification=True), "bob", table)
    assert route.server == "imap1"
    assert table.asked == ["bob"]


def test_client_server_specification_with_multi_character_delimiter() -> None:
    opts = Opts(client_server_specification=True, domain_delimiter="%%")
    route = resolve(opts, "bob@example.org%%imap9:1143", None)
    assert (route.login_user, route.server, route.port) == ("bob@example.org", "imap9", 1143)


def test_client_server_specification_with_empty_server_uses_the_default() -> None:
    opts = Opts(client_server_specification=True, outgoing_server=servers("fallback"))
    route = resolve(opts, "bob@", None)
    assert (route.login_user, route.server) == ("bob", "fallback")


def test_client_server_specification_always_cuts_the_server_from_the_name() -> None:
    # perdition 2.2 forgets the cut when the lookup name was lower-cased.
    opts = Opts(client_server_specification=True, lower_case=frozenset({SERVERNAME_LOOKUP}))
    route = resolve(opts, "Bob@IMAP9:1143", None)
    assert (route.login_user, route.authorisation_id, route.server) == ("Bob", "Bob", "imap9")


def test_client_server_specification_ignores_add_domain_for_the_lookup() -> None:
    opts = Opts(client_server_specification=True, add_domain=STATES)
    table = DictMap({"bob": "imap1"})
    route = resolve(opts, "bob", table)
    assert table.asked == ["bob"]
    assert (route.server, route.login_user) == ("imap1", "bob@au.example.net")


# ------------------------------------------------------------------ --outgoing_server round robin

THREE = servers("s0", "s1:1111", "s2")


def test_round_robin_across_sessions_starts_at_first_default() -> None:
    shared = resolver(Opts(outgoing_server=THREE), first_default=1)
    picked = [shared.new_session().resolve("bob", None, CONTEXT).server for _ in range(4)]
    assert picked == ["s1", "s2", "s0", "s1"]


def test_retries_in_a_session_keep_rotating_from_their_own_position() -> None:
    shared = resolver(Opts(outgoing_server=THREE), first_default=0)
    first, second = shared.new_session(), shared.new_session()
    assert first.resolve("bob", None, CONTEXT).server == "s0"
    assert second.resolve("bob", None, CONTEXT).server == "s1"
    assert first.resolve("bob", None, CONTEXT).server == "s1"
    assert first.resolve("bob", None, CONTEXT).server == "s2"
    assert first.resolve("bob", None, CONTEXT).server == "s0"
    assert second.resolve("bob", None, CONTEXT).server == "s2"


def test_a_map_hit_does_not_move_the_rotation() -> None:
    shared = resolver(Opts(outgoing_server=THREE), first_default=0)
    session = shared.new_session()
    table = DictMap({"alice": "imap-alice"})
    assert session.resolve("alice", table, CONTEXT).server == "imap-alice"
    assert session.resolve("bob", table, CONTEXT).server == "s0"
    assert session.resolve("alice", table, CONTEXT).server == "imap-alice"
    assert session.resolve("bob", table, CONTEXT).server == "s1"


def test_random_start_still_rotates_one_step_per_session() -> None:
    shared = resolver(Opts(outgoing_server=THREE), first_default=None)
    picked = [shared.new_session().resolve("bob", None, CONTEXT).server for _ in range(6)]
    first = int(picked[0][1])
    assert picked == [f"s{(first + i) % 3}" for i in range(6)]


def test_round_robin_is_even_under_threads() -> None:
    four = servers("a", "b", "c", "d")
    shared = resolver(Opts(outgoing_server=four), first_default=None)
    counts: Counter[str] = Counter()
    lock = threading.Lock()

    def worker() -> None:
        mine = Counter(
            shared.new_session().resolve("bob", None, CONTEXT).server for _ in range(250)
        )
        with lock:
            counts.update(mine)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    assert counts == Counter({"a": 500, "b": 500, "c": 500, "d": 500})


# ------------------------------------------------------------------ ports


@pytest.mark.parametrize("value", ["imap1:nosuchservice", "imap1:0", "imap1:70000", "imap1:-1"])
def test_unusable_map_port_is_a_connect_error(value: str, caplog: pytest.LogCaptureFixture) -> None:
    with (
        caplog.at_level(logging.WARNING, logger="perditionpy.resolve"),
        pytest.raises(ConnectTargetError) as info,
    ):
        resolve(Opts(), "bob", DictMap({"bob": value}))
    assert info.value.client_text == "Could not connect to server"
    assert (info.value.server, info.value.port_text) == ("imap1", value.split(":")[1])
    assert "imap1" in caplog.records[0].getMessage()


def test_unusable_default_server_port_is_a_connect_error() -> None:
    with pytest.raises(ConnectTargetError):
        resolve(Opts(outgoing_server=servers("fallback:bogus")), "bob", None)


@pytest.mark.parametrize(
    ("text", "port"), [("143", 143), ("0143", 143), ("65535", 65535), ("1", 1), ("imap2", 143)]
)
def test_port_number(text: str, port: int) -> None:
    assert port_number(text, services) == port


@pytest.mark.parametrize("text", ["0", "65536", "", "x1", "١٤٣"])
def test_port_number_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        port_number(text, services)


def test_default_service_lookup() -> None:
    with pytest.raises(OSError):
        default_service_lookup("no-such-service-perditionpy")
    if os.path.exists("/etc/services"):
        assert default_service_lookup("pop3") == 110


# ------------------------------------------------------------------ local authentication


def test_local_auth_user_uses_the_local_authentication_state() -> None:
    opts = Opts(
        add_domain=frozenset({LOCAL_AUTHENTICATION}),
        lower_case=frozenset({REMOTE_LOGIN}),
        outgoing_server=servers("fallback"),
    )
    assert local_auth_user("Bob", opts, LOCAL, reverse_lookup=hosts) == "Bob@au.example.net"
    assert local_auth_user("Bob", opts, None, reverse_lookup=hosts) == "Bob"
    session = resolver(opts).new_session()
    route = session.resolve("Bob", None, CONTEXT)
    assert route.login_user == "bob"
    assert session.local_auth_user(route.authorisation_id, CONTEXT) == "Bob@au.example.net"


def test_reverse_lookup_happens_once_per_session() -> None:
    calls: list[str] = []

    def counting(address: str) -> str | None:
        calls.append(address)
        return hosts(address)

    opts = Opts(add_domain=STATES, outgoing_server=servers("fallback"))
    session = Resolver(opts, reverse_lookup=counting, service_lookup=services).new_session()
    for _ in range(3):
        assert session.resolve("bob", None, CONTEXT).login_user == "bob@au.example.net"
    assert session.local_auth_user("bob", CONTEXT) == "bob@au.example.net"
    assert calls == [LOCAL]
