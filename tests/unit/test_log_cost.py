"""log.py's cheap records: no caller/thread/process lookups, the pid still right."""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from perditionpy import log


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def _setup(path: Path) -> None:
    log.setup_logging(SimpleNamespace(log_facility=str(path), debug=False, quiet=False),
                      "perdition")


def test_lines_carry_the_pid_of_the_writer_also_after_a_fork(tmp_path: Path) -> None:
    path = tmp_path / "perdition.log"
    _setup(path)
    logger = logging.getLogger("perditionpy.session")
    logger.info("parent")
    child = os.fork()
    if child == 0:
        try:
            logger.info("child")
        finally:
            os._exit(0)
    os.waitpid(child, 0)
    lines = path.read_text().splitlines()
    pids = {m.group(2): int(m.group(1)) for line in lines
            if (m := re.search(r"perdition\[(\d+)\]: (\w+)$", line))}
    assert pids == {"parent": os.getpid(), "child": child}


def test_records_skip_the_fields_no_line_shows(tmp_path: Path) -> None:
    _setup(tmp_path / "perdition.log")
    record = logging.getLogger("x").makeRecord("x", logging.INFO, "f", 1, "m", (), None)
    assert (record.process, record.thread) == (None, None)
    assert logging._srcfile is None


def test_same_second_reuses_the_timestamp() -> None:
    formatter = log.LineFormatter("perdition")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", (), None)
    record.process = 7
    record.created = 1_700_000_000.25
    first = formatter.format(record)
    record.created = 1_700_000_000.75
    assert formatter.format(record) == first
    record.created = 1_700_000_001.0
    assert formatter.format(record) != first


# ------------------------------------------------------------------ log.line


def _both_ways(logger: logging.Logger, level: int, msg: str, *args: object) -> None:
    """The line through the logger, then through log.line's own path (pytest's
    capturing handlers, which would make it take the logger's, set aside)."""
    logger.log(level, msg, *args)
    root = logging.getLogger()
    theirs = [h for h in root.handlers if not isinstance(h, log._OUR_HANDLERS)]
    for handler in theirs:
        root.removeHandler(handler)
    try:
        assert log._sole_handler(logger, level) is not None
        log.line(logger, level, msg, *args)
    finally:
        for handler in theirs:
            root.addHandler(handler)


@pytest.mark.parametrize("level", [logging.INFO, log.NOTICE])
def test_line_writes_what_the_logger_writes_to_a_file(tmp_path: Path, level: int) -> None:
    path = tmp_path / "perdition.log"
    _setup(path)
    _both_ways(logging.getLogger("perditionpy.session"), level,
               'Closing session:%s authentication_id="%s" received=%d', " a->b", "ü", 7)
    first, second = path.read_text().splitlines()
    assert first == second
    assert first.endswith(f'perdition[{os.getpid()}]: Closing session: a->b '
                          'authentication_id="ü" received=7')


def test_line_sends_the_datagram_the_logger_sends(tmp_path: Path) -> None:
    address = str(tmp_path / "log.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sink:
        sink.bind(address)
        sink.settimeout(5.0)
        log.setup_logging(SimpleNamespace(log_facility="local3", debug=False, quiet=False),
                          "perdition", syslog_address=address)
        _both_ways(logging.getLogger("perditionpy.session"), log.NOTICE, "%s", "Auth: x")
        first, second = sink.recv(4096), sink.recv(4096)
    assert first == second
    assert first.startswith(b"<157>") and first.endswith(b": Auth: x\n")


def test_line_respects_the_level(tmp_path: Path) -> None:
    path = tmp_path / "perdition.log"
    log.setup_logging(SimpleNamespace(log_facility=str(path), debug=False, quiet=True),
                      "perdition")
    log.line(logging.getLogger("perditionpy.session"), logging.INFO, "Connect: %s", "x")
    log.line(logging.getLogger("perditionpy.session"), logging.ERROR, "Fatal: %s", "y")
    assert [line.rsplit(": ", 1)[1] for line in path.read_text().splitlines()] == ["y"]


def test_line_reaches_other_handlers_too(tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "perdition.log"
    _setup(path)
    with caplog.at_level(logging.INFO):
        log.line(logging.getLogger("perditionpy.session"), logging.INFO, "Connect: %s", "x")
    assert [r.getMessage() for r in caplog.records] == ["Connect: x"]
    assert path.read_text().endswith(": Connect: x\n")
