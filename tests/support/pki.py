"""Certificates made at test time with the openssl tool.

* :func:`make_ca` — a self-signed CA (a root);
* :func:`make_intermediate` — a CA signed by another;
* :func:`make_self_signed` — a leaf for ``san`` that signs itself;
* :func:`make_server` — a leaf for ``san`` (``DNS:…,IP:…``) signed by a CA, with
  ``openssl ca`` so that it can be backdated;
* :func:`make_chain` — a root-signed ladder of ``k`` intermediate CAs and a
  leaf under the lowest, whose certificate file holds the leaf followed by the
  intermediates (what a TLS server or client shows), usable for server and
  client authentication alike.

All keys are P-256 and world-readable (Dovecot's unprivileged processes read
them when the tests do not run as root).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.dovecot import TlsFiles

__all__ = ["Chain", "make_ca", "make_chain", "make_intermediate", "make_self_signed",
           "make_server", "run_openssl"]

# A CA directory for ``openssl ca``; the sections are the extensions of what it signs.
_CA_CONFIG = """\
[ca]
default_ca = ca_default
[ca_default]
database = {dir}/index.txt
new_certs_dir = {dir}
serial = {dir}/serial
default_md = sha256
policy = any
copy_extensions = copy
unique_subject = no
[any]
commonName = supplied
[server]
basicConstraints = CA:FALSE
keyUsage = digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
[peer]
basicConstraints = CA:FALSE
keyUsage = digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
[intermediate]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
"""

KeyPair = tuple[Path, Path]  # (certificate, key)


@dataclass(frozen=True)
class Chain:
    """What :func:`make_chain` made."""

    root: Path                      # the self-signed CA at the top
    intermediates: tuple[Path, ...]  # highest first: signed by root, then by the one before
    leaf: TlsFiles                  # cert: the leaf, then the intermediates lowest first

    @property
    def length(self) -> int:
        """Certificates in the verified chain: leaf, intermediates, root."""
        return len(self.intermediates) + 2


def run_openssl(openssl: str, *args: str | Path) -> None:
    subprocess.run([openssl, *map(str, args)], check=True, capture_output=True, timeout=60)


def make_ca(openssl: str, directory: Path, name: str) -> KeyPair:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    run_openssl(openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-keyout", key, "-out", cert, "-days", "30", "-subj", f"/CN={name}",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return cert, key


def make_self_signed(openssl: str, directory: Path, name: str,
                     san: str = "DNS:localhost,IP:127.0.0.1") -> TlsFiles:
    """A leaf for ``san`` that signs itself (no CA flag: usable by a TLS server)."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    run_openssl(openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-keyout", key, "-out", cert, "-days", "30",
                "-subj", "/CN=" + san.split(",")[0].split(":")[1],
                "-addext", f"subjectAltName={san}")
    return TlsFiles(cert=cert, key=key)


def make_server(openssl: str, directory: Path, name: str, ca: KeyPair, san: str,
                dates: tuple[str, str] | None = None, *, extensions: str = "server"
                ) -> TlsFiles:
    """A leaf for ``san`` signed by ``ca`` (``extensions``: ``server``, or ``peer``
    for a certificate good for client authentication too)."""
    common_name = san.split(",")[0].split(":")[1]
    cert, key = _sign(openssl, directory, name, ca, common_name, extensions, dates,
                      "-addext", f"subjectAltName={san}")
    key.chmod(0o644)  # Dovecot's unprivileged processes read it when not root
    return TlsFiles(cert=cert, key=key)


def make_intermediate(openssl: str, directory: Path, name: str, ca: KeyPair) -> KeyPair:
    return _sign(openssl, directory, name, ca, name, "intermediate", None)


def make_chain(openssl: str, directory: Path, name: str, root: KeyPair, intermediates: int,
               san: str = "DNS:localhost,IP:127.0.0.1") -> Chain:
    """``intermediates`` CAs below ``root`` and a leaf for ``san`` below the last."""
    ladder: list[KeyPair] = []
    for index in range(intermediates):
        issuer = ladder[-1] if ladder else root
        ladder.append(make_intermediate(openssl, directory, f"{name}-ca{index + 1}", issuer))
    leaf = make_server(openssl, directory, f"{name}-leaf", ladder[-1] if ladder else root, san,
                       extensions="peer")
    shown = directory / f"{name}-chain.pem"
    shown.write_bytes(b"".join(path.read_bytes()
                               for path in (leaf.cert, *(cert for cert, _ in reversed(ladder)))))
    return Chain(root=root[0], intermediates=tuple(cert for cert, _ in ladder),
                 leaf=TlsFiles(cert=shown, key=leaf.key))


def _sign(openssl: str, directory: Path, name: str, ca: KeyPair, common_name: str,
          extensions: str, dates: tuple[str, str] | None, *request: str) -> KeyPair:
    """A new key and a certificate for it signed by ``ca`` with ``openssl ca``."""
    cadir = directory / f"{name}-ca"
    cadir.mkdir()
    (cadir / "index.txt").write_text("")
    (cadir / "serial").write_text("1000\n")
    config = cadir / "ca.cnf"
    config.write_text(_CA_CONFIG.format(dir=cadir))
    key, csr, cert = directory / f"{name}.key", cadir / "req.csr", directory / f"{name}.pem"
    run_openssl(openssl, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-keyout", key, "-out", csr, "-subj", f"/CN={common_name}", *request)
    validity = ["-startdate", dates[0], "-enddate", dates[1]] if dates else ["-days", "30"]
    run_openssl(openssl, "ca", "-batch", "-notext", "-config", config, "-extensions", extensions,
                "-cert", ca[0], "-keyfile", ca[1], "-in", csr, "-out", cert, *validity)
    return cert, key
