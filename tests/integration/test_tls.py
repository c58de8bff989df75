"""SSL/TLS through perditionpy, with real clients and a real Dovecot speaking TLS.

Certificates are made at test time with the openssl tool: a CA, a server
certificate for ``localhost``/``127.0.0.1`` signed by it (used by Dovecot and by
the proxy's listener alike), another CA nobody trusts, and two bad server
certificates (expired; for another host).

What must hold:

* every combination of client side {plain, SSL, STARTTLS} and back-end side
  {plain, SSL, STARTTLS}, for IMAP and POP3, reads the same mailbox
  byte-identically, and the ``Auth:`` line says ``client-secure=`` and
  ``server-secure=`` truthfully;
* real clients: imaplib (IMAP4_SSL, starttls), poplib (POP3_SSL, stls), curl
  (``imaps://``, ``pop3s://``, ``--ssl-reqd``), ``openssl s_client -starttls``;
* STARTTLS command injection is defeated; the capability lists are rewritten;
* negatives: a back-end signed by a CA we do not trust, an expired or
  wrong-host back-end certificate, LOGIN before STARTTLS under
  ``tls_listen_force``, a back-end without STARTTLS under
  ``tls_outgoing_force``, a stalled handshake (``--authenticate_timeout``),
  garbage instead of a ClientHello — while the daemon keeps serving others.
"""

from __future__ import annotations

import contextlib
import imaplib
import poplib
import re
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.test_proxy_e2e import (
    DEADLINE,
    Raw,
    concurrently,
    imap_messages,
    pop3_messages,
)
from tests.support.dovecot import Dovecot, TlsFiles
from tests.support.pki import make_ca, make_server
from tests.support.ports import LOOPBACK, free_port
from tests.support.procs import Proc, start_perditionpy

MAILBOX_USER = "alice"
SIDES = ("plain", "ssl", "starttls")


# --------------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class Pki:
    """Files made by :func:`make_pki`."""

    ca: Path                 # the CA everyone trusts
    server: TlsFiles         # localhost / 127.0.0.1, signed by ``ca``
    other_ca: Path           # a CA nobody trusts
    other_server: TlsFiles   # localhost / 127.0.0.1, signed by ``other_ca``
    expired: TlsFiles        # localhost / 127.0.0.1, signed by ``ca``, expired in 2020
    wrong_host: TlsFiles     # wrong.example only, signed by ``ca``


def make_pki(openssl: str, directory: Path) -> Pki:
    ca = make_ca(openssl, directory, "ca")
    other = make_ca(openssl, directory, "other-ca")
    here = "DNS:localhost,IP:127.0.0.1"
    return Pki(
        ca=ca[0],
        server=make_server(openssl, directory, "server", ca, here),
        other_ca=other[0],
        other_server=make_server(openssl, directory, "other-server", other, here),
        expired=make_server(openssl, directory, "expired", ca, here,
                            ("20200101000000Z", "20200201000000Z")),
        wrong_host=make_server(openssl, directory, "wrong-host", ca, "DNS:wrong.example"),
    )


@pytest.fixture(scope="module")
def pki(openssl: str, tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    directory.chmod(0o755)
    return make_pki(openssl, directory)


@pytest.fixture(scope="module")
def tls_dovecot(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dovecot]:
    """A Dovecot with IMAPS, POP3S and STARTTLS/STLS, using ``pki.server``."""
    from tests.conftest import require
    from tests.support.dovecot import dovecot_binary

    require(dovecot_binary() is not None, "dovecot")
    server = Dovecot(workdir=tmp_path_factory.mktemp("dovecot-tls"), tls=pki.server)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def client_context(pki: Pki) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki.ca))


# --------------------------------------------------------------------------- proxies


def listen_args(pki: Pki) -> list[str]:
    return ["--ssl_cert_file", str(pki.server.cert), "--ssl_key_file", str(pki.server.key)]


def outgoing_args(pki: Pki) -> list[str]:
    return ["--ssl_ca_file", str(pki.ca)]


_CLIENT_MODE = {"plain": [], "ssl": ["ssl_listen"], "starttls": ["tls_listen"]}
_BACKEND_MODE = {"plain": [], "ssl": ["ssl_outgoing"], "starttls": ["tls_outgoing_force"]}


