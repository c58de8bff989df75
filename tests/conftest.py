"""Shared pytest fixtures: the private Dovecot, proxy processes, taps and hostile back-ends.

Fixtures that need an installed program (dovecot, /usr/sbin/perdition, openssl) skip
on a developer machine without it and fail under CI (``CI`` set), where
``scripts/install-deps.sh`` must have installed everything.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

_REPO_ROOT = Path(__file__).resolve().parents[1]
if str(_REPO_ROOT) not in sys.path:  # so "tests.support" imports without an install
    sys.path.insert(0, str(_REPO_ROOT))

from tests.support.dovecot import Dovecot, dovecot_binary  # noqa: E402
from tests.support.procs import (  # noqa: E402
    Proc,
    perdition_available,
    start_perdition,
    start_perditionpy,
)
from tests.support.tap import Tap  # noqa: E402
from tests.support.whoami import WhoAmI  # noqa: E402


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def require(available: bool, what: str) -> None:
    """Skip (fail under CI) when ``what`` is not installed."""
    if available:
        return
    message = f"{what} is not installed: run scripts/install-deps.sh as root"
    if _in_ci():
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def dovecot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dovecot]:
    """The shared private Dovecot with ``DEFAULT_USERS``. Do not change its mailboxes:
    tests that delete, expunge or store should use ``fresh_dovecot``."""
    require(dovecot_binary() is not None, "dovecot")
    server = Dovecot(workdir=tmp_path_factory.mktemp("dovecot"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def make_dovecot(tmp_path: Path) -> Iterator[Callable[..., Dovecot]]:
    """Factory for extra private Dovecots (``Dovecot(**kwargs)``), stopped after the test."""
    require(dovecot_binary() is not None, "dovecot")
    started: list[Dovecot] = []

    def make(**kwargs: Any) -> Dovecot:
        kwargs.setdefault("workdir", tmp_path / f"dovecot-{len(started)}")
        server = Dovecot(**kwargs)
        started.append(server)
        return server.start()

    try:
        yield make
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def fresh_dovecot(make_dovecot: Callable[..., Dovecot]) -> Dovecot:
    """A Dovecot of this test's own, with ``DEFAULT_USERS`` and untouched mailboxes."""
    return make_dovecot()


@pytest.fixture
def run_perdition(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """``run_perdition(args, **kw)``: the real perdition 2.2, stopped after the test."""
    require(perdition_available(), "perdition 2.2 (/usr/sbin/perdition)")
    procs: list[Proc] = []

    def run(args: list[str], **kwargs: Any) -> Proc:
        kwargs.setdefault("log_dir", tmp_path / "logs")
        proc = start_perdition(args, **kwargs)
        procs.append(proc)
        return proc

    try:
        yield run
    finally:
        for proc in procs:
            proc.stop()


@pytest.fixture
def run_perditionpy(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """``run_perditionpy(args, **kw)``: perditionpy as a process, stopped after the test."""
    procs: list[Proc] = []

    def run(args: list[str], **kwargs: Any) -> Proc:
        kwargs.setdefault("log_dir", tmp_path / "logs")
        proc = start_perditionpy(args, **kwargs)
        procs.append(proc)
        return proc

    try:
        yield run
    finally:
        for proc in procs:
            proc.stop()


@pytest.fixture
def make_tap() -> Iterator[Callable[[int], Tap]]:
    """``make_tap(port)``: a recording relay in front of loopback ``port``."""
    taps: list[Tap] = []

    def make(port: int) -> Tap:
        tap = Tap(port)
        taps.append(tap)
        return tap

    try:
        yield make
    finally:
        for tap in taps:
            tap.close()


@pytest.fixture(scope="session")
def openssl() -> str:
    """Path of the openssl command-line tool."""
    path = shutil.which("openssl")
    require(path is not None, "openssl")
    assert path is not None
    return path


@pytest.fixture
def whoami() -> Iterator[WhoAmI]:
    """A POP3 back-end answering ``WHO`` with the logged-in user (tests/support/whoami.py)."""
    backend = WhoAmI()
    yield backend
    backend.close()
