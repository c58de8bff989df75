"""log.py's cheap records: no caller/thread/process lookups, the pid still right."""

from __future__ import annotations

import logging
import os
import re
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
