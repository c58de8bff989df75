#!/usr/bin/env python3
"""``make bench``: perditionpy, perdition 2.2, NGINX mail and Dovecot itself, side by side.

One private Dovecot (bench/targets.py) is the back-end of every proxy; the load
generator (bench/loadgen.py) runs as a process of its own. For each figure the
targets are measured one after the other, in the same run, so the ratios compare
like with like. The figures:

* IMAP and POP3 logins/s at concurrency 1, 16 and 64 (login -> NOOP/STAT -> logout);
* p50/p99 connect-to-authenticated at concurrency 64;
* relay MB/s of a 20 MiB message (IMAP FETCH and POP3 RETR), plain and with the
  client speaking TLS from the first byte (IMAPS/POP3S; the back-end stays plain);
* memory per idle authenticated IMAP connection at 1,000 and 10,000 connections
  (RSS summed over the proxy's processes, and PSS, which shares pages fairly), how
  many of those sessions logged in, stayed up and logged out cleanly, and the most
  descriptors one of the target's processes held meanwhile;
* proxy CPU seconds per 1,000 logins (utime+stime of the proxy's process tree,
  reaped children included, over all the login runs).

perditionpy runs as one process for the login and relay figures
(``--perditionpy-workers``, default 1) and with ``--workers 2`` for the idle sets
(``--perditionpy-idle-workers``, default 2), a second instance started for them:
on the 2-core bench machine, which the back-end and the load generator share, a
second worker costs more CPU than it brings (measured: about 1,400 against 1,750
IMAP logins/s at concurrency 64), while one process cannot hold 10,000 client and
back-end pairs under the 20,000-descriptor limit. The table (each figure, and its
ratio to perditionpy's) is printed and written to bench/results/<date>.md (or
``--output``), with the raw numbers in the .json beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import selectors
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench import targets as tg  # noqa: E402
from bench.procstat import open_fds, sample_tree  # noqa: E402
from tests.support.dovecot import Dovecot  # noqa: E402

LOADGEN = REPO_ROOT / "bench" / "loadgen.py"
RESULTS = REPO_ROOT / "bench" / "results"
PROTOCOLS = ("imap", "pop3")
CONCURRENCIES = (1, 16, 64)
ORDER = ("backend", "perdition", "nginx", "perditionpy")
_SETTLE = 1.0        # seconds between opening idle connections and reading memory
_SLACK = 60.0        # added to every load generator run's own time bound
_SATURATED = 0.9     # load generator CPU share (of a core) above which it may be the limit
_LOADGEN_SPARE_FDS = 256  # descriptors a load generator needs besides its client sockets


# --------------------------------------------------------------------------- progress


class Progress:
    """One status line on stderr, rewritten in place on a terminal."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.started = total, 0, time.monotonic()
        self.tty = sys.stderr.isatty()

    def step(self, text: str) -> None:
        self.done += 1
        elapsed = int(time.monotonic() - self.started)
        line = f"[{self.done:3d}/{self.total}] {elapsed // 60:2d}:{elapsed % 60:02d} {text}"
        if self.tty:
            sys.stderr.write("\r\033[K" + line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def finish(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


# --------------------------------------------------------------------------- results


@dataclass
class Results:
    """Figures by key, then by target name; notes; raw load generator output."""

    figures: dict[str, dict[str, float | None]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    raw: list[dict[str, object]] = field(default_factory=list)
    cpu: dict[str, list[float]] = field(default_factory=dict)  # name -> [cpu_s, logins]
    # Dovecot's own processes, and what they spent serving each target's logins:
    # a proxy's back-end dialogue is work for the back-end too.
    backend_roots: tuple[int, ...] = ()
    backend_cpu: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    processes: dict[str, int] = field(default_factory=dict)  # name -> charged at the start

    def put(self, key: str, target: str, value: float | None) -> None:
        self.figures.setdefault(key, {})[target] = value

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


# --------------------------------------------------------------------------- load generator


def loadgen_argv(workload: str, target: tg.Target, proto: str, *extra: str,
                 tls: bool = False) -> list[str]:
    port = target.port(proto, tls=tls)
    if port is None:
        raise ValueError(f"{target.label} has no {proto} TLS listener")
    return [sys.executable, str(LOADGEN), workload, "--proto", proto, "--port", str(port),
            "--password", tg.PASSWORD, *(["--tls"] if tls else []), *extra]


def run_loadgen(argv: list[str], timeout: float) -> dict[str, object]:
    done = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed: {argv}\n{done.stderr.decode()}")
    out: dict[str, object] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return out


def measure_logins(target: tg.Target, proto: str, concurrency: int, duration: float,
                   results: Results) -> dict[str, object]:
    argv = loadgen_argv("logins", target, proto, "--users", str(tg.BENCH_USERS),
                        "--concurrency", str(concurrency), "--duration", str(duration))
    before = sample_tree(target.roots, memory=False)
    backend_before = sample_tree(results.backend_roots, memory=False)
    out = run_loadgen(argv, duration + _SLACK)
    time.sleep(0.2)  # let the last per-connection children exit and be reaped
    after = sample_tree(target.roots, memory=False)
    backend_after = sample_tree(results.backend_roots, memory=False)
    logins = int(out["logins"])  # type: ignore[call-overload]
    for spent, used in ((results.cpu.setdefault(target.name, [0.0, 0.0]),
                         after.cpu_s - before.cpu_s),
                        (results.backend_cpu.setdefault((proto, target.name), [0.0, 0.0]),
                         backend_after.cpu_s - backend_before.cpu_s)):
        spent[0] += used
        spent[1] += logins
    out["target"] = target.name
    if out["errors"]:
        results.note(f"{target.label} {proto} c={concurrency}: {out['errors']} failed "
                     f"sessions, e.g. {out['error_samples'][:1]}")  # type: ignore[index]
    return out


def measure_relay(target: tg.Target, proto: str, repeat: int, *,
                  tls: bool = False) -> dict[str, object]:
    argv = loadgen_argv("relay", target, proto, "--user-prefix", tg.BIG_USER[:-1],
                        "--users", "1", "--repeat", str(repeat), tls=tls)
    out = run_loadgen(argv, _SLACK * 2)
    out["target"], out["tls"] = target.name, tls
    return out


def _read_line(stream: object, timeout: float) -> str:
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)  # type: ignore[arg-type]
        if not sel.select(timeout):
            raise TimeoutError("load generator did not report in time")
    return stream.readline()  # type: ignore[attr-defined, no-any-return]


def idle_shares(count: int, nofile: int = tg.HARD_NOFILE) -> list[int]:
    """``count`` sessions split over as few load generators as the descriptor limit
    allows (one client socket per session, plus some to spare in each)."""
    parts = math.ceil(count / max(nofile - _LOADGEN_SPARE_FDS, 1))
    return [count // parts + (1 if index < count % parts else 0) for index in range(parts)]


def _merge_idle(outs: Sequence[dict[str, object]]) -> dict[str, object]:
    """The summaries of several load generators as one."""
    merged: dict[str, object] = {"generators": len(outs)}
    for key in ("ready", "errors", "logged_out", "logout_errors"):
        merged[key] = sum(int(out.get(key, 0)) for out in outs)  # type: ignore[call-overload]
    for key in ("error_samples", "logout_error_samples"):
        merged[key] = [s for out in outs for s in out.get(key, [])][:5]  # type: ignore[attr-defined]
    merged["setup_s"] = max(float(out.get("setup_s", 0)) for out in outs)  # type: ignore[arg-type]
    return merged


def measure_idle(target: tg.Target, count: int, setup: float) -> dict[str, object]:
    """Hold ``count`` authenticated IMAP sessions; the memory and descriptors they cost
    the target, and how many stayed up until a clean LOGOUT."""
    argvs = [loadgen_argv("idle", target, "imap", "--users", str(tg.BENCH_USERS),
                          "--count", str(share), "--concurrency", "64",
                          "--setup", str(setup), "--hold", str(setup + _SLACK),
                          "--io-timeout", "60") for share in idle_shares(count)]
    before = sample_tree(target.roots)
    with contextlib.ExitStack() as stack:
        procs = [stack.enter_context(subprocess.Popen(argv, stdin=subprocess.PIPE,
                                                      stdout=subprocess.PIPE, text=True))
                 for argv in argvs]
        try:
            ready = [json.loads(_read_line(proc.stdout, setup + _SLACK)) for proc in procs]
            time.sleep(_SETTLE)
            after, fds = sample_tree(target.roots), open_fds(target.roots)
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write("release\n")
                proc.stdin.flush()
            final = [json.loads(_read_line(proc.stdout, setup + _SLACK)) for proc in procs]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
    held = max(sum(int(out["ready"]) for out in ready), 1)
    return {**_merge_idle(final), "workload": "idle", "proto": "imap", "target": target.name,
            "count": count,
            "rss_kib_per_conn": round((after.rss_kib - before.rss_kib) / held, 1),
            "pss_kib_per_conn": round((after.pss_kib - before.pss_kib) / held, 1),
            "processes": after.processes, "rss_kib_total": after.rss_kib,
            "max_fds_per_process": max(fds.values(), default=0),
            "fds_by_process": sorted(fds.values(), reverse=True)[:8]}


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Plan:
    duration: float
    warmup: float
    relay_repeat: int
    idle: tuple[int, ...]
    idle_setup: float
    perditionpy_workers: int = 1
    tls: bool = True      # the relay over TLS towards the client, too
    perditionpy_idle_workers: int = 2  # the idle sets' own instance
    rounds: int = 3       # login runs per figure, targets in turn; the median is reported


def run_all(targets: Sequence[tg.Target], plan: Plan, results: Results,
            idle_targets: Sequence[tg.Target] | None = None) -> None:
    """Every figure for every target; the idle sets against ``idle_targets`` (the
    same targets, perditionpy perhaps run with other ``--workers``)."""
    secure = [t for t in targets if t.imaps_port is not None] if plan.tls else []
    steps = (len(targets) * (len(PROTOCOLS) * (1 + plan.rounds * len(CONCURRENCIES) + 1)
                             + len(plan.idle))
             + len(secure) * len(PROTOCOLS))
    progress = Progress(steps)
    for target in targets:
        results.processes[target.name] = sample_tree(target.roots, memory=False).processes
    for proto in PROTOCOLS:
        for target in targets:
            progress.step(f"warm-up {proto} {target.label}")
            run_loadgen(loadgen_argv("logins", target, proto, "--users", str(tg.BENCH_USERS),
                                     "--concurrency", "16", "--duration", str(plan.warmup)),
                        plan.warmup + _SLACK)
        for concurrency in CONCURRENCIES:
            runs: dict[str, list[dict[str, object]]] = {t.name: [] for t in targets}
            for round_ in range(plan.rounds):
                # Every other round the other way round: no target always goes first.
                for target in targets if round_ % 2 == 0 else targets[::-1]:
                    progress.step(f"{proto} logins c={concurrency} {target.label}"
                                  f" ({round_ + 1}/{plan.rounds})")
                    runs[target.name].append(measure_logins(target, proto, concurrency,
                                                            plan.duration, results))
            for target in targets:
                record_logins(median_run(runs[target.name]), results)
        for target in targets:
            progress.step(f"{proto} relay 20 MiB {target.label}")
            record_relay(measure_relay(target, proto, plan.relay_repeat), proto, results)
        for target in secure:
            progress.step(f"{proto} relay 20 MiB, client TLS, {target.label}")
            record_relay(measure_relay(target, proto, plan.relay_repeat, tls=True), proto,
                         results)
    for count in plan.idle:
        for target in idle_targets or targets:
            progress.step(f"idle x{count:,} {target.label}")
            record_idle(target, count, plan.idle_setup, results)
    progress.finish()
    record_cpu(results)


def record_cpu(results: Results) -> None:
    """CPU seconds per 1,000 logins: each target's own, and Dovecot's behind it."""
    def per_1000(cpu_s: float, logins: float) -> float | None:
        return round(cpu_s / logins * 1000, 2) if logins else None

    for name, (cpu_s, logins) in results.cpu.items():
        results.put("cpu_per_1000", name, per_1000(cpu_s, logins))
    for (proto, name), (cpu_s, logins) in results.backend_cpu.items():
        results.put(f"backend_cpu_{proto}", name, per_1000(cpu_s, logins))


def record_relay(out: dict[str, object], proto: str, results: Results) -> None:
    results.raw.append(out)
    key = f"relay_tls_{proto}" if out["tls"] else f"relay_{proto}"
    results.put(key, str(out["target"]), out["median_mb_per_s"])  # type: ignore[arg-type]
    share = out.get("loadgen_cpu_share")
    if isinstance(share, float) and share > _SATURATED:
        results.note(f"relay {proto.upper()}{' over TLS' if out['tls'] else ''} "
                     f"{out['target']}: the load generator used {share:.2f} of a core; "
                     f"that figure may be the generator's limit, not the target's.")


_MEDIAN_KEYS = ("logins_per_s", "p50_ms", "p99_ms", "loadgen_cpu_share")


def median_run(runs: Sequence[dict[str, object]]) -> dict[str, object]:
    """One logins result from several runs of the same measurement: the median of
    each figure (with two runs: their mean), each run's logins/s kept under ``runs``."""
    combined = dict(runs[0])
    for key in _MEDIAN_KEYS:
        values = [float(run[key]) for run in runs if run.get(key) is not None]  # type: ignore[arg-type]
        combined[key] = round(statistics.median(values), 3) if values else None
    combined["runs"] = [run["logins_per_s"] for run in runs]
    combined["logins"] = sum(int(run["logins"]) for run in runs)  # type: ignore[call-overload]
    combined["errors"] = sum(int(run["errors"]) for run in runs)  # type: ignore[call-overload]
    return combined


def record_logins(out: dict[str, object], results: Results) -> None:
    results.raw.append(out)
    proto, name, concurrency = out["proto"], str(out["target"]), out["concurrency"]
    results.put(f"logins_{proto}_c{concurrency}", name, out["logins_per_s"])  # type: ignore[arg-type]
    if concurrency == CONCURRENCIES[-1]:
        results.put(f"p50_{proto}", name, out["p50_ms"])  # type: ignore[arg-type]
        results.put(f"p99_{proto}", name, out["p99_ms"])  # type: ignore[arg-type]
        results.put(f"loadgen_cpu_{proto}", name, out["loadgen_cpu_share"])  # type: ignore[arg-type]


_IDLE_KEYS = ("held_idle", "rss_idle", "pss_idle", "fds_idle")


def record_idle(target: tg.Target, count: int, setup: float, results: Results) -> None:
    for key in _IDLE_KEYS:
        results.put(f"{key}_{count}", target.name, None)
    why_not = target.can_hold(count)
    if why_not is not None:
        results.note(f"idle x{count:,} skipped for {why_not}.")
        return
    try:
        out = measure_idle(target, count, setup)
    except (RuntimeError, TimeoutError, ValueError, OSError) as exc:
        results.note(f"idle x{count:,} {target.label}: {exc}")
        return
    results.raw.append(out)
    note_idle_losses(target, count, out, results)
    results.put(f"held_idle_{count}", target.name, out["logged_out"])  # type: ignore[arg-type]
    results.put(f"rss_idle_{count}", target.name, out["rss_kib_per_conn"])  # type: ignore[arg-type]
    results.put(f"pss_idle_{count}", target.name, out["pss_kib_per_conn"])  # type: ignore[arg-type]
    results.put(f"fds_idle_{count}", target.name, out["max_fds_per_process"])  # type: ignore[arg-type]


def note_idle_losses(target: tg.Target, count: int, out: dict[str, object],
                     results: Results) -> None:
    """Say which sessions of an idle set failed to log in or did not stay up."""
    where = f"idle x{count:,} {target.label}"
    if out["ready"] != count:
        results.note(f"{where}: {out['ready']} of {count:,} logged in ({out['errors']} errors, "
                     f"e.g. {out['error_samples'][:1]})")  # type: ignore[index]
    if out["logged_out"] != out["ready"]:
        results.note(f"{where}: {out['logged_out']} of {out['ready']} held sessions logged out "
                     f"cleanly, e.g. {out['logout_error_samples'][:1]}")  # type: ignore[index]
    if int(out["max_fds_per_process"]) > 0.9 * tg.HARD_NOFILE:  # type: ignore[call-overload]
        results.note(f"{where}: one process held {out['max_fds_per_process']} descriptors, "
                     f"near the {tg.HARD_NOFILE:,} limit (busiest processes: "
                     f"{out['fds_by_process']})")


# --------------------------------------------------------------------------- the table


def figure_rows(plan: Plan) -> list[tuple[str, str, str]]:
    """(key, description, better) in table order."""
    rows = []
    for proto in PROTOCOLS:
        name = proto.upper()
        rows += [(f"logins_{proto}_c{c}", f"{name} logins/s, concurrency {c}", "higher")
                 for c in CONCURRENCIES]
        rows += [(f"p50_{proto}", f"{name} connect→authenticated p50 at 64 (ms)", "lower"),
                 (f"p99_{proto}", f"{name} connect→authenticated p99 at 64 (ms)", "lower")]
    rows += [(f"relay_{p}", f"relay MB/s, 20 MiB {p.upper()} fetch (plain)", "higher")
             for p in PROTOCOLS]
    if plan.tls:
        rows += [(f"relay_tls_{p}", f"relay MB/s, 20 MiB {p.upper()} fetch (client TLS, "
                  f"back-end plain)", "higher") for p in PROTOCOLS]
    for count in plan.idle:
        rows += [(f"held_idle_{count}", f"idle IMAP sessions held of {count:,} (logged in, "
                  f"stayed up, logged out)", "all"),
                 (f"rss_idle_{count}", f"RSS KiB per idle IMAP connection at {count:,}", "lower"),
                 (f"pss_idle_{count}", f"PSS KiB per idle IMAP connection at {count:,}", "lower"),
                 (f"fds_idle_{count}", f"most descriptors in one process, idle at {count:,}",
                  "info")]
    rows.append(("cpu_per_1000", "CPU s per 1,000 logins (Dovecot: its own)", "lower"))
    rows += [(f"backend_cpu_{p}", f"Dovecot's CPU s per 1,000 {p.upper()} logins through it",
              "lower") for p in PROTOCOLS]
    rows += [(f"loadgen_cpu_{p}", f"load generator CPU share, {p.upper()} c=64 (1.0 = a core)",
              "info") for p in PROTOCOLS]
    return rows


def _cell(value: float | None, reference: float | None, with_ratio: bool) -> str:
    if value is None:
        return "—"
    text = (f"{value:.2f}" if abs(value) < 1 else f"{value:,.1f}" if abs(value) < 100
            else f"{value:,.0f}")
    if with_ratio and reference:
        text += f" ({value / reference:.2f}×)"
    return text


def render_table(targets: Sequence[tg.Target], results: Results, plan: Plan) -> str:
    head = "| figure | better | " + " | ".join(t.label for t in targets) + " |"
    lines = [head, "|" + "---|" * (len(targets) + 2)]
    for key, text, better in figure_rows(plan):
        row = results.figures.get(key, {})
        reference = row.get("perditionpy")
        cells = [_cell(row.get(t.name), reference,
                       better in ("higher", "lower") and t.name != "perditionpy")
                 for t in targets]
        lines.append(f"| {text} | {better} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load_average() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def render_report(targets: Sequence[tg.Target], results: Results, plan: Plan,
                  started: datetime.datetime, seconds: float, command: str) -> str:
    versions = "; ".join(f"{t.label}: {t.version}" for t in targets)
    processes = ", ".join(f"{t.label} {results.processes.get(t.name, '?')}"
                          + (" (+1 per connection)" if t.name == "perdition" else "")
                          for t in targets)
    if os.getloadavg()[1] > (os.cpu_count() or 1) + 1:
        results.note(f"The machine was busy besides the benchmark (load average "
                     f"{load_average()} at the end): absolute figures are low and noisy, "
                     f"ratios within this run still compare like with like.")
    parts = [
        f"# perditionpy benchmark, {started:%Y-%m-%d %H:%M}",
        "",
        f"Machine: {os.cpu_count()} CPUs, {platform.machine()}, Linux {platform.release()}, "
        f"Python {platform.python_version()}. {versions}.",
        f"Processes charged for CPU and memory (IMAP and POP3 listeners together, at the "
        f"start): {processes}." + (" TLS rows: separate listeners (separate processes for "
                                   "perdition and perditionpy), a self-signed certificate, "
                                   "TLS as negotiated by OpenSSL's defaults." if plan.tls else ""),
        f"Login runs {plan.duration:g} s each, {plan.rounds} per figure with the targets in "
        f"turn (the median is shown); ratios are each figure ÷ perditionpy's "
        f"(same run). Whole run: {seconds / 60:.1f} min; load average at the end "
        f"{load_average()}. Command: `{command}`.",
        "",
        render_table(targets, results, plan),
        "",
    ]
    if results.notes:
        parts += ["Notes:", "", *[f"- {n}" for n in results.notes], ""]
    return "\n".join(parts)


# --------------------------------------------------------------------------- main


def start_targets(stack: contextlib.ExitStack, dovecot: Dovecot, log_dir: Path,
                  wanted: Sequence[str], results: Results, plan: Plan,
                  tls: tg.TlsFiles | None) -> list[tg.Target]:
    workers = plan.perditionpy_workers
    starters: dict[str, tuple[Callable[[], bool],
                              Callable[[], contextlib.AbstractContextManager[tg.Target]]]] = {
        "backend": (lambda: True, lambda: tg.backend(dovecot)),
        "perdition": (tg.perdition_available, lambda: tg.perdition(dovecot, log_dir, tls)),
        "nginx": (tg.nginx_available, lambda: tg.nginx(dovecot, log_dir, tls)),
        "perditionpy": (lambda: True,
                        lambda: tg.perditionpy(dovecot, log_dir, workers=workers, tls=tls)),
    }
    started: list[tg.Target] = []
    for name in ORDER:
        if name not in wanted:
            continue
        available, start = starters[name]
        if not available():
            results.note(f"{name} is not installed: left out (scripts/install-deps.sh).")
            continue
        started.append(stack.enter_context(start()))
    return started


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0,
                        help="seconds per logins measurement (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=_positive, default=3,
                        help="login runs per figure, the targets taken in turn; the median "
                             "is reported (default 3)")
    parser.add_argument("--relay-repeat", type=int, default=7,
                        help="20 MiB fetches per relay figure; the median is reported")
    parser.add_argument("--idle", default="1000,10000",
                        help="idle connection counts, comma-separated ('' for none)")
    parser.add_argument("--idle-setup", type=float, default=120.0,
                        help="longest time to open one idle set (seconds)")
    parser.add_argument("--targets", default=",".join(ORDER),
                        help=f"comma-separated subset of {','.join(ORDER)}")
    parser.add_argument("--perditionpy-workers", type=_positive, default=1, metavar="N",
                        help="run perditionpy with --workers N for the login and relay "
                             "figures (default 1: one process, no supervisor)")
    parser.add_argument("--perditionpy-idle-workers", type=_positive, default=2, metavar="N",
                        help="run the idle sets against a perditionpy with --workers N "
                             "(default 2: one process cannot hold 10,000 pairs under a "
                             "20,000-descriptor limit)")
    parser.add_argument("--no-tls", dest="tls", action="store_false",
                        help="leave out the relay over TLS towards the client (and its "
                             "certificate and listeners)")
    parser.add_argument("--output", type=Path, default=None,
                        help="report path (default bench/results/<date>.md)")
    return parser.parse_args(argv)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


@contextlib.contextmanager
def workspace() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="perditionpy-bench-") as top:
        yield Path(top)


def main(argv: Sequence[str] | None = None) -> int:
    tg.stop_cleanly_on_sigterm()
    args = parse_args(sys.argv[1:] if argv is None else argv)
    plan = Plan(args.duration, args.warmup, args.relay_repeat,
                tuple(int(n) for n in args.idle.split(",") if n.strip()), args.idle_setup,
                args.perditionpy_workers, args.tls, args.perditionpy_idle_workers, args.rounds)
    command = shlex.join(["bench/run.py", *(sys.argv[1:] if argv is None else argv)])
    wanted = [n.strip() for n in args.targets.split(",") if n.strip()]
    started, clock = datetime.datetime.now(), time.monotonic()
    results = Results()
    with workspace() as top, contextlib.ExitStack() as stack:
        sys.stderr.write("bench: starting Dovecot and the proxies ...\n")
        tls = tg.make_certificate(top / "tls") if plan.tls else None
        dovecot = stack.enter_context(tg.bench_dovecot(top / "dovecot", tls))
        results.backend_roots = tg.dovecot_roots(dovecot)
        targets = start_targets(stack, dovecot, top / "logs", wanted, results, plan, tls)
        idle_targets = targets
        if (plan.idle and "perditionpy" in wanted
                and plan.perditionpy_idle_workers != plan.perditionpy_workers):
            idle_py = stack.enter_context(tg.perditionpy(
                dovecot, top / "logs-idle", workers=plan.perditionpy_idle_workers))
            idle_targets = [idle_py if t.name == "perditionpy" else t for t in targets]
            results.note(f"perditionpy for the idle sets: a second instance, {idle_py.version}.")
        run_all(targets, plan, results, idle_targets)
        if dovecot.errors():
            results.note(f"Dovecot logged errors: {dovecot.errors()[:3]}")
    report = render_report(targets, results, plan, started, time.monotonic() - clock, command)
    output = args.output or RESULTS / f"{started:%Y-%m-%d}.md"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(report)
    output.with_suffix(".json").write_text(json.dumps(
        {"figures": results.figures, "notes": results.notes, "raw": results.raw}, indent=1))
    print(report)
    print(f"written to {output.relative_to(REPO_ROOT) if output.is_relative_to(REPO_ROOT) else output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
