"""The LDAP map's ``-m`` string: ``[ldap_version:]ldap_url``, parsed once, rendered per key.

perdition's LDAP library pastes the key into the *text* of the URL and only then
parses it, so a key can change the URL's structure (``?``, ``%41``) and the
filter (``*)(uid=*``).  Here the template is split into its RFC 4516 parts
first; ``%s`` / ``%<width>s`` placeholders are recognised the way perdition
recognises them, and the key is put into the parsed base DN escaped per
RFC 4514 and into the parsed filter escaped per RFC 4515.  A key is always a
literal value.

Also here: where TLS settings come from (``LDAPTLS_*`` and ``ldap.conf``, the
places perdition's libldap reads), so that ``ldaps://`` behaves the same.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote

__all__ = [
    "DEFAULT_URL", "DEFAULT_VERSION", "LdapUrlError", "Placeholder", "Template",
    "HostPort", "LdapUrl", "TlsSettings", "split_version", "parse_options",
    "parse_url", "escape_filter_value", "escape_dn_value", "tls_settings",
]

# perdition 2.2's built-in URL and protocol version (its library defaults to v2).
DEFAULT_URL = "ldap://localhost/ou=mailbox,dc=nodomain?username,mailhost,port?one?(uid=%s)"
DEFAULT_VERSION = 2
_VERSIONS = (2, 3)
_DEFAULT_PORTS = {"ldap": 389, "ldaps": 636}
_SCOPES = {"": "BASE", "base": "BASE", "one": "LEVEL", "onelevel": "LEVEL",
           "sub": "SUBTREE", "subtree": "SUBTREE"}
_DEFAULT_FILTER = "(objectClass=*)"
# ``%%`` is a pair that stays literal; ``%s`` / ``%10s`` is a placeholder.
_PLACEHOLDER = re.compile(r"%%|%(\d*)s")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_STARTTLS_NAMES = frozenset({"x-starttls", "starttls", "1.3.6.1.4.1.1466.20037"})
_MAX_PORT = 65535
_DEFAULT_LDAP_CONF = "/etc/ldap/ldap.conf"


class LdapUrlError(ValueError):
    """The ``-m`` string is not a usable LDAP URL; the message says why."""


# ---------------------------------------------------------------------- templates


@dataclass(frozen=True, slots=True)
class Placeholder:
    """``%s`` (width 0) or ``%<width>s``: the key, right-aligned in ``width`` bytes."""

    width: int

    def pad(self, key: str) -> str:
        """The key with perdition's left padding (widths count UTF-8 bytes, as in C)."""
        missing = self.width - len(key.encode("utf-8", "surrogateescape"))
        return " " * missing + key if missing > 0 else key


@dataclass(frozen=True, slots=True)
class Template:
    """One URL part: decoded literal text and placeholders, in order."""

    parts: tuple[str | Placeholder, ...]

    @classmethod
    def parse(cls, raw: str) -> Template:
        """Split raw (still percent-encoded) URL text at perdition's placeholders."""
        parts: list[str | Placeholder] = []
        literal: list[str] = []
        position = 0
        for match in _PLACEHOLDER.finditer(raw):
            literal.append(raw[position:match.start()])
            position = match.end()
            if match.group(0) == "%%":
                literal.append("%%")
                continue
            parts.append(unquote("".join(literal), errors="surrogateescape"))
            literal = []
            parts.append(Placeholder(int(match.group(1) or 0)))
        literal.append(raw[position:])
        parts.append(unquote("".join(literal), errors="surrogateescape"))
        return cls(tuple(part for part in parts if part != ""))

    @property
    def has_placeholder(self) -> bool:
        return any(isinstance(part, Placeholder) for part in self.parts)

    def literal(self) -> str:
        """The text, for parts that must not contain a placeholder."""
        return "".join(part if isinstance(part, str) else "%s" for part in self.parts)

    def render(self, key: str, escape: Callable[[str], str]) -> str:
        """The text with every placeholder replaced by the padded, escaped key."""
        return "".join(part if isinstance(part, str) else escape(part.pad(key))
                       for part in self.parts)


