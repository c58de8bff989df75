"""A private Dovecot for tests and the demo: users, mailboxes, config, life cycle, auth log.

``Dovecot`` owns one throw-away Dovecot instance: its own base_dir, state_dir, config
file and log, listening on free loopback ports for IMAP, POP3 and ManageSieve (and
IMAPS/POP3S when TLS files are given). It never touches the system's Dovecot.

Works as root (the CI case: login, internal and mail processes run as the
unprivileged ``dovenull``, ``dovecot`` and ``nobody`` accounts the Debian packages and
base system provide) and as an ordinary user (every process runs as that user).

Authentication uses a passwd-file with plain passwords; ``auth_debug`` makes the auth
process log one ``client passdb out: OK|FAIL`` line per attempt, which ``logins()``
turns into ``(username, ok)`` pairs.
"""

from __future__ import annotations

import contextlib
import functools
import grp
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from tests.support.ports import LOOPBACK, free_ports, wait_for_greeting

__all__ = [
    "BIG_MESSAGE_SIZE",
    "DEFAULT_USERS",
    "Dovecot",
    "DovecotError",
    "Login",
    "MailUser",
    "TlsFiles",
    "big_message",
    "dovecot_binary",
    "make_message",
]

BIG_MESSAGE_SIZE = 10 * 1024 * 1024
_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 15.0
_START_ATTEMPTS = 3
# Logged once per auth process because the penalty socket is disabled on purpose.
_KNOWN_ERRORS = (re.compile(r"net_connect_unix\(anvil-auth-penalty\) failed"),)
_PASSDB_OUT = re.compile(rb"client passdb out: (OK|FAIL)\t\d+\t([^\n]*)")
_ROOT_IDENTITY = ("dovenull", "dovecot", "nobody", "nogroup")


class DovecotError(RuntimeError):
    """The private Dovecot could not be set up, started or stopped."""


def dovecot_binary() -> str | None:
    """Path of the ``dovecot`` executable, or ``None`` when it is not installed."""
    return shutil.which("dovecot") or next(
        (p for p in ("/usr/sbin/dovecot",) if os.access(p, os.X_OK)), None
    )


# --------------------------------------------------------------------------- messages


def make_message(number: int, subject: str, body: bytes) -> bytes:
    """A small RFC 5322 message with CRLF line ends and deterministic headers."""
    head = (
        f"From: Sender {number} <sender{number}@example.org>\r\n"
        f"To: rcpt@example.org\r\n"
        f"Subject: {subject}\r\n"
        f"Date: Mon, 1 Jan 2024 00:00:{number % 60:02d} +0000\r\n"
        f"Message-ID: <perditionpy-{number}@example.org>\r\n"
        f"MIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n"
        f"\r\n"
    ).encode("ascii")
    return head + body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


@functools.cache
def big_message(size: int = BIG_MESSAGE_SIZE) -> bytes:
    """A deterministic message of exactly ``size`` bytes (CRLF line ends, short lines)."""
    head = make_message(999, "big message", b"")
    lines = []
    total = len(head)
    number = 0
    while total < size:
        line = b"%08d " % number + b"0123456789abcdefghijklmnopqrstuvwxyz" * 2 + b"\r\n"
        lines.append(line)
        total += len(line)
        number += 1
    body = b"".join(lines)[: size - len(head) - 2] + b"\r\n"
    return head + body


# --------------------------------------------------------------------------- users


@dataclass(frozen=True)
class MailUser:
    """One test account: its login name, raw password bytes and INBOX contents."""

    name: str
    password: bytes
    messages: tuple[bytes, ...] = ()

    @property
    def password_text(self) -> str:
        """The password as text, for clients that take ``str`` (it must be UTF-8)."""
        return self.password.decode("utf-8")

    def passwd_line(self, home: Path) -> bytes:
        """This user's line in a Dovecot passwd-file (home directory, no fixed uid)."""
        for what, value in (("name", self.name.encode()), ("password", self.password)):
            if re.search(rb"[:\r\n\x00]", value):
                raise ValueError(f"{what} of {self.name!r} cannot go in a passwd-file")
        return b"%s:{PLAIN}%s::::%s::\n" % (self.name.encode(), self.password, bytes(home))


