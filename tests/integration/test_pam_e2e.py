"""``-a`` (local authentication through PAM) end to end: perditionpy as a process under
pam_wrapper, in front of the private Dovecot with a recording tap between them.

pam_wrapper (``LD_PRELOAD=libpam_wrapper.so PAM_WRAPPER=1``) makes the proxy's libpam
read its ``perdition`` service from a directory the test wrote: pam_matrix with a
password file of the test's own, or -- as root -- our etc/pam.d/perdition over the
system's real pam_unix with a local user the test creates and removes.

perdition's order is checked on the wire: the server is chosen first, then PAM
decides, and a refusal (``NO Authentication failure`` / ``-ERR Authentication
failure, mate`` after the 3-second delay) never reaches the back-end and leaves the
client free to try again.  Clients that expect a refusal run concurrently.
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import poplib
import re
import secrets
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require
from tests.support.dovecot import Dovecot, MailUser, make_message
from tests.support.pamwrap import (
    PamWrapper,
    matrix_service,
    pam_matrix_module,
    pam_wrapper_library,
    stack_service,
)
from tests.support.ports import LOOPBACK
from tests.support.procs import REPO_ROOT, Proc
from tests.support.tap import Tap

DEADLINE = 15.0
# PAM's passwords are Dovecot's, so an accepted login also works on the back-end;
# carol is known to PAM without her domain; dave's PAM account is for another service.
PAM_USERS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw", "dave": "dave-pw"}
FAILURE_LOG = (r'Auth: 127\.0\.0\.1:\d+->127\.0\.0\.1:{port} client-secure=plaintext '
               r'authorisation_id=NONE authentication_id="{user}" '
               r'server="127\.0\.0\.1:{server_port}" protocol={protocol} '
               r'server-secure=plaintext status="failed: local authentication failure"')


@pytest.fixture(scope="module")
def wrapped(tmp_path_factory: pytest.TempPathFactory) -> PamWrapper:
    require(pam_wrapper_library() is not None and pam_matrix_module() is not None,
            "libpam-wrapper (libpam_wrapper.so, pam_matrix.so)")
    return matrix_service(tmp_path_factory.mktemp("pam") / "services", PAM_USERS,
                          services={"dave": "imap"})


@pytest.fixture
def tap(dovecot: Dovecot, make_tap: Callable[[int], Tap]) -> Callable[[str], Tap]:
    def make(protocol: str) -> Tap:
        return make_tap(dovecot.imap_port if protocol == "IMAP4" else dovecot.pop3_port)
    return make


def proxy_for(run_perditionpy: Callable[..., Proc], wrapper: PamWrapper, protocol: str,
              backend: Tap, *extra: str) -> Proc:
    args = ["-a", "-M", "", "-P", protocol, "-s", f"{LOOPBACK}:{backend.port}", *extra]
    return run_perditionpy(args, env=wrapper.env())


class Client:
    """A raw client: one line at a time."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((LOOPBACK, port), timeout=DEADLINE)
        self.file = self.sock.makefile("rb")
        self.greeting = self.file.readline()

    def ask(self, line: bytes) -> bytes:
        self.sock.sendall(line + b"\r\n")
        return self.file.readline()

    def imap(self, tag: bytes, command: bytes) -> bytes:
        self.sock.sendall(tag + b" " + command + b"\r\n")
        while not (reply := self.file.readline()).startswith(tag + b" "):
            if not reply:
                raise ConnectionError("closed")
        return reply

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@contextlib.contextmanager
def client(port: int) -> Iterator[Client]:
    conn = Client(port)
    try:
        yield conn
    finally:
        conn.close()


def concurrently(*calls: Callable[[], Any]) -> list[Any]:
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(call) for call in calls]
        return [future.result(timeout=60) for future in futures]


def wait_for_count(proxy: Proc, text: str, count: int) -> None:
    """Wait until ``text`` is in the log ``count`` times (the reply goes out before the
    log lines are written), then check that it is not there more often."""
    proxy.wait_for_log(rf"(?s)(?:{re.escape(text)}.*?){{{count}}}")
    assert proxy.log_text().count(text) == count


# --------------------------------------------------------------------------- IMAP4