def proxy_args(pki: Pki, protocol: str, client: str, backend: str, backend_port: int,
               *extra: str) -> list[str]:
    modes = _CLIENT_MODE[client] + _BACKEND_MODE[backend]
    args = ["-M", "", "-P", protocol, "-s", f"{LOOPBACK}:{backend_port}",
            *listen_args(pki), *outgoing_args(pki), *extra]
    if modes:
        args += ["--ssl_mode", ",".join(modes)]
    return args


def start(args: list[str], log_dir: Path, *, ssl_first: bool = False) -> Proc:
    # With SSL from the first byte the readiness probe can only wait for accept().
    return start_perditionpy(args, log_dir=log_dir, greeting=None if ssl_first else b"")


@contextlib.contextmanager
def running(args: list[str], log_dir: Path, *, ssl_first: bool = False) -> Iterator[Proc]:
    proxy = start(args, log_dir, ssl_first=ssl_first)
    try:
        yield proxy
    finally:
        proxy.stop()


def backend_port(dovecot: Dovecot, protocol: str, backend: str) -> int:
    if protocol == "IMAP4":
        return dovecot.imaps_port if backend == "ssl" else dovecot.imap_port
    return dovecot.pop3s_port if backend == "ssl" else dovecot.pop3_port


# --------------------------------------------------------------------------- clients


def imap_client(port: int, side: str, pki: Pki) -> imaplib.IMAP4:
    if side == "ssl":
        return imaplib.IMAP4_SSL(LOOPBACK, port, ssl_context=client_context(pki),
                                 timeout=DEADLINE)
    client = imaplib.IMAP4(LOOPBACK, port, timeout=DEADLINE)
    if side == "starttls":
        client.starttls(client_context(pki))
    return client


def pop3_client(port: int, side: str, pki: Pki) -> poplib.POP3:
    if side == "ssl":
        return poplib.POP3_SSL(LOOPBACK, port, context=client_context(pki), timeout=DEADLINE)
    client = poplib.POP3(LOOPBACK, port, timeout=DEADLINE)
    if side == "starttls":
        client.stls(client_context(pki))
    return client


def read_mailbox(protocol: str, port: int, side: str, pki: Pki, user: str, password: str
                 ) -> list[bytes]:
    if protocol == "IMAP4":
        imap = imap_client(port, side, pki)
        try:
            imap.login(user, password)
            return imap_messages(imap)
        finally:
            imap.logout()
    pop = pop3_client(port, side, pki)
    try:
        pop.user(user)
        pop.pass_(password)
        return pop3_messages(pop)
    finally:
        pop.quit()


def auth_line(proxy: Proc, user: str) -> re.Match[str]:
    return proxy.wait_for_log(
        rf"Auth: \S+ client-secure=(\w+) authorisation_id=NONE "
        rf'authentication_id="{re.escape(user)}" server="[^"]*" protocol=\w+ '
        rf'server-secure=(\w+) status="([^"]*)"')


# --------------------------------------------------------------------------- the matrix


@pytest.mark.parametrize("backend", SIDES)
@pytest.mark.parametrize("client", SIDES)
@pytest.mark.parametrize("protocol", ["IMAP4", "POP3"])
def test_every_combination_reads_the_same_mailbox(
    pki: Pki, tls_dovecot: Dovecot, tmp_path: Path, protocol: str, client: str, backend: str
) -> None:
    user = tls_dovecot.user(MAILBOX_USER)
    port = backend_port(tls_dovecot, protocol, backend)
    args = proxy_args(pki, protocol, client, backend, port)
    with running(args, tmp_path, ssl_first=client == "ssl") as proxy:
        proxied = read_mailbox(protocol, proxy.port, client, pki, user.name, user.password_text)
        match = auth_line(proxy, user.name)
    assert proxied == list(user.messages)
    assert match.groups() == (
        "plaintext" if client == "plain" else client,
        "plaintext" if backend == "plain" else backend,
        "ok",
    )


# --------------------------------------------------------------------------- real clients


