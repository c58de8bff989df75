"""``--ssl_cert_verify_depth`` end to end: real Dovecots showing certificate
chains, imaplib through the proxy, and the same cases through perdition 2.2.

Certificates are made at test time: one root CA, and under it chains with one
and with two intermediate CAs, each ending in a leaf for ``127.0.0.1`` that is
good for server and client authentication alike.

perdition's rule (its verify callback refuses any certificate deeper than the
option): a verified chain of at most depth + 1 certificates passes, so a chain
of k intermediates (k + 2 certificates with the leaf and the root) needs a
depth of k + 1.  What must hold:

* towards back-ends (``ssl_outgoing``): depth k + 1 logs in, depth k is
  refused with the reason logged and perdition's failure reply, the default
  (9) logs in — and perdition 2.2 gives the same verdicts;
* towards clients (``ssl_listen``: perdition asks for a client certificate and
  verifies one if shown): a client certificate with k intermediates is
  accepted at depth k + 1 and refused at depth k, as by perdition 2.2.
"""

from __future__ import annotations

import imaplib
import re
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.test_proxy_e2e import DEADLINE, concurrently
from tests.integration.test_tls import imap_login_reply, running
from tests.support.dovecot import Dovecot, TlsFiles
from tests.support.pki import Chain, make_ca, make_chain
from tests.support.ports import LOOPBACK
from tests.support.procs import Proc
from tests.support.scenarios import readable_dir

LENGTHS = (1, 2)  # intermediates
OK = "OK You are so in"
REFUSED = "failed: Could not connect to server"


@dataclass(frozen=True)
class Chains:
    root: Path
    by_length: dict[int, Chain]


@pytest.fixture(scope="module")
def chains(openssl: str) -> Iterator[Chains]:
    # Readable by Dovecot's unprivileged processes, and by perdition, which
    # reads its CA file for each back-end connection after dropping to nobody.
    with readable_dir() as directory:
        root = make_ca(openssl, directory, "root")
        yield Chains(root=root[0],
                     by_length={k: make_chain(openssl, directory, f"k{k}", root, k)
                                for k in LENGTHS})


