"""log.py: the vanessa_logger line format, each -F sink, -d / -q, reopening."""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from perditionpy import log
from perditionpy.errors import OptionError

# What perdition 2.2 writes with -F + / -F /file (checked against the real binary).
LINE = re.compile(r"^(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [ 123]\d "
                  r"\d\d:\d\d:\d\d perdition\[(\d+)\]: (.*)$")


@dataclass(frozen=True)
class Opts:
    log_facility: str = "+"
    debug: bool = False
    quiet: bool = False


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


def _record(message: str, *args: object, created: float, pid: int) -> logging.LogRecord:
    record = logging.LogRecord("perditionpy.session", logging.INFO, __file__, 1, message,
                               args, None)
    record.created, record.process = created, pid
    return record


def _local(year: int, month: int, day: int, hour: int, minute: int, second: int) -> float:
    return time.mktime((year, month, day, hour, minute, second, 0, 0, -1))


# ------------------------------------------------------------------ format


def test_line_format_matches_vanessa_logger() -> None:
    formatter = log.LineFormatter("perdition")
    when = _local(2024, 11, 24, 14, 37, 11)
    line = formatter.format(_record("Connect:  %s", "127.0.0.1:1->127.0.0.1:2",
                                    created=when, pid=9021))
    assert line == "Nov 24 14:37:11 perdition[9021]: Connect:  127.0.0.1:1->127.0.0.1:2"


def test_each_line_carries_its_own_writers_pid() -> None:
    """The ``ident[pid]: `` part is remembered between lines, for one pid only."""
    formatter = log.LineFormatter("perdition")
    when = _local(2024, 11, 24, 14, 37, 11)
    lines = [formatter.format(_record("x", created=when, pid=pid)) for pid in (7, 7, 812, 7)]
    assert [line.split(" ", 3)[3] for line in lines] == [
        "perdition[7]: x", "perdition[7]: x", "perdition[812]: x", "perdition[7]: x"]
    assert formatter.line("y", when) == f"Nov 24 14:37:11 perdition[{os.getpid()}]: y"


def test_single_digit_day_is_space_padded_like_strftime_e() -> None:
    formatter = log.LineFormatter("perdition.imap4")
    line = formatter.format(_record("x", created=_local(2025, 3, 5, 7, 8, 9), pid=7))
    assert line == "Mar  5 07:08:09 perdition.imap4[7]: x"


def test_unencodable_client_text_is_escaped_not_fatal() -> None:
    formatter = log.LineFormatter("perdition")
    line = formatter.format(_record('user="%s"', "a\udcffb", created=0.0, pid=1))
    assert line.endswith('user="a\\udcffb"')
    line.encode("utf-8")  # would raise if a surrogate survived


# ------------------------------------------------------------------ sinks


def test_stderr_sink_writes_the_line(capsys: pytest.CaptureFixture[str]) -> None:
    log.setup_logging(Opts(log_facility="+"), "/usr/sbin/perdition")
    logging.getLogger("perditionpy.session").info("Connect:  %s", "a->b")
    captured = capsys.readouterr()
    assert captured.out == ""
    match = LINE.match(captured.err.rstrip("\n"))
    assert match is not None, captured.err
    assert match.group(2) == "Connect:  a->b"


def test_stdout_sink_writes_the_line(capsys: pytest.CaptureFixture[str]) -> None:
    log.setup_logging(Opts(log_facility="-"), "perdition")
    logging.getLogger("perditionpy.server").error("Fatal error")
    captured = capsys.readouterr()
    assert captured.err == ""
    assert LINE.match(captured.out.rstrip("\n")) is not None, captured.out


def test_file_sink_appends_and_reopens_after_rotation(tmp_path: Path) -> None:
    path = tmp_path / "perdition.log"
    path.write_text("earlier line\n")
    log.setup_logging(Opts(log_facility=str(path)), "perdition")
    logger = logging.getLogger("perditionpy.session")
    logger.info("first")
    path.rename(tmp_path / "perdition.log.1")  # what logrotate does before the HUP
    logger.info("second")
    log.reopen()
    logger.info("third")
    rotated = (tmp_path / "perdition.log.1").read_text().splitlines()
    assert rotated[0] == "earlier line"
    assert [LINE.match(line).group(2) for line in rotated[1:]] == ["first", "second"]  # type: ignore[union-attr]
    fresh = path.read_text().splitlines()
    assert [LINE.match(line).group(2) for line in fresh] == ["third"]  # type: ignore[union-attr]


