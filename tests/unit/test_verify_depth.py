"""``--ssl_cert_verify_depth`` without a daemon: the OpenSSL setting itself
(:mod:`perditionpy._verify_depth`), the depth each context gets, and real
handshakes over loopback against chains of 0, 1 and 2 intermediate CAs.

perdition 2.2's rule, observed against /usr/sbin/perdition (and checked by
tests/integration/test_tls_verify_depth.py): with depth N a verified chain of
at most N + 1 certificates (leaf, intermediates, root) passes; that is k
intermediates pass when k <= N - 1.  The same on both sides, and for an
untrusted self-signed root forgiven by ``--ssl_ca_accept_self_signed``.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from perditionpy import _verify_depth, tls
from perditionpy.options import Options, load
from tests.support.dovecot import TlsFiles
from tests.support.pki import Chain, make_ca, make_chain, make_self_signed
from tests.support.ports import LOOPBACK

TIMEOUT = 10.0
HELLO = b"hello\r\n"


def opts(*argv: str) -> Options:
    return load(["-f", "", "--ssl_ca_path", "", *argv], "perdition", sysconfdir="/nonexistent")


def accepted(k: int, depth: int) -> bool:
    """perdition's verdict on a chain of ``k`` intermediates under ``depth``."""
    return k + 2 <= depth + 1


@dataclass(frozen=True)
class Certs:
    chains: dict[int, Chain]    # by number of intermediates, all under one root
    with_root: dict[int, TlsFiles]  # the same, showing the root too
    self_signed: TlsFiles       # a leaf that signs itself
    other_root: Path            # trusted, signs nothing used here


@pytest.fixture(scope="module")
def certs(openssl: str, tmp_path_factory: pytest.TempPathFactory) -> Certs:
    directory = tmp_path_factory.mktemp("depth-pki")
    root = make_ca(openssl, directory, "root")
    chains = {k: make_chain(openssl, directory, f"k{k}", root, k) for k in (0, 1, 2)}
    with_root = {}
    for k, chain in chains.items():
        shown = directory / f"k{k}-with-root.pem"
        shown.write_bytes(chain.leaf.cert.read_bytes() + chain.root.read_bytes())
        with_root[k] = TlsFiles(cert=shown, key=chain.leaf.key)
    return Certs(chains=chains, with_root=with_root,
                 self_signed=make_self_signed(openssl, directory, "self"),
                 other_root=make_ca(openssl, directory, "other")[0])


# ---------------------------------------------------------------- the OpenSSL setting


@pytest.mark.parametrize("protocol", [ssl.PROTOCOL_TLS_CLIENT, ssl.PROTOCOL_TLS_SERVER])
def test_set_and_read_back(protocol: ssl._SSLMethod) -> None:
    context = ssl.SSLContext(protocol)
    assert _verify_depth.get_verify_depth(context) == -1  # OpenSSL's default applies
    _verify_depth.set_verify_depth(context, 4)
    assert _verify_depth.get_verify_depth(context) == 4
    other = ssl.SSLContext(protocol)
    assert _verify_depth.get_verify_depth(other) == -1  # per context