def test_imap_right_password_is_proxied(run_perditionpy: Callable[..., Proc],
                                        wrapped: PamWrapper,
                                        tap: Callable[[str], Tap]) -> None:
    backend = tap("IMAP4")
    proxy = proxy_for(run_perditionpy, wrapped, "IMAP4", backend)
    imap = imaplib.IMAP4(LOOPBACK, proxy.port, timeout=DEADLINE)
    try:
        assert imap.login("alice", "alice-pw")[0] == "OK"
        typ, data = imap.select("INBOX", readonly=True)
        assert (typ, data) == ("OK", [b"3"])
    finally:
        imap.logout()
    backend.wait_for_connections(1)
    assert b"LOGIN {5}\r\nalice {8}\r\nalice-pw\r\n" in backend.connections[0].to_server
    proxy.wait_for_log(r'authentication_id="alice" .*status="ok"')


def test_imap_refusals_never_reach_the_backend_and_allow_a_retry(
        run_perditionpy: Callable[..., Proc], wrapped: PamWrapper,
        tap: Callable[[str], Tap]) -> None:
    backend = tap("IMAP4")
    proxy = proxy_for(run_perditionpy, wrapped, "IMAP4", backend)

    def wrong_then_right() -> tuple[bytes, bytes, bytes]:
        with client(proxy.port) as conn:
            refused = conn.imap(b"a1", b"LOGIN alice bob-pw")
            capability = conn.imap(b"a2", b"CAPABILITY")  # still in pre-auth
            return refused, capability, conn.imap(b"a3", b"LOGIN alice alice-pw")

    def unknown() -> bytes:
        with client(proxy.port) as conn:
            return conn.imap(b"t1", b"LOGIN mallory alice-pw")

    def account_refused() -> bytes:  # right password, pam_acct_mgmt says no
        with client(proxy.port) as conn:
            return conn.imap(b"t1", b"LOGIN dave dave-pw")

    (refused, capability, accepted), stranger, dave = concurrently(
        wrong_then_right, unknown, account_refused)
    assert refused == b"a1 NO Authentication failure\r\n"
    assert capability.startswith(b"a2 OK")
    assert accepted.startswith(b"a3 OK")
    assert stranger == dave == b"t1 NO Authentication failure\r\n"
    backend.wait_for_connections(1)
    assert len(backend.connections) == 1  # only the accepted login
    assert b"bob-pw" not in backend.connections[0].to_server
    wait_for_count(proxy, "Local authentication failure for client: Allowing retry.", 3)
    for user in ("alice", "mallory", "dave"):
        proxy.wait_for_log(FAILURE_LOG.format(port=proxy.port, user=user,
                                              server_port=backend.port, protocol="IMAP4"))


def test_the_name_given_to_pam_is_the_local_authentication_one(
        run_perditionpy: Callable[..., Proc], wrapped: PamWrapper,
        tap: Callable[[str], Tap]) -> None:
    """``-D local_authentication``: PAM knows "carol", Dovecot "carol@example.org"."""
    backend = tap("IMAP4")
    stripping = proxy_for(run_perditionpy, wrapped, "IMAP4", backend,
                          "--strip_domain", "local_authentication")
    plain = proxy_for(run_perditionpy, wrapped, "IMAP4", backend)

    def login(proxy: Proc) -> bytes:
        with client(proxy.port) as conn:
            return conn.imap(b"c1", b'LOGIN "carol@example.org" carol-pw')

    ok, refused = concurrently(lambda: login(stripping), lambda: login(plain))
    assert ok.startswith(b"c1 OK")
    assert refused == b"c1 NO Authentication failure\r\n"
    assert len(backend.connections) == 1
    backend.connections[0].wait_for_server_bytes(b"LOGIN {17}\r\ncarol@example.org {8}\r\ncarol-pw\r\n")


