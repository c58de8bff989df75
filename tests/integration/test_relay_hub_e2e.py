"""The post-login relay through a running perditionpy: plain sessions are
spliced, and idle authenticated sessions hold no thread (issue 7's guards).
Neither test asserts on time: waits are bounded, the assertions are on the
path taken and on the thread count."""

from __future__ import annotations

import contextlib
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

from perditionpy.server import SHUTDOWN_GRACE
from tests.integration.test_proxy_e2e import Raw, log_pattern
from tests.support.dovecot import Dovecot
from tests.support.ports import LOOPBACK
from tests.support.procs import Proc

IDLE_SESSIONS = 50
# The hub's thread, a worker or two of a pool: anything but one per session.
THREAD_ALLOWANCE = 8


def _threads(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^Threads:\s+(\d+)$", status, re.M)
    assert match is not None
    return int(match.group(1))


def _login(proxy: Proc, tag: bytes = b"a") -> Raw:
    raw = Raw(proxy.port)
    assert raw.line().startswith(b"* OK")
    assert raw.command(tag, b"LOGIN alice alice-pw")[0].startswith(tag + b" OK")
    return raw


def _settled(pid: int, at_most: int) -> int:
    """The thread count once it is ``at_most`` or lower (threads take a moment to exit)."""
    deadline = time.monotonic() + 15
    count = _threads(pid)
    while count > at_most and time.monotonic() < deadline:
        time.sleep(0.1)
        count = _threads(pid)
    return count


def test_a_plain_session_is_relayed_with_splice(
    dovecot: Dovecot, run_perditionpy: Callable[..., Proc]
) -> None:
    proxy = run_perditionpy(["-d", "-M", "", "-P", "IMAP4", "-s",
                             f"{LOOPBACK}:{dovecot.imap_port}"])
    with _login(proxy) as raw:
        assert raw.command(b"b", b"SELECT INBOX")[0].startswith(b"b OK")
        assert raw.command(b"c", b"LOGOUT")[0].startswith(b"c OK")
        port = raw.local_port
    found = proxy.wait_for_log(
        log_pattern(proxy, port, r"relay: splice {from_to} spliced=(\d+) copied=0"))
    assert int(found.group(1)) > 0


def test_idle_authenticated_sessions_hold_no_thread(
    dovecot: Dovecot, run_perditionpy: Callable[..., Proc]
) -> None:
    proxy = run_perditionpy(["-M", "", "-P", "IMAP4", "-s", f"{LOOPBACK}:{dovecot.imap_port}"])
    with _login(proxy, b"w") as warm:  # the relay thread (and any pool) exist from here on
        assert warm.command(b"x", b"NOOP")[0].startswith(b"x OK")
    before = _threads(proxy.pid)
    with contextlib.ExitStack() as stack:
        sessions = [stack.enter_context(_login(proxy)) for _ in range(IDLE_SESSIONS)]
        after = _settled(proxy.pid, before + THREAD_ALLOWANCE)
        assert after <= before + THREAD_ALLOWANCE, (before, after)
        for raw in sessions:  # held, not dropped: each still answers
            assert raw.command(b"n", b"NOOP")[0].startswith(b"n OK")


def test_sigterm_closes_relayed_sessions_after_the_grace_and_logs_them(
    dovecot: Dovecot, run_perditionpy: Callable[..., Proc]
) -> None:
    proxy = run_perditionpy(["-M", "", "-P", "IMAP4", "-s", f"{LOOPBACK}:{dovecot.imap_port}"])
    with contextlib.ExitStack() as stack:
        sessions = [stack.enter_context(_login(proxy)) for _ in range(3)]
        proxy.popen.send_signal(signal.SIGTERM)
        for raw in sessions:  # the hub holds them; the server's shutdown must reach it
            raw.sock.settimeout(SHUTDOWN_GRACE + 15)
            assert raw.until_closed() == b""
        assert proxy.wait(15) == 0
        for raw in sessions:
            proxy.wait_for_log(log_pattern(
                proxy, raw.local_port,
                r'Closing session: {from_to} authorisation_id=NONE authentication_id="alice" '
                r"received=\d+ sent=\d+"))