DEFAULT_USERS: tuple[MailUser, ...] = (
    MailUser(
        "alice",
        b"alice-pw",
        (
            make_message(1, "first", b"Hello Alice.\n"),
            make_message(2, "second", b"Line one.\nLine two.\n"),
            make_message(3, "dots and 8-bit", ".leading dot\n..two dots\ncaf\u00e9\n.\n".encode()),
        ),
    ),
    MailUser("bob", b"bob-pw", (make_message(4, "for bob", b"Hi Bob.\n"),)),
    MailUser("carol@example.org", b"carol-pw", (make_message(5, "domain", b"Hi Carol.\n"),)),
    # Spaces, a double quote, a backslash and UTF-8 (8-bit) bytes.
    MailUser(
        "quirky",
        'with space "dq" back\\slash caf\u00e9'.encode(),
        (make_message(6, "quirky", b"Odd password.\n"),),
    ),
    # 8-bit bytes that are not UTF-8: only raw-socket clients can send this one.
    MailUser("octet", b"\xe9t\xe9 \xff\x80", (make_message(7, "octet", b"Latin-1.\n"),)),
    MailUser("bigmail", b"bigmail-pw", (make_message(8, "small one first", b"x\n"), b"")),
)
"""The standard accounts. ``bigmail``'s second message (``b""`` here) is replaced by
``big_message()`` when the mailbox is written, so the 10 MiB is generated at test time."""


class Login(NamedTuple):
    """One authentication attempt Dovecot's auth process answered."""

    username: str
    ok: bool


@dataclass(frozen=True)
class TlsFiles:
    """A PEM certificate chain and key; giving them turns on IMAPS, POP3S and STARTTLS."""

    cert: Path
    key: Path


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class _Identity:
    login_user: str
    internal_user: str
    internal_group: str
    mail_user: str
    mail_group: str
    chroot_logins: bool


def _identity() -> _Identity:
    if os.geteuid() != 0:
        me = pwd.getpwuid(os.geteuid()).pw_name
        group = grp.getgrgid(os.getegid()).gr_name
        return _Identity(me, me, group, me, group, chroot_logins=False)
    login, internal, mail, mail_group = _ROOT_IDENTITY
    for name in (login, internal, mail):
        try:
            pwd.getpwnam(name)
        except KeyError:
            raise DovecotError(f"user {name!r} missing: install dovecot-core") from None
    internal_group = grp.getgrgid(pwd.getpwnam(internal).pw_gid).gr_name
    return _Identity(login, internal, internal_group, mail, mail_group, chroot_logins=True)


@dataclass(frozen=True)
class _Ports:
    imap: int
    pop3: int
    sieve: int
    imaps: int = 0
    pop3s: int = 0


def _listener(name: str, port: int) -> str:
    address = f"    address = {LOOPBACK}\n" if port else ""
    return f"  inet_listener {name} {{\n{address}    port = {port}\n  }}\n"


def _login_service(name: str, listeners: str, identity: _Identity) -> str:
    chroot = "" if identity.chroot_logins else "  chroot =\n"
    return (
        f"service {name} {{\n{listeners}{chroot}"
        "  service_count = 0\n  process_min_avail = 1\n  process_limit = 8\n"
        "  client_limit = 2000\n}\n"
    )


def _mail_service(name: str) -> str:
    # Reusing a mail process for the next login is safe here (every user has the
    # same mail_uid) and spares a fork per login in concurrency tests and benchmarks.
    return (
        f"service {name} {{\n  process_limit = 1024\n"
        "  service_count = 100\n  process_min_avail = 2\n}\n"
    )