def test_thirty_two_concurrent_logins_are_each_decided_right(
        run_perditionpy: Callable[..., Proc], wrapped: PamWrapper,
        tap: Callable[[str], Tap]) -> None:
    backend = tap("IMAP4")
    proxy = proxy_for(run_perditionpy, wrapped, "IMAP4", backend)
    plan = [(("alice", "bob")[i % 2], i % 3 != 0) for i in range(32)]

    def login(user: str, right: bool) -> bool:
        password = PAM_USERS[user] if right else PAM_USERS["bob" if user == "alice" else "alice"]
        with client(proxy.port) as conn:
            reply = conn.imap(b"x1", f"LOGIN {user} {password}".encode())
            if reply.startswith(b"x1 OK"):
                conn.imap(b"x2", b"LOGOUT")
                return True
            assert reply == b"x1 NO Authentication failure\r\n"
            return False

    outcomes = concurrently(*(lambda u=u, r=r: login(u, r) for u, r in plan))
    assert outcomes == [right for _, right in plan]
    accepted = sum(right for _, right in plan)
    backend.wait_for_connections(accepted)
    assert len(backend.connections) == accepted
    wait_for_count(proxy, 'status="failed: local authentication failure"', 32 - accepted)


# --------------------------------------------------------------------------- POP3


def test_pop3_refusal_then_proxied_login(run_perditionpy: Callable[..., Proc],
                                         wrapped: PamWrapper,
                                         tap: Callable[[str], Tap]) -> None:
    backend = tap("POP3")
    proxy = proxy_for(run_perditionpy, wrapped, "POP3", backend)
    with client(proxy.port) as conn:
        assert conn.ask(b"USER bob").startswith(b"+OK")
        assert conn.ask(b"PASS alice-pw") == b"-ERR Authentication failure, mate\r\n"
        assert backend.connections == []
        assert conn.ask(b"USER bob").startswith(b"+OK")
        assert conn.ask(b"PASS bob-pw").startswith(b"+OK")
        assert conn.ask(b"STAT") .startswith(b"+OK 1 ")
        assert conn.ask(b"QUIT").startswith(b"+OK")
    assert len(backend.connections) == 1
    proxy.wait_for_log(FAILURE_LOG.format(port=proxy.port, user="bob", protocol="POP3",
                                          server_port=backend.port))


def test_pop3_with_poplib(run_perditionpy: Callable[..., Proc], wrapped: PamWrapper,
                          tap: Callable[[str], Tap]) -> None:
    proxy = proxy_for(run_perditionpy, wrapped, "POP3", tap("POP3"))
    pop = poplib.POP3(LOOPBACK, proxy.port, timeout=DEADLINE)
    try:
        pop.user("alice")
        pop.pass_("alice-pw")
        assert pop.stat()[0] == 3
    finally:
        pop.quit()


# --------------------------------------------------------------------------- PAM unusable


def test_without_a_service_file_the_connection_is_refused(
        run_perditionpy: Callable[..., Proc], tmp_path: Path,
        tap: Callable[[str], Tap]) -> None:
    """No ``perdition`` and no ``other`` service: pam_start fails, which is fatal for
    the connection (perdition exits the child), and the back-end is never contacted."""
    require(pam_wrapper_library() is not None, "libpam-wrapper")
    empty = tmp_path / "no-services"
    empty.mkdir()
    backend = tap("IMAP4")
    proxy = proxy_for(run_perditionpy, PamWrapper(empty), "IMAP4", backend)
    with client(proxy.port) as conn:
        conn.sock.sendall(b"a1 LOGIN alice alice-pw\r\n")
        assert conn.file.readline() == b""  # closed, no reply
    assert backend.connections == []
    proxy.wait_for_log(r"Fatal error authenticating to client locally 127\.0\.0\.1:\d+->"
                       r"127\.0\.0\.1:\d+: pam_start\('perdition'\): .*\. Exiting child\.")


def test_a_broken_service_refuses_everyone(run_perditionpy: Callable[..., Proc],
                                           tmp_path: Path,
                                           tap: Callable[[str], Tap]) -> None:
    require(pam_wrapper_library() is not None, "libpam-wrapper")
    services = tmp_path / "broken"
    services.mkdir()
    (services / "perdition").write_text("auth required pam_no_such_module.so\n"
                                        "account required pam_permit.so\n")
    backend = tap("IMAP4")
    proxy = proxy_for(run_perditionpy, PamWrapper(services), "IMAP4", backend)
    with client(proxy.port) as conn:
        assert conn.imap(b"a1", b"LOGIN alice alice-pw") == b"a1 NO Authentication failure\r\n"
    assert backend.connections == []
    proxy.wait_for_log(r"PAM service perdition is not usable \(check /etc/pam\.d/perdition\)")


