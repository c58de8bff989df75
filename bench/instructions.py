#!/usr/bin/env python3
"""Instructions per login, counted by callgrind: a figure that does not move
with the machine's load, for telling whether a change to the login path pays.

Starts the bench Dovecot and perditionpy under ``valgrind --tool=callgrind``
with counting off, switches counting on for one logins run of the load
generator (slow under valgrind: ``--concurrency 4`` for ``--seconds 20`` gives
a few thousand logins), off again, and prints the logins and the instructions
per login, summed over the proxy's threads (start-up and shutdown left out).
With ``REV`` the same is done for that git revision (a temporary worktree)
first.  perditionpy's own instructions only: the system calls' work in the
kernel is not counted, nor Dovecot's or the load generator's.

    .venv/bin/python bench/instructions.py [REV] [--proto imap|pop3]
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench import targets as tg  # noqa: E402
from bench.run import LOADGEN  # noqa: E402
from tests.support.dovecot import Dovecot  # noqa: E402
from tests.support.ports import LOOPBACK  # noqa: E402
from tests.support.procs import start_perditionpy  # noqa: E402

PROTOCOLS = {"imap": "IMAP4", "pop3": "POP3"}
# Python under valgrind starts some 50 times slower.
_READY_UNDER_VALGRIND = 300.0
_TOTALS = re.compile(r"^totals:\s+(\d+)", re.MULTILINE)


def counted(tree: Path, work: Path, dovecot: Dovecot, args: argparse.Namespace
            ) -> tuple[int, int]:
    """(logins, instructions) of one perditionpy from ``tree`` under callgrind."""
    out = work / f"callgrind-{len(list(work.glob('callgrind-*')))}.out"
    wrapper = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
               f"--callgrind-out-file={out}"]
    backend = dovecot.imap_port if args.proto == "imap" else dovecot.pop3_port
    # Staying who we are: callgrind_control cannot reach a process that changed user.
    me = ["-u", pwd.getpwuid(os.geteuid()).pw_name, "-g", grp.getgrgid(os.getegid()).gr_name]
    proxy_args = ["-P", PROTOCOLS[args.proto], "-M", "", "-s", f"{LOOPBACK}:{backend}", *me]
    with start_perditionpy(proxy_args, log_dir=work / "logs", nofile=tg.HARD_NOFILE,
                           tree=tree, wrapper=wrapper, timeout=_READY_UNDER_VALGRIND) as proxy:
        subprocess.run(["callgrind_control", "--instr=on", str(proxy.pid)], check=True,
                       capture_output=True)
        result = subprocess.run(
            [sys.executable, str(LOADGEN), "logins", "--proto", args.proto,
             "--port", str(proxy.port), "--password", tg.PASSWORD,
             "--users", str(tg.BENCH_USERS), "--concurrency", str(args.concurrency),
             "--duration", str(args.seconds)],
            check=True, capture_output=True, text=True).stdout
        subprocess.run(["callgrind_control", "--instr=off", str(proxy.pid)], check=True,
                       capture_output=True)
        proxy.stop(timeout=_READY_UNDER_VALGRIND)  # callgrind writes its count at exit
    logins = int(json.loads(result.strip().splitlines()[-1])["logins"])
    match = _TOTALS.search(out.read_text())
    if match is None or logins == 0:
        raise SystemExit(f"no count in {out} ({logins} logins)")
    return logins, int(match.group(1))


def main(argv: Sequence[str] | None = None) -> int:
    tg.stop_cleanly_on_sigterm()
    args = parse_args(sys.argv[1:] if argv is None else argv)
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found (apt-get install valgrind)")
    with tempfile.TemporaryDirectory(prefix="perditionpy-instructions-") as top, \
            contextlib.ExitStack() as stack:
        work = Path(top)
        work.chmod(0o755)  # (Dovecot's users read below it)
        trees = {"working tree": REPO_ROOT}
        if args.rev:
            base = work / "base"
            subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "add", "--detach", "-q",
                            str(base), args.rev], check=True)
            stack.callback(subprocess.run, ["git", "-C", str(REPO_ROOT), "worktree", "remove",
                                            "--force", str(base)], check=False)
            trees = {args.rev: base, **trees}
        dovecot = stack.enter_context(tg.bench_dovecot(work / "dovecot"))
        print(f"| version | {args.proto} logins | instructions per login |\n|---|---|---|")
        for name, tree in trees.items():
            logins, instructions = counted(tree, work, dovecot, args)
            print(f"| {name} | {logins:,} | {instructions // logins:,} |", flush=True)
    return 0


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rev", nargs="?", help="also count this git revision")
    parser.add_argument("--proto", choices=tuple(PROTOCOLS), default="imap")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
