"""The NIS map: option parsing, the libnsl wrapper's pointer and error handling, and
lookups against a real ypserv.

The real-server tests run rpcbind and ypserv (Debian packages ``rpcbind`` and
``ypserv``) inside private namespaces (``unshare``: own UTS for the NIS domain, own
network for rpcbind's port 111, own mounts for /var/yp and /run, own PIDs so that
nothing outlives the test). Nothing on the machine is changed. libnsl finds the
server through a ypbind-style binding file, so no ypbind is needed. perdition's own
``libperditiondb_nis.so.0`` is asked the same questions there, for comparison.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from perditionpy.endpoints import UserServerPort
from perditionpy.errors import MapError
from perditionpy.maps import _nis_ffi, nis, open_map
from perditionpy.maps.base import LookupContext
from perditionpy.maps.nis import DEFAULT_MAP, DEFAULT_TIMEOUT, NisMap

CONTEXT = LookupContext()
PERDITION_NIS_LIBRARY = "/usr/lib/x86_64-linux-gnu/libperditiondb_nis.so.0"
REPO_ROOT = Path(__file__).resolve().parents[2]
NAMESPACE_TIMEOUT = 60.0


# --------------------------------------------------------------------------- fakes


class FakeNsl:
    """Stands in for libnsl: answers from ``entries``, records calls and concurrency."""

    def __init__(self, ffi: Any, entries: dict[bytes, bytes], code: int = 0) -> None:
        self.ffi = ffi
        self.entries = entries
        self.code = code
        self.calls: list[tuple[bytes, bytes, bytes, int]] = []
        self.allocated: list[Any] = []
        self.active = 0
        self.most_active = 0
        self.gate = threading.Lock()
        self.real = _nis_ffi.load()
        # Set: yp_match blocks (a NIS server that never answers) until ``release``.
        self.hang = threading.Event()
        self.entered = threading.Event()
        self.release = threading.Event()

    def yp_get_default_domain(self, out: Any) -> int:
        domain = self.ffi.new("char[]", b"fake.example")
        self.allocated.append(domain)
        out[0] = domain
        return 0

    def yp_match(
        self, domain: bytes, map_name: bytes, key: bytes, length: int, out: Any, out_length: Any
    ) -> int:
        with self.gate:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        try:
            self.calls.append((domain, map_name, key, length))
            self.entered.set()
            if self.hang.is_set():
                self.release.wait(timeout=30)
            if self.code:
                return self.code
            if key not in self.entries:
                return _nis_ffi.YPERR_KEY
            value = self.ffi.new("char[]", self.entries[key])
            self.allocated.append(value)
            out[0], out_length[0] = value, len(self.entries[key])
            return 0
        finally:
            with self.gate:
                self.active -= 1

    def yperr_string(self, code: int) -> Any:
        return self.real.nsl.yperr_string(code)


class FakeLibc:
    def __init__(self) -> None:
        self.freed: list[Any] = []

    def free(self, pointer: Any) -> None:
        self.freed.append(pointer)


def fake_map(
    entries: dict[bytes, bytes],
    options: str = "",
    code: int = 0,
    domain: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> tuple[NisMap, FakeNsl, FakeLibc]:
    real = _nis_ffi.load()
    nsl, libc = FakeNsl(real.ffi, entries, code), FakeLibc()
    binding = _nis_ffi.NisBinding(ffi=real.ffi, nsl=nsl, libc=libc)
    return NisMap(options, domain=domain, binding=binding, timeout=timeout), nsl, libc


# --------------------------------------------------------------------------- options


def test_default_map_name_is_perditions() -> None:
    nis, nsl, _ = fake_map({b"alice": b"imap.example"})
    assert nis.map_name == DEFAULT_MAP == "user_mail_server"
    assert nis.get("alice", CONTEXT) == UserServerPort(None, "imap.example", None)
    assert nsl.calls == [(b"fake.example", b"user_mail_server", b"alice", 5)]


def test_option_string_is_the_map_name() -> None:
    nis, nsl, _ = fake_map({b"alice": b"h"}, options="mailhosts.byname")
    nis.get("alice", CONTEXT)
    assert nsl.calls[0][1] == b"mailhosts.byname"


def test_explicit_domain_replaces_the_default_domain() -> None:
    nis, nsl, _ = fake_map({b"alice": b"h"}, domain="corp.example")
    nis.get("alice", CONTEXT)
    assert nsl.calls[0][0] == b"corp.example"


@pytest.mark.parametrize("library", ["nis", "libperditiondb_nis.so.0", PERDITION_NIS_LIBRARY])
def test_registry_opens_the_nis_map(library: str) -> None:
    opened = open_map(library, "my_map")
    assert isinstance(opened, NisMap)
    assert opened.map_name == "my_map"
    opened.close()


# --------------------------------------------------------------------------- the wrapper


def test_values_are_copied_and_freed() -> None:
    nis, nsl, libc = fake_map({b"alice": b"bob@imap.example:143", b"carol": b"c"})
    assert nis.get("alice", CONTEXT) == UserServerPort("bob", "imap.example", "143")
    assert nis.get("carol", CONTEXT) == UserServerPort(None, "c", None)
    assert libc.freed == nsl.allocated[1::2]  # the values, not the static domain strings


def test_missing_key_is_none_and_frees_nothing() -> None:
    nis, _, libc = fake_map({})
    assert nis.get("nobody", CONTEXT) is None
    assert libc.freed == []


def test_c_string_semantics() -> None:
    nis, nsl, _ = fake_map({b"alice": b"imap.example\0junk", b"empty": b"\0x", b"blank": b""})
    assert nis.get("alice\0tail", CONTEXT) == UserServerPort(None, "imap.example", None)
    assert nsl.calls[0][2:] == (b"alice", 5)
    assert nis.get("empty", CONTEXT) is None
    assert nis.get("blank", CONTEXT) is None


def test_empty_key_is_not_found_without_asking_nis() -> None:
    nis, nsl, _ = fake_map({b"": b"h"})
    assert nis.get("", CONTEXT) is None
    assert nsl.calls == []


def test_domain_delimiter_from_context() -> None:
    nis, _, _ = fake_map({b"alice": b"bob%imap.example"})
    assert nis.get("alice", LookupContext(domain_delimiter="%")) == UserServerPort(
        "bob", "imap.example", None
    )


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (_nis_ffi.YPERR_MAP, "No such map"),
        (_nis_ffi.YPERR_DOMAIN, "Can't bind"),
        (6, "Internal NIS error"),
    ],
)
def test_other_errors_are_map_errors(
    code: int, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    nis, _, _ = fake_map({}, code=code)
    with pytest.raises(
        MapError,
        match=rf"^nis: cannot look up in NIS map user_mail_server: "
        rf"yp_match: {reason}",
    ):
        nis.get("alice", CONTEXT)
    assert "falling back to --outgoing_server" in caplog.text


def test_calls_are_serialised() -> None:
    nis, nsl, _ = fake_map({b"k%d" % i: b"h%d" % i for i in range(50)})
    barrier = threading.Barrier(8)

    def lookups() -> None:
        barrier.wait()
        for i in range(200):
            assert nis.get(f"k{i % 50}", CONTEXT) == UserServerPort(None, f"h{i % 50}", None)

    threads = [threading.Thread(target=lookups) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(nsl.calls) == 1600
    assert nsl.most_active == 1


def test_closed_map_refuses_lookups() -> None:
    nis, nsl, _ = fake_map({b"alice": b"h"})
    nis.close()
    nis.close()
    with pytest.raises(MapError, match="closed"):
        nis.get("alice", CONTEXT)
    assert nsl.calls == []


# --------------------------------------------------------------------------- the bound


def test_default_timeout_is_five_seconds_and_must_be_positive() -> None:
    assert fake_map({})[0].timeout == DEFAULT_TIMEOUT == 5.0
    for bad in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="timeout"):
            fake_map({}, timeout=bad)


def test_hung_lookup_fails_within_the_bound_then_fails_fast_until_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="perditionpy.maps.nis")
    hung, nsl, _ = fake_map({b"alice": b"imap.example"}, timeout=0.2)
    nsl.hang.set()
    try:
        started = time.monotonic()
        with pytest.raises(MapError, match=r"no answer from NIS within 0\.2s"):
            hung.get("alice", CONTEXT)
        assert 0.2 <= time.monotonic() - started < 2
        assert "no answer from NIS within 0.2s" in caplog.text
        assert "falling back to --outgoing_server" in caplog.text
        # Another map shares libnsl, so it must not queue behind the stuck call.
        other, other_nsl, _ = fake_map({b"bob": b"h"}, timeout=30)
        started = time.monotonic()
        with pytest.raises(MapError, match="an earlier lookup is still waiting for NIS"):
            other.get("bob", CONTEXT)
        assert time.monotonic() - started < 1
        assert other_nsl.calls == []
    finally:
        nsl.release.set()
    stuck = nis._WORKER._stuck
    assert stuck is not None
    assert stuck.result(timeout=10) == b"imap.example"  # it finished in the background
    assert hung.get("alice", CONTEXT) == UserServerPort(None, "imap.example", None)
    assert "NIS map user_mail_server answers again" in caplog.text


def test_a_caller_queued_behind_a_slow_lookup_gives_up_without_running() -> None:
    slow, slow_nsl, _ = fake_map({b"alice": b"a"}, timeout=30)
    quick, quick_nsl, _ = fake_map({b"bob": b"b"}, timeout=0.1)
    slow_nsl.hang.set()
    answers: list[UserServerPort | None] = []
    caller = threading.Thread(target=lambda: answers.append(slow.get("alice", CONTEXT)))
    caller.start()
    try:
        assert slow_nsl.entered.wait(timeout=10)
        with pytest.raises(MapError, match=r"within 0\.1s"):
            quick.get("bob", CONTEXT)
    finally:
        slow_nsl.release.set()
        caller.join(timeout=10)
    assert answers == [UserServerPort(None, "a", None)]
    assert quick_nsl.calls == []  # cancelled while queued: never reached libnsl
    assert quick.get("bob", CONTEXT) == UserServerPort(None, "b", None)  # nothing left stuck


def test_a_forked_child_gets_its_own_worker() -> None:
    parent_map, _, _ = fake_map({b"alice": b"h"})
    assert parent_map.get("alice", CONTEXT) is not None  # the worker runs in this process
    pid = os.fork()
    if pid == 0:  # the child: the parent's worker thread did not survive the fork
        try:
            child_map, _, _ = fake_map({b"alice": b"h"}, timeout=5)
            found = child_map.get("alice", CONTEXT)
            os._exit(0 if found == UserServerPort(None, "h", None) else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


# --------------------------------------------------------------------------- real libnsl, no server


def run_python(code: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    """Run ``code`` with our interpreter, bounded: a hung libnsl call fails the test."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_real_libnsl_without_a_server_is_a_quick_map_error() -> None:
    result = run_python("""
        from perditionpy.errors import MapError
        from perditionpy.maps.nis import NisMap
        from perditionpy.maps.base import LookupContext
        try:
            NisMap("", domain="perditionpy-nowhere.invalid").get("alice", LookupContext())
        except MapError as exc:
            print(exc)
    """)
    assert result.stdout.startswith(
        "nis: cannot look up in NIS map user_mail_server: yp_match: "
    ), result.stderr


