#!/usr/bin/env python3
"""Where perditionpy spends its CPU under the bench workloads, sampled with py-spy.

Starts the bench Dovecot and one perditionpy (IMAP4 or POP3), runs one load
generator workload against it while ``py-spy record`` samples the proxy, and prints
the hottest functions by own time and by inclusive time, plus the process's peak
thread count and its user/system CPU. Samples are taken with ``--gil``: only the thread holding the
GIL is sampled, so the shares are of Python execution time (the resource a
threaded CPython server runs out of), not of time spent blocked. The raw collapsed stacks stay in ``--keep``
(flame-graph input) when given.

    .venv/bin/python bench/profile.py logins --proto imap --concurrency 16 --seconds 8
    .venv/bin/python bench/profile.py relay --proto pop3
    .venv/bin/python bench/profile.py idle --count 1000

Needs py-spy in the venv (``.venv/bin/pip install py-spy``) and ptrace rights
(root, or kernel.yama.ptrace_scope = 0).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench import targets as tg  # noqa: E402
from bench.run import LOADGEN  # noqa: E402

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$")


def py_spy() -> str:
    found = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if found is None:
        sys.exit("py-spy not found: .venv/bin/pip install py-spy")
    return found


def _short(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    path = match["file"]
    for marker in ("/perditionpy/", "/lib/python3"):
        if marker in path:
            path = path[path.index(marker) + 1 :]
    return f"{match['func']} ({path})"


def summarise(raw: Path, top: int) -> str:
    """Own-time and inclusive-time tables from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";")[1:]]  # first: the thread
        total += count
        if frames:
            own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if total == 0:
        return "no samples (was the proxy busy?)"
    out = [f"{total} samples"]
    for title, counter in (("own time", own), ("inclusive time", inclusive)):
        out.append(f"\ntop {top} by {title}:")
        out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in counter.most_common(top)]
    return "\n".join(out)


def _user_system(pid: int) -> tuple[float, float]:
    """utime and stime of ``pid`` in seconds."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def _threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


def _peak_threads(pid: int, seconds: float) -> int:
    """The most threads ``pid`` had, sampled every 0.2 s for ``seconds``."""
    peak, stop_at = 0, time.monotonic() + seconds
    while time.monotonic() < stop_at:
        peak = max(peak, _threads(pid))
        time.sleep(0.2)  # sampling interval
    return peak


def loadgen_argv(args: argparse.Namespace, port: int) -> list[str]:
    common = [sys.executable, str(LOADGEN), args.workload, "--proto", args.proto,
              "--port", str(port), "--password", tg.PASSWORD]
    if args.workload == "logins":
        return [*common, "--users", str(tg.BENCH_USERS), "--concurrency",
                str(args.concurrency), "--duration", str(args.seconds)]
    if args.workload == "relay":
        return [*common, "--user-prefix", tg.BIG_USER[:-1], "--users", "1",
                "--repeat", str(args.repeat)]
    return [*common, "--users", str(tg.BENCH_USERS), "--count", str(args.count),
            "--concurrency", "64", "--hold", str(args.seconds + 60)]


def profile(args: argparse.Namespace, proxy: tg.Target, raw: Path) -> str:
    pid = proxy.roots[0] if args.proto == "imap" else proxy.roots[1]
    port = proxy.imap_port if args.proto == "imap" else proxy.pop3_port
    user0, system0 = _user_system(pid)
    with subprocess.Popen(loadgen_argv(args, port), stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as load:
        if args.workload == "idle":
            assert load.stdout is not None and load.stdin is not None
            ready = load.stdout.readline().strip()
        spy = subprocess.Popen([py_spy(), "record", "--pid", str(pid), "--format", "raw",
                                "--nonblocking", *(["--gil"] if args.gil else []),
                                "--rate", "250", "--duration", str(int(args.seconds)),
                                "--output", str(raw)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        threads = _peak_threads(pid, args.seconds if args.workload != "relay" else 1.0)
        if args.workload == "idle":
            load.stdin.write("release\n")  # type: ignore[union-attr]
            load.stdin.flush()  # type: ignore[union-attr]
        result = load.communicate(timeout=args.seconds + 300)[0].strip().splitlines()[-1]
        spy.wait(args.seconds + 60)
    user1, system1 = _user_system(pid)
    header = [f"workload: {' '.join(loadgen_argv(args, port)[2:])}",
              f"load generator: {result}",
              f"proxy CPU: user {user1 - user0:.2f} s + system {system1 - system0:.2f} s; "
              f"peak threads: {threads}"]
    if args.workload == "idle":
        header.insert(1, f"ready: {ready}")
    return "\n".join(header) + "\n" + summarise(raw, args.top)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workload", choices=("logins", "relay", "idle"))
    parser.add_argument("--proto", choices=("imap", "pop3"), default="imap")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--repeat", type=int, default=30, help="relay: fetches")
    parser.add_argument("--count", type=int, default=1000, help="idle: connections")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--no-gil", dest="gil", action="store_false",
                        help="sample every non-idle thread, not only the GIL holder")
    parser.add_argument("--keep", type=Path, default=None, help="save raw stacks here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    tg.stop_cleanly_on_sigterm()
    args = parse_args(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="perditionpy-profile-") as top, \
            contextlib.ExitStack() as stack:
        work = Path(top)
        dovecot = stack.enter_context(tg.bench_dovecot(work / "dovecot"))
        proxy = stack.enter_context(tg.perditionpy(dovecot, work / "logs"))
        raw = args.keep or work / "stacks.txt"
        print(profile(args, proxy, raw))
    return 0


if __name__ == "__main__":
    sys.exit(main())