def _services(ports: _Ports, identity: _Identity) -> str:
    imap = _listener("imap", ports.imap) + _listener("imaps", ports.imaps)
    pop3 = _listener("pop3", ports.pop3) + _listener("pop3s", ports.pop3s)
    sieve = _listener("sieve", ports.sieve)
    anvil_chroot = "" if identity.chroot_logins else "  chroot =\n"
    return (
        _login_service("imap-login", imap, identity)
        + _login_service("pop3-login", pop3, identity)
        + _login_service("managesieve-login", sieve, identity)
        + _mail_service("imap")
        + _mail_service("pop3")
        + _mail_service("managesieve")
        + "service auth {\n  client_limit = 20000\n}\n"
        # mode 0: no auth penalty socket, so failed logins from 127.0.0.1 are not
        # slowed down more and more (concurrency and bad-password tests do many).
        + "service anvil {\n  client_limit = 20000\n"
        + anvil_chroot
        + "  unix_listener anvil-auth-penalty {\n    mode = 0\n  }\n}\n"
    )


def _tls_settings(tls: TlsFiles | None) -> str:
    if tls is None:
        return "ssl = no\n"
    return f"ssl = yes\nssl_cert = <{tls.cert}\nssl_key = <{tls.key}\n"


def render_config(
    *,
    shared: Path,
    workdir: Path,
    ports: _Ports,
    identity: _Identity,
    tls: TlsFiles | None,
    extra: str,
) -> str:
    """The complete dovecot.conf text for one private instance.

    ``shared`` holds what unprivileged Dovecot processes open (base_dir ``run/``,
    ``passwd``, ``mail/``); ``workdir`` what only the root-run master and log
    process touch (state, log).
    """
    passwd = shared / "passwd"
    settings = [
        f"base_dir = {shared / 'run'}",
        f"state_dir = {workdir / 'state'}",
        f"instance_name = perditionpy-{shared.name}",
        "protocols = imap pop3 sieve",
        f"listen = {LOOPBACK}",
        f"log_path = {workdir / 'dovecot.log'}",
        "login_greeting = Dovecot ready.",
        "disable_plaintext_auth = no",
        "auth_mechanisms = plain login",
        # auth_debug logs one "client passdb out: OK|FAIL" line per attempt: logins().
        "auth_verbose = yes",
        "auth_debug = yes",
        "auth_failure_delay = 0",
        f"default_login_user = {identity.login_user}",
        f"default_internal_user = {identity.internal_user}",
        f"default_internal_group = {identity.internal_group}",
        f"mail_uid = {identity.mail_user}",
        f"mail_gid = {identity.mail_group}",
        "first_valid_uid = 1",
        "first_valid_gid = 1",
        "mail_location = maildir:~/Maildir",
        "mail_fsync = never",
        "mail_max_userip_connections = 10000",
        "default_process_limit = 1024",
        "default_client_limit = 20000",
        f"passdb {{\n  driver = passwd-file\n  args = scheme=PLAIN {passwd}\n}}",
        f"userdb {{\n  driver = passwd-file\n  args = {passwd}\n}}",
        "plugin {\n  sieve = file:~/sieve;active=~/.dovecot.sieve\n}",
    ]
    return "\n".join(settings) + "\n" + _tls_settings(tls) + _services(ports, identity) + extra


# --------------------------------------------------------------------------- mailboxes


def _write_maildir(home: Path, messages: Iterable[bytes]) -> None:
    maildir = home / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    # Dovecot numbers new files in the order of their leading timestamp.
    for index, message in enumerate(messages):
        (maildir / "cur" / f"{1_000_000_000 + index}.M{index}P0.perditionpy:2,").write_bytes(
            message
        )


def _chown_tree(top: Path, user: str, group: str) -> None:
    uid, gid = pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid
    os.chown(top, uid, gid)
    for root, dirs, files in os.walk(top):
        for name in dirs + files:
            os.chown(os.path.join(root, name), uid, gid)


# --------------------------------------------------------------------------- the server


