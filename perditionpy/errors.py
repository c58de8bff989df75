"""The one exception root of perditionpy and its first branches.

Errors caused by a peer (a client, a back-end, a map server) are kept apart from
errors in our own configuration; each protocol engine maps its own errors to a
wire reply in one place.
"""

from __future__ import annotations

__all__ = ["PerditionError", "OptionError", "NotImplementedOption", "MapError", "RemoteError"]


class PerditionError(Exception):
    """Root of every error perditionpy raises on purpose."""


class OptionError(PerditionError):
    """A bad command-line flag, config-file line or option value.

    ``str()`` is the one line printed before exiting non-zero; it names the
    option and the value.
    """

    def __init__(self, option: str, value: object, reason: str) -> None:
        self.option = option
        self.value = value
        self.reason = reason
        super().__init__(f"--{option}: {reason}: {value!r}" if value is not None
                         else f"--{option}: {reason}")


class NotImplementedOption(OptionError):
    """An option perdition 2.2 has whose feature perditionpy does not have yet."""

    def __init__(self, option: str, value: object = None) -> None:
        super().__init__(option, value, "not implemented yet")


class MapError(PerditionError):
    """A map could not answer (its source is down, its file is unreadable…).

    Not-found is not an error: maps return ``None`` for that.
    """

    def __init__(self, map_name: str, message: str) -> None:
        self.map_name = map_name
        super().__init__(f"{map_name}: {message}")


class RemoteError(PerditionError):
    """A peer broke the protocol or the connection."""
