#!/usr/bin/env python3
"""Two versions of perditionpy by turns: did a change to the login path pay?

``bench/compare.py REV`` checks ``REV`` out into a temporary git worktree, starts
the bench Dovecot and, for each protocol, one perditionpy from that tree and one
from this working tree, then runs the load generator's logins workload against
each in turn (the other order every other round) and prints the medians of
logins/s and of the proxy's user and system CPU per login.  Logins/s moves by a
few percent between runs on a shared 2-core machine; CPU per login of two
versions measured by turns is the steadier figure.

    .venv/bin/python bench/compare.py HEAD~1 [--concurrency 16,64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench import targets as tg  # noqa: E402
from bench.floor import by_turns, counts  # noqa: E402
from tests.support.ports import LOOPBACK  # noqa: E402
from tests.support.procs import Proc, start_perditionpy  # noqa: E402

PROTOCOLS = {"imap": "IMAP4", "pop3": "POP3"}


def _proxy(stack: contextlib.ExitStack, tree: Path, protocol: str, backend: int,
           log_dir: Path) -> Proc:
    """perditionpy from ``tree``, with the flags the bench gives it."""
    args = ["-P", protocol, "-M", "", "-s", f"{LOOPBACK}:{backend}"]
    return stack.enter_context(start_perditionpy(args, log_dir=log_dir, nofile=tg.HARD_NOFILE,
                                                 tree=tree))


def compare(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="perditionpy-compare-") as top, \
            contextlib.ExitStack() as stack:
        work = Path(top)
        work.chmod(0o755)  # the proxies may drop to nobody, and import lazily
        base = work / "base"
        subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "add", "--detach", "-q",
                        str(base), args.rev], check=True)
        stack.callback(subprocess.run, ["git", "-C", str(REPO_ROOT), "worktree", "remove",
                                        "--force", str(base)], check=False)
        dovecot = stack.enter_context(tg.bench_dovecot(work / "dovecot"))
        trees = {args.rev: base, "working tree": REPO_ROOT}
        proxies = {(name, proto): _proxy(stack, tree, PROTOCOLS[proto],
                                         dovecot.imap_port if proto == "imap"
                                         else dovecot.pop3_port, work / "logs")
                   for name, tree in trees.items() for proto in PROTOCOLS}
        by_turns({key: (proxy.port, proxy.pid) for key, proxy in proxies.items()},
                 list(trees), "version", args)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rev", help="the version to compare with (a git revision)")
    parser.add_argument("--concurrency", type=counts, default=[16, 64])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    tg.stop_cleanly_on_sigterm()
    compare(parse_args(sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
