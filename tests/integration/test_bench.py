"""bench/: the 10,000-session feasibility check, splitting the idle load over load
generators, the descriptor counter, and the load generator's ``--tls`` against a
real Dovecot serving IMAPS and POP3S with a certificate the runner makes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import run
from bench import targets as tg
from bench.procstat import find_pids, open_fds
from tests.conftest import require
from tests.support.dovecot import Dovecot, MailUser, dovecot_binary, make_message

PASSWORD = "tls-pw"
MESSAGE = make_message(1, "over tls", b"Some text.\n" * 2000)
_RUN_TIMEOUT = 120.0


def _target(spread: int | None, name: str = "perditionpy") -> tg.Target:
    return tg.Target(name, name, 1, 2, (os.getpid(),), spread, "test")


# --------------------------------------------------------------------------- feasibility


def test_two_workers_can_hold_10000_where_one_process_cannot() -> None:
    assert _target(2).can_hold(10_000, nofile=20_000) is None
    reason = _target(1).can_hold(10_000, nofile=20_000)
    assert reason is not None and "1 process(es)" in reason


def test_feasibility_leaves_headroom_for_an_uneven_spread() -> None:
    # 2 x 9,500 / 2 = 9,500 a worker if perfectly even, but a 10% skew needs 2 x 10,450.
    assert _target(2).can_hold(19_000, nofile=20_000) is not None


def test_forking_targets_are_never_skipped() -> None:
    assert _target(None, "perdition").can_hold(10_000, nofile=1024) is None


@pytest.mark.parametrize(("count", "nofile", "shares"), [
    (10_000, 20_000, [10_000]),
    (30_000, 20_000, [15_000, 15_000]),
    (1_001, 600, [334, 334, 333]),
])
def test_idle_load_is_split_to_fit_each_generator(count: int, nofile: int,
                                                  shares: list[int]) -> None:
    assert run.idle_shares(count, nofile) == shares


def test_open_fds_counts_a_new_socket() -> None:
    before = open_fds([os.getpid()])[os.getpid()]
    with socket.socket():
        assert open_fds([os.getpid()])[os.getpid()] == before + 1


def test_idle_summaries_of_several_generators_add_up() -> None:
    outs = [{"ready": 3, "errors": 1, "logged_out": 3, "logout_errors": 0, "setup_s": 1.5,
             "error_samples": ["a"], "logout_error_samples": []},
            {"ready": 4, "errors": 0, "logged_out": 2, "logout_errors": 2, "setup_s": 2.0,
             "error_samples": [], "logout_error_samples": ["b"]}]
    merged = run._merge_idle(outs)
    assert (merged["ready"], merged["errors"], merged["logged_out"]) == (7, 1, 5)
    assert merged["error_samples"] == ["a"] and merged["logout_error_samples"] == ["b"]
    assert merged["setup_s"] == 2.0


# --------------------------------------------------------------------------- --tls


@pytest.fixture(scope="module")
def tls_dovecot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dovecot]:
    require(dovecot_binary() is not None, "dovecot")
    require(shutil.which("openssl") is not None, "openssl")
    top = tmp_path_factory.mktemp("bench-tls")
    users = (MailUser("tls0", PASSWORD.encode(), (MESSAGE,)),)
    server = Dovecot(users=users, workdir=top / "dovecot", tls=tg.make_certificate(top / "tls"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def loadgen(workload: str, proto: str, port: int, *extra: str,
            stdin: str = "") -> dict[str, object]:
    argv = [sys.executable, str(run.LOADGEN), workload, "--proto", proto, "--port", str(port),
            "--password", PASSWORD, "--user-prefix", "tls", "--users", "1", "--tls", *extra]
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True,
                          timeout=_RUN_TIMEOUT, check=False)
    assert done.returncode == 0, done.stderr
    out: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def test_certificate_is_a_pem_pair(tmp_path: Path) -> None:
    require(shutil.which("openssl") is not None, "openssl")
    files = tg.make_certificate(tmp_path)
    assert files.cert.read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert "PRIVATE KEY-----" in files.key.read_text()


def test_tls_relay_imap_fetches_the_whole_message(tls_dovecot: Dovecot) -> None:
    out = loadgen("relay", "imap", tls_dovecot.imaps_port, "--repeat", "2")
    assert out["tls"] is True
    assert out["bytes"] == len(MESSAGE)
    assert len(out["mb_per_s"]) == 2  # type: ignore[arg-type]


def test_tls_relay_pop3_fetches_the_whole_message(tls_dovecot: Dovecot) -> None:
    out = loadgen("relay", "pop3", tls_dovecot.pop3s_port, "--repeat", "2")
    # RETR's count ends before the terminating ".\r\n", after the message's last CRLF.
    assert out["bytes"] == len(MESSAGE)


def test_tls_idle_sessions_log_in_and_out(tls_dovecot: Dovecot) -> None:
    out = loadgen("idle", "imap", tls_dovecot.imaps_port, "--count", "5", "--concurrency", "5",
                  stdin="release\n")
    assert (out["ready"], out["errors"], out["logged_out"]) == (5, 0, 5)


def test_plain_client_does_not_pass_a_tls_listener(tls_dovecot: Dovecot) -> None:
    argv = [sys.executable, str(run.LOADGEN), "logins", "--proto", "imap", "--port",
            str(tls_dovecot.imaps_port), "--password", PASSWORD, "--user-prefix", "tls",
            "--duration", "0.5", "--io-timeout", "2", "--max-logins", "1"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=_RUN_TIMEOUT,
                          check=False)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["logins"] == 0 and out["errors"] == 1


def test_a_figure_from_several_rounds_is_their_median() -> None:
    runs: list[dict[str, object]] = [
        {"target": "x", "proto": "imap", "concurrency": 16, "logins": 5000, "errors": 0,
         "logins_per_s": 1000.0, "p50_ms": 10.0, "p99_ms": 30.0, "loadgen_cpu_share": 0.3},
        {"target": "x", "proto": "imap", "concurrency": 16, "logins": 6000, "errors": 1,
         "logins_per_s": 1200.0, "p50_ms": 8.0, "p99_ms": 20.0, "loadgen_cpu_share": 0.5},
        {"target": "x", "proto": "imap", "concurrency": 16, "logins": 5500, "errors": 0,
         "logins_per_s": 1100.0, "p50_ms": 9.0, "p99_ms": 50.0, "loadgen_cpu_share": 0.4},
    ]
    combined = run.median_run(runs)
    assert (combined["logins_per_s"], combined["p50_ms"], combined["p99_ms"]) == (1100, 9, 30)
    assert combined["loadgen_cpu_share"] == 0.4
    assert combined["runs"] == [1000.0, 1200.0, 1100.0]
    assert (combined["logins"], combined["errors"]) == (16500, 1)
    assert run.median_run(runs[:2])["logins_per_s"] == 1100  # two: their mean


def test_the_instruction_count_is_read_from_callgrind_totals() -> None:
    """bench/instructions.py: with counting switched on late, callgrind's
    ``summary:`` header says 0; the count is on the ``totals:`` line."""
    from bench import instructions

    sample = "version: 1\nevents: Ir\nsummary: 0\nfn=(1) main\n5 3\ntotals: 576006968\n"
    match = instructions._TOTALS.search(sample)
    assert match is not None and int(match.group(1)) == 576006968
    args = instructions.parse_args(["HEAD~1", "--proto", "pop3"])
    assert (args.rev, args.proto, args.concurrency) == ("HEAD~1", "pop3", 4)


def test_cpu_figures_are_per_1000_logins_and_the_back_ends_per_protocol() -> None:
    results = run.Results()
    results.cpu = {"perditionpy": [1.5, 5000.0], "nginx": [0.0, 0.0]}
    results.backend_cpu = {("imap", "perditionpy"): [2.4, 5000.0],
                           ("pop3", "perditionpy"): [3.0, 6000.0]}
    run.record_cpu(results)
    assert results.figures["cpu_per_1000"] == {"perditionpy": 0.3, "nginx": None}
    assert results.figures["backend_cpu_imap"] == {"perditionpy": 0.48}
    assert results.figures["backend_cpu_pop3"] == {"perditionpy": 0.5}
    keys = [key for key, _, _ in run.figure_rows(run.Plan(5.0, 1.0, 1, (), 1.0))]
    assert keys.index("backend_cpu_imap") == keys.index("cpu_per_1000") + 1
    assert "0.48" in run._cell(0.48, None, False)  # two decimals under 1


def test_sigterm_stops_the_dovecot_a_run_started(tmp_path: Path) -> None:
    """``timeout`` or ``kill`` ends a run the way Ctrl-C does: its Dovecot (in a
    session of its own) is stopped, not left behind."""
    require(dovecot_binary() is not None, "dovecot is not installed")
    needle = "perditionpy-bench-"
    before = set(find_pids(needle))
    argv = [sys.executable, str(run.REPO_ROOT / "bench" / "run.py"), "--targets", "backend",
            "--duration", "60", "--warmup", "60", "--rounds", "1", "--idle", "", "--no-tls",
            "--output", str(tmp_path / "report.md")]
    with subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                          text=True) as proc:
        assert proc.stderr is not None
        try:
            while "warm-up" not in (line := run._read_line(proc.stderr, _RUN_TIMEOUT)):
                assert line, "the run ended before its first step"
            ours = set(find_pids(needle)) - before  # Dovecot is up once the steps begin
            assert ours
            proc.terminate()
            assert proc.wait(_RUN_TIMEOUT) == 128 + signal.SIGTERM
        finally:
            if proc.poll() is None:
                proc.kill()
    assert not set(find_pids(needle)) & ours
    assert not (tmp_path / "report.md").exists()  # no report from a run cut short
