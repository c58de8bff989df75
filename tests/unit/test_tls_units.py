"""SSL/TLS without the network: the effective --ssl_mode, the contexts built from
the ssl_* options, and transcripts of STARTTLS/STLS in the IMAP and POP3 engines
(both towards clients and towards back-ends).

(Named ``test_tls_units.py``: ``tests/integration/test_tls.py`` exists, and two
test modules of one basename cannot be collected in one run.)
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from perditionpy import tls
from perditionpy.options import Options, load
from perditionpy.protocol.base import (
    NEED_DATA,
    Credentials,
    LoginResult,
    LoginStatus,
    Send,
    StartTLS,
    ToBackend,
)
from perditionpy.protocol.imap4 import Imap4BackendLogin, Imap4FrontEnd, capability
from perditionpy.protocol.pop3 import Pop3BackendLogin, Pop3FrontEnd


def opts(*argv: str) -> Options:
    return load(["-f", "", *argv], "perdition", sysconfdir="/nonexistent")


# ---------------------------------------------------------------- the mode


@pytest.mark.parametrize(("argv", "expected"), [
    ([], tls.TlsMode()),
    (["-P", "IMAP4S"], tls.TlsMode(ssl_listen=True, ssl_outgoing=True)),
    (["-P", "POP3S"], tls.TlsMode(ssl_listen=True, ssl_outgoing=True)),
    # -P IMAP4S with --ssl_mode is IMAP4 with that mode (and port 993).
    (["-P", "IMAP4S", "--ssl_mode", "ssl_listen"], tls.TlsMode(ssl_listen=True)),
    (["-P", "IMAP4S", "--ssl_mode", "none"], tls.TlsMode()),
    (["--ssl_mode", "tls_all_force"], tls.TlsMode(
        tls_listen=True, tls_outgoing=True, tls_listen_force=True, tls_outgoing_force=True)),
    (["--ssl_mode", "ssl_listen,tls_outgoing"], tls.TlsMode(ssl_listen=True, tls_outgoing=True)),
])
def test_mode(argv: list[str], expected: tls.TlsMode) -> None:
    assert tls.mode(opts(*argv)) == expected


def test_no_contexts_without_ssl() -> None:
    assert tls.contexts(opts()) is None
    assert tls.contexts(opts("--ssl_mode", "none")) is None


# ---------------------------------------------------------------- contexts


@pytest.fixture(scope="module")
def keypair(openssl: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    directory = tmp_path_factory.mktemp("keys")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=localhost"], check=True, capture_output=True)
    return str(cert), str(key)


def listen(keypair: tuple[str, str], *argv: str) -> Options:
    cert, key = keypair
    return opts("--ssl_mode", "ssl_all", "--ssl_cert_file", cert, "--ssl_key_file", key,
                "--ssl_ca_path", "", *argv)


def test_tls_1_2_is_the_floor_unless_lowered(keypair: tuple[str, str]) -> None:
    built = tls.TlsContexts(listen(keypair))
    assert built.listen is not None and built.outgoing is not None
    assert built.listen.minimum_version == ssl.TLSVersion.TLSv1_2
    assert built.outgoing.minimum_version == ssl.TLSVersion.TLSv1_2
    lowered = tls.TlsContexts(listen(keypair, "--ssl_listen_min_proto_version", "TLSv1",
                                     "--ssl_outgoing_max_proto_version", "tlsv1.2"))
    assert lowered.listen is not None and lowered.outgoing is not None
    assert lowered.listen.minimum_version == ssl.TLSVersion.TLSv1
    assert lowered.outgoing.minimum_version == ssl.TLSVersion.TLSv1_2
    assert lowered.outgoing.maximum_version == ssl.TLSVersion.TLSv1_2


def test_listen_context_flags(keypair: tuple[str, str]) -> None:
    built = tls.TlsContexts(listen(keypair))
    assert built.listen is not None
    assert built.listen.options & ssl.OP_NO_COMPRESSION
    assert built.listen.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert built.listen.verify_mode == ssl.CERT_OPTIONAL  # as perdition: asks, checks if given
    other = tls.TlsContexts(listen(keypair, "--ssl_listen_compression",
                                   "--ssl_no_cipher_server_preference",
                                   "--ssl_no_client_cert_verify"))
    assert other.listen is not None
    assert not other.listen.options & ssl.OP_NO_COMPRESSION
    assert not other.listen.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert other.listen.verify_mode == ssl.CERT_NONE


def test_outgoing_context_verifies_unless_told_not_to(keypair: tuple[str, str]) -> None:
    built = tls.TlsContexts(listen(keypair, "--ssl_ca_file", keypair[0]))
    assert built.outgoing is not None
    assert built.outgoing.verify_mode == ssl.CERT_REQUIRED and built.outgoing.check_hostname
    no_cn = tls.TlsContexts(listen(keypair, "--ssl_no_cn_verify"))
    assert no_cn.outgoing is not None
    assert no_cn.outgoing.verify_mode == ssl.CERT_REQUIRED and not no_cn.outgoing.check_hostname
    none = tls.TlsContexts(listen(keypair, "--ssl_no_cert_verify"))
    assert none.outgoing is not None and none.outgoing.verify_mode == ssl.CERT_NONE


@pytest.mark.parametrize(("argv", "words"), [
    (["--ssl_cert_file", "/nonexistent/cert.pem"], "/nonexistent/cert.pem"),
    (["--ssl_listen_ciphers", "NO-SUCH-CIPHER"], "--ssl_listen_ciphers"),
    (["--ssl_ca_file", "/nonexistent/ca.pem"], "/nonexistent/ca.pem"),
    (["--ssl_dh_params_file", "/nonexistent/dh.pem"], "/nonexistent/dh.pem"),
])
def test_setup_errors_name_the_culprit(keypair: tuple[str, str], argv: list[str],
                                       words: str) -> None:
    with pytest.raises(tls.TlsSetupError, match=words):
        tls.TlsContexts(listen(keypair, *argv))


def test_encrypted_key_with_a_passphrase_file(openssl: str, keypair: tuple[str, str],
                                              tmp_path: Path) -> None:
    key = tmp_path / "enc.key"
    subprocess.run([openssl, "pkey", "-in", keypair[1], "-out", str(key), "-aes256",
                    "-passout", "pass:s3cret"], check=True, capture_output=True)
    secret = tmp_path / "pass"
    secret.write_text("s3cret\nignored\n")
    options = listen((keypair[0], str(key)), "--ssl_passphrase_file", str(secret))
    assert tls.TlsContexts(options).listen is not None
    secret.write_text("wrong\n")
    with pytest.raises(tls.TlsSetupError):
        tls.TlsContexts(options)


# ---------------------------------------------------------------- IMAP, client side


def imap_front(**kwargs: bool) -> Imap4FrontEnd:
    return Imap4FrontEnd(opts("-P", "IMAP4"), greeting_host="h", checksum=0, **kwargs)


def events(engine: Imap4FrontEnd | Pop3FrontEnd, data: bytes) -> list[object]:
    engine.receive_data(data)
    out = []
    while (event := engine.next_event()) is not NEED_DATA:
        out.append(event)
        if isinstance(event, Credentials):
            break
    return out


def test_imap_capability_rewriting() -> None:
    o = opts("-P", "IMAP4")
    assert capability(o) == "IMAP4 IMAP4REV1"
    assert capability(o, tls_listen=True) == "IMAP4 IMAP4REV1 STARTTLS"
    assert capability(o, tls_listen=True, tls_active=True) == "IMAP4 IMAP4REV1"
    assert capability(o, tls_listen=True, tls_force=True) == \
        "IMAP4 IMAP4REV1 STARTTLS LOGINDISABLED"
    assert capability(o, tls_listen=True, tls_force=True, tls_active=True) == "IMAP4 IMAP4REV1"
    configured = replace(o, imap_capability="STARTTLS IMAP4REV1 LOGINDISABLED")
    assert capability(configured) == "IMAP4REV1 LOGINDISABLED"  # not forced: left alone
    assert capability(configured, tls_listen=True) == "STARTTLS IMAP4REV1 LOGINDISABLED"
    assert capability(configured, tls_listen=True, tls_force=True, tls_active=True) == "IMAP4REV1"
    # --login_disabled keeps LOGINDISABLED even after STARTTLS (perdition drops it).
    disabled = replace(o, login_disabled=True)
    assert capability(disabled, tls_listen=True, tls_force=True, tls_active=True) == \
        "IMAP4 IMAP4REV1 LOGINDISABLED"


def test_imap_greeting_announces_starttls() -> None:
    assert imap_front(tls_listen=True, tls_force=True).greeting().startswith(
        b"* OK [CAPABILITY IMAP4 IMAP4REV1 STARTTLS LOGINDISABLED] perdition ready on h ")


def test_imap_starttls_drops_what_was_pipelined() -> None:
    engine = imap_front(tls_listen=True)
    assert events(engine, b"a STARTTLS\r\nb LOGIN mallory x\r\nc NOOP\r\n") == [
        Send(b"a OK Begin TLS negotiation now\r\n"), StartTLS()]
    assert events(engine, b"d CAPABILITY\r\n") == [
        Send(b"* CAPABILITY IMAP4 IMAP4REV1\r\nd OK CAPABILITY\r\n")]
    assert events(engine, b"e STARTTLS\r\n") == [
        Send(b"e BAD SSL already active, mate\r\n", delay=True)]
    assert events(engine, b"f LOGIN alice pw\r\n") == [Credentials("alice", "pw", tag=b"f")]


def test_imap_starttls_without_tls_listen_is_disabled() -> None:
    assert events(imap_front(), b"a STARTTLS\r\n") == [
        Send(b"a BAD STARTTLS disabled, mate\r\n", delay=True)]
    assert events(imap_front(tls_listen=True), b"a STARTTLS now\r\n") == [
        Send(b"a BAD Argument given to STARTTLS but there shouldn't be one, mate\r\n",
             delay=True)]


def test_pop3_stls_drops_what_was_pipelined() -> None:
    engine = Pop3FrontEnd(opts(), greeting_host="h", checksum=0, tls_listen=True,
                          tls_force=True)
    assert events(engine, b"USER a\r\nSTLS\r\nPASS injected\r\n") == [
        Send(b"+OK USER a set, mate\r\n"), Send(b"+OK Begin TLS negotiation, mate\r\n"),
        StartTLS()]
    assert events(engine, b"PASS pw\r\n") == [
        Send(b"-ERR USER not yet set, mate\r\n", delay=True)]


# ---------------------------------------------------------------- IMAP, back-end side

OURS = b"[CAPABILITY IMAP4 IMAP4REV1] perdition ready on h 00000000"


def talk(login: Imap4BackendLogin | Pop3BackendLogin, data: bytes) -> list[object]:
    login.receive_data(data)
    out: list[object] = []
    while (event := login.next_event()) is not NEED_DATA:
        out.append(event)
        if isinstance(event, LoginResult):
            break
    return out


def test_imap_backend_starttls_dialogue() -> None:
    login = Imap4BackendLogin("u", "pw", our_greeting=OURS, starttls=True, require_tls=True)
    assert talk(login, b"* OK Dovecot ready.\r\n") == [ToBackend(b"flim07 CAPABILITY\r\n")]
    assert talk(login, b"* CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED\r\n"
                       b"flim07 OK Pre-login capabilities\r\n") == [
        ToBackend(b"flim08 STARTTLS\r\n")]
    # A man in the middle appends a reply of his own after the OK: it is dropped.
    assert talk(login, b"flim08 OK Begin TLS negotiation now.\r\n"
                       b"* CAPABILITY IMAP4rev1 LOGINDISABLED\r\nflim09 OK\r\n") == [
        StartTLS(), ToBackend(b"flim09 CAPABILITY\r\n")]
    assert talk(login, b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\nflim09 OK caps\r\n") == [
        ToBackend(b"flim0a LOGIN {1}\r\n")]
    assert talk(login, b"+ OK\r\n") == [ToBackend(b"u {2}\r\n")]
    assert talk(login, b"+ OK\r\n") == [ToBackend(b"pw\r\n")]
    assert talk(login, b"flim0a OK Logged in\r\n") == [
        LoginResult(LoginStatus.OK, server_line=b"OK Logged in")]


@pytest.mark.parametrize("require_tls", [False, True])
def test_imap_backend_without_starttls(require_tls: bool) -> None:
    login = Imap4BackendLogin("u", "pw", our_greeting=OURS, starttls=True,
                              require_tls=require_tls)
    talk(login, b"* OK hi\r\n")
    events = talk(login, b"* CAPABILITY IMAP4rev1\r\nflim07 OK done\r\n")
    if require_tls:
        assert events == [LoginResult(LoginStatus.TLS_NOT_PRESENT, server_line=b"OK done")]
        assert login.quit_bytes() == b"flim08 LOGOUT\r\n"
    else:  # on in plain text, asking again as perdition does
        assert events == [ToBackend(b"flim08 CAPABILITY\r\n")]
        assert talk(login, b"* CAPABILITY IMAP4rev1\r\nflim08 OK\r\n") == [
            ToBackend(b"flim09 LOGIN {1}\r\n")]


# ---------------------------------------------------------------- POP3, back-end side

POP_OURS = b"POP3 perditon ready on h 00000000"


def test_pop3_backend_stls_dialogue() -> None:
    login = Pop3BackendLogin("u", "pw", our_greeting=POP_OURS, starttls=True, require_tls=True)
    assert talk(login, b"+OK Dovecot ready.\r\n") == [ToBackend(b"CAPA\r\n")]
    assert talk(login, b"+OK\r\nCAPA\r\nTOP\r\nSTLS\r\nUSER\r\n.\r\n") == [
        ToBackend(b"STLS\r\n")]
    assert talk(login, b"+OK Begin TLS negotiation now.\r\n+OK injected\r\n") == [
        StartTLS(), ToBackend(b"USER u\r\n")]
    assert talk(login, b"+OK\r\n") == [ToBackend(b"PASS pw\r\n")]
    assert talk(login, b"+OK Logged in.\r\n") == [
        LoginResult(LoginStatus.OK, server_line=b"+OK Logged in.")]


@pytest.mark.parametrize(("replies", "require_tls", "expected"), [
    (b"+OK\r\nUSER\r\n.\r\n", True, LoginResult(LoginStatus.TLS_NOT_PRESENT)),
    (b"+OK\r\nUSER\r\n.\r\n", False, ToBackend(b"USER u\r\n")),
    (b"-ERR no CAPA\r\n", True,
     LoginResult(LoginStatus.TLS_NOT_PRESENT, server_line=b"-ERR no CAPA")),
    (b"-ERR no CAPA\r\n", False, ToBackend(b"USER u\r\n")),
])
def test_pop3_backend_without_stls(replies: bytes, require_tls: bool, expected: object) -> None:
    login = Pop3BackendLogin("u", "pw", our_greeting=POP_OURS, starttls=True,
                             require_tls=require_tls)
    assert talk(login, b"+OK hi\r\n") == [ToBackend(b"CAPA\r\n")]
    assert talk(login, replies) == [expected]


def test_pop3_backend_stls_refused() -> None:
    login = Pop3BackendLogin("u", "pw", our_greeting=POP_OURS, starttls=True, require_tls=True)
    talk(login, b"+OK hi\r\n")
    talk(login, b"+OK\r\nSTLS\r\n.\r\n")
    assert talk(login, b"-ERR not now\r\n") == [
        LoginResult(LoginStatus.TLS_NOT_PRESENT, server_line=b"-ERR not now")]


# ---------------------------------------------------------------- self-signed back-ends


def outgoing(keypair: tuple[str, str], *argv: str) -> Options:
    return opts("--ssl_mode", "ssl_outgoing", "--ssl_ca_file", keypair[0], *argv)


@pytest.mark.parametrize(("argv", "codes"), [
    ([], set()),
    (["--ssl_cert_accept_self_signed"], {18}),
    (["--ssl_ca_accept_self_signed"], {19}),
    (["--ssl_cert_accept_self_signed", "--ssl_ca_accept_self_signed"], {18, 19}),
    (["--ssl_cert_accept_self_signed", "--ssl_no_cert_verify"], set()),
])
def test_which_verify_failures_are_forgiven(keypair: tuple[str, str], argv: list[str],
                                            codes: set[int]) -> None:
    built = tls.TlsContexts(outgoing(keypair, *argv))
    assert built._forgiven == codes
    assert (built._unverified is not None) == bool(codes)


def test_accept_self_signed_applies_to_starttls_towards_back_ends_too(
        keypair: tuple[str, str]) -> None:
    """Under tls_outgoing the session redoes the STARTTLS dialogue for the retry."""
    options = opts("--ssl_mode", "tls_outgoing", "--ssl_ca_file", keypair[0],
                   "--ssl_ca_accept_self_signed", "--ssl_cert_accept_self_signed")
    assert tls.TlsContexts(options)._forgiven == {18, 19}
    # Without outgoing TLS at all the options have nothing to act on.
    assert tls.contexts(opts("--ssl_cert_accept_self_signed")) is None


@pytest.mark.parametrize(("cert", "server", "ok"), [
    ({"subjectAltName": (("DNS", "mail.example"),)}, "mail.example", True),
    ({"subjectAltName": (("DNS", "MAIL.example."),)}, "mail.EXAMPLE", True),
    ({"subjectAltName": (("DNS", "*.example"),)}, "mail.example", True),
    ({"subjectAltName": (("DNS", "*.example"),)}, "a.mail.example", False),
    ({"subjectAltName": (("DNS", "*.example"),)}, "example", False),
    ({"subjectAltName": (("DNS", "other.example"),)}, "mail.example", False),
    # The CN counts only when there are no DNS names.
    ({"subject": ((("commonName", "mail.example"),),)}, "mail.example", True),
    ({"subject": ((("commonName", "mail.example"),),),
      "subjectAltName": (("DNS", "other.example"),)}, "mail.example", False),
    ({"subjectAltName": (("IP Address", "127.0.0.1"),)}, "127.0.0.1", True),
    ({"subjectAltName": (("IP Address", "0:0:0:0:0:0:0:1\n"),)}, "::1", True),
    # An address is never matched by a DNS name or the CN.
    ({"subject": ((("commonName", "127.0.0.1"),),),
      "subjectAltName": (("DNS", "127.0.0.1"),)}, "127.0.0.1", False),
])
def test_host_names_on_the_retry(cert: dict[str, object], server: str, ok: bool) -> None:
    if ok:
        tls._check_names(cert, server)
    else:
        with pytest.raises(tls.TlsError, match="mismatch, certificate is not valid for"):
            tls._check_names(cert, server)


def _serve_tls(keypair: tuple[str, str], connections: int) -> tuple[socket.socket, threading.Thread]:
    """A loopback TLS server showing the self-signed ``keypair``, ``connections`` times."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*keypair)
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        for _ in range(connections):
            conn, _ = listener.accept()
            with contextlib.suppress(OSError), conn:
                with context.wrap_socket(conn, server_side=True) as session:
                    session.sendall(b"hello\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


def _connect(built: tls.TlsContexts, listener: socket.socket, server: str) -> ssl.SSLSocket:
    sock = socket.create_connection(listener.getsockname(), timeout=5)
    return built.connect(sock, server, 5)


def test_a_self_signed_backend_is_retried_and_accepted(
    openssl: str, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    # Signed by nobody the proxy trusts: its own CA file is another certificate.
    cert, key = tmp_path / "self.pem", tmp_path / "self.key"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=localhost"], check=True, capture_output=True)
    other = tmp_path / "other.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(tmp_path / "other.key"),
                    "-out", str(other), "-days", "2", "-subj", "/CN=other"],
                   check=True, capture_output=True)
    strict = tls.TlsContexts(outgoing((str(other), ""), "--ssl_ca_path", ""))
    lax = tls.TlsContexts(outgoing((str(other), ""), "--ssl_ca_path", "",
                                   "--ssl_cert_accept_self_signed"))
    listener, thread = _serve_tls((str(cert), str(key)), 7)  # 1 + 2 + 2 + 2
    with listener:
        with pytest.raises(tls.TlsError) as info:
            _connect(strict, listener, "localhost")
        assert info.value.verify_code == 18
        assert str(info.value) == "certificate verify failed: self-signed certificate"
        with caplog.at_level("WARNING", "perditionpy.tls"), \
                _connect(lax, listener, "localhost") as session:
            assert session.recv(100) == b"hello\r\n"
        assert "warning: self-signed certificate from server localhost accepted " \
               "(ssl_cert_accept_self_signed)" in caplog.text
        # The retry still checks the name: the certificate has only CN=localhost.
        with pytest.raises(tls.TlsError, match="IP address mismatch"):
            _connect(lax, listener, "127.0.0.1")
        # ... and the dates: three days on, it has expired.
        later = time.time() + 3 * 86400
        with monkeypatch.context() as patch:
            patch.setattr(tls.time, "time", lambda: later)
            with pytest.raises(tls.TlsError, match="certificate has expired"):
                _connect(lax, listener, "localhost")
        thread.join(5)
