"""The NIS map: perdition's ``libperditiondb_nis`` through libnsl's ``yp_match``.

Owns two things:

* :class:`NisClient`, the one owner of libnsl pointers (through the raw
  declarations in :mod:`perditionpy.maps._nis_ffi`): the default domain and
  ``yp_match``.  The value libnsl allocates is freed in ``finally``; the
  domain string is libnsl's own static buffer and is only copied.
* :class:`NisMap`, the ``Map`` built from ``-m``: the NIS map name
  (``user_mail_server`` when empty), looked up in the machine's default NIS
  domain (``domainname``) as perdition does, with the key's bytes (no NUL
  terminator) and the value parsed as ``[user@]server[:port]``.

libnsl keeps one table of bound servers and RPC clients for the whole process
and does not lock it, so every ``yp_*`` call made here is made by one
process-wide worker thread (:class:`_YpWorker`) holding one process-wide lock.
libnsl offers no way to shorten its RPC timeouts (tens of seconds against a
server that accepts requests but never answers), so a lookup waits for the
worker at most ``timeout`` seconds (:data:`DEFAULT_TIMEOUT`) and then fails
with ``MapError``; the stuck call finishes in the background, and until it
does further lookups fail at once instead of queueing behind it.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from perditionpy.endpoints import UserServerPort
from perditionpy.errors import MapError, PerditionError
from perditionpy.maps import _nis_ffi
from perditionpy.maps._nis_ffi import NisBinding
from perditionpy.maps._popmap import Outage, c_key, load_library, parse_value
from perditionpy.maps.base import LookupContext
from perditionpy.protocol.base import encode_name

__all__ = ["DEFAULT_MAP", "DEFAULT_TIMEOUT", "NisClient", "NisError", "NisMap", "open_nis_map"]

logger = logging.getLogger(__name__)

# perdition's default NIS map name.
DEFAULT_MAP = "user_mail_server"

# libnsl's binding table is process-wide state shared by every yp_* call,
# whichever FFI reaches it, so the lock must be process-wide too.
_YP_LOCK = threading.Lock()

# How long a lookup waits for NIS before failing over to --outgoing_server.
DEFAULT_TIMEOUT = 5.0

_T = TypeVar("_T")


class NisError(PerditionError):
    """A ``yp_*`` call failed; ``code`` is its YPERR_* value."""

    def __init__(self, message: str, code: int) -> None:
        self.code = code
        super().__init__(message)


class _NisTimeout(PerditionError):
    """The worker did not finish within the caller's bound (or is still stuck)."""


class _YpWorker:
    """The one thread that makes ``yp_*`` calls, so that a caller can stop waiting.

    Started on first use, and again in a forked child (threads do not survive
    ``fork``).  A daemon thread: a call stuck in libnsl never delays exit.
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]]] | None = None
        self._pid = 0
        self._stuck: Future[Any] | None = None

    def call(self, function: Callable[[], _T], timeout: float) -> _T:
        """``function()`` on the worker; ``_NisTimeout`` after ``timeout`` seconds."""
        future: Future[_T] = Future()
        self._submit(future, function)
        try:
            return future.result(timeout)
        except TimeoutError:
            if not future.cancel():  # running, not merely queued: libnsl is stuck
                with self._guard:
                    self._stuck = future
            raise _NisTimeout(
                f"no answer from NIS within {timeout:g}s (libnsl keeps waiting in the background)"
            ) from None

    def _submit(self, future: Future[_T], function: Callable[[], _T]) -> None:
        with self._guard:
            if self._stuck is not None and not self._stuck.done():
                raise _NisTimeout("an earlier lookup is still waiting for NIS")
            if self._jobs is None or self._pid != os.getpid():
                self._start()
            assert self._jobs is not None
            self._jobs.put((future, function))

    def _start(self) -> None:
        self._jobs, self._pid, self._stuck = queue.SimpleQueue(), os.getpid(), None
        threading.Thread(target=self._run, args=(self._jobs,), name="nis-yp", daemon=True).start()

    @staticmethod
    def _run(jobs: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]]]) -> None:
        while True:
            future, function = jobs.get()
            if not future.set_running_or_notify_cancel():
                continue  # its caller gave up while it was queued
            try:
                with _YP_LOCK:
                    result = function()
            except BaseException as exc:  # handed to the caller, who re-raises it
                future.set_exception(exc)
            else:
                future.set_result(result)


_WORKER = _YpWorker()


class NisClient:
    """The libnsl calls the NIS map makes.  Callers hold :data:`_YP_LOCK`."""

    def __init__(self, binding: NisBinding) -> None:
        self._binding = binding

    def _error(self, action: str, code: int) -> NisError:
        reason = self._binding.ffi.string(self._binding.nsl.yperr_string(code))
        return NisError(f"{action}: {reason.decode(errors='replace')}", code)

    def default_domain(self) -> bytes:
        """The machine's NIS domain; ``NisError`` when none is set."""
        ffi = self._binding.ffi
        domain = ffi.new("char **")
        code: int = self._binding.nsl.yp_get_default_domain(domain)
        if code != _nis_ffi.YPERR_SUCCESS:
            raise self._error("yp_get_default_domain", code)
        # libnsl's static buffer: copied, never freed.
        return bytes(ffi.string(domain[0]))

    def match(self, domain: bytes, map_name: bytes, key: bytes) -> bytes | None:
        """``yp_match``: the value for ``key``; ``None`` on YPERR_KEY, ``NisError`` otherwise."""
        ffi = self._binding.ffi
        value = ffi.new("char **")
        length = ffi.new("int *")
        try:
            code: int = self._binding.nsl.yp_match(domain, map_name, key, len(key), value, length)
            if code == _nis_ffi.YPERR_KEY:
                return None
            if code != _nis_ffi.YPERR_SUCCESS:
                raise self._error("yp_match", code)
            return bytes(ffi.buffer(value[0], length[0]))
        finally:
            if value[0] != ffi.NULL:
                self._binding.libc.free(value[0])


