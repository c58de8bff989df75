#!/usr/bin/env python3
"""``make run``: perditionpy in front of a private Dovecot, ready to try with curl.

Starts a throw-away Dovecot (tests/support/dovecot.py) with two demo accounts,
writes a popmap that sends both users to it and builds it with makegdbm, then runs
perditionpy twice -- IMAP4 on 127.0.0.1:14143 and POP3 on 127.0.0.1:14110 -- and
prints commands to paste. The popmap names only the host; each proxy's ``-p`` gives
the back-end port for its protocol, so one popmap serves both. Runs until Ctrl-C,
then stops everything and removes its files.

``--reference`` runs the real perdition 2.2 (and its makegdbm) instead, for
comparison. On a machine without Dovecot it runs scripts/install-deps.sh (as root).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.support.dovecot import Dovecot, MailUser, dovecot_binary, make_message  # noqa: E402
from tests.support.procs import Proc, ProcError, start_perdition, start_perditionpy  # noqa: E402

DEMO_USERS = (
    MailUser(
        "demo",
        b"demo",
        (
            make_message(1, "Welcome to perditionpy", b"This came through the proxy.\n"),
            make_message(2, "A second message", b"POP3 and IMAP4 see the same mailbox.\n"),
        ),
    ),
    MailUser(
        "alice@example.com",
        b"alice",
        (make_message(3, "Hello Alice", b"User names may carry a domain.\n"),),
    ),
)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--imap-port", type=int, default=14143, help="IMAP4 listener port")
    parser.add_argument("--pop3-port", type=int, default=14110, help="POP3 listener port")
    parser.add_argument(
        "--reference", action="store_true", help="run perdition 2.2 instead of perditionpy"
    )
    return parser.parse_args(argv)


def ensure_dovecot() -> None:
    """Install the Debian packages when Dovecot is missing (root only)."""
    if dovecot_binary() is not None:
        return
    if os.geteuid() != 0:
        sys.exit("Dovecot is not installed: run scripts/install-deps.sh as root first.")
    subprocess.run([str(REPO_ROOT / "scripts" / "install-deps.sh")], check=True)
    if dovecot_binary() is None:
        sys.exit("scripts/install-deps.sh ran, but dovecot is still missing.")


def build_popmap(workdir: Path, users: Sequence[MailUser], reference: bool) -> Path:
    """Write ``popmap`` (user:host) and build ``popmap.db`` from it with makegdbm."""
    text = "".join(f"{user.name}:127.0.0.1\n" for user in users)
    (workdir / "popmap").write_text(text)
    database = workdir / "popmap.db"
    if reference:
        command = ["/usr/bin/makegdbm", str(database)]
    else:
        command = [sys.executable, "-m", "perditionpy.tools.makegdbm", str(database)]
    subprocess.run(command, input=text.encode(), check=True, cwd=REPO_ROOT)
    database.chmod(0o644)
    return database


def start_proxies(
    args: argparse.Namespace, dovecot: Dovecot, popmap: Path, logs: Path
) -> list[tuple[str, Proc]]:
    start = start_perdition if args.reference else start_perditionpy
    plan = (
        ("IMAP4", args.imap_port, dovecot.imap_port),
        ("POP3", args.pop3_port, dovecot.pop3_port),
    )
    procs: list[tuple[str, Proc]] = []
    try:
        for protocol, port, backend in plan:
            flags = ["-P", protocol, "-b", "127.0.0.1", "-l", str(port)]
            flags += ["-m", str(popmap), "-p", str(backend)]
            procs.append((protocol, start(flags, port=port, log_dir=logs)))
    except ProcError:
        stop_all(procs)
        raise
    return procs


def stop_all(procs: Sequence[tuple[str, Proc]]) -> None:
    for _, proc in procs:
        proc.stop()


def print_instructions(args: argparse.Namespace, popmap: Path, reference: bool) -> None:
    name = "perdition 2.2" if reference else "perditionpy"
    imap, pop3 = f"imap://127.0.0.1:{args.imap_port}", f"pop3://127.0.0.1:{args.pop3_port}"
    print(
        f"""
{name} is proxying to a private Dovecot:
  IMAP4  127.0.0.1:{args.imap_port}      POP3  127.0.0.1:{args.pop3_port}
  popmap {popmap.with_suffix("")}  (built into {popmap.name} with makegdbm)
  users  demo / demo      alice@example.com / alice

Try, in another terminal:
  curl --user demo:demo '{imap}/'                     # list mailboxes
  curl --user demo:demo '{imap}/INBOX;UID=1'          # read message 1
  curl --user demo:demo '{pop3}/'                     # list messages
  curl --user demo:demo '{pop3}/2'                    # read message 2
  curl --user 'alice@example.com:alice' '{pop3}/1'
  curl --user demo:wrong '{pop3}/'                    # refused (after perdition's 3 s delay)

The proxies' log lines follow. Ctrl-C stops everything.
""",
        flush=True,
    )


@contextlib.contextmanager
def following(procs: Sequence[tuple[str, Proc]]) -> Iterator[None]:
    """Copy the proxies' new log lines to our stdout, each prefixed with its protocol."""
    stop = threading.Event()

    def follow(label: str, proc: Proc) -> None:
        with proc.log_path.open("rb") as log:
            while not stop.is_set():
                line = log.readline()
                if line:
                    sys.stdout.write(f"[{label}] {line.decode('utf-8', 'replace')}")
                    sys.stdout.flush()
                else:
                    stop.wait(0.2)  # tailing a file: nothing new yet

    threads = [
        threading.Thread(target=follow, args=item, daemon=True, name=f"follow-{item[0]}")
        for item in procs
    ]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(1)


def wait_for_interrupt(procs: Sequence[tuple[str, Proc]]) -> None:
    """Return on Ctrl-C or SIGTERM, or when a proxy exits by itself."""
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    while not done.wait(0.5):
        for label, proc in procs:
            if not proc.running():
                print(f"\n{label} proxy exited with status {proc.popen.returncode}.")
                return


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    ensure_dovecot()
    workdir = Path(tempfile.mkdtemp(prefix="perditionpy-demo-"))
    workdir.chmod(0o755)  # perdition reads the popmap after dropping to "nobody"
    try:
        with Dovecot(DEMO_USERS, workdir=workdir / "dovecot") as dovecot:
            popmap = build_popmap(workdir, DEMO_USERS, args.reference)
            procs = start_proxies(args, dovecot, popmap, workdir / "logs")
            try:
                print_instructions(args, popmap, args.reference)
                with following(procs):
                    wait_for_interrupt(procs)
            finally:
                stop_all(procs)
    except ProcError as exc:
        print(f"The proxy did not start:\n{exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("\nStopped; demo files removed.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
