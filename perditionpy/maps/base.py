"""The one interface every map implements, whatever stores the data.

A map is built from the ``-m`` option string, answers ``get(key, context)`` and
is closed on reload/shutdown::

    class Map(Protocol):
        name: str
        def get(self, key: str, context: LookupContext) -> UserServerPort | None: ...
        def close(self) -> None: ...

A map whose lookups only read local files may say so with a class attribute
``quick = True``: sessions then look it up in the event loop's thread instead
of handing the lookup to a worker thread.  Any other map (one that asks a
server, or a plug-in that does not say) is looked up on a worker thread.

``None`` means "not found" (perdition's -2, and also 0 with an empty string).
Any failure to answer (source down, file unreadable, timeout) raises
``MapError`` naming the map; it never raises anything else into a session.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from perditionpy.endpoints import UserServerPort
from perditionpy.errors import MapError

__all__ = ["Map", "MapFactory", "LookupContext", "MapError", "UserServerPort"]


@dataclass(frozen=True, slots=True)
class LookupContext:
    """Who is asking: the client's and the local (address, port), if known.

    ``domain_delimiter`` is needed to split ``user@server:port`` results.
    """

    client: tuple[str, int] | None = None
    local: tuple[str, int] | None = None
    domain_delimiter: str = "@"


@runtime_checkable
class Map(Protocol):
    name: str

    def get(self, key: str, context: LookupContext) -> UserServerPort | None:
        """Look ``key`` up; ``None`` if absent; ``MapError`` if the map can't answer."""
        ...

    def close(self) -> None:
        """Release files/connections.  Idempotent."""
        ...


class MapFactory(Protocol):
    def __call__(self, options: str) -> Map:
        """Open a map from its ``-m`` option string (``""`` when none was given)."""
        ...
