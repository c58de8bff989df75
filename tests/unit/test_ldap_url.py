"""The LDAP map's ``-m`` parsing, placeholders and escaping (no server needed)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from perditionpy.errors import MapError
from perditionpy.maps._ldap_url import (
    DEFAULT_URL,
    HostPort,
    LdapUrlError,
    Placeholder,
    Template,
    escape_dn_value,
    escape_filter_value,
    parse_options,
    split_version,
    tls_settings,
)
from perditionpy.maps.ldap import open_ldap_map


@pytest.mark.parametrize("options, expected", [
    ("", (2, DEFAULT_URL)),
    ("3", (3, DEFAULT_URL)),
    ("2:", (2, DEFAULT_URL)),
    ("3:ldap://h/", (3, "ldap://h/")),
    ("ldap://h/", (2, "ldap://h/")),
])
def test_version_prefix(options: str, expected: tuple[int, str]) -> None:
    assert split_version(options) == expected


@pytest.mark.parametrize("options", ["1:ldap://h/", "4", "x:ldap://h/"])
def test_version_out_of_range(options: str) -> None:
    with pytest.raises(LdapUrlError, match="out of range"):
        split_version(options)


def test_perditions_default_url() -> None:
    url = parse_options("")
    assert (url.version, url.scheme, url.hosts) == (2, "ldap", (HostPort("localhost", 389),))
    assert url.search_base("horms") == "ou=mailbox,dc=nodomain"
    assert url.attributes == ("username", "mailhost", "port")
    assert url.scope == "LEVEL"
    assert url.search_filter("horms") == "(uid=horms)"


def test_every_part() -> None:
    url = parse_options("3:LDAPS://a%20b:1636/dc=x%2Cy?mailHost?SUB?uid=%s"
                        "?bindname=cn=m%2Cdc=x,!X-BINDPW=p%3Fw,x-starttls")
    assert url.use_ssl and url.start_tls
    assert url.hosts == (HostPort("a", 1636), HostPort("b", 1636))
    assert url.search_base("k") == "dc=x,y"
    assert url.attributes == ("mailHost",)
    assert url.scope == "SUBTREE"
    assert url.search_filter("k") == "(uid=k)"  # parentheses added
    assert (url.bind_dn, url.bind_password) == ("cn=m,dc=x", "p?w")


@pytest.mark.parametrize("hosts, expected", [
    ("", (HostPort("localhost", 389),)),
    ("h1 h2", (HostPort("h1", 389), HostPort("h2", 389))),
    ("h1  h2:1389", (HostPort("h1", 1389), HostPort("h2", 1389))),  # perdition's shared port
    ("h1:1 h2", (HostPort("h1", 1), HostPort("h2", 1))),  # the port written last
    ("[::1]:1389 ::2", (HostPort("::1", 1389), HostPort("::2", 1389))),
])
def test_hosts(hosts: str, expected: tuple[HostPort, ...]) -> None:
    assert parse_options(f"3:ldap://{hosts}/dc=x?a").hosts == expected


@pytest.mark.parametrize("options, message", [
    ("3:http://h/dc=x?a", "unsupported URL scheme"),
    ("3:h/dc=x?a", "not an LDAP URL"),
    ("3:ldap://h/dc=x", "names no attributes"),
    ("3:ldap://h/dc=x?a?children", "unsupported scope"),
    ("3:ldap://h:0/dc=x?a", "bad port"),
    ("3:ldap://h:99999/dc=x?a", "bad port"),
    ("3:ldap://h/dc=x?a?one?(uid=%s)?!x-unknown", "critical extension"),
    ("3:ldap://h/dc=x?a?one?(uid=%s)?x?y", "too many"),
    ("3:ldap://%s/dc=x?a", "only substituted"),
    ("3:ldap://h/dc=x?%s", "only substituted"),
    ("3:ldap://h/dc=x?a??(uid=x)?bindname=uid=%s", "only substituted"),
])
def test_bad_urls(options: str, message: str) -> None:
    with pytest.raises(LdapUrlError, match=message):
        parse_options(options)


def test_bad_url_is_a_map_error_naming_the_map() -> None:
    with pytest.raises(MapError, match="^ldap: -m: "):
        open_ldap_map("3:ldap://h/dc=x")


def test_bad_filter_is_refused_at_start() -> None:
    with pytest.raises(MapError, match="bad filter"):
        open_ldap_map("3:ldap://h/dc=x?a?one?(&(uid=%s)")


@pytest.mark.parametrize("raw, parts", [
    ("(uid=%s)", ("(uid=", Placeholder(0), ")")),
    ("(uid=%10s)", ("(uid=", Placeholder(10), ")")),
    ("(uid=%%s)", ("(uid=%%s)",)),  # %% keeps the s literal, as in perdition
    ("(uid=%%%s)", ("(uid=%%", Placeholder(0), ")")),
    ("(cn=a%20b)", ("(cn=a b)",)),  # literal text is percent-decoded
    ("(cn=%41)", ("(cn=A)",)),
    ("%s%s", (Placeholder(0), Placeholder(0))),
])
def test_placeholders(raw: str, parts: tuple[object, ...]) -> None:
    assert Template.parse(raw).parts == parts


def test_width_pads_on_the_left_in_bytes() -> None:
    assert Placeholder(6).pad("ab") == "    ab"
    assert Placeholder(4).pad("é") == "  é"  # é is two bytes
    assert Placeholder(2).pad("long") == "long"


@pytest.mark.parametrize("value, escaped", [
    ("*)(uid=*", "\\2a\\29\\28uid=\\2a"),
    ("a\\b", "a\\5cb"),
    ("a\0b", "a\\00b"),
    (" a b", "\\20a\\20b"),
    ("élève", "élève"),
])
def test_filter_escaping(value: str, escaped: str) -> None:
    assert escape_filter_value(value) == escaped


def test_key_is_escaped_where_it_lands() -> None:
    url = parse_options("3:ldap://h/uid=%s,dc=x?a?base?(&(objectClass=*)(uid=%s))")
    assert url.search_base("a,b+c") == "uid=a\\,b\\+c,dc=x"
    assert url.search_filter("*") == "(&(objectClass=*)(uid=\\2a))"
    assert url.search_filter("?x%41") == "(&(objectClass=*)(uid=?x%41))"


@pytest.mark.parametrize("value, escaped", [
    (" a ", "\\ a\\ "), ("#a#", "\\#a#"), ('a,b+c"d\\e<f>g;h=i', 'a\\,b\\+c\\"d\\\\e\\<f\\>g\\;h\\=i'),
])
def test_dn_escaping(value: str, escaped: str) -> None:
    assert escape_dn_value(value) == escaped


def test_tls_settings_from_environment_and_ldap_conf(tmp_path: Path) -> None:
    conf = tmp_path / "ldap.conf"
    conf.write_text("# comment\nTLS_CACERT /conf/ca.pem\nTLS_REQCERT never\n")
    from_conf = tls_settings({"LDAPCONF": str(conf)})
    assert (from_conf.ca_file, from_conf.verify) == ("/conf/ca.pem", ssl.CERT_NONE)
    from_env = tls_settings({"LDAPCONF": str(conf), "LDAPTLS_CACERT": "/env/ca.pem",
                             "LDAPTLS_REQCERT": "demand"})
    assert (from_env.ca_file, from_env.verify) == ("/env/ca.pem", ssl.CERT_REQUIRED)
    assert tls_settings({"LDAPNOINIT": "1"}).verify == ssl.CERT_REQUIRED
