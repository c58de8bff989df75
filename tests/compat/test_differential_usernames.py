"""Differential tests of the username pipeline and server choice: perdition 2.2 and
perditionpy, same arguments, same client dialogue, same Dovecot behind a tap each.

For every scenario both proxies run at once (so the one with a failed login costs
perdition's 3-second delay once, not twice) and must agree on:

* the greeting, checksum masked (the arguments differ in their tap ports, and the
  checksum covers them; ``test_same_greeting_checksum`` compares it with identical
  arguments);
* everything else the client received;
* the exact bytes each back-end received;
* the ``Auth:`` log lines, timestamps, pids and ports aside.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.dovecot import Dovecot
from tests.support.ports import LOOPBACK, free_port, read_greeting
from tests.support.procs import Proc
from tests.support.scenarios import (
    PERDITION_GDBM_LIBRARY,
    Transcript,
    build_popmap,
    mask_checksum,
    readable_dir,
    run_dialogue,
)
from tests.support.tap import Tap

RunProxy = Callable[..., Proc]
MakeTap = Callable[[int], Tap]


@dataclass(frozen=True)
class Side:
    """What one proxy's run of a scenario has of its own: taps and a popmap directory."""

    taps: list[Tap]
    map_dir: Path

    def server(self, index: int = 0) -> str:
        return f"{LOOPBACK}:{self.taps[index].port}"

    def gdbm(self, *lines: str) -> list[str]:
        popmap = build_popmap(self.map_dir / "popmap.db", lines)
        return ["-M", PERDITION_GDBM_LIBRARY, "-m", str(popmap)]


@dataclass(frozen=True)
class Scenario:
    protocol: str
    args: Callable[[Side], list[str]]
    # (user, password); "{s0}" / "{s1}" in the user become the taps' host:port.
    logins: tuple[tuple[str, str], ...]
    taps: int = 1
    backend_port: str = "imap_port"  # the Dovecot attribute the taps relay to


def _local_host_name() -> str:
    return socket.getnameinfo((LOOPBACK, 0), 0)[0]


SCENARIOS: dict[str, Scenario] = {
    "strip_domain+lower_case": Scenario(
        "IMAP4",
        lambda s: (
            ["-M", "", "-s", s.server()]
            + ["--strip_domain", "remote_login", "--lower_case", "remote_login"]
        ),
        (("ALICE@Example.COM", "alice-pw"),),
    ),
    "add_domain+explicit_domain": Scenario(
        "POP3",
        lambda s: (
            ["-M", "", "-s", s.server()]
            + ["--add_domain", "remote_login,2", "--explicit_domain", "example.org"]
        ),
        (("carol", "carol-pw"),),
        backend_port="pop3_port",
    ),
    "add_domain-from-lookup+no_lookup": Scenario(
        "IMAP4",
        lambda s: (
            s.gdbm(f"bob@{_local_host_name()}:{s.server()}")
            + ["--add_domain", "servername_lookup,0", "--no_lookup"]
        ),
        (("bob", "bob-pw"),),
    ),
    "lower_case-servername_lookup": Scenario(
        "IMAP4",
        lambda s: s.gdbm(f"carol@example.org:{s.server()}") + ["--lower_case", "servername_lookup"],
        (("CAROL@Example.org", "carol-pw"),),
    ),
    "domain_delimiter+client_server_specification": Scenario(
        "POP3",
        lambda s: ["-M", "", "-s", f"{LOOPBACK}:1", "--domain_delimiter", "%%", "-c"],
        (("alice%%{s0}", "alice-pw"),),
        backend_port="pop3_port",
    ),
    "client_server_specification-user-with-domain": Scenario(
        "IMAP4",
        lambda s: ["-M", "", "-s", f"{LOOPBACK}:1", "-c"],
        (("carol@example.org@{s0}", "carol-pw"),),
    ),
    "query_key": Scenario(
        "IMAP4",
        lambda s: (
            s.gdbm(f"example.org:{s.server()}", f"carol@127.0.0.1:{LOOPBACK}:1")
            + ["--query_key", r"nobody-\U,\d,\u\D\i"]
        ),
        (("carol@example.org", "carol-pw"),),
    ),
    "username_from_database": Scenario(
        "POP3",
        lambda s: s.gdbm(f"alice:carol@example.org@{s.server()}") + ["-U"],
        (("alice", "carol-pw"),),
        backend_port="pop3_port",
    ),
    "outgoing_port": Scenario(
        "IMAP4",
        lambda s: ["-M", "", "-s", LOOPBACK, "-p", str(s.taps[0].port)],
        (("bob", "bob-pw"),),
    ),
}


