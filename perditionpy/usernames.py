"""perdition's username pipeline: strip domain, add domain, lower case, query keys.

perdition rewrites the name a client logged in with separately for each of three
*states*: the map lookup (``servername_lookup``), PAM (``local_authentication``)
and the login to the real server (``remote_login``).  :func:`mangle` applies,
for one state and in perdition's order, ``--strip_domain``, then
``--add_domain``, then ``--lower_case``.  :func:`query_key` expands one
``--query_key`` format into a map key.

Behaviour checked against the perdition 2.2 binary:

* ``--add_domain`` takes the domain from a reverse lookup of the local address
  the client connected to (``--no_lookup`` does not change that), dropping
  ``STRIP_DEPTH`` leading labels; with no reverse name the *numeric* address
  stands in for it (so ``10.0.0.5`` at depth 1 gives ``0.0.5``, and an IPv6
  address, having no dot, adds nothing unless the depth is 0).  ``--explicit_domain`` replaces the lookup.
* ``--lower_case`` uses ``tolower`` in the C locale: ASCII letters only.

Where the binary contradicts its man page we follow the man page (deliberate
deviations, for docs/compatibility.md):

* with ``--client_server_specification``, ``--add_domain servername_lookup``
  does nothing (perdition 2.2 adds the domain and then takes it for the
  client's choice of server);
* ``\\d`` skips the whole of a multi-character delimiter (perdition 2.2 skips
  only its first character).

Names are ``str`` as :func:`perditionpy.protocol.base.decode_name` makes them.
Reverse lookups are I/O and come in through a ``reverse_lookup`` callable.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Protocol

from perditionpy.errors import PerditionError
from perditionpy.maps.base import LookupContext

__all__ = [
    "SERVERNAME_LOOKUP", "LOCAL_AUTHENTICATION", "REMOTE_LOGIN", "STATES",
    "ReverseLookup", "UsernameOptions", "UsernameError", "QueryKeyError",
    "default_reverse_lookup", "last_delimiter", "split_user", "lower_ascii",
    "local_domain", "strip_domain", "add_domain", "lower_case", "mangle",
    "query_key", "query_keys", "validate_query_key",
]

logger = logging.getLogger(__name__)

SERVERNAME_LOOKUP = "servername_lookup"
LOCAL_AUTHENTICATION = "local_authentication"
REMOTE_LOGIN = "remote_login"
STATES = frozenset({SERVERNAME_LOOKUP, LOCAL_AUTHENTICATION, REMOTE_LOGIN})

# Address (numeric, as a string) -> host name, or None when it has none.
# Raises OSError when the lookup itself failed (e.g. DNS timed out).
ReverseLookup = Callable[[str], str | None]

_ASCII_LOWER: Mapping[int, int] = MappingProxyType(
    {code: code + 32 for code in range(ord("A"), ord("Z") + 1)})


class UsernameOptions(Protocol):
    """The options the username pipeline reads (a subset of ``Options``)."""

    @property
    def strip_domain(self) -> frozenset[str]: ...
    @property
    def add_domain(self) -> frozenset[str]: ...
    @property
    def add_domain_strip_depth(self) -> int: ...
    @property
    def explicit_domain(self) -> str | None: ...
    @property
    def lower_case(self) -> frozenset[str]: ...
    @property
    def domain_delimiter(self) -> str: ...
    @property
    def client_server_specification(self) -> bool: ...


class UsernameError(PerditionError):
    """The name could not be rewritten (the reverse lookup failed).

    perdition logs "Fatal error manipulating username" and drops the client.
    """


class QueryKeyError(PerditionError, ValueError):
    """A ``--query_key`` format holds an escape perdition does not know."""

    def __init__(self, fmt: str, escape: str) -> None:
        self.fmt = fmt
        self.escape = escape
        super().__init__(f"unknown escape sequence \\{escape} in query key {fmt!r}")


def default_reverse_lookup(address: str) -> str | None:
    """The host name of ``address`` from the resolver, ``None`` if it has none."""
    try:
        host, _ = socket.getnameinfo((address, 0), socket.NI_NAMEREQD)
    except socket.gaierror as err:
        if err.errno == socket.EAI_NONAME:
            return None
        raise
    return host


# ----------------------------------------------------------------- small pieces


def last_delimiter(name: str, delimiter: str) -> int | None:
    """Index of the last ``delimiter`` in ``name``, as perdition's strrstr finds it.

    An empty name has none; an empty delimiter is found at index 0.
    """
    if not name:
        return None
    if not delimiter:
        return 0
    index = name.rfind(delimiter)
    return None if index < 0 else index


def split_user(name: str, delimiter: str) -> tuple[str, str | None]:
    """``user<delim>domain`` -> (user, domain), split at the last delimiter."""
    cut = last_delimiter(name, delimiter)
    if cut is None:
        return name, None
    return name[:cut], name[cut + len(delimiter):]


def lower_ascii(name: str) -> str:
    """``tolower`` in the C locale: A-Z only, every other character kept."""
    return name.translate(_ASCII_LOWER)


def local_domain(local_address: str, strip_depth: int,
                 reverse_lookup: ReverseLookup) -> str | None:
    """The domain ``--add_domain`` appends, or ``None`` when none is left.

    Like getnameinfo without NI_NAMEREQD, a missing reverse name falls back to
    the numeric address.  Each level of ``strip_depth`` drops one leading
    label; running out of dots means no domain at all.
    """
    host = reverse_lookup(local_address) or local_address
    for _ in range(strip_depth):
        if not host:
            break
        dot = host.find(".")
        if dot < 0:
            return None
        host = host[dot + 1:]
    return host or None


# ----------------------------------------------------------------- the three steps


def _applies(state: str, states: frozenset[str]) -> bool:
    if state not in STATES:
        raise ValueError(f"unknown username state {state!r}")
    return state in states


def _client_chooses_server(state: str, options: UsernameOptions) -> bool:
    # With -c the lookup name must keep the client's "@server" part intact.
    return state == SERVERNAME_LOOKUP and options.client_server_specification


def strip_domain(name: str, state: str, options: UsernameOptions) -> str:
    """``--strip_domain``: drop everything from the last delimiter on."""
    if not _applies(state, options.strip_domain) or _client_chooses_server(state, options):
        return name
    return split_user(name, options.domain_delimiter)[0]


def add_domain(name: str, state: str, options: UsernameOptions, local_address: str | None,
               reverse_lookup: ReverseLookup) -> str:
    """``--add_domain``: append ``<delim>domain`` unless a delimiter is already there."""
    if not _applies(state, options.add_domain) or _client_chooses_server(state, options):
        return name
    delimiter = options.domain_delimiter
    if delimiter in name:
        return name
    domain = _domain_to_add(options, local_address, reverse_lookup)
    return name if domain is None else f"{name}{delimiter}{domain}"


def _domain_to_add(options: UsernameOptions, local_address: str | None,
                   reverse_lookup: ReverseLookup) -> str | None:
    if options.explicit_domain:
        return options.explicit_domain
    if local_address is None:
        return None
    try:
        return local_domain(local_address, options.add_domain_strip_depth, reverse_lookup)
    except OSError as err:
        raise UsernameError(f"reverse lookup of {local_address} failed: {err}") from err


def lower_case(name: str, state: str, options: UsernameOptions) -> str:
    """``--lower_case``: ASCII letters to lower case."""
    return lower_ascii(name) if _applies(state, options.lower_case) else name


def mangle(name: str, state: str, options: UsernameOptions, local_address: str | None, *,
           reverse_lookup: ReverseLookup = default_reverse_lookup) -> str:
    """The name perdition uses in ``state``: strip, then add domain, then lower case.

    ``local_address`` is the numeric address the client connected to (``None``
    when unknown, e.g. inetd on a pipe).  Raises :class:`UsernameError` if a
    needed reverse lookup fails.
    """
    if state not in options.strip_domain and state not in options.add_domain \
            and state not in options.lower_case:
        if state not in STATES:
            raise ValueError(f"unknown username state {state!r}")
        return name  # nothing to do in this state (every state, by default)
    name = strip_domain(name, state, options)
    name = add_domain(name, state, options, local_address, reverse_lookup)
    return lower_case(name, state, options)


# ----------------------------------------------------------------- query keys


def _escape_values(user: str, delimiter: str, context: LookupContext) -> dict[str, str]:
    short, domain = split_user(user, delimiter)
    client_address, client_port = _address_and_port(context.client)
    local_address, local_port = _address_and_port(context.local)
    return {
        "U": user, "u": short, "D": delimiter, "d": domain or "",
        "i": client_address, "I": local_address,
        "p": client_port, "P": local_port, "\\": "\\",
    }


def _address_and_port(endpoint: tuple[str, int] | None) -> tuple[str, str]:
    # perdition substitutes empty strings when the socket address is unknown.
    return ("", "") if endpoint is None else (endpoint[0], str(endpoint[1]))


def query_key(fmt: str, user: str, delimiter: str, context: LookupContext) -> str:
    """Expand one ``--query_key`` format for ``user``.

    Escapes: ``\\U`` the whole name, ``\\u`` the part before the last
    delimiter, ``\\D`` the delimiter, ``\\d`` the part after it, ``\\i``/``\\I``
    the client's/local address, ``\\p``/``\\P`` their ports, ``\\\\`` a
    backslash.  A lone trailing backslash is dropped, as perdition does.
    Raises :class:`QueryKeyError` on any other escape.
    """
    values = _escape_values(user, delimiter, context)
    parts: list[str] = []
    escaped = False
    for char in fmt:
        if escaped:
            if char not in values:
                raise QueryKeyError(fmt, char)
            parts.append(values[char])
            escaped = False
        elif char == "\\":
            escaped = True
        else:
            parts.append(char)
    return "".join(parts)


def query_keys(formats: tuple[str, ...], user: str, delimiter: str,
               context: LookupContext) -> Iterator[str]:
    """The keys to try in order: one per format, or ``user`` itself if none.

    Lazy on purpose: perdition only notices a bad format when it gets to it.
    """
    if not formats:
        yield user
        return
    for fmt in formats:
        key = query_key(fmt, user, delimiter, context)
        logger.debug("query key %r -> %r", fmt, key)
        yield key


def validate_query_key(fmt: str) -> None:
    """Raise :class:`QueryKeyError` if ``fmt`` has an unknown escape (for option checks)."""
    query_key(fmt, "", "@", LookupContext())
