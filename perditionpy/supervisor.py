"""``--workers N``: the parent of N serving processes.

The parent has bound the listeners (one set per worker, with SO_REUSEPORT, so
the kernel spreads connections over the workers), detached, written the pid
file and dropped privileges; then :func:`supervise` starts the workers and
stays with them: it restarts one that dies (at most once a second per slot),
passes SIGHUP on (after reopening its own log) and SIGTERM/SIGINT/SIGQUIT as
SIGTERM (a second stop signal is passed on too: the workers then stop without
waiting out their grace), and returns once every worker has exited. The parent
serves no connection and runs no signal handler: it blocks its signals and
takes them with ``sigtimedwait``; each worker unblocks them at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable

__all__ = ["STOP_SIGNALS", "supervise"]

logger = logging.getLogger(__name__)

STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT})
_WATCHED = frozenset({signal.SIGHUP, signal.SIGCHLD, *STOP_SIGNALS})
# A worker that dies this soon after its start is restarted no sooner than this.
_RESTART_PAUSE = 1.0

# start(slot, signal_mask) forks a worker for ``slot`` and returns its pid; the
# child restores ``signal_mask`` and never returns.
Starter = Callable[[int, "set[int | signal.Signals]"], int]


class _Workers:
    """The worker processes by pid, and when each slot may start again."""

    def __init__(self, count: int, start: Starter, mask: set[int | signal.Signals]) -> None:
        self._start = start
        self._mask = mask
        self.by_pid: dict[int, int] = {}
        self._started: dict[int, float] = {}
        self._due: dict[int, float] = dict.fromkeys(range(count), 0.0)

    def start_due(self) -> None:
        now = time.monotonic()
        for slot, due in list(self._due.items()):
            if due <= now:
                del self._due[slot]
                pid = self._start(slot, self._mask)
                self.by_pid[pid] = slot
                self._started[slot] = now

    def next_due(self) -> float | None:
        return min(self._due.values()) - time.monotonic() if self._due else None

    def reap(self, restart: bool) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = self.by_pid.pop(pid, None)
            if slot is None:
                continue
            if restart:
                logger.error("Worker %d exited (%s): starting another", pid, _describe(status))
                self._due[slot] = self._started.get(slot, 0.0) + _RESTART_PAUSE

    def signal_all(self, signum: int) -> None:
        for pid in list(self.by_pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"status {os.waitstatus_to_exitcode(status)}"


def supervise(count: int, start: Starter, *, on_hup: Callable[[], None],
              on_stop: Callable[[int], None]) -> int:
    """Run ``count`` workers until a stop signal and their exit; return 0.

    ``on_hup()`` runs in the parent before SIGHUP is passed on; ``on_stop(signum)``
    once, when the first stop signal arrives (the pid file goes then).
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _WATCHED)
    workers = _Workers(count, start, previous)
    stopping = False
    try:
        workers.start_due()
        while workers.by_pid or (not stopping and workers.next_due() is not None):
            wait = workers.next_due() if not stopping else None
            info = signal.sigtimedwait(_WATCHED, max(wait, 0.0) if wait is not None else 3600)
            workers.reap(restart=not stopping)
            if info is None:
                pass
            elif info.si_signo == signal.SIGHUP:
                on_hup()
                workers.signal_all(signal.SIGHUP)
            elif info.si_signo in STOP_SIGNALS:
                if not stopping:
                    stopping = True
                    on_stop(info.si_signo)
                workers.signal_all(signal.SIGTERM)
            if not stopping:
                workers.start_due()
        return 0
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
