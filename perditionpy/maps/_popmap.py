"""What the key → ``[user@]server[:port]`` maps (cdb, gdbm, bdb, nis) share.

Owns three things: keys and values read as perdition's C strings
(:func:`c_key`, :func:`parse_value`), the outage log (:class:`Outage`: a
warning at the first of a run of failed lookups, an info line when they work
again) and the ``MapError`` for a C library that cannot be loaded
(:func:`load_library`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from perditionpy.endpoints import UserServerPort, parse_user_server_port
from perditionpy.errors import MapError
from perditionpy.maps.base import LookupContext
from perditionpy.protocol.base import decode_name, encode_name

__all__ = ["Outage", "c_key", "load_library", "parse_value"]

_Binding = TypeVar("_Binding")


def c_key(key: str) -> bytes:
    """``key``'s bytes up to its first NUL (perdition passes C strings)."""
    return encode_name(key).split(b"\0", 1)[0]


def parse_value(value: bytes | None, context: LookupContext) -> UserServerPort | None:
    """A stored value up to its first NUL, parsed; ``None`` if absent or empty."""
    if value is None:
        return None
    text = decode_name(value.split(b"\0", 1)[0])
    if not text:
        return None
    return parse_user_server_port(text, context.domain_delimiter)


class Outage:
    """Logs the first of a run of failed lookups and the recovery after it.

    ``until`` ends the warning ("… until it can be read"); ``recovery`` is the
    info line's format, given ``subject`` (the file or NIS map name).
    """

    def __init__(self, logger: logging.Logger, *, until: str, recovery: str, subject: str) -> None:
        self._logger = logger
        # Built once so the log record's format is the same as it always was.
        self._warning = "%s; lookups fail (falling back to --outgoing_server) until " + until
        self._recovery = recovery
        self._subject = subject
        self.available = True

    def failed(self, error: MapError) -> MapError:
        """``error``, logged if it starts a run of failures."""
        if self.available:
            self.available = False
            self._logger.warning(self._warning, error)
        return error

    def recovered(self) -> None:
        """A lookup worked: log it if it ends a run of failures."""
        if not self.available:
            self.available = True
            self._logger.info(self._recovery, self._subject)


def load_library(map_name: str, library: str, load: Callable[[], _Binding]) -> _Binding:
    """``load()``, its ``OSError`` turned into the ``MapError`` naming ``library``."""
    try:
        return load()
    except OSError as exc:
        raise MapError(map_name, f"cannot load {library}: {exc}") from exc
