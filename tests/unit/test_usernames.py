"""The username pipeline: strip/add domain, lower case per state, query keys."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from perditionpy.maps.base import LookupContext
from perditionpy.protocol.base import decode_name
from perditionpy.usernames import (
    REMOTE_LOGIN,
    SERVERNAME_LOOKUP,
    STATES,
    QueryKeyError,
    UsernameError,
    default_reverse_lookup,
    local_domain,
    lower_ascii,
    mangle,
    query_key,
    query_keys,
    split_user,
    validate_query_key,
)

LOCAL = "192.0.2.10"
HOSTS = {LOCAL: "mail.au.example.net", "192.0.2.20": "MX.Example.NET"}


@dataclass(frozen=True)
class Opts:
    """The attributes of ``Options`` that usernames.py reads."""

    strip_domain: frozenset[str] = field(default_factory=frozenset)
    add_domain: frozenset[str] = field(default_factory=frozenset)
    add_domain_strip_depth: int = 1
    explicit_domain: str | None = None
    lower_case: frozenset[str] = field(default_factory=frozenset)
    domain_delimiter: str = "@"
    client_server_specification: bool = False


def hosts(address: str) -> str | None:
    return HOSTS.get(address)


def no_lookup_allowed(address: str) -> str | None:
    raise AssertionError(f"unexpected reverse lookup of {address}")


def run(name: str, state: str, opts: Opts, local: str | None = LOCAL) -> str:
    return mangle(name, state, opts, local, reverse_lookup=hosts)


def only(state: str) -> frozenset[str]:
    return frozenset({state})


# ------------------------------------------------------------------ strip_domain


@pytest.mark.parametrize("state", sorted(STATES))
def test_strip_domain_applies_only_in_its_state(state: str) -> None:
    opts = Opts(strip_domain=only(state))
    for other in STATES:
        expected = "bob" if other == state else "bob@example.org"
        assert run("bob@example.org", other, opts) == expected


def test_strip_domain_cuts_at_the_last_delimiter() -> None:
    opts = Opts(strip_domain=STATES)
    assert run("bob@home@example.org", REMOTE_LOGIN, opts) == "bob@home"
    assert run("bob", REMOTE_LOGIN, opts) == "bob"


def test_strip_domain_with_a_multi_character_delimiter() -> None:
    opts = Opts(strip_domain=STATES, domain_delimiter="%%")
    assert run("bob%%example.org", REMOTE_LOGIN, opts) == "bob"
    assert run("bob@example.org", REMOTE_LOGIN, opts) == "bob@example.org"


def test_strip_domain_leaves_the_lookup_name_alone_under_client_server_specification() -> None:
    opts = Opts(strip_domain=STATES, client_server_specification=True)
    assert run("bob@imap9:143", SERVERNAME_LOOKUP, opts) == "bob@imap9:143"
    assert run("bob@imap9:143", REMOTE_LOGIN, opts) == "bob"


# ------------------------------------------------------------------ add_domain


@pytest.mark.parametrize("state", sorted(STATES))
def test_add_domain_applies_only_in_its_state(state: str) -> None:
    opts = Opts(add_domain=only(state))
    for other in STATES:
        expected = "bob@au.example.net" if other == state else "bob"
        assert run("bob", other, opts) == expected


@pytest.mark.parametrize(
    ("depth", "expected"),
    [
        (0, "bob@mail.au.example.net"),
        (1, "bob@au.example.net"),
        (2, "bob@example.net"),
        (3, "bob@net"),
        (4, "bob"),  # ran out of labels: nothing is added
        (9, "bob"),
    ],
)
def test_add_domain_strip_depth(depth: int, expected: str) -> None:
    opts = Opts(add_domain=STATES, add_domain_strip_depth=depth)
    assert run("bob", REMOTE_LOGIN, opts) == expected


def test_add_domain_not_added_when_a_delimiter_is_anywhere_in_the_name() -> None:
    opts = Opts(add_domain=STATES)
    assert mangle("bob@x", REMOTE_LOGIN, opts, LOCAL, reverse_lookup=no_lookup_allowed) == "bob@x"
    assert mangle("@", REMOTE_LOGIN, opts, LOCAL, reverse_lookup=no_lookup_allowed) == "@"


@pytest.mark.parametrize(
    ("address", "depth", "expected"),
    [
        ("10.0.0.5", 0, "bob@10.0.0.5"),  # no reverse name: the numeric address stands in
        ("10.0.0.5", 1, "bob@0.0.5"),  # ... and is label-stripped like a name (perdition 2.2)
        ("2001:db8::1", 0, "bob@2001:db8::1"),
        ("2001:db8::1", 1, "bob"),  # no dot to strip at
    ],
)
def test_add_domain_without_a_reverse_name_uses_the_numeric_address(
    address: str, depth: int, expected: str
) -> None:
    opts = Opts(add_domain=STATES, add_domain_strip_depth=depth)
    assert run("bob", REMOTE_LOGIN, opts, local=address) == expected


def test_add_domain_needs_the_local_address() -> None:
    opts = Opts(add_domain=STATES)
    assert run("bob", REMOTE_LOGIN, opts, local=None) == "bob"


def test_explicit_domain_replaces_the_lookup_and_is_not_stripped() -> None:
    opts = Opts(add_domain=STATES, explicit_domain="corp.example", add_domain_strip_depth=3)
    for local in (LOCAL, None):
        got = mangle("bob", REMOTE_LOGIN, opts, local, reverse_lookup=no_lookup_allowed)
        assert got == "bob@corp.example"


def test_empty_explicit_domain_counts_as_unset() -> None:
    opts = Opts(add_domain=STATES, explicit_domain="")
    assert run("bob", REMOTE_LOGIN, opts) == "bob@au.example.net"


def test_add_domain_with_a_multi_character_delimiter() -> None:
    opts = Opts(add_domain=STATES, domain_delimiter="%%")
    assert run("bob", REMOTE_LOGIN, opts) == "bob%%au.example.net"
    assert run("bob@x", REMOTE_LOGIN, opts) == "bob@x%%au.example.net"


def test_add_domain_is_off_for_the_lookup_under_client_server_specification() -> None:
    # The man page's rule; perdition 2.2 itself adds it and then takes the domain as the server.
    opts = Opts(add_domain=STATES, client_server_specification=True)
    assert run("bob", SERVERNAME_LOOKUP, opts) == "bob"
    assert run("bob", REMOTE_LOGIN, opts) == "bob@au.example.net"


def test_a_failed_reverse_lookup_is_a_username_error() -> None:
    def broken(address: str) -> str | None:
        raise OSError("Temporary failure in name resolution")

    opts = Opts(add_domain=STATES)
    with pytest.raises(UsernameError, match="192.0.2.10"):
        mangle("bob", REMOTE_LOGIN, opts, LOCAL, reverse_lookup=broken)


def test_local_domain_stops_at_an_emptied_name() -> None:
    assert local_domain("192.0.2.99", 1, lambda _: "trailing.") is None
    assert local_domain("192.0.2.99", 0, lambda _: "mail.example.net") == "mail.example.net"


# ------------------------------------------------------------------ lower_case


@pytest.mark.parametrize("state", sorted(STATES))
def test_lower_case_applies_only_in_its_state(state: str) -> None:
    opts = Opts(lower_case=only(state))
    for other in STATES:
        expected = "bob@example.org" if other == state else "Bob@Example.ORG"
        assert run("Bob@Example.ORG", other, opts) == expected


def test_lower_case_is_ascii_only_like_the_c_locale() -> None:
    assert lower_ascii("ÀBc") == "Àbc"
    assert lower_ascii("ΣTRASSE") == "Σtrasse"
    raw = decode_name(b"\xc9B")  # undecodable byte kept as a surrogate
    assert lower_ascii(raw) == "\udcc9b"


def test_order_is_strip_then_add_then_lower() -> None:
    # Adding first would see the delimiter and add nothing; lowering before
    # adding would leave the added domain in capitals.
    opts = Opts(strip_domain=STATES, add_domain=STATES, lower_case=STATES, add_domain_strip_depth=0)
    got = mangle("Bob@Other.Org", REMOTE_LOGIN, opts, "192.0.2.20", reverse_lookup=hosts)
    assert got == "bob@mx.example.net"


def test_unknown_state_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="remote"):
        run("bob", "remote", Opts())


def test_nothing_configured_changes_nothing() -> None:
    for state in STATES:
        assert mangle("Bob@X", state, Opts(), LOCAL, reverse_lookup=no_lookup_allowed) == "Bob@X"


def test_default_reverse_lookup_finds_localhost() -> None:
    name = default_reverse_lookup("127.0.0.1")
    assert name is not None and name != "127.0.0.1"


# ------------------------------------------------------------------ query keys

CONTEXT = LookupContext(client=("198.51.100.7", 40000), local=(LOCAL, 143))


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("\\U", "bob@example.org"),
        ("\\u", "bob"),
        ("\\D", "@"),
        ("\\d", "example.org"),
        ("\\i", "198.51.100.7"),
        ("\\I", LOCAL),
        ("\\p", "40000"),
        ("\\P", "143"),
        ("\\\\", "\\"),
        ("\\u\\da_domain", "bobexample.orga_domain"),
        ("\\D\\d", "@example.org"),
        ("user-\\u", "user-bob"),
        ("\\u\\", "bob"),  # a lone trailing backslash is dropped
        ("\\i:\\p->\\I:\\P", f"198.51.100.7:40000->{LOCAL}:143"),
    ],
)
def test_query_key_escapes(fmt: str, expected: str) -> None:
    assert query_key(fmt, "bob@example.org", "@", CONTEXT) == expected


def test_query_key_splits_at_the_last_delimiter() -> None:
    assert query_key("\\u|\\d", "a@b@c", "@", CONTEXT) == "a@b|c"
    assert query_key("\\u|\\d", "bob", "@", CONTEXT) == "bob|"
    assert query_key("\\u|\\d", "", "@", CONTEXT) == "|"


def test_query_key_domain_skips_a_whole_multi_character_delimiter() -> None:
    assert query_key("\\u|\\D|\\d", "bob%%example.org", "%%", CONTEXT) == "bob|%%|example.org"


def test_query_key_unknown_addresses_are_empty() -> None:
    assert query_key("[\\i\\I\\p\\P]", "bob", "@", LookupContext()) == "[]"


def test_query_key_unknown_escape() -> None:
    with pytest.raises(QueryKeyError, match=r"\\x") as info:
        query_key("\\u\\x", "bob", "@", CONTEXT)
    assert info.value.escape == "x"
    with pytest.raises(QueryKeyError):
        validate_query_key("\\q")
    validate_query_key("\\U,\\u\\D\\d")


def test_query_keys_default_to_the_name_itself() -> None:
    assert list(query_keys((), "bob@example.org", "@", CONTEXT)) == ["bob@example.org"]


def test_query_keys_are_built_lazily() -> None:
    keys = query_keys(("\\u", "\\x"), "bob@example.org", "@", CONTEXT)
    assert next(keys) == "bob"
    with pytest.raises(QueryKeyError):
        next(keys)


def test_split_user() -> None:
    assert split_user("a@b@c", "@") == ("a@b", "c")
    assert split_user("abc", "@") == ("abc", None)
    assert split_user("a::b", "::") == ("a", "b")