def test_unopenable_log_file_is_an_option_error(tmp_path: Path) -> None:
    with pytest.raises(OptionError, match="log_facility"):
        log.setup_logging(Opts(log_facility=str(tmp_path / "no" / "such.log")), "perdition")


def test_unknown_facility_is_an_option_error() -> None:
    with pytest.raises(OptionError, match="bogus"):
        log.setup_logging(Opts(log_facility="bogus"), "perdition")


def test_relative_path_is_not_a_file_sink() -> None:
    # perdition treats anything not starting with / - + as a facility name.
    with pytest.raises(OptionError):
        log.setup_logging(Opts(log_facility="perdition.log"), "perdition")


def test_setting_up_twice_replaces_our_handler(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    log.setup_logging(Opts(log_facility="+"), "perdition")
    log.setup_logging(Opts(log_facility=str(tmp_path / "x.log")), "perdition")
    logging.getLogger("t").info("once")
    assert capsys.readouterr().err == ""
    assert (tmp_path / "x.log").read_text().count("once") == 1


# ------------------------------------------------------------------ syslog


@pytest.fixture
def syslog_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "log.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5.0)
    yield path, sock
    sock.close()


@pytest.mark.parametrize(("facility", "level", "priority"), [
    ("mail", logging.INFO, 2 * 8 + 6),
    ("local3", logging.INFO, 19 * 8 + 6),  # perdition -F local3: <158>
    ("local3", log.NOTICE, 19 * 8 + 5),  # the Auth line's priority
    ("daemon", logging.ERROR, 3 * 8 + 3),
    ("LOCAL7", logging.DEBUG, 23 * 8 + 7),
])
def test_syslog_datagram_is_what_glibc_sends(
        syslog_socket: tuple[str, socket.socket], facility: str, level: int,
        priority: int) -> None:
    path, sock = syslog_socket
    log.setup_logging(Opts(log_facility=facility, debug=True), "/usr/sbin/perdition",
                      syslog_address=path)
    logging.getLogger("perditionpy.session").log(level, "Connect:  %s", "a->b")
    datagram = sock.recv(4096)
    match = re.fullmatch(rb"<(\d+)>(.*)\n", datagram)
    assert match is not None, datagram
    assert int(match.group(1)) == priority
    line = LINE.match(match.group(2).decode())
    assert line is not None, datagram
    assert line.group(2) == "Connect:  a->b"


def test_missing_syslog_socket_falls_back_to_stderr_with_warning(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log.setup_logging(Opts(log_facility="mail"), "perdition",
                      syslog_address=str(tmp_path / "absent"))
    logging.getLogger("perditionpy.session").info("Connect:  x")
    lines = capsys.readouterr().err.splitlines()
    assert "is not a socket: logging to stderr" in lines[0]
    assert lines[1].endswith("]: Connect:  x")


# ------------------------------------------------------------------ levels


def _emit_each_level() -> None:
    logger = logging.getLogger("perditionpy.session")
    logger.debug("debug line")
    logger.info("Connect:  info line")
    logger.log(log.NOTICE, "Auth: notice line")
    logger.warning("warning line")
    logger.error("Fatal Error reading authentication information")


@pytest.mark.parametrize(("debug", "quiet", "expected"), [
    (False, False, ["Connect:  info line", "Auth: notice line", "warning line",
                    "Fatal Error reading authentication information"]),
    # perdition's -q: only errors; Connect/Auth/Closing lines go with everything else.
    (False, True, ["Fatal Error reading authentication information"]),
    (True, False, ["debug line", "Connect:  info line", "Auth: notice line",
                   "warning line", "Fatal Error reading authentication information"]),
    (True, True, ["debug line", "Connect:  info line", "Auth: notice line",
                  "warning line", "Fatal Error reading authentication information"]),
])
def test_levels(capsys: pytest.CaptureFixture[str], debug: bool, quiet: bool,
                expected: list[str]) -> None:
    log.setup_logging(Opts(log_facility="+", debug=debug, quiet=quiet), "perdition")
    _emit_each_level()
    messages = [LINE.match(line).group(2)  # type: ignore[union-attr]
                for line in capsys.readouterr().err.splitlines()]
    assert messages == expected


@pytest.mark.parametrize(("value", "expected"), [
    ("-", True), ("+", True), ("-x", True), ("mail", False), ("/var/log/p.log", False),
])
def test_writes_to_std_stream(value: str, expected: bool) -> None:
    assert log.writes_to_std_stream(value) is expected
