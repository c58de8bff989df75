"""Which real server a login goes to, and as whom: perdition's ``getserver`` step.

For each login attempt a session calls :meth:`ResolverSession.resolve`, which

1. rewrites the client's name for the ``servername_lookup`` state;
2. with ``--client_server_specification``, takes ``user<delim>server[:port]``
   from the client (the map is not asked, and the ``<delim>server[:port]``
   part is cut from the name -- always; perdition 2.2 forgets the cut when
   ``--lower_case servername_lookup`` is set);
3. otherwise asks the map with each ``--query_key`` key in turn (or the name
   itself) until one is found; a map that fails (``MapError``) or a bad query
   key format ends the search, is logged, and counts as "not found";
4. with ``--username_from_database``, lets a ``user<delim>`` in the map's
   answer replace the client's name from here on;
5. falls back to the ``--outgoing_server`` list when no server was found:
   round robin, from a random starting point, one step per use, and a session
   that has used it once keeps stepping from where it was on its next try;
6. takes the port from the answer, else ``--outgoing_port``;
7. rewrites the name for the ``remote_login`` state: what the back-end sees.

No server at all raises :class:`ResolveError` ("Could not determine server");
a port that is neither a number nor a known service, or is out of range,
raises :class:`ConnectTargetError` ("Could not connect to server", which is
what perdition answers once its connect fails; it would wrap ports above
65535 modulo 65536 rather than refuse them).  Not thread-safe per session;
:class:`Resolver` itself is shared by all sessions.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from perditionpy.endpoints import UserServerPort, parse_user_server_port
from perditionpy.errors import MapError, PerditionError
from perditionpy.maps.base import LookupContext, Map
from perditionpy.usernames import (
    LOCAL_AUTHENTICATION,
    REMOTE_LOGIN,
    SERVERNAME_LOOKUP,
    QueryKeyError,
    ReverseLookup,
    UsernameOptions,
    default_reverse_lookup,
    last_delimiter,
    mangle,
    query_keys,
    split_user,
)

__all__ = [
    "Route", "ResolveError", "ConnectTargetError", "ResolveOptions", "ServiceLookup",
    "Resolver", "ResolverSession", "default_service_lookup", "port_number",
    "local_auth_user",
]

logger = logging.getLogger(__name__)

# Service name -> port number; raises OSError for an unknown name.
ServiceLookup = Callable[[str], int]


class ResolveOptions(UsernameOptions, Protocol):
    """The options server choice reads (a subset of ``Options``)."""

    @property
    def query_key(self) -> tuple[str, ...]: ...
    @property
    def username_from_database(self) -> bool: ...
    @property
    def outgoing_server(self) -> tuple[UserServerPort, ...]: ...
    @property
    def outgoing_port(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Route:
    """Where one login goes.

    ``authorisation_id``: the client's name after the ``-c`` cut and the
    ``-U`` replacement, unmangled; perdition logs it and carries on with it
    (it replaces the SASL authzid if the client gave one, else the login name).
    ``login_user``: that name mangled for ``remote_login``, sent to the server.
    ``port_text``: the port as the map, the client or ``-s`` wrote it (for
    the Auth log line, which shows e.g. ``pop3`` rather than ``110``).
    """

    login_user: str
    server: str
    port: int
    authorisation_id: str
    port_text: str


class ResolveError(PerditionError):
    """No server for this login: no map answer and no ``--outgoing_server``."""

    client_text = "Could not determine server"

    def __init__(self) -> None:
        super().__init__(self.client_text)


class ConnectTargetError(PerditionError):
    """The chosen port cannot be connected to (unknown service, out of range)."""

    client_text = "Could not connect to server"

    def __init__(self, server: str, port_text: str, reason: str) -> None:
        self.server = server
        self.port_text = port_text
        self.reason = reason
        super().__init__(self.client_text)


def default_service_lookup(name: str) -> int:
    """A TCP service name's port, found the way perdition's connect finds it."""
    infos = socket.getaddrinfo(None, name, socket.AF_INET, socket.SOCK_STREAM)
    _, port = infos[0][4][:2]
    return int(port)


def port_number(text: str, service_lookup: ServiceLookup = default_service_lookup) -> int:
    """``text`` as a TCP port (digits or a service name); ``ValueError`` if unusable."""
    if text.isascii() and text.isdigit():
        port = int(text)
    else:
        try:
            port = service_lookup(text)
        except OSError as err:
            raise ValueError(f"unknown port {text!r}: {err}") from err
    if not 0 < port < 65536:
        raise ValueError(f"port {text!r} out of range")
    return port


def local_auth_user(user: str, options: UsernameOptions, local_address: str | None, *,
                    reverse_lookup: ReverseLookup = default_reverse_lookup) -> str:
    """The name to give PAM: ``user`` (a ``Route.authorisation_id``) mangled for
    ``local_authentication``."""
    return mangle(user, LOCAL_AUTHENTICATION, options, local_address,
                  reverse_lookup=reverse_lookup)


def _peer(context: LookupContext) -> str:
    return "-" if context.client is None else f"{context.client[0]}:{context.client[1]}"


def _local_address(context: LookupContext) -> str | None:
    return None if context.local is None else context.local[0]


def _is_empty(found: UserServerPort) -> bool:
    return not (found.user or found.server or found.port)


class Resolver:
    """Shared by all sessions: the options, the lookups, the round-robin cursor.

    ``first_default`` fixes where the ``--outgoing_server`` rotation starts
    (random when ``None``, as perdition starts each process at random).
    """

    def __init__(self, options: ResolveOptions, *,
                 reverse_lookup: ReverseLookup = default_reverse_lookup,
                 service_lookup: ServiceLookup = default_service_lookup,
                 first_default: int | None = None) -> None:
        self.options = options
        self.reverse_lookup = reverse_lookup
        self.service_lookup = service_lookup
        self._lock = threading.Lock()
        self._cursor = self._start(len(options.outgoing_server), first_default)

    @staticmethod
    def _start(count: int, first: int | None) -> int:
        if count == 0:
            return 0
        return random.randrange(count) if first is None else first % count

    def quick(self, map: Map | None) -> bool:
        """Whether resolving asks nothing that may block for long: no map or a
        local one (its class says ``quick = True``), and no reverse lookup of the
        local address for ``--add_domain``."""
        if self.options.add_domain and not self.options.explicit_domain:
            return False
        return map is None or getattr(map, "quick", False) is True

    def new_session(self) -> ResolverSession:
        """A resolver for one client connection (all its login attempts)."""
        return ResolverSession(self)

    def take_default(self) -> int:
        """The ``--outgoing_server`` index for a session's first use; moves the cursor on."""
        with self._lock:
            index = self._cursor
            self._cursor = (index + 1) % len(self.options.outgoing_server)
        return index


