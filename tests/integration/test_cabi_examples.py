"""The C examples in cplugins/ under a running daemon.

* ``byaddr.so`` reads the host's ``peername``: 50 clients connecting at once
  from 127.0.0.2 … 127.0.0.51 each reach the back-end account their address
  maps to — no cross-talk — under perditionpy (in process and isolated) and,
  as a check of the example itself, under perdition 2.2;
* ``segv.so`` and ``hang.so`` in isolation mode: the daemon survives, the
  client whose key crashes or hangs the library gets perdition's failure
  reply, other clients keep logging in meanwhile and afterwards;
* ``failover.so`` picks the first server that answers.
"""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.ports import LOOPBACK
from tests.support.procs import REPO_ROOT, Proc
from tests.support.scenarios import readable_dir
from tests.support.whoami import TIMEOUT, WhoAmI, pop3_session

BUILD = REPO_ROOT / "cplugins" / "build"
CLIENTS = 50

RunProxy = Callable[..., Proc]


@pytest.fixture(scope="session", autouse=True)
def cplugins_built() -> None:
    subprocess.run([str(REPO_ROOT / "cplugins" / "build.sh")], check=True, timeout=120)


@pytest.fixture(scope="module")
def shared_dir() -> Iterator[Path]:
    with readable_dir() as path:
        yield path


# ------------------------------------------------------------------ peername


@pytest.mark.parametrize("mode", ["in_process", "isolated", "perdition"])
def test_byaddr_routes_each_client_by_its_address(
    mode: str, whoami: WhoAmI, shared_dir: Path, run_perditionpy: RunProxy,
    run_perdition: RunProxy,
) -> None:
    sources = [f"127.0.0.{n}" for n in range(2, 2 + CLIENTS)]
    table = shared_dir / f"byaddr-{whoami.port}"
    table.write_text("".join(f"{source} user{source.replace('.', '_')}@{LOOPBACK}:{whoami.port}\n"
                             for source in sources))
    table.chmod(0o644)
    library = str(BUILD / "byaddr.so")
    args = ["-P", "POP3", "-m", str(table), "-U"]
    if mode == "perdition":
        proxy = run_perdition(["-M", library, *args])
    else:
        prefix = "isolated,workers=4:" if mode == "isolated" else ""
        proxy = run_perditionpy(["-M", prefix + library, *args])
    barrier = threading.Barrier(CLIENTS)

    def client(source: str) -> bytes:
        barrier.wait(TIMEOUT)
        return pop3_session(proxy, "anyone", source)

    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        answers = list(pool.map(client, sources, timeout=120))
    assert answers == [b"+OK user" + source.replace(".", "_").encode() for source in sources]


# ------------------------------------------------------------------ crash and hang


@pytest.mark.parametrize("library, bad_key", [("segv.so", "crash"), ("hang.so", "hang")])
def test_isolated_library_crash_or_hang_costs_one_lookup(
    library: str, bad_key: str, whoami: WhoAmI, run_perditionpy: RunProxy
) -> None:
    proxy = run_perditionpy(["-P", "POP3", "-M", f"isolated,timeout=2,workers=2:{BUILD / library}",
                             "-m", f"{LOOPBACK}:{whoami.port}"])
    assert pop3_session(proxy, "before") == b"+OK before"
    with ThreadPoolExecutor(max_workers=1) as pool:
        bad = pool.submit(pop3_session, proxy, bad_key)
        # While that lookup crashes or hangs, the other helper serves everyone else.
        others = [pop3_session(proxy, f"other{n}") for n in range(5)]
        failure = bad.result(timeout=60)
    assert others == [f"+OK other{n}".encode() for n in range(5)]
    assert failure.startswith(b"-ERR") and b"Could not determine server" in failure
    assert proxy.running()
    assert pop3_session(proxy, "after") == b"+OK after"
    proxy.wait_for_log(r"lookup failed: (helper killed by SIGSEGV|no answer within 2s)")


def test_isolated_crash_falls_back_to_the_outgoing_server(
    whoami: WhoAmI, run_perditionpy: RunProxy
) -> None:
    proxy = run_perditionpy(["-P", "POP3", "-M", f"isolated:{BUILD / 'segv.so'}",
                             "-m", "unused.example", "-s", f"{LOOPBACK}:{whoami.port}"])
    assert pop3_session(proxy, "crash") == b"+OK crash"
    assert proxy.running()


def test_missing_symbol_stops_the_start_naming_it(tmp_path: Path) -> None:
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "perditionpy", "--no_daemon", "-f", "", "-P", "POP3",
         "-M", str(BUILD / "needs_symbol.so")],
        capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert result.returncode != 0
    assert "perdition_symbol_nobody_exports" in result.stderr


# ------------------------------------------------------------------ fail-over


def test_failover_picks_the_first_live_server(whoami: WhoAmI, shared_dir: Path,
                                              run_perditionpy: RunProxy) -> None:
    dead = socket.create_server((LOOPBACK, 0))
    dead_port = dead.getsockname()[1]
    dead.close()  # nothing listens there now
    table = shared_dir / f"failover-{whoami.port}"
    table.write_text(f"# key servers...\nalice {LOOPBACK}:{dead_port} {LOOPBACK}:{whoami.port}\n"
                     f"bob {LOOPBACK}:{dead_port}\n")
    table.chmod(0o644)
    proxy = run_perditionpy(["-P", "POP3", "-M", str(BUILD / "failover.so"), "-m", str(table)])
    assert pop3_session(proxy, "alice") == b"+OK alice"
    assert b"Could not determine server" in pop3_session(proxy, "bob")