@pytest.fixture
def run_both(
    dovecot: Dovecot,
    run_perdition: RunProxy,
    run_perditionpy: RunProxy,
    make_tap: MakeTap,
) -> Iterator[Callable[[Scenario], tuple[Transcript, Transcript]]]:
    with readable_dir() as directory:

        def one(run: RunProxy, name: str, scenario: Scenario) -> Transcript:
            upstream = getattr(dovecot, scenario.backend_port)
            side = Side([make_tap(upstream) for _ in range(scenario.taps)], directory / name)
            side.map_dir.mkdir(mode=0o755)
            proxy = run(["-P", scenario.protocol, *scenario.args(side)])
            servers = {f"s{i}": side.server(i) for i in range(scenario.taps)}
            logins = [(user.format(**servers), pw) for user, pw in scenario.logins]
            return run_dialogue(proxy, scenario.protocol, logins, side.taps)

        def both(scenario: Scenario) -> tuple[Transcript, Transcript]:
            with ThreadPoolExecutor(2) as pool:
                ours = pool.submit(one, run_perditionpy, "perditionpy", scenario)
                theirs = pool.submit(one, run_perdition, "perdition", scenario)
                return theirs.result(), ours.result()

        yield both


def assert_same(theirs: Transcript, ours: Transcript) -> None:
    assert mask_checksum(ours.greeting) == mask_checksum(theirs.greeting)
    assert ours.client == theirs.client
    assert ours.backend == theirs.backend
    assert ours.auth == theirs.auth


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_same_back_end_login_and_auth_line(
    run_both: Callable[[Scenario], tuple[Transcript, Transcript]], name: str
) -> None:
    theirs, ours = run_both(SCENARIOS[name])
    assert_same(theirs, ours)
    # Every scenario is a successful login: one back-end was reached, once.
    assert len(ours.backend) == 1 and ours.backend_users[0]
    assert len(ours.auth) == 1 and ours.auth[0].endswith('status="ok"')


def test_round_robin_moves_on_after_a_failed_login(
    run_both: Callable[[Scenario], tuple[Transcript, Transcript]],
) -> None:
    # Both start at a random -s entry (perdition: per connection, perditionpy: per
    # process), so which tap comes first is left out of the comparison.
    scenario = Scenario(
        "IMAP4",
        lambda s: ["-M", "", "-s", f"{s.server(0)},{s.server(1)}"],
        (("bob", "wrong"), ("bob", "bob-pw")),
        taps=2,
    )
    theirs, ours = run_both(scenario)
    assert ours.client == theirs.client
    assert b"a0 NO" in ours.client and b"a1 OK" in ours.client
    assert sorted(ours.backend) == sorted(theirs.backend)
    assert len(ours.backend) == 2  # one connection to each tap
    assert _any_tap(ours.auth) == _any_tap(theirs.auth)
    assert set(re.findall(r"<tap\d>", " ".join(ours.auth))) == {"<tap0>", "<tap1>"}


def _any_tap(lines: tuple[str, ...]) -> list[str]:
    return [re.sub(r"<tap\d>", "<tap>", line) for line in lines]


# --------------------------------------------------------------------------- checksum


CHECKSUM_ARGS = {
    "plain": ["-P", "IMAP4", "-M", "", "-s", f"{LOOPBACK}:143"],
    "username-options": [
        "-P",
        "POP3",
        "-M",
        "",
        "-s",
        f"{LOOPBACK}:1,127.0.0.2:2",
        "--strip_domain",
        "remote_login",
        "--add_domain",
        "servername_lookup,remote_login,2",
        "--explicit_domain",
        "example.org",
        "--lower_case",
        "all",
        "--domain_delimiter",
        "%%",
        "--query_key",
        r"\u,\d",
        "-c",
        "-U",
        "-n",
        "-p",
        "144",
    ],
}


@pytest.mark.parametrize("name", list(CHECKSUM_ARGS))
def test_same_greeting_checksum(
    run_perdition: RunProxy, run_perditionpy: RunProxy, name: str
) -> None:
    port = free_port()
    args = [*CHECKSUM_ARGS[name], "-b", LOOPBACK, "-l", str(port)]
    greetings = []
    for run in (run_perdition, run_perditionpy):  # one after the other: same port
        proxy = run(args, port=port)
        with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
            greetings.append(read_greeting(sock, time.monotonic() + 10))
        proxy.stop()
    theirs, ours = greetings
    assert ours == theirs