def test_a_pointer_that_is_not_the_contexts_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pointer is read back through libssl before anything is written."""
    context, stranger = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), \
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    stranger.options |= ssl.OP_NO_TICKET
    wrong = _verify_depth._context_pointer(stranger)
    monkeypatch.setattr(_verify_depth, "_context_pointer", lambda ctx: wrong)
    with pytest.raises(_verify_depth.VerifyDepthError, match="options"):
        _verify_depth.set_verify_depth(context, 3)
    stranger.options = context.options
    stranger.verify_mode = ssl.CERT_OPTIONAL  # context: CERT_REQUIRED
    with pytest.raises(_verify_depth.VerifyDepthError, match="verify mode"):
        _verify_depth.set_verify_depth(context, 3)
    monkeypatch.undo()
    assert _verify_depth.get_verify_depth(stranger) == -1  # nothing was written


def test_another_openssl_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_verify_depth, "_loaded", [])
    monkeypatch.setattr(ssl, "OPENSSL_VERSION_NUMBER", ssl.OPENSSL_VERSION_NUMBER + 1)
    with pytest.raises(_verify_depth.VerifyDepthError, match="version"):
        _verify_depth.set_verify_depth(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), 3)


def test_bad_arguments() -> None:
    with pytest.raises(TypeError):
        _verify_depth.set_verify_depth(object(), 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        _verify_depth.set_verify_depth(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), -1)


# ---------------------------------------------------------------- the depth each context gets


def listening(certs: Certs, *argv: str) -> Options:
    leaf = certs.chains[0].leaf
    return opts("--ssl_mode", "ssl_listen", "--ssl_cert_file", str(leaf.cert),
                "--ssl_key_file", str(leaf.key), "--ssl_ca_file", str(certs.chains[0].root),
                *argv)


def outgoing(trusted: Path, *argv: str) -> Options:
    return opts("--ssl_mode", "ssl_outgoing", "--ssl_ca_file", str(trusted), *argv)


@pytest.mark.parametrize(("argv", "depth", "recount"), [
    ([], 8, None),                                   # the default, 9
    (["--ssl_cert_verify_depth", "3"], 2, None),
    (["--ssl_cert_verify_depth", "1"], 0, None),
    (["--ssl_cert_verify_depth", "0"], 0, 1),        # "the leaf alone": counted
    (["--ssl_cert_verify_depth", "3", "--ssl_ca_accept_self_signed"], 3, 4),
    (["--ssl_cert_verify_depth", "3", "--ssl_cert_accept_self_signed"], 2, None),
    (["--ssl_cert_verify_depth", "3", "--ssl_no_cert_verify"], -1, None),  # nothing verified
])
def test_outgoing_depth(certs: Certs, argv: list[str], depth: int, recount: int | None) -> None:
    built = tls.TlsContexts(outgoing(certs.chains[0].root, *argv))
    assert built.outgoing is not None
    assert _verify_depth.get_verify_depth(built.outgoing) == depth
    assert built._recount["outgoing"] == recount


@pytest.mark.parametrize(("argv", "depth", "recount"), [
    ([], 8, None),
    (["--ssl_cert_verify_depth", "2"], 1, None),
    (["--ssl_cert_verify_depth", "0"], 0, 1),
    (["--ssl_cert_verify_depth", "2", "--ssl_no_client_cert_verify"], -1, None),
])
def test_listening_depth(certs: Certs, argv: list[str], depth: int, recount: int | None) -> None:
    built = tls.TlsContexts(listening(certs, *argv))
    assert built.listen is not None
    assert _verify_depth.get_verify_depth(built.listen) == depth
    assert built._recount["listen"] == recount


def test_when_the_depth_cannot_be_set(certs: Certs, monkeypatch: pytest.MonkeyPatch) -> None:
    """Asked for, it stops the start; at its default the start goes on (as before)."""
    def refuse(ctx: ssl.SSLContext, depth: int) -> None:
        raise _verify_depth.VerifyDepthError("no way")

    monkeypatch.setattr(_verify_depth, "set_verify_depth", refuse)
    with pytest.raises(tls.TlsSetupError, match="--ssl_cert_verify_depth cannot be applied "
                                                 "with this Python's ssl module: no way"):
        tls.TlsContexts(outgoing(certs.chains[0].root, "--ssl_cert_verify_depth", "3"))
    built = tls.TlsContexts(outgoing(certs.chains[0].root))
    assert built.outgoing is not None and built._recount["outgoing"] is None


# ---------------------------------------------------------------- handshakes: back-ends


@contextlib.contextmanager
def tls_server(shown: TlsFiles) -> Iterator[tuple[str, int]]:
    """A loopback TLS server showing ``shown`` to every connection, one at a time."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(shown.cert, shown.key)
    listener = socket.create_server((LOOPBACK, 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # the listener was shut down
            conn.settimeout(TIMEOUT)
            with contextlib.suppress(OSError), conn, \
                    context.wrap_socket(conn, server_side=True) as session:
                session.sendall(HELLO)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[:2]
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # wakes the accept()
        listener.close()
        thread.join(TIMEOUT)


def connect(built: tls.TlsContexts, address: tuple[str, int]) -> bytes:
    """What the back-end says once the proxy's side of the handshake is done."""
    session = built.connect(socket.create_connection(address, TIMEOUT), "localhost", TIMEOUT)
    with session:
        return session.recv(100)


def refusal(built: tls.TlsContexts, address: tuple[str, int]) -> tls.TlsError:
    with pytest.raises(tls.TlsError) as info:
        connect(built, address)
    return info.value


@pytest.mark.parametrize("depth", [0, 1, 2, 3])
def test_backend_chains(certs: Certs, depth: int) -> None:
    built = tls.TlsContexts(outgoing(certs.chains[0].root,
                                     "--ssl_cert_verify_depth", str(depth)))
    for k, chain in certs.chains.items():
        with tls_server(chain.leaf) as address:
            if accepted(k, depth):
                assert connect(built, address) == HELLO, (k, depth)
                continue
            failure = refusal(built, address)
        assert (str(failure), failure.verify_code) == (
            f"certificate verify failed: certificate chain too long "
            f"(ssl_cert_verify_depth={depth})", 22), k


def test_depth_zero_takes_a_trusted_self_signed_leaf(certs: Certs) -> None:
    built = tls.TlsContexts(outgoing(certs.self_signed.cert, "--ssl_cert_verify_depth", "0"))
    with tls_server(certs.self_signed) as address:
        assert connect(built, address) == HELLO


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_ca_accept_self_signed_counts_the_untrusted_root(certs: Certs, depth: int) -> None:
    """Trusting another CA, each chain ends in a root nobody trusts (19): forgiven
    while the chain fits the depth, exactly as perdition's callback does."""
    built = tls.TlsContexts(outgoing(certs.other_root, "--ssl_ca_accept_self_signed",
                                     "--ssl_cert_verify_depth", str(depth)))
    for k, shown in certs.with_root.items():
        with tls_server(shown) as address:
            if accepted(k, depth):
                assert connect(built, address) == HELLO, (k, depth)
            else:
                assert refusal(built, address).verify_code == 22, (k, depth)


@pytest.mark.parametrize("depth", [1, 2])
def test_ca_accept_self_signed_with_a_trusted_root(certs: Certs, depth: int) -> None:
    """The OpenSSL depth is one looser there: the chain is counted after the handshake."""
    built = tls.TlsContexts(outgoing(certs.chains[0].root, "--ssl_ca_accept_self_signed",
                                     "--ssl_cert_verify_depth", str(depth)))
    for k, chain in certs.chains.items():
        with tls_server(chain.leaf) as address:
            if accepted(k, depth):
                assert connect(built, address) == HELLO, (k, depth)
            else:
                assert refusal(built, address).verify_code == 22, (k, depth)


# ---------------------------------------------------------------- handshakes: clients


def client_handshake(end: socket.socket, shown: TlsFiles | None) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if shown is not None:
        context.load_cert_chain(shown.cert, shown.key)
    end.settimeout(TIMEOUT)
    with contextlib.suppress(OSError), context.wrap_socket(end) as session:
        session.recv(100)  # until the proxy's side closes


def accept(built: tls.TlsContexts, shown: TlsFiles | None) -> object:
    """The proxy's side of a client's handshake: the client certificate's subject."""
    ours, theirs = socket.socketpair()
    client = threading.Thread(target=client_handshake, args=(theirs, shown), daemon=True)
    client.start()
    try:
        with built.accept(ours, TIMEOUT) as session:  # on a duplicate of ``ours``
            return (session.getpeercert() or {}).get("subject")
    finally:
        ours.close()  # the client's recv() ends
        client.join(TIMEOUT)
        theirs.close()


@pytest.mark.parametrize("depth", [0, 1, 2, 3])
def test_client_chains(certs: Certs, depth: int) -> None:
    built = tls.TlsContexts(listening(certs, "--ssl_cert_verify_depth", str(depth)))
    assert accept(built, None) is None  # no certificate: nothing to count
    for k, chain in certs.chains.items():
        if accepted(k, depth):
            assert accept(built, chain.leaf) == ((("commonName", "localhost"),),), (k, depth)
            continue
        with pytest.raises(tls.TlsError) as info:
            accept(built, chain.leaf)
        assert info.value.verify_code == 22 and "chain too long" in str(info.value), k