@dataclass
class Dovecot:
    """One private Dovecot instance; use as a context manager or call start()/stop().

    ``workdir`` keeps config, state and logs (a temporary directory removed on stop
    when not given); the passwd-file, mailboxes and sockets live in a short,
    world-traversable directory under /tmp of the instance's own, removed on stop.
    ``extra_config`` is appended to dovecot.conf.
    """

    users: Sequence[MailUser] = DEFAULT_USERS
    workdir: Path | None = None
    tls: TlsFiles | None = None
    extra_config: str = ""
    binary: str | None = None
    ports: _Ports = field(init=False, default=_Ports(0, 0, 0))
    _proc: subprocess.Popen[bytes] | None = field(init=False, default=None)
    _shared: Path | None = field(init=False, default=None)
    _owns_workdir: bool = field(init=False, default=False)

    # ------------------------------------------------------------------ public API

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def imap_port(self) -> int:
        return self.ports.imap

    @property
    def pop3_port(self) -> int:
        return self.ports.pop3

    @property
    def sieve_port(self) -> int:
        return self.ports.sieve

    @property
    def imaps_port(self) -> int:
        return self.ports.imaps

    @property
    def pop3s_port(self) -> int:
        return self.ports.pop3s

    @property
    def log_path(self) -> Path:
        return self._work / "dovecot.log"

    def user(self, name: str) -> MailUser:
        """The account called ``name`` (with the big message filled in)."""
        for user in self.users:
            if user.name == name:
                return self._materialise(user)
        raise KeyError(name)

    def home(self, name: str) -> Path:
        """Home directory of ``name`` (its Maildir is ``home / "Maildir"``)."""
        index = [u.name for u in self.users].index(name)
        if self._shared is None:
            raise DovecotError("not started")
        return self._shared / "mail" / f"u{index}"

    def start(self, timeout: float = _START_TIMEOUT) -> Dovecot:
        """Write the files, start Dovecot in the foreground and wait until it greets."""
        binary = self.binary or dovecot_binary()
        if binary is None:
            raise DovecotError("dovecot is not installed (run scripts/install-deps.sh as root)")
        self._prepare_workdir()
        for attempt in range(_START_ATTEMPTS):
            self._launch(binary)
            try:
                self._wait_ready(timeout)
                return self
            except (TimeoutError, ConnectionError) as exc:
                self.stop(remove=False)
                if attempt + 1 < _START_ATTEMPTS and "in use" in self.log_text():
                    continue  # another process took one of our ports: pick new ones
                raise DovecotError(f"dovecot did not start: {exc}\n{self.log_text()}") from exc
        raise AssertionError("unreachable")

    def stop(self, *, remove: bool = True) -> int | None:
        """Stop Dovecot (SIGTERM, then SIGKILL after a deadline); return its exit status."""
        status = None
        if self._proc is not None:
            status = _terminate(self._proc, _STOP_TIMEOUT)
            self._proc = None
        if remove and self._shared is not None:
            shutil.rmtree(self._shared, ignore_errors=True)
            self._shared = None
        if remove and self._owns_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return status

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_text(self) -> str:
        """Dovecot's log (and anything it printed before the log was open)."""
        parts = []
        for name in ("stderr.log", "dovecot.log"):
            path = self._work / name
            if path.exists():
                parts.append(path.read_bytes().decode("utf-8", "replace"))
        return "".join(parts)

    def log_position(self) -> int:
        """A mark for ``logins(since=...)``: the current size of the log."""
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def logins(self, since: int = 0) -> list[Login]:
        """Every authentication attempt logged after byte offset ``since``, in order."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(since)
                data = log.read()
        except FileNotFoundError:
            return []
        return [_parse_passdb_out(m) for m in _PASSDB_OUT.finditer(data)]

    def wait_for_login(
        self, username: str, *, ok: bool | None = None, since: int = 0, timeout: float = 10.0
    ) -> Login:
        """Wait until an attempt by ``username`` (with result ``ok``, if given) is logged."""
        deadline = time.monotonic() + timeout
        while True:
            for login in self.logins(since):
                if login.username == username and ok in (None, login.ok):
                    return login
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no login by {username!r} logged: {self.logins(since)}")
            time.sleep(0.05)  # polling a log file written by another process

    def errors(self) -> list[str]:
        """Error/Fatal/Panic lines in the log, minus the ones this setup causes on purpose."""
        lines = [
            line
            for line in self.log_text().splitlines()
            if re.search(r": (Error|Fatal|Panic): ", line)
        ]
        return [line for line in lines if not any(p.search(line) for p in _KNOWN_ERRORS)]

    def __enter__(self) -> Dovecot:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ internals

    @property
    def _work(self) -> Path:
        if self.workdir is None:
            raise DovecotError("not started")
        return self.workdir

    def _materialise(self, user: MailUser) -> MailUser:
        if user.name != "bigmail":
            return user
        messages = tuple(m if m else big_message() for m in user.messages)
        return MailUser(user.name, user.password, messages)

    def _prepare_workdir(self) -> None:
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="perditionpy-dovecot-"))
            self._owns_workdir = True
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "state").mkdir(exist_ok=True)
        # Short (unix socket paths stay under 108 bytes) and traversable by the
        # unprivileged auth, login and mail processes, unlike pytest's 0700 tmp dirs.
        self._shared = Path(tempfile.mkdtemp(prefix="dvc-", dir="/tmp"))
        self._shared.chmod(0o755)
        passwd = b""
        for user in self.users:
            home = self.home(user.name)
            _write_maildir(home, self._materialise(user).messages)
            passwd += user.passwd_line(home)
        (self._shared / "passwd").write_bytes(passwd)
        (self._shared / "passwd").chmod(0o644)
        identity = _identity()
        if os.geteuid() == 0:
            _chown_tree(self._shared / "mail", identity.mail_user, identity.mail_group)

    def _launch(self, binary: str) -> None:
        assert self._shared is not None
        base_dir = self._shared / "run"
        shutil.rmtree(base_dir, ignore_errors=True)  # left over from a failed attempt
        base_dir.mkdir(mode=0o755)
        self.ports = self._pick_ports()
        config = render_config(
            shared=self._shared,
            workdir=self._work,
            ports=self.ports,
            identity=_identity(),
            tls=self.tls,
            extra=self.extra_config,
        )
        conf_path = self._work / "dovecot.conf"
        conf_path.write_text(config)
        with (self._work / "stderr.log").open("ab") as stderr:
            self._proc = subprocess.Popen(
                [binary, "-F", "-c", str(conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _pick_ports(self) -> _Ports:
        if self.tls is None:
            return _Ports(*free_ports(3))
        return _Ports(*free_ports(5))

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for port, first in (
            (self.ports.imap, b"* OK"),
            (self.ports.pop3, b"+OK"),
            (self.ports.sieve, b"OK"),
        ):
            wait_for_greeting(
                port,
                timeout=max(deadline - time.monotonic(), 0.1),
                until=first,
                alive=self.running,
            )


def _parse_passdb_out(match: re.Match[bytes]) -> Login:
    fields = dict(
        _tab_unescape(item).split("=", 1) for item in match.group(2).split(b"\t") if b"=" in item
    )
    return Login(fields.get("user", ""), match.group(1) == b"OK")


def _tab_unescape(value: bytes) -> str:
    """Undo Dovecot's tab-escaping of log fields (\\x01 followed by a code)."""
    codes = {b"1": b"\x01", b"t": b"\t", b"r": b"\r", b"n": b"\n", b"0": b"\x00"}
    out = re.sub(rb"\x01(.)", lambda m: codes.get(m.group(1), m.group(1)), value)
    return out.decode("utf-8", "surrogateescape")


def _terminate(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM ``proc``, wait up to ``timeout``; SIGKILL its process group if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)
    return proc.returncode