def escape_filter_value(value: str) -> str:
    """RFC 4515 escaping of an assertion value.

    Besides the required ``\\ * ( )`` and NUL, spaces and control characters
    are escaped too, so no filter parser can trim or misread them.
    """
    out: list[str] = []
    for char in value:
        if char in "\\*()" or char <= " " or char == "\x7f":
            out.append("".join(f"\\{byte:02x}" for byte in char.encode("utf-8")))
        else:
            out.append(char)
    return "".join(out)


def escape_dn_value(value: str) -> str:
    """RFC 4514 escaping of an attribute value inside a DN."""
    out: list[str] = []
    last = len(value) - 1
    for index, char in enumerate(value):
        if char in ',+"\\<>;=' or (char == "#" and index == 0) or (
                char == " " and index in (0, last)):
            out.append("\\" + char)
        elif char < " " or char == "\x7f":
            out.append(f"\\{ord(char):02x}")
        else:
            out.append(char)
    return "".join(out)


# ---------------------------------------------------------------------- the URL


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class LdapUrl:
    """A parsed ``-m``: everything a lookup needs except the key."""

    version: int
    scheme: str
    hosts: tuple[HostPort, ...]
    base: Template
    attributes: tuple[str, ...]
    scope: str  # ldap3's name: BASE, LEVEL, SUBTREE
    filter: Template
    bind_dn: str | None = None
    bind_password: str | None = field(default=None, repr=False)
    start_tls: bool = False

    @property
    def use_ssl(self) -> bool:
        return self.scheme == "ldaps"

    def search_base(self, key: str) -> str:
        return self.base.render(key, escape_dn_value)

    def search_filter(self, key: str) -> str:
        text = self.filter.render(key, escape_filter_value).strip()
        if not text:
            return _DEFAULT_FILTER
        return text if text.startswith("(") else f"({text})"

    def describe(self) -> str:
        """A one-line summary for logs (no password)."""
        hosts = " ".join(str(host) for host in self.hosts)
        return (f"{self.scheme}://{hosts}/{self.base.literal()} scope={self.scope.lower()} "
                f"filter={self.filter.literal() or _DEFAULT_FILTER}")


def split_version(options: str) -> tuple[int, str]:
    """``[ldap_version:]ldap_url`` as perdition reads it: (version, url or DEFAULT_URL).

    As in perdition, a lone character is a version with the default URL, and
    a second character ``:`` makes the first one the version.
    """
    version, url = DEFAULT_VERSION, options
    if len(options) == 1:
        version, url = _version_digit(options[0]), ""
    elif len(options) >= 2 and options[1] == ":":
        version, url = _version_digit(options[0]), options[2:]
    if version not in _VERSIONS:
        raise LdapUrlError(f"LDAP version {options[0]!r} is out of range: use 2 or 3")
    return version, url or DEFAULT_URL


def _version_digit(char: str) -> int:
    return int(char) if char.isdigit() else -1


def parse_options(options: str) -> LdapUrl:
    """Parse the whole ``-m`` string."""
    version, url = split_version(options)
    return parse_url(url, version)


def parse_url(url: str, version: int = DEFAULT_VERSION) -> LdapUrl:
    """Parse an RFC 4516 URL template (with perdition's ``%s`` placeholders)."""
    text = url.strip()
    match = _SCHEME.match(text)
    if match is None:
        raise LdapUrlError(f"not an LDAP URL: {url!r}")
    scheme = match.group(1).lower()
    if scheme not in _DEFAULT_PORTS:
        raise LdapUrlError(f"unsupported URL scheme {scheme!r}: use ldap:// or ldaps://")
    hostport, slash, path = text[match.end():].partition("/")
    fields = path.split("?") if slash else []
    if len(fields) > 5:
        raise LdapUrlError("too many '?' in the URL (a '?' in a value is written %3F)")
    base, attributes, scope, filter_, extensions = (fields + [""] * 5)[:5]
    tls, bind_dn, bind_password = _extensions(extensions)
    return LdapUrl(
        version=version, scheme=scheme,
        hosts=_hosts(hostport, _DEFAULT_PORTS[scheme]),
        base=Template.parse(base), attributes=_attributes(attributes),
        scope=_scope(scope), filter=Template.parse(filter_),
        bind_dn=bind_dn, bind_password=bind_password, start_tls=tls,
    )