class NisMap:
    """perdition's NIS map: ``-m`` names the NIS map, ``key`` → ``[user@]host[:port]``."""

    name = "nis"

    def __init__(
        self,
        options: str = "",
        *,
        domain: str | None = None,
        binding: NisBinding | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if not timeout > 0:
            raise ValueError("timeout must be a positive number of seconds")
        self.map_name = options or DEFAULT_MAP
        # None: ask libnsl on every lookup, as perdition does (domainname may change).
        self.domain = domain
        self.timeout = timeout
        self._client = NisClient(binding if binding is not None else _load_binding())
        self._closed = False
        self._outage = Outage(logger, until="NIS answers",
                              recovery="NIS map %s answers again", subject=self.map_name)

    def __repr__(self) -> str:
        return f"NisMap({self.map_name!r})"

    def get(self, key: str, context: LookupContext) -> UserServerPort | None:
        """Look ``key`` up; ``None`` if absent or empty; ``MapError`` if NIS can't answer."""
        raw_key = c_key(key)
        if not raw_key:
            return None  # yp_match refuses empty keys (YPERR_BADARGS); no entry has one
        return parse_value(self._fetch(raw_key), context)

    def close(self) -> None:
        """Nothing to release (libnsl keeps its bindings); later lookups raise ``MapError``."""
        self._closed = True

    def _fetch(self, key: bytes) -> bytes | None:
        if self._closed:
            raise MapError(self.name, f"{self.map_name}: map is closed")
        try:
            value = _WORKER.call(lambda: self._match(key), self.timeout)
        except (NisError, _NisTimeout) as exc:
            raise self._unavailable(str(exc)) from exc
        self._outage.recovered()
        return value

    def _match(self, key: bytes) -> bytes | None:
        """On the worker thread, holding :data:`_YP_LOCK`."""
        return self._client.match(self._domain(), encode_name(self.map_name), key)

    def _domain(self) -> bytes:
        if self.domain is not None:
            return encode_name(self.domain)
        try:
            return self._client.default_domain()
        except NisError as exc:
            raise NisError(f"no NIS domain (set one with domainname): {exc}", exc.code) from exc

    def _unavailable(self, reason: str) -> MapError:
        """The error for a failed lookup; logs the first of a run of failures."""
        error = MapError(self.name, f"cannot look up in NIS map {self.map_name}: {reason}")
        return self._outage.failed(error)


def _load_binding() -> NisBinding:
    return load_library(NisMap.name, _nis_ffi.NSL_LIBRARY, _nis_ffi.load)


def open_nis_map(options: str) -> NisMap:
    """The registry's factory: a :class:`NisMap` on ``options`` (a NIS map name)."""
    return NisMap(options)
