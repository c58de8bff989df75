"""Wires one running proxy together from its ``Options``: the map (swapped on
reload), the resolver, the greeting checksum, and the per-connection handler
the server calls."""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

from perditionpy import relay_hub
from perditionpy.maps import open_map
from perditionpy.maps.base import Map
from perditionpy.options import Options, greeting_checksum
from perditionpy.resolve import Resolver
from perditionpy.session import Session, SessionServices
from perditionpy.tls import contexts as tls_contexts

__all__ = ["App"]

log = logging.getLogger(__name__)


class App:
    """The long-lived state of one proxy process."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self._lock = threading.Lock()
        self._map: Map | None = open_map(options.map_library, options.map_library_opt)
        self.services = SessionServices(
            options=options,
            checksum=greeting_checksum(options),
            resolver=Resolver(options),
            current_map=self.current_map,
            tls=tls_contexts(options),  # certificate and key read before privileges drop
        )

    def current_map(self) -> Map | None:
        return self._map

    def reload(self) -> None:
        """Open the map afresh and swap it in, forget the greeting hosts; sessions
        keep running."""
        opt = self.options  # the server has logged "Reloading map library ..."
        self.services.greeting_hosts.clear()  # names may have changed too
        new = open_map(opt.map_library, opt.map_library_opt)
        with self._lock:
            old, self._map = self._map, new
        if old is not None:
            old.close()

    def handle(self, conn: socket.socket, client: Any, local: Any) -> None:
        """Run one connection to its end in this thread (inetd mode)."""
        inetd_pid = os.getppid() if self.options.inetd_mode else None
        Session(self.services, conn, client, local, inetd_pid=inetd_pid).run()

    def start(self, conn: socket.socket, client: Any, local: Any) -> None:
        """Hand one connection to the process's event loop and return (the daemon)."""
        session = Session(self.services, conn, client, local)
        relay_hub.hub().start_session(session.steps(), conn, session.label)

    def close(self) -> None:
        with self._lock:
            old, self._map = self._map, None
        if old is not None:
            old.close()