def unshare_available() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--uts", "--net", "--mount", "--pid", "--fork", "true"],
        capture_output=True,
        timeout=10,
        check=False,
    )
    return probe.returncode == 0


def in_private_namespaces(script: str, timeout: float = NAMESPACE_TIMEOUT) -> str:
    """Run the Python ``script`` as root in fresh UTS/net/mount/PID namespaces."""
    command = [
        "unshare",
        "--uts",
        "--net",
        "--mount",
        "--pid",
        "--fork",
        "--kill-child",
        "--mount-proc",
        sys.executable,
        "-c",
        textwrap.dedent(script),
    ]
    result = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_real_libnsl_without_a_domain_is_a_map_error() -> None:
    if not unshare_available():
        pytest.skip("needs root and unshare for a private NIS domain")
    output = in_private_namespaces("""
        import subprocess
        subprocess.run(["domainname", "(none)"], check=True)
        from perditionpy.errors import MapError
        from perditionpy.maps.nis import NisMap
        from perditionpy.maps.base import LookupContext
        try:
            NisMap("").get("alice", LookupContext())
        except MapError as exc:
            print(exc)
    """)
    assert output == (
        "nis: cannot look up in NIS map user_mail_server: no NIS domain "
        "(set one with domainname): yp_get_default_domain: "
        "Local domain name not set\n"
    )


