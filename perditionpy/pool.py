"""The threads that run connections: long-lived workers fed by a queue.

Starting a thread per connection costs a clone, a stack mapping and the GIL
hand-offs of a new thread's start-up on every login (issue 7's profile); the
workers here are started once and reused. :class:`WorkerPool` keeps ``size``
workers for good. A job submitted while every worker is busy starts one more
worker rather than wait: a session holds its thread until it ends, so a queue
behind a fixed set could starve new logins behind idle sessions. Workers above
``size`` retire after :data:`SPARE_IDLE` seconds without work, so a burst
leaves no lasting threads. ``submit`` never blocks (the accept loop calls it).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable

__all__ = ["SPARE_IDLE", "WorkerPool", "default_size"]

logger = logging.getLogger(__name__)

# Seconds a worker beyond the pool's size waits for a job before it exits.
SPARE_IDLE = 10.0

Job = Callable[[], None]


def default_size(connection_limit: int = 0) -> int:
    """Workers kept for good: ``-L`` when given (no more can run at once), else
    ``max(16, 4 × CPUs)``."""
    if connection_limit > 0:
        return min(connection_limit, max(16, 4 * (os.cpu_count() or 1)))
    return max(16, 4 * (os.cpu_count() or 1))


class WorkerPool:
    """``size`` long-lived threads running submitted jobs, growing when all are busy."""

    def __init__(self, size: int, *, name: str = "worker") -> None:
        self.size = max(1, size)
        self._name = name
        self._jobs: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0   # alive workers
        self._idle = 0      # workers waiting for a job (or about to take one)
        self._serial = 0

    @property
    def threads(self) -> int:
        """Workers alive now."""
        with self._lock:
            return self._threads

    def submit(self, job: Job) -> None:
        """Queue ``job``; start a worker if none is free to take it.

        Raises ``RuntimeError`` (from threading) when no thread can be started
        and no worker exists to run the job.
        """
        with self._lock:
            start = self._idle == 0  # no free worker: a new one takes this job
            if start:
                self._threads += 1
                self._serial += 1
                serial = self._serial
            else:
                self._idle -= 1  # this job is one free worker's
        if start:
            try:
                threading.Thread(target=self._work, name=f"{self._name}-{serial}",
                                 daemon=True).start()
            except RuntimeError:
                with self._lock:
                    self._threads -= 1
                    alone = self._threads == 0
                if alone:
                    raise
                logger.error("Cannot start a thread: the connection waits for a worker")
        self._jobs.put(job)

    def _work(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=SPARE_IDLE if self._spare() else None)
            except queue.Empty:
                if self._retire():
                    return
                continue
            try:
                job()
            except Exception:  # a job's bug must not cost the worker
                logger.exception("Error in a worker thread")
            finally:
                del job
                with self._lock:
                    self._idle += 1

    def _spare(self) -> bool:
        with self._lock:
            return self._threads > self.size

    def _retire(self) -> bool:
        """Exit when above the size and still free (no job was promised to it)."""
        with self._lock:
            if self._threads <= self.size or self._idle <= 0:
                return False
            self._threads -= 1
            self._idle -= 1
            return True