class ResolverSession:
    """Server choice for the login attempts of one connection."""

    def __init__(self, resolver: Resolver) -> None:
        self._resolver = resolver
        self._options = resolver.options
        self._default_index: int | None = None
        # The local address does not change within a connection: look it up once.
        self._hosts: dict[str, str | None] = {}

    # ------------------------------------------------------------- public

    def resolve(self, user: str, map: Map | None, context: LookupContext) -> Route:
        """Choose the server and the back-end login name for ``user``.

        ``user`` is the client's authorisation id (the SASL authzid if given,
        else the login name).  Raises :class:`ResolveError`,
        :class:`ConnectTargetError` or ``usernames.UsernameError``.
        """
        authorisation_id, found = self._find(user, map, context)
        if found is not None and found.user and self._options.username_from_database:
            authorisation_id = found.user
        server, port_text = self._destination(found)
        port, port_text = self._port(server, port_text, context)
        login_user = self._mangle(authorisation_id, REMOTE_LOGIN, context)
        return Route(login_user, server, port, authorisation_id, port_text)

    def local_auth_user(self, authorisation_id: str, context: LookupContext) -> str:
        """The name to give PAM for a ``Route.authorisation_id``."""
        return self._mangle(authorisation_id, LOCAL_AUTHENTICATION, context)

    # ------------------------------------------------------------- finding

    def _find(self, user: str, map: Map | None,
              context: LookupContext) -> tuple[str, UserServerPort | None]:
        """(the authorisation id to carry on with, what the client or map said)."""
        lookup_name = self._mangle(user, SERVERNAME_LOOKUP, context)
        chosen = self._client_choice(lookup_name)
        if chosen is not None:
            return split_user(user, self._options.domain_delimiter)[0], chosen
        if map is None:
            return user, None
        return user, self._query_map(lookup_name, map, context)

    def _client_choice(self, lookup_name: str) -> UserServerPort | None:
        if not self._options.client_server_specification:
            return None
        delimiter = self._options.domain_delimiter
        cut = last_delimiter(lookup_name, delimiter)
        if cut is None:
            return None
        return parse_user_server_port(lookup_name[cut + len(delimiter):], delimiter)

    def _query_map(self, name: str, map: Map, context: LookupContext) -> UserServerPort | None:
        options = self._options
        try:
            for key in query_keys(options.query_key, name, options.domain_delimiter, context):
                found = map.get(key, context)
                if found is not None:
                    # An all-empty answer ends the search, as perdition's 0 + "" does.
                    return None if _is_empty(found) else found
        except (MapError, QueryKeyError) as err:
            self._lookup_failed(err, context)
        return None

    def _lookup_failed(self, err: PerditionError, context: LookupContext) -> None:
        fallback = ("using --outgoing_server" if self._options.outgoing_server
                    else "no --outgoing_server to fall back on")
        logger.warning("%s: server lookup failed, %s: %s", _peer(context), fallback, err)

    # ------------------------------------------------------------- destination

    def _destination(self, found: UserServerPort | None) -> tuple[str, str | None]:
        server = found.server if found is not None else None
        port = found.port if found is not None else None
        if not server and self._options.outgoing_server:
            default = self._options.outgoing_server[self._next_default()]
            server, port = default.server, default.port
        if not server:
            raise ResolveError()
        return server, port or None

    def _next_default(self) -> int:
        if self._default_index is None:
            self._default_index = self._resolver.take_default()
        else:
            count = len(self._options.outgoing_server)
            self._default_index = (self._default_index + 1) % count
        return self._default_index

    def _port(self, server: str, port_text: str | None,
              context: LookupContext) -> tuple[int, str]:
        if port_text is None:
            return self._options.outgoing_port, str(self._options.outgoing_port)
        try:
            return port_number(port_text, self._resolver.service_lookup), port_text
        except ValueError as err:
            logger.warning("%s: cannot connect to %s: %s", _peer(context), server, err)
            raise ConnectTargetError(server, port_text, str(err)) from err

    # ------------------------------------------------------------- names

    def _mangle(self, name: str, state: str, context: LookupContext) -> str:
        return mangle(name, state, self._options, _local_address(context),
                      reverse_lookup=self._reverse_lookup)

    def _reverse_lookup(self, address: str) -> str | None:
        if address not in self._hosts:
            self._hosts[address] = self._resolver.reverse_lookup(address)
        return self._hosts[address]