# --------------------------------------------------------------------------- real ypserv

# Runs inside the namespaces: private /var/yp and /run, rpcbind and ypserv on the
# private loopback, a v2 binding file for libnsl, then the same lookups through our
# map and through perdition's library; prints one JSON object.
SERVER_SCRIPT = r"""
import ctypes, json, os, struct, subprocess, sys, tempfile, time

DOMAIN = "perditionpy.test"
POPMAP = b"alice\t127.0.0.1:1143\nbob\tother@imap.example\ncarol\t[2001:db8::1]:110\n"
PROBE_LIMIT = 20.0


def wait_for(what, check):
    deadline = time.monotonic() + PROBE_LIMIT
    while not check():
        if time.monotonic() > deadline:
            sys.exit(f"{what} did not start")
        time.sleep(0.05)


def registered(program):
    out = subprocess.run(["rpcinfo", "-p", "127.0.0.1"], capture_output=True, text=True)
    return program in out.stdout


def setup(work):
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["domainname", DOMAIN], check=True)
    for target in ("/var/yp", "/run"):
        source = tempfile.mkdtemp(dir=work)
        subprocess.run(["mount", "--bind", source, target], check=True)
    os.makedirs(f"/var/yp/{DOMAIN}")
    os.makedirs("/var/yp/binding")
    os.makedirs("/run/rpcbind")
    subprocess.run(["/usr/lib/yp/makedbm", "-", f"/var/yp/{DOMAIN}/user_mail_server"],
                   input=POPMAP, check=True)
    rpcbind = subprocess.Popen(["rpcbind", "-f"])
    wait_for("rpcbind", lambda: registered("portmapper"))
    ypserv = subprocess.Popen(["ypserv", "-d", "/var/yp"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    wait_for("ypserv", lambda: registered("ypserv"))
    # ypbind's v2 binding file: a 16-bit port, then ypbind_resp (YPBIND_SUCC_VAL,
    # address, port); libnsl reads it instead of asking ypbind.
    with open(f"/var/yp/binding/{DOMAIN}.2", "wb") as binding:
        binding.write(b"\0\0" + struct.pack("=i4s2s2x", 1, bytes([127, 0, 0, 1]), b"\0\0"))
    return rpcbind, ypserv


def ours(map_name, key):
    from perditionpy.errors import MapError
    from perditionpy.maps.base import LookupContext
    from perditionpy.maps.nis import NisMap
    try:
        found = NisMap(map_name).get(key, LookupContext())
    except MapError as exc:
        return {"error": str(exc)}
    return None if found is None else [found.user, found.server, found.port]


def perditions(map_name, key):
    lib = ctypes.CDLL(sys.argv[2])
    value, length = ctypes.c_char_p(), ctypes.c_size_t(0)
    status = lib.dbserver_get(key.encode(), map_name.encode() if map_name else None,
                              ctypes.byref(value), ctypes.byref(length))
    return [status, value.value.decode() if status == 0 else None]


def stalled(ypserv):
    # One map, bound 1 s, while ypserv is stopped (SIGSTOP: it hangs, not refuses).
    import io, logging, signal
    from perditionpy.errors import MapError
    from perditionpy.maps.base import LookupContext
    from perditionpy.maps.nis import NisMap
    log = io.StringIO()
    logger = logging.getLogger("perditionpy.maps.nis")
    logger.addHandler(logging.StreamHandler(log))
    logger.setLevel(logging.INFO)
    nis = NisMap("", timeout=1.0)

    def lookup():
        started = time.monotonic()
        try:
            found = nis.get("alice", LookupContext()).server
        except MapError as exc:
            found = str(exc)
        return [found, time.monotonic() - started]

    result = {"before": lookup()}
    os.kill(ypserv.pid, signal.SIGSTOP)
    result["stopped"] = lookup()
    result["still_stopped"] = lookup()
    os.kill(ypserv.pid, signal.SIGCONT)
    # The stuck call gets its answer once ypserv runs again; until then lookups fail fast.
    wait_for("a lookup after SIGCONT", lambda: lookup()[0] == "127.0.0.1")
    result["resumed"] = lookup()
    result["log"] = log.getvalue()
    return result


def main():
    rpcbind, ypserv = setup(sys.argv[1])
    keys = ["alice", "bob", "carol", "nobody", "Alice"]
    result = {
        "ours": {k: ours("", k) for k in keys},
        "perdition": {k: perditions("", k) for k in keys},
        "no_such_map": ours("no_such_map", "alice"),
        "perdition_no_such_map": perditions("no_such_map", "alice"),
    }
    result["stalled"] = stalled(ypserv)
    ypserv.terminate()
    ypserv.wait()
    started = time.monotonic()
    result["server_down"] = ours("", "alice")
    result["server_down_seconds"] = time.monotonic() - started
    rpcbind.terminate()
    rpcbind.wait()
    print(json.dumps(result))


main()
"""