def _no_placeholder(raw: str, where: str) -> str:
    template = Template.parse(raw)
    if template.has_placeholder:
        raise LdapUrlError(f"%s is only substituted in the base DN and the filter, not in {where}")
    return template.literal()


def _hosts(raw: str, default_port: int) -> tuple[HostPort, ...]:
    """Space-separated hosts; one without a port takes the port written last (or the default)."""
    tokens = _no_placeholder(raw, "the host list").split()
    split = [_host_port(token) for token in tokens] or [("localhost", None)]
    shared = next((port for _, port in reversed(split) if port is not None), default_port)
    return tuple(HostPort(host, shared if port is None else port) for host, port in split)


def _host_port(token: str) -> tuple[str, int | None]:
    if token.startswith("["):
        host, bracket, rest = token[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise LdapUrlError(f"bad host {token!r}")
        return host, _port(rest[1:], token) if rest else None
    if token.count(":") > 1:  # a bare IPv6 address: no port
        return token, None
    host, colon, port = token.partition(":")
    if not host:
        raise LdapUrlError(f"bad host {token!r}")
    return host, _port(port, token) if colon else None


def _port(text: str, token: str) -> int:
    if not text.isdigit() or not 0 < int(text) <= _MAX_PORT:
        raise LdapUrlError(f"bad port in {token!r}")
    return int(text)


def _attributes(raw: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in _no_placeholder(raw, "the attributes").split(","))
    names = tuple(name for name in names if name)
    if not names:
        raise LdapUrlError("the URL names no attributes (perdition's order: "
                           "username,mailhost,port)")
    return names


def _scope(raw: str) -> str:
    scope = _no_placeholder(raw, "the scope").strip().lower()
    if scope not in _SCOPES:
        raise LdapUrlError(f"unsupported scope {scope!r}: use base, one or sub")
    return _SCOPES[scope]


def _extensions(raw: str) -> tuple[bool, str | None, str | None]:
    """(StartTLS, bindname, x-bindpw); an unknown critical (``!``) extension is an error."""
    start_tls, bind_dn, bind_password = False, None, None
    for item in raw.split(",") if raw else []:
        critical = item.startswith("!")
        name, _, value = item.removeprefix("!").partition("=")
        name = unquote(name).strip().lower()
        value = _no_placeholder(value, f"the {name} extension")
        if name == "bindname":
            bind_dn = value
        elif name == "x-bindpw":
            bind_password = value
        elif name in _STARTTLS_NAMES:
            start_tls = True
        elif critical:
            raise LdapUrlError(f"critical extension {name!r} is not supported")
    return start_tls, bind_dn, bind_password


# ---------------------------------------------------------------------- TLS


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """How to check the server's certificate: libldap's TLS_CACERT/CACERTDIR/REQCERT."""

    ca_file: str | None = None
    ca_dir: str | None = None
    verify: ssl.VerifyMode = ssl.CERT_REQUIRED


def tls_settings(environ: Mapping[str, str] | None = None) -> TlsSettings:
    """Read ``LDAPTLS_*`` from the environment, then ``$LDAPCONF`` or /etc/ldap/ldap.conf.

    ``TLS_REQCERT`` ``never``/``allow``/``try`` turn checking off (libldap
    tolerates a bad certificate with all three); ``demand``/``hard``, the
    default, require a valid certificate for the host name.
    """
    environ = os.environ if environ is None else environ
    conf: dict[str, str] = {}
    if "LDAPNOINIT" not in environ:
        conf = _read_ldap_conf(environ.get("LDAPCONF", _DEFAULT_LDAP_CONF))

    def setting(name: str) -> str | None:
        return environ.get(f"LDAP{name}") or conf.get(name)

    reqcert = (setting("TLS_REQCERT") or "demand").lower()
    verify = ssl.CERT_NONE if reqcert in ("never", "allow", "try") else ssl.CERT_REQUIRED
    return TlsSettings(setting("TLS_CACERT"), setting("TLS_CACERTDIR"), verify)


def _read_ldap_conf(path: str) -> dict[str, str]:
    settings: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as conf:
            for line in conf:
                words = line.split(None, 1)
                if len(words) == 2 and not words[0].startswith("#"):
                    settings.setdefault(words[0].upper(), words[1].strip())
    except OSError:
        pass
    return settings
