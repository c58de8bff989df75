"""perditionpy.pool: long-lived workers, grown only when every one is busy."""

from __future__ import annotations

import threading

import pytest

from perditionpy import pool
from perditionpy.pool import WorkerPool

WAIT = 10.0


def _run_and_wait(workers: WorkerPool, count: int) -> set[str]:
    """Run ``count`` jobs one after another; the names of the threads that ran them."""
    names: set[str] = set()
    for _ in range(count):
        done = threading.Event()

        def job(done: threading.Event = done) -> None:
            names.add(threading.current_thread().name)
            done.set()

        workers.submit(job)
        assert done.wait(WAIT)
    return names


def test_sequential_jobs_reuse_one_worker() -> None:
    workers = WorkerPool(4, name="t")
    names = _run_and_wait(workers, 50)
    # A job is submitted after the previous one set its event, possibly before that
    # worker was back in the queue: at most a second worker is ever started.
    assert len(names) <= 2
    assert workers.threads <= 2


def test_busy_workers_make_the_pool_grow_then_spares_retire(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool, "SPARE_IDLE", 0.05)
    workers = WorkerPool(2, name="t")
    release = threading.Event()
    started = threading.Semaphore(0)

    def blocking() -> None:
        started.release()
        release.wait(WAIT)

    for _ in range(5):
        workers.submit(blocking)
    for _ in range(5):
        assert started.acquire(timeout=WAIT)  # all five run at once: none waits
    assert workers.threads == 5
    release.set()
    deadline = threading.Event()
    for _ in range(200):  # the three spares leave once idle
        if workers.threads == 2:
            break
        deadline.wait(0.05)
    assert workers.threads == 2
    assert len(_run_and_wait(workers, 5)) <= 2


def test_a_failing_job_keeps_its_worker() -> None:
    workers = WorkerPool(1, name="t")

    def boom() -> None:
        raise RuntimeError("bug")

    workers.submit(boom)
    assert _run_and_wait(workers, 3)
    assert workers.threads <= 2  # the failed worker lives on (a second only if it lagged)


def test_default_size_follows_the_connection_limit() -> None:
    assert pool.default_size(0) >= 16
    assert pool.default_size(3) == 3
    assert pool.default_size(10**6) == pool.default_size(0)