@pytest.fixture(scope="module")
def real_server(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    missing = [
        tool
        for tool in ("rpcbind", "ypserv", "rpcinfo", "ip", "domainname")
        if shutil.which(tool) is None
    ]
    if missing or not os.path.exists("/usr/lib/yp/makedbm"):
        pytest.skip(f"needs Debian's rpcbind and ypserv (missing: {missing or 'makedbm'})")
    if not unshare_available():
        pytest.skip("needs root and unshare for private namespaces")
    work = tmp_path_factory.mktemp("nis")
    script = (
        f"import sys; sys.argv[1:] = [{str(work)!r}, {PERDITION_NIS_LIBRARY!r}]\n"
        f"sys.path.insert(0, {str(REPO_ROOT)!r})\n" + SERVER_SCRIPT
    )
    output: dict[str, Any] = json.loads(in_private_namespaces(script))
    return output


def test_real_server_lookups(real_server: dict[str, Any]) -> None:
    assert real_server["ours"] == {
        "alice": [None, "127.0.0.1", "1143"],
        "bob": ["other", "imap.example", None],
        "carol": [None, "2001:db8::1", "110"],
        "nobody": None,
        "Alice": None,
    }


def test_real_server_agrees_with_perditions_library(real_server: dict[str, Any]) -> None:
    perdition = real_server["perdition"]
    assert perdition["alice"] == [0, "127.0.0.1:1143"]
    assert perdition["bob"] == [0, "other@imap.example"]
    assert perdition["nobody"][0] == -2
    for key, answer in real_server["ours"].items():
        assert (answer is None) == (perdition[key][0] == -2), key


def test_real_server_missing_map_is_an_error(real_server: dict[str, Any]) -> None:
    assert real_server["no_such_map"] == {
        "error": "nis: cannot look up in NIS map no_such_map: yp_match: "
        "No such map in server's domain"
    }
    # perdition's library calls it "not found" (-2); see docs/maps-cdb-nis.md.
    assert real_server["perdition_no_such_map"] == [-2, None]


def test_real_server_down_is_a_prompt_map_error(real_server: dict[str, Any]) -> None:
    assert "error" in real_server["server_down"]
    assert real_server["server_down"]["error"].startswith(
        "nis: cannot look up in NIS map user_mail_server: yp_match: "
    )
    assert real_server["server_down_seconds"] < 30


def test_real_server_that_hangs_fails_within_the_bound_and_recovers(
    real_server: dict[str, Any],
) -> None:
    stalled = real_server["stalled"]
    assert stalled["before"][0] == "127.0.0.1"
    message, seconds = stalled["stopped"]
    assert message == (
        "nis: cannot look up in NIS map user_mail_server: no answer from NIS within 1s "
        "(libnsl keeps waiting in the background)"
    )
    assert 1.0 <= seconds < 3.0
    message, seconds = stalled["still_stopped"]
    assert message.endswith(": an earlier lookup is still waiting for NIS")
    assert seconds < 0.5
    assert stalled["resumed"][0] == "127.0.0.1"
    assert stalled["log"].splitlines() == [
        "nis: cannot look up in NIS map user_mail_server: no answer from NIS within 1s "
        "(libnsl keeps waiting in the background); lookups fail (falling back to "
        "--outgoing_server) until NIS answers",
        "NIS map user_mail_server answers again",
    ]
