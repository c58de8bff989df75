"""``[user<delim>]server[:port]`` strings, parsed as perdition 2.2 parses them.

perdition uses one parser for map results, ``--outgoing_server`` entries and
``--bind_address`` entries: the port follows the *last* ``:`` (or the ``]`` of
an IPv6 literal such as ``[::1]:143``), and the user is everything before the
*last* occurrence of the domain delimiter.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["UserServerPort", "parse_user_server_port"]


@dataclass(frozen=True, slots=True)
class UserServerPort:
    """One parsed destination; any part may be absent (``None``)."""

    user: str | None
    server: str | None
    port: str | None

    def __str__(self) -> str:
        server = self.server or ""
        if ":" in server:
            server = f"[{server}]"
        text = server if self.user is None else f"{self.user}@{server}"
        return text if self.port is None else f"{text}:{self.port}"


def _split_port(text: str) -> tuple[str, str | None, bool]:
    """Return (rest, port, is_ipv6_literal)."""
    right = text.rfind("]")
    if right >= 0:
        left = text.find("[")
        if left >= 0 and right - left > 2:  # at least "[::]"
            tail = text[right + 1 :]
            if tail.startswith(":"):
                return text[:right + 1], tail[1:], True
            return text, None, True
    colon = text.rfind(":")
    if colon < 0:
        return text, None, False
    return text[:colon], text[colon + 1 :], False


def _unbracket(server: str) -> str:
    if server.startswith("[") and "]" in server:
        return server[1 : server.index("]")]
    return server


def parse_user_server_port(text: str, delimiter: str = "@") -> UserServerPort:
    """Parse ``[user<delimiter>]server[:port]`` the way perdition does."""
    rest, port, ipv6 = _split_port(text)
    cut = rest.rfind(delimiter) if delimiter else -1
    if cut >= 0:
        user, server = rest[:cut], rest[cut + len(delimiter) :]
    else:
        user, server = None, rest
    if ipv6:
        server = _unbracket(server)
    return UserServerPort(user=user, server=server, port=port)