@pytest.fixture(scope="module")
def chain_dovecots(chains: Chains, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[dict[int, Dovecot]]:
    """One Dovecot per chain, each showing its leaf and intermediates."""
    from tests.conftest import require
    from tests.support.dovecot import dovecot_binary

    require(dovecot_binary() is not None, "dovecot")
    servers: dict[int, Dovecot] = {}
    try:
        for k, chain in chains.by_length.items():
            servers[k] = Dovecot(workdir=tmp_path_factory.mktemp(f"dovecot-chain{k}"),
                                 tls=chain.leaf).start()
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def outgoing_args(chains: Chains, backend: Dovecot, depth: int | None, *extra: str
                  ) -> list[str]:
    args = ["-M", "", "-P", "IMAP4", "-s", f"{LOOPBACK}:{backend.imaps_port}",
            "--ssl_mode", "ssl_outgoing", "--ssl_ca_file", str(chains.root), *extra]
    return args if depth is None else [*args, "--ssl_cert_verify_depth", str(depth)]


def verdict(name: str, reply: str) -> str:
    """"ok" or "refused".  perdition closes the client without a word when the
    back-end's certificate fails (docs/tls.md); perditionpy answers."""
    if reply == OK:
        return "ok"
    assert (REFUSED if name == "perditionpy" else "socket error: EOF") in reply, (name, reply)
    return "refused"


# --------------------------------------------------------------------------- back-ends


@pytest.mark.parametrize("k", LENGTHS)
def test_backend_chain_needs_a_depth_of_its_length(
    chains: Chains, chain_dovecots: dict[int, Dovecot], tmp_path: Path, k: int
) -> None:
    backend = chain_dovecots[k]
    with running(outgoing_args(chains, backend, k + 1), tmp_path / "enough") as enough, \
         running(outgoing_args(chains, backend, k), tmp_path / "short") as short, \
         running(outgoing_args(chains, backend, None), tmp_path / "default") as default:
        replies = concurrently(*(lambda p=p: imap_login_reply(p.port)
                                 for p in (enough, short, default)))
        assert replies[0] == OK and replies[2] == OK
        assert REFUSED in replies[1], replies[1]
        short.wait_for_log(
            rf"Error establishing SSL connection to server 127\.0\.0\.1:{backend.imaps_port}"
            rf".*: certificate verify failed: certificate chain too long "
            rf"\(ssl_cert_verify_depth={k}\)")
        short.wait_for_log(rf'server-secure=ssl status="{REFUSED}"')
        assert "chain too long" not in enough.log_text() + default.log_text()


def test_backend_verdicts_match_perdition(
    chains: Chains, chain_dovecots: dict[int, Dovecot],
    run_perdition: Callable[..., Proc], run_perditionpy: Callable[..., Proc]
) -> None:
    """Both proxies, every chain at depths k, k + 1 and k + 2.  perdition checks
    the certificate's CN only (not its IP address): --ssl_no_cn_verify for both."""
    cases = [(k, depth) for k in LENGTHS for depth in (k, k + 1, k + 2)]
    proxies = {(name, case): run(outgoing_args(chains, chain_dovecots[case[0]], case[1],
                                               "--ssl_no_cn_verify"))
               for case in cases
               for name, run in (("perdition", run_perdition), ("perditionpy", run_perditionpy))}
    replies = concurrently(*(lambda p=p: imap_login_reply(p.port) for p in proxies.values()))
    verdicts = {key: verdict(key[0], reply)
                for key, reply in zip(proxies, replies, strict=True)}
    expected = {case: "ok" if case[1] >= case[0] + 1 else "refused" for case in cases}
    assert {case: verdicts["perdition", case] for case in cases} == expected
    assert {case: verdicts["perditionpy", case] for case in cases} == expected


# --------------------------------------------------------------------------- clients


def listen_args(chains: Chains, backend: Dovecot, depth: int) -> list[str]:
    ours = chains.by_length[1].leaf
    return ["-M", "", "-P", "IMAP4", "-s", f"{LOOPBACK}:{backend.imap_port}",
            "--ssl_mode", "ssl_listen", "--ssl_cert_file", str(ours.cert),
            "--ssl_key_file", str(ours.key), "--ssl_ca_file", str(chains.root),
            "--ssl_cert_verify_depth", str(depth)]


def login_with_certificate(port: int, chains: Chains, shown: TlsFiles) -> str:
    """IMAPS with a client certificate: "OK …", or how the connection failed."""
    context = ssl.create_default_context(cafile=str(chains.root))
    context.load_cert_chain(shown.cert, shown.key)
    try:
        client = imaplib.IMAP4_SSL(LOOPBACK, port, ssl_context=context, timeout=DEADLINE)
    except (OSError, imaplib.IMAP4.abort) as exc:  # the proxy ends the handshake
        return f"handshake: {exc}"
    try:
        typ, data = client.login("alice", "alice-pw")
        return f"{typ} {data[0].decode()}"
    finally:
        client.logout()


@pytest.mark.parametrize("k", LENGTHS)
def test_client_certificate_chains(
    chains: Chains, dovecot: Dovecot, k: int,
    run_perdition: Callable[..., Proc], run_perditionpy: Callable[..., Proc]
) -> None:
    """perdition verifies a client certificate when one is shown: depth k + 1
    takes a chain of k intermediates, depth k refuses it — in both proxies."""
    shown = chains.by_length[k].leaf
    proxies = {(name, depth): run(listen_args(chains, dovecot, depth), greeting=None)
               for depth in (k, k + 1)
               for name, run in (("perdition", run_perdition), ("perditionpy", run_perditionpy))}
    replies = concurrently(*(lambda p=p: login_with_certificate(p.port, chains, shown)
                             for p in proxies.values()))
    results = dict(zip(proxies, replies, strict=True))
    for name in ("perdition", "perditionpy"):
        assert results[name, k + 1] == OK, results
        assert results[name, k].startswith("handshake:"), results
    proxies["perditionpy", k].wait_for_log(
        r"Fatal error establishing SSL connection to client .*: certificate verify failed: "
        rf"certificate chain too long \(ssl_cert_verify_depth={k}\)")
    # The proxies' own chain (one intermediate) is unaffected: this is the client's.
    assert re.search("chain too long", proxies["perditionpy", k + 1].log_text()) is None