def test_without_libpam_the_connection_is_refused(run_perditionpy: Callable[..., Proc],
                                                 tmp_path: Path,
                                                 tap: Callable[[str], Tap]) -> None:
    """A PAM that cannot be asked ends the connection, as perdition's fatal path does."""
    backend = tap("IMAP4")
    shim = tmp_path / "shim"
    shim.mkdir()
    # A sitecustomize that makes perditionpy.pam look for a libpam that does not exist.
    (shim / "sitecustomize.py").write_text(
        "import perditionpy._pam_ffi as raw\nraw.LIBPAM = 'libpam-missing.so.0'\n"
        "import perditionpy.pam as pam\n"
        "pam.authenticate.__kwdefaults__['soname'] = raw.LIBPAM\n")
    env = {"PYTHONPATH": os.pathsep.join([str(shim), str(REPO_ROOT)])}
    proxy = run_perditionpy(["-a", "-M", "", "-P", "IMAP4", "-s",
                             f"{LOOPBACK}:{backend.port}"], env=env)
    with client(proxy.port) as conn:
        conn.sock.sendall(b"a1 LOGIN alice alice-pw\r\n")
        assert conn.file.readline() == b""  # closed, no reply
    assert backend.connections == []
    proxy.wait_for_log(r"Fatal error authenticating to client locally .*"
                       r"cannot load libpam-missing\.so\.0")


# --------------------------------------------------------------------------- the real stack


def _can_manage_users() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create a local user and read /etc/shadow"
    for tool in ("useradd", "chpasswd", "userdel", "chage"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not os.access("/etc/passwd", os.W_OK) or not os.access("/etc/shadow", os.W_OK):
        return "/etc/passwd or /etc/shadow is not writable"
    if any(os.path.exists(p) for p in ("/etc/nologin", "/run/nologin", "/var/run/nologin")):
        return "a nologin file exists: pam_nologin would refuse every user"
    for name in ("common-auth", "common-account"):
        if not os.path.exists(f"/etc/pam.d/{name}"):
            return f"/etc/pam.d/{name} is missing"
    return None


@pytest.fixture
def local_user() -> Iterator[tuple[str, str]]:
    reason = _can_manage_users()
    if reason:
        pytest.skip(reason)
    name = f"ppy-pam-{secrets.token_hex(3)}"
    password = f"pw-{secrets.token_hex(6)}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                   check=True, capture_output=True)
    try:
        subprocess.run(["chpasswd"], input=f"{name}:{password}\n".encode(), check=True,
                       capture_output=True)
        yield name, password
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


def test_real_pam_unix_with_our_service_file(run_perditionpy: Callable[..., Proc],
                                             make_dovecot: Callable[..., Dovecot],
                                             local_user: tuple[str, str],
                                             tmp_path: Path) -> None:
    require(pam_wrapper_library() is not None, "libpam-wrapper")
    name, password = local_user
    dovecot = make_dovecot(users=(MailUser(name, password.encode(),
                                           (make_message(1, "local", b"Hi.\n"),)),))
    ours = (REPO_ROOT / "etc" / "pam.d" / "perdition").read_text()
    stack = stack_service(tmp_path / "services", ours)
    proxy = run_perditionpy(["-a", "-M", "", "-P", "IMAP4", "-s",
                             f"{LOOPBACK}:{dovecot.imap_port}"], env=stack.env())

    def login(secret: str) -> bytes:
        with client(proxy.port) as conn:
            return conn.imap(b"r1", f'LOGIN "{name}" "{secret}"'.encode())

    accepted, refused = concurrently(lambda: login(password), lambda: login("not-" + password))
    assert accepted.startswith(b"r1 OK")
    assert refused == b"r1 NO Authentication failure\r\n"
    # An expired account: the password is right, pam_unix's account check says no.
    subprocess.run(["chage", "-E", "0", name], check=True, capture_output=True)
    assert login(password) == b"r1 NO Authentication failure\r\n"
    assert [login_.ok for login_ in dovecot.logins()] == [True]