@pytest.fixture(scope="module")
def imap_proxies(pki: Pki, tls_dovecot: Dovecot, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[dict[str, Proc]]:
    """IMAPS (``-P IMAP4S``: ssl_all by default) and a STARTTLS proxy, for the real clients."""
    log_dir = tmp_path_factory.mktemp("imap-tls-proxies")
    imaps = start(["-M", "", "-P", "IMAP4S", "-s", f"{LOOPBACK}:{tls_dovecot.imaps_port}",
                   *listen_args(pki), *outgoing_args(pki)], log_dir, ssl_first=True)
    starttls = start(proxy_args(pki, "IMAP4", "starttls", "plain", tls_dovecot.imap_port),
                     log_dir)
    try:
        yield {"ssl": imaps, "starttls": starttls}
    finally:
        imaps.stop()
        starttls.stop()


@pytest.fixture(scope="module")
def pop3_proxies(pki: Pki, tls_dovecot: Dovecot, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[dict[str, Proc]]:
    log_dir = tmp_path_factory.mktemp("pop3-tls-proxies")
    pop3s = start(["-M", "", "-P", "POP3S", "-s", f"{LOOPBACK}:{tls_dovecot.pop3s_port}",
                   *listen_args(pki), *outgoing_args(pki)], log_dir, ssl_first=True)
    starttls = start(proxy_args(pki, "POP3", "starttls", "starttls", tls_dovecot.pop3_port),
                     log_dir)
    try:
        yield {"ssl": pop3s, "starttls": starttls}
    finally:
        pop3s.stop()
        starttls.stop()


def curl(pki: Pki, url: str, *extra: str) -> bytes:
    result = subprocess.run(
        ["curl", "--silent", "--show-error", "--cacert", str(pki.ca), "--user",
         "alice:alice-pw", "--max-time", str(int(DEADLINE)), *extra, url],
        capture_output=True, timeout=DEADLINE + 5)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout


def test_curl_imaps_pop3s_and_ssl_reqd(
    pki: Pki, tls_dovecot: Dovecot, imap_proxies: dict[str, Proc], pop3_proxies: dict[str, Proc]
) -> None:
    messages = tls_dovecot.user(MAILBOX_USER).messages
    imaps, imap_starttls = imap_proxies["ssl"].port, imap_proxies["starttls"].port
    pop3s, pop3_starttls = pop3_proxies["ssl"].port, pop3_proxies["starttls"].port
    assert curl(pki, f"imaps://{LOOPBACK}:{imaps}/INBOX;MAILINDEX=2") == messages[1]
    assert curl(pki, f"imap://{LOOPBACK}:{imap_starttls}/INBOX;MAILINDEX=3",
                "--ssl-reqd") == messages[2]
    assert curl(pki, f"pop3s://{LOOPBACK}:{pop3s}/1") == messages[0]
    assert curl(pki, f"pop3://{LOOPBACK}:{pop3_starttls}/3", "--ssl-reqd") == messages[2]


def s_client(openssl: str, pki: Pki, starttls: str, port: int, script: bytes) -> bytes:
    # -quiet implies -ign_eof: s_client reads until the proxy closes (after LOGOUT/QUIT).
    result = subprocess.run(
        [openssl, "s_client", "-quiet", "-verify_return_error", "-CAfile", str(pki.ca),
         "-verify_hostname", "localhost", "-starttls", starttls,
         "-connect", f"{LOOPBACK}:{port}"],
        input=script, capture_output=True, timeout=DEADLINE)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout


def test_ten_mebibytes_through_tls_on_both_sides(
    pki: Pki, tls_dovecot: Dovecot, imap_proxies: dict[str, Proc], pop3_proxies: dict[str, Proc]
) -> None:
    """Large TLS records on both sides exercise the relay's pending() handling."""
    user = tls_dovecot.user("bigmail")
    imap, pop3 = concurrently(
        lambda: read_mailbox("IMAP4", imap_proxies["ssl"].port, "ssl", pki, user.name,
                             user.password_text),
        lambda: read_mailbox("POP3", pop3_proxies["ssl"].port, "ssl", pki, user.name,
                             user.password_text))
    assert imap == pop3 == list(user.messages)


def test_openssl_s_client_starttls_imap_and_pop3(
    openssl: str, pki: Pki, tls_dovecot: Dovecot,
    imap_proxies: dict[str, Proc], pop3_proxies: dict[str, Proc]
) -> None:
    message = tls_dovecot.user(MAILBOX_USER).messages[0]
    out = s_client(openssl, pki, "imap", imap_proxies["starttls"].port,
                   b"a LOGIN alice alice-pw\r\nb SELECT INBOX\r\n"
                   b"c FETCH 1 BODY.PEEK[]\r\nd LOGOUT\r\n")
    assert b"a OK You are so in\r\n" in out and message in out and b"d OK" in out
    out = s_client(openssl, pki, "pop3", pop3_proxies["starttls"].port,
                   b"USER alice\r\nPASS alice-pw\r\nRETR 1\r\nQUIT\r\n")
    assert b"+OK You are so in\r\n" in out and message in out


def test_imap_capabilities_are_rewritten_around_starttls(
    pki: Pki, tls_dovecot: Dovecot, tmp_path: Path
) -> None:
    args = proxy_args(pki, "IMAP4", "starttls", "plain", tls_dovecot.imap_port,
                      "--imap_capability", "IMAP4REV1 STARTTLS ID")
    args[args.index("tls_listen")] = "tls_listen_force"
    with running(args, tmp_path) as proxy:
        client = imaplib.IMAP4(LOOPBACK, proxy.port, timeout=DEADLINE)
        assert client.welcome.startswith(b"* OK [CAPABILITY IMAP4REV1 STARTTLS ID LOGINDISABLED] ")
        assert client.capability() == ("OK", [b"IMAP4REV1 STARTTLS ID LOGINDISABLED"])
        client.starttls(client_context(pki))
        assert client.capability() == ("OK", [b"IMAP4REV1 ID"])
        with pytest.raises(imaplib.IMAP4.error, match="BAD.*SSL already active, mate"):
            client._simple_command("STARTTLS")  # imaplib's starttls() refuses to try twice
        assert client.login("alice", "alice-pw")[0] == "OK"
        client.logout()


@pytest.mark.parametrize("protocol", ["IMAP4", "POP3"])
def test_bytes_pipelined_after_starttls_are_discarded(
    pki: Pki, tls_dovecot: Dovecot, tmp_path: Path, protocol: str
) -> None:
    imap = protocol == "IMAP4"
    port = tls_dovecot.imap_port if imap else tls_dovecot.pop3_port
    with running(proxy_args(pki, protocol, "starttls", "plain", port), tmp_path) as proxy:
        raw = Raw(proxy.port)
        raw.line()
        # The attacker's command rides in the same segment as STARTTLS/STLS.
        if imap:
            raw.send(b"a STARTTLS\r\nb LOGIN alice alice-pw\r\n")
            assert raw.line() == b"a OK Begin TLS negotiation now\r\n"
        else:
            raw.send(b"STLS\r\nUSER alice\r\n")
            assert raw.line() == b"+OK Begin TLS negotiation, mate\r\n"
        tls = Raw(sock=client_context(pki).wrap_socket(raw.sock, server_hostname="localhost"))
        if imap:
            tls.send(b"c CAPABILITY\r\n")
            assert tls.line() == b"* CAPABILITY IMAP4 IMAP4REV1\r\n"
            assert tls.line() == b"c OK CAPABILITY\r\n"
            assert tls.command(b"d", b"LOGIN alice alice-pw")[0].startswith(b"d OK ")
        else:
            tls.send(b"CAPA\r\n")
            assert tls.line() == b"+OK Capability list follows, mate\r\n"
            assert tls.pop_multiline() == b"UIDL\r\nUSER\r\n"
        tls.close()


# --------------------------------------------------------------------------- negatives: back-end


def imap_login_reply(port: int, user: str = "alice", password: str = "alice-pw") -> str:
    """Log in over plain IMAP; the tagged reply's text ("OK ..." or "NO ...")."""
    client = imaplib.IMAP4(LOOPBACK, port, timeout=DEADLINE)
    try:
        typ, data = client.login(user, password)
        return f"{typ} {data[0].decode()}"
    except imaplib.IMAP4.error as exc:
        return f"NO {exc}".replace("b'", "").rstrip("'")
    finally:
        with contextlib.suppress(Exception):
            client.logout()


@pytest.fixture(scope="module")
def bad_backends(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Dovecot]]:
    """Dovecots showing an expired certificate and one for another host."""
    from tests.conftest import require
    from tests.support.dovecot import dovecot_binary

    require(dovecot_binary() is not None, "dovecot")
    servers = {}
    try:
        for name, files in (("expired", pki.expired), ("wrong_host", pki.wrong_host)):
            servers[name] = Dovecot(workdir=tmp_path_factory.mktemp(f"dovecot-{name}"),
                                    tls=files).start()
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def test_backend_certificates_that_fail_verification_are_refused_with_a_reason(
    pki: Pki, tls_dovecot: Dovecot, bad_backends: dict[str, Dovecot], tmp_path: Path
) -> None:
    expired, wrong_host = bad_backends["expired"], bad_backends["wrong_host"]
    cases = {
        # name: (back-end IMAPS port, extra options, reason in the log)
        "wrong_ca": (tls_dovecot.imaps_port, ["--ssl_ca_file", str(pki.other_ca)],
                     "certificate verify failed: unable to get local issuer certificate"),
        "expired": (expired.imaps_port, [], "certificate verify failed: certificate has expired"),
        "wrong_host": (wrong_host.imaps_port, [],
                       "certificate verify failed: IP address mismatch, certificate is not "
                       "valid for '127.0.0.1'."),
    }
    proxies = {}
    try:
        for name, (port, extra, _) in cases.items():
            args = proxy_args(pki, "IMAP4", "plain", "ssl", port)
            proxies[name] = start([*args, *extra], tmp_path / name)
        replies = concurrently(*(lambda p=p: imap_login_reply(p.port) for p in proxies.values()))
        for (name, (port, _, reason)), reply in zip(cases.items(), replies, strict=True):
            proxy = proxies[name]
            assert "failed: Could not connect to server" in reply, (name, reply)
            proxy.wait_for_log(
                rf"Error establishing SSL connection to server 127\.0\.0\.1:{port} "
                rf"\S+: {re.escape(reason)}")
            proxy.wait_for_log(r'server-secure=ssl status="failed: Could not connect to server"')
            # ... and the daemon keeps serving: the same proxy is alive and greets.
            assert proxy.running()
            assert Raw(proxy.port).line().startswith(b"* OK [CAPABILITY")
    finally:
        for proxy in proxies.values():
            proxy.stop()


def test_options_that_accept_such_certificates(
    pki: Pki, tls_dovecot: Dovecot, bad_backends: dict[str, Dovecot], tmp_path: Path
) -> None:
    cases = [
        (bad_backends["expired"], ["--ssl_cert_accept_expired"]),
        (bad_backends["wrong_host"], ["--ssl_no_cn_verify"]),
        (tls_dovecot, ["--ssl_no_cert_verify", "--ssl_ca_file", str(pki.other_ca)]),
    ]
    proxies = [start([*proxy_args(pki, "IMAP4", "plain", "ssl", server.imaps_port), *extra],
                     tmp_path / str(index))
               for index, (server, extra) in enumerate(cases)]
    try:
        replies = concurrently(*(lambda p=p: imap_login_reply(p.port) for p in proxies))
        assert replies == ["OK You are so in"] * len(cases)
    finally:
        for proxy in proxies:
            proxy.stop()


@pytest.mark.parametrize("protocol", ["IMAP4", "POP3"])
def test_tls_outgoing_with_a_backend_without_starttls(
    pki: Pki, dovecot: Dovecot, tmp_path: Path, protocol: str
) -> None:
    """The shared Dovecot has no TLS: tls_outgoing goes on in plain text,
    tls_outgoing_force refuses with "TLS not present"."""
    port = dovecot.imap_port if protocol == "IMAP4" else dovecot.pop3_port
    base = ["-M", "", "-P", protocol, "-s", f"{LOOPBACK}:{port}", *outgoing_args(pki)]
    with running([*base, "--ssl_mode", "tls_outgoing"], tmp_path / "lax") as lax, \
         running([*base, "--ssl_mode", "tls_outgoing_force"], tmp_path / "strict") as strict:

        def lax_login() -> list[bytes]:
            return read_mailbox(protocol, lax.port, "plain", pki, "bob", "bob-pw")

        def strict_login() -> str:
            if protocol == "IMAP4":
                return imap_login_reply(strict.port, "bob", "bob-pw")
            client = poplib.POP3(LOOPBACK, strict.port, timeout=DEADLINE)
            client.user("bob")
            with pytest.raises(poplib.error_proto) as info:
                client.pass_("bob-pw")
            client.quit()
            return str(info.value)

        messages, refusal = concurrently(lax_login, strict_login)
        assert messages == list(dovecot.user("bob").messages)
        assert "failed: TLS not present" in refusal
        assert auth_line(lax, "bob").groups() == ("plaintext", "plaintext", "ok")
        assert auth_line(strict, "bob").groups() == (
            "plaintext", "plaintext", "failed: TLS not present")


# --------------------------------------------------------------------------- negatives: client


def test_login_before_starttls_is_refused_under_tls_listen_force(
    pki: Pki, tls_dovecot: Dovecot, tmp_path: Path
) -> None:
    imap_args = proxy_args(pki, "IMAP4", "starttls", "plain", tls_dovecot.imap_port)
    pop3_args = proxy_args(pki, "POP3", "starttls", "plain", tls_dovecot.pop3_port)
    for args in (imap_args, pop3_args):
        args[args.index("tls_listen")] = "tls_listen_force"
    messages = list(tls_dovecot.user(MAILBOX_USER).messages)
    with running(imap_args, tmp_path / "imap") as imap_proxy, \
         running(pop3_args, tmp_path / "pop3") as pop3_proxy:

        def imap() -> list[bytes]:
            client = imap_client(imap_proxy.port, "plain", pki)
            with pytest.raises(imaplib.IMAP4.error, match="failed: Login Disabled"):
                client.login("alice", "alice-pw")
            client.starttls(client_context(pki))  # then the same connection may log in
            client.login("alice", "alice-pw")
            try:
                return imap_messages(client)
            finally:
                client.logout()

        def pop3() -> list[bytes]:
            client = pop3_client(pop3_proxy.port, "plain", pki)
            client.user("alice")
            with pytest.raises(poplib.error_proto, match="failed: Login Disabled"):
                client.pass_("alice-pw")
            client.stls(client_context(pki))
            client.user("alice")
            client.pass_("alice-pw")
            try:
                return pop3_messages(client)
            finally:
                client.quit()

        assert concurrently(imap, pop3) == [messages, messages]
        for proxy in (imap_proxy, pop3_proxy):
            proxy.wait_for_log(r'client-secure=plaintext authorisation_id=NONE '
                               r'authentication_id="alice" server="\(null\):\(null\)" '
                               r'protocol=\w+ server-secure=plaintext '
                               r'status="failed: Login Disabled"')
            assert auth_line(proxy, "alice") is not None
            proxy.wait_for_log(r'client-secure=starttls .* status="ok"')


def _closed_within(sock: socket.socket, seconds: float) -> float:
    """Seconds until the peer closes ``sock`` (reading and dropping what it sends)."""
    began = time.monotonic()
    sock.settimeout(seconds)
    with contextlib.suppress(ConnectionResetError):
        while sock.recv(4096):
            pass
    return time.monotonic() - began


def test_stalled_handshakes_and_garbage_do_not_stop_the_daemon(
    pki: Pki, tls_dovecot: Dovecot, tmp_path: Path
) -> None:
    imaps_args = proxy_args(pki, "IMAP4", "ssl", "plain", tls_dovecot.imap_port,
                            "--authenticate_timeout", "1")
    starttls_args = proxy_args(pki, "IMAP4", "starttls", "plain", tls_dovecot.imap_port,
                               "--authenticate_timeout", "1")
    messages = list(tls_dovecot.user(MAILBOX_USER).messages)
    with running(imaps_args, tmp_path / "ssl", ssl_first=True) as imaps, \
         running(starttls_args, tmp_path / "starttls") as starttls:
        silent = socket.create_connection((LOOPBACK, imaps.port))
        garbage = socket.create_connection((LOOPBACK, imaps.port))
        garbage.sendall(b"a LOGIN alice alice-pw\r\n")  # plain IMAP to the IMAPS port
        half = Raw(starttls.port)
        half.line()
        half.send(b"a STARTTLS\r\n")
        assert half.line() == b"a OK Begin TLS negotiation now\r\n"  # then no ClientHello
        # Others are served while those three hang around.
        assert read_mailbox("IMAP4", imaps.port, "ssl", pki, "alice", "alice-pw") == messages
        assert _closed_within(garbage, DEADLINE) < 1.0
        assert _closed_within(silent, DEADLINE) < 3.0
        assert _closed_within(half.sock, DEADLINE) < 3.0
        for sock in (silent, garbage, half.sock):
            sock.close()
        imaps.wait_for_log(r"Fatal error establishing SSL connection to client \S+: "
                           r"handshake timed out")
        imaps.wait_for_log(r"Fatal error establishing SSL connection to client \S+: "
                           r"(?!handshake timed out).+")
        starttls.wait_for_log(r"Fatal error establishing TLS connection \S+: "
                              r"handshake timed out")
        assert read_mailbox("IMAP4", starttls.port, "starttls", pki, "alice",
                            "alice-pw") == messages
        assert imaps.running() and starttls.running()


def test_a_missing_certificate_stops_the_start(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    result = subprocess.run(
        [*start_command(), "-P", "IMAP4S", "--ssl_cert_file", str(missing),
         "--ssl_key_file", str(pki.server.key), "-l", str(free_port()), "-b", LOOPBACK],
        capture_output=True, timeout=DEADLINE, cwd=str(Path(__file__).parents[2]))
    assert result.returncode != 0
    assert str(missing) in result.stderr.decode()


def start_command() -> list[str]:
    return [sys.executable, "-m", "perditionpy", "--no_daemon", "-F", "+", "-f", "",
            "--pid_file", ""]

