"""SSL/TLS for perditionpy: which sides are encrypted (``--ssl_mode`` and the
protocol), the two OpenSSL contexts built once from the ``ssl_*`` options, and
the handshakes.

* :func:`mode` turns ``--ssl_mode`` (plus ``-P IMAP4S``/``POP3S``, which mean
  ``ssl_all`` unless ``--ssl_mode`` is given) into a :class:`TlsMode`.
* :class:`TlsContexts` holds the listening (server) context and the outgoing
  (client) context.  Building them reads the certificate, key, CAs, DH
  parameters and passphrase: it happens at start-up, before privileges are
  dropped, and any problem is a :class:`TlsSetupError` naming the file.
* :meth:`TlsContexts.accept` and :meth:`TlsContexts.connect` run one
  handshake, bounded by a timeout; a failure is a :class:`TlsError` whose text
  says why (for the log line).
* ``--ssl_cert_accept_self_signed`` / ``--ssl_ca_accept_self_signed`` without
  a verify callback (Python's ``ssl`` has none): a back-end handshake that
  fails verification with exactly OpenSSL's "self-signed certificate" (18) or
  "self-signed certificate in certificate chain" (19) is retried on a new
  connection without verification, and the certificate then shown is checked
  here: self-signed (for 18), its names and its dates.
* ``--ssl_cert_verify_depth N``: perdition's verify callback fails any
  certificate more than N below the top of the verified chain, so a chain of
  at most N + 1 certificates (leaf, intermediates, trust anchor) passes, on
  both sides.  Each verifying context gets the OpenSSL verify depth that says
  the same (:func:`_limit_depth`, through :mod:`perditionpy._verify_depth`), so
  a longer chain fails inside the handshake with OpenSSL's "certificate chain
  too long" (22); where no OpenSSL depth is exact (N = 0, or
  ``--ssl_ca_accept_self_signed``) the verified chain is also counted after
  the handshake.

The protocol engines never see any of this: they only announce
:class:`~perditionpy.protocol.base.StartTLS`; the session wraps its socket here.
"""

from __future__ import annotations

# ssl.cert_time_to_seconds() imports this on first use, which may come after
# privileges are dropped and the standard library is out of reach: import it now.
import _strptime  # type: ignore[import-not-found]  # noqa: F401
import getpass
import ipaddress
import logging
import os
import socket
import ssl
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from perditionpy import _verify_depth
from perditionpy.errors import PerditionError

__all__ = ["TlsMode", "TlsContexts", "TlsError", "TlsSetupError", "mode", "contexts", "close"]

log = logging.getLogger(__name__)

# perdition's version names (and ours: tlsv1.3) → OpenSSL's.
_VERSIONS = {
    "sslv3": ssl.TLSVersion.SSLv3, "tlsv1": ssl.TLSVersion.TLSv1,
    "tlsv1.1": ssl.TLSVersion.TLSv1_1, "tlsv1.2": ssl.TLSVersion.TLSv1_2,
    "tlsv1.3": ssl.TLSVersion.TLSv1_3,
}
# Unless the user names an older minimum, nothing before TLS 1.2 is spoken.
_FLOOR = ssl.TLSVersion.TLSv1_2
# X509_V_FLAG_NO_CHECK_TIME: let OpenSSL skip the dates; we check the server's
# own certificate's dates ourselves (see _check_dates), honouring each flag.
_NO_CHECK_TIME = 0x200000
_DEFAULT_CA_PATH = "/etc/perdition/perdition.ca/"
_MAX_PASSPHRASE = 1024
# OpenSSL's verify codes the accept-self-signed options forgive, and which option does.
_DEPTH_ZERO_SELF_SIGNED = 18  # X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
_SELF_SIGNED_IN_CHAIN = 19    # X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN
_SELF_SIGNED_OPTIONS = {
    _DEPTH_ZERO_SELF_SIGNED: "ssl_cert_accept_self_signed",
    _SELF_SIGNED_IN_CHAIN: "ssl_ca_accept_self_signed",
}
_CHAIN_TOO_LONG = 22          # X509_V_ERR_CERT_CHAIN_TOO_LONG


# Opens a new connection to the back-end, up to where the handshake starts.
Reconnect = Callable[[float | None], socket.socket]


class TlsSetupError(PerditionError):
    """A context could not be built (certificate, key, CA, DH or cipher trouble)."""


class TlsError(Exception):
    """One handshake failed; ``str()`` is the reason, for the log.  ``verify_code``
    is OpenSSL's X509_V_ERR_* when the certificate check failed."""

    def __init__(self, reason: str, verify_code: int | None = None) -> None:
        super().__init__(reason)
        self.verify_code = verify_code


@dataclass(frozen=True, slots=True)
class TlsMode:
    """The effective ``--ssl_mode``: what each side does."""

    ssl_listen: bool = False          # clients speak TLS from the first byte
    ssl_outgoing: bool = False        # we speak TLS to back-ends from the first byte
    tls_listen: bool = False          # clients may STARTTLS/STLS
    tls_outgoing: bool = False        # we STARTTLS/STLS to back-ends that offer it
    tls_listen_force: bool = False    # ... and refuse logins before it
    tls_outgoing_force: bool = False  # ... and refuse back-ends that do not offer it

    @property
    def listen(self) -> bool:
        """A server context is needed."""
        return self.ssl_listen or self.tls_listen

    @property
    def outgoing(self) -> bool:
        """A client context is needed."""
        return self.ssl_outgoing or self.tls_outgoing


def mode(options: Any) -> TlsMode:
    """``--ssl_mode`` as perdition applies it: IMAP4S and POP3S default to ``ssl_all``."""
    flags = set(options.ssl_mode)
    if not flags and options.protocol in ("IMAP4S", "POP3S"):
        flags = {"ssl_listen", "ssl_outgoing"}
    return TlsMode(**{name: name in flags for name in TlsMode.__dataclass_fields__})


# ------------------------------------------------------------------ contexts


class TlsContexts:
    """The contexts of one running proxy; shared by every session (read-only)."""

    def __init__(self, options: Any) -> None:
        self.mode = mode(options)
        self._options = options
        self._forgiven = _forgiven_codes(options, self.mode)
        # The longest verified chain, where a handshake's own limit is not exact.
        self._recount: dict[str, int | None] = {"listen": None, "outgoing": None}
        self.listen: ssl.SSLContext | None = None
        self.outgoing: ssl.SSLContext | None = None
        if self.mode.listen:
            self.listen = _server_context(options)
            self._recount["listen"] = _limit_depth(self.listen, options, frozenset())
        if self.mode.outgoing:
            self.outgoing = _client_context(options)
            self._recount["outgoing"] = _limit_depth(self.outgoing, options, self._forgiven)
        # The retry's context: the same versions and ciphers, no verification.
        self._unverified = _unverified_context(options) if self._forgiven else None

    def accept(self, sock: socket.socket, timeout: float | None) -> ssl.SSLSocket:
        """The server side of a handshake with a client, on a duplicate of ``sock``.

        ``sock`` itself stays open and untouched, so whoever owns it (the
        server's list of live connections) can still ``shutdown()`` it.
        """
        assert self.listen is not None
        tls = self.listen.wrap_socket(sock.dup(), server_side=True,
                                      do_handshake_on_connect=False)
        self._verified_handshake(tls, timeout, "listen")
        return tls

    def connect(self, sock: socket.socket, server: str, timeout: float | None, *,
                reconnect: Reconnect | None = None) -> ssl.SSLSocket:
        """The client side of a handshake with the back-end ``server`` (a host
        name or address, checked against its certificate unless
        ``--ssl_no_cn_verify``).  ``sock`` is taken over.  ``reconnect(timeout)``
        opens a new connection up to the handshake, for the retry of a
        self-signed certificate (default: the same TCP connection again, which
        is right for SSL from the first byte; STARTTLS needs its dialogue)."""
        assert self.outgoing is not None
        again = (reconnect or _Reconnect(sock).connect) if self._forgiven else None
        tls = self.outgoing.wrap_socket(sock, server_hostname=server or None,
                                        do_handshake_on_connect=False)
        try:
            self._verified_handshake(tls, timeout, "outgoing")
        except TlsError as exc:
            if again is None or exc.verify_code not in self._forgiven:
                raise
            tls = self._accept_self_signed(again, server, timeout, exc)
        else:
            if self.outgoing.verify_flags & _NO_CHECK_TIME:
                _check_dates(tls, tls.getpeercert() or {}, self._options)
        if self._options.debug:
            log.debug("SSL connection to %s using %s", server, tls.cipher())
        return tls

    def _verified_handshake(self, tls: ssl.SSLSocket, timeout: float | None, side: str
                            ) -> None:
        """A verifying handshake, then the chain's length where OpenSSL could
        not be told perdition's limit exactly."""
        depth = self._options.ssl_cert_verify_depth
        try:
            _handshake(tls, timeout)
            limit = self._recount[side]
            if limit is not None:
                _check_chain_length(tls, limit)
        except TlsError as exc:
            if exc.verify_code == _CHAIN_TOO_LONG:
                raise TlsError(f"{exc} (ssl_cert_verify_depth={depth})",
                               _CHAIN_TOO_LONG) from None
            raise

    def _accept_self_signed(self, again: Reconnect, server: str, timeout: float | None,
                            failure: TlsError) -> ssl.SSLSocket:
        """The retry: a new connection, a handshake without verification, then
        the checks OpenSSL would still have made had it been told to forgive
        ``failure`` (perdition's verify callback)."""
        assert self._unverified is not None and failure.verify_code is not None
        try:
            sock = again(timeout)
        except OSError as exc:
            raise TlsError(f"{failure}; reconnecting to retry: "
                           f"{exc.strerror or exc}") from None
        tls = self._unverified.wrap_socket(sock, server_hostname=server or None,
                                           do_handshake_on_connect=False)
        _handshake(tls, timeout)
        try:
            cert = _peer_certificate(tls)
            if failure.verify_code == _DEPTH_ZERO_SELF_SIGNED and \
                    cert.get("issuer") != cert.get("subject"):
                raise TlsError(f"{failure}; on retry the certificate was not self-signed")
            if server and not self._options.ssl_no_cn_verify:
                _check_names(cert, server)
        except TlsError:
            tls.close()
            raise
        _check_dates(tls, cert, self._options)
        why = failure.args[0].removeprefix("certificate verify failed: ")
        log.warning("warning: %s from server %s accepted (%s)", why, server,
                    _SELF_SIGNED_OPTIONS[failure.verify_code])
        return tls


def contexts(options: Any) -> TlsContexts | None:
    """The contexts ``options`` need, or ``None`` when SSL/TLS is off."""
    wanted = mode(options)
    return TlsContexts(options) if wanted.listen or wanted.outgoing else None


def close(sock: socket.socket) -> None:
    """Close ``sock``; a TLS session first says close_notify (without waiting for
    the peer's), so that clients can tell the end from a truncation attack."""
    if isinstance(sock, ssl.SSLSocket) and sock.fileno() >= 0:
        try:
            sock.settimeout(0.0)
            sock.unwrap()
        except (OSError, ValueError):
            pass  # the peer's close_notify is not awaited; a reset peer is fine
    sock.close()


def _handshake(tls: ssl.SSLSocket, timeout: float | None) -> None:
    tls.settimeout(timeout)  # CPython bounds the whole handshake by it, not each read
    try:
        tls.do_handshake()
    except ssl.SSLCertVerificationError as exc:
        tls.close()
        raise TlsError(f"certificate verify failed: {exc.verify_message}",
                       exc.verify_code) from None
    except TimeoutError:
        tls.close()
        raise TlsError("handshake timed out") from None
    except ssl.SSLError as exc:
        tls.close()
        raise TlsError(exc.reason or str(exc)) from None
    except OSError as exc:
        tls.close()
        raise TlsError(exc.strerror or str(exc) or "connection closed") from None


def _check_chain_length(tls: ssl.SSLSocket, limit: int) -> None:
    """Refuse a verified chain of more than ``limit`` certificates (none shown:
    a client without a certificate, nothing to count)."""
    sslobj = getattr(tls, "_sslobj", None)  # get_verified_chain() is public from 3.13
    chain = sslobj.get_verified_chain() if sslobj is not None else None
    if chain and len(chain) > limit:
        tls.close()
        raise TlsError("certificate verify failed: certificate chain too long",
                       _CHAIN_TOO_LONG)


def _check_dates(tls: ssl.SSLSocket, cert: dict[str, Any], options: Any) -> None:
    """The dates OpenSSL was told to skip (or never checked: the retry of
    :meth:`TlsContexts._accept_self_signed`), under the flag that covers each one."""
    now = time.time()
    if "notAfter" in cert and ssl.cert_time_to_seconds(str(cert["notAfter"])) < now:
        if not options.ssl_cert_accept_expired:
            tls.close()
            raise TlsError("certificate verify failed: certificate has expired")
        log.warning("warning: certificate has expired (accepted: ssl_cert_accept_expired)")
    if "notBefore" in cert and ssl.cert_time_to_seconds(str(cert["notBefore"])) > now:
        if not options.ssl_cert_accept_not_yet_valid:
            tls.close()
            raise TlsError("certificate verify failed: certificate is not yet valid")
        log.warning("warning: certificate not yet valid "
                    "(accepted: ssl_cert_accept_not_yet_valid)")


class _Reconnect:
    """What it takes to open the same TCP connection again, noted before the
    socket is handed to OpenSSL: the retry for SSL from the first byte (a
    STARTTLS handshake is retried by the session, which knows the dialogue)."""

    def __init__(self, sock: socket.socket) -> None:
        self._address = sock.getpeername()[:2]
        self._options = [(level, name, sock.getsockopt(level, name)) for level, name in
                         ((socket.IPPROTO_TCP, socket.TCP_NODELAY),
                          (socket.SOL_SOCKET, socket.SO_KEEPALIVE))]

    def connect(self, timeout: float | None) -> socket.socket:
        sock = socket.create_connection(self._address, timeout=timeout)
        for level, name, value in self._options:
            sock.setsockopt(level, name, value)
        return sock


def _peer_certificate(tls: ssl.SSLSocket) -> dict[str, Any]:
    """The back-end's certificate, decoded as ``getpeercert()`` would had it
    been verified (unverified, ``getpeercert()`` is empty).  CPython decodes
    only files, hence the temporary one."""
    der = tls.getpeercert(binary_form=True)
    if not der:
        raise TlsError("certificate verify failed: no certificate on retry")
    try:
        with tempfile.NamedTemporaryFile("w", suffix=".pem") as handle:
            handle.write(ssl.DER_cert_to_PEM_cert(der))
            handle.flush()
            return dict(ssl._ssl._test_decode_cert(handle.name))  # type: ignore[attr-defined]
    except (OSError, ssl.SSLError) as exc:  # ssl.SSLError is an OSError too
        raise TlsError(f"certificate verify failed: cannot decode the certificate: "
                       f"{_why(exc)}") from None


def _check_names(cert: dict[str, Any], server: str) -> None:
    """OpenSSL's host check as the verifying context makes it: an address
    against IP subjectAltNames; a name against DNS ones (a leading ``*.``
    covers one label), or the CN when there are none."""
    names = cert.get("subjectAltName", ())
    try:
        address = ipaddress.ip_address(server)
    except ValueError:
        dns = [value for kind, value in names if kind == "DNS"]
        if not dns:
            dns = [value for rdn in cert.get("subject", ()) for key, value in rdn
                   if key == "commonName"]
        if any(_dns_matches(pattern, server) for pattern in dns):
            return
        raise TlsError("certificate verify failed: Hostname mismatch, certificate is "
                       f"not valid for '{server}'.") from None
    for kind, value in names:
        if kind == "IP Address" and _same_address(value, address):
            return
    raise TlsError("certificate verify failed: IP address mismatch, certificate is "
                   f"not valid for '{server}'.")


def _dns_matches(pattern: str, host: str) -> bool:
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern.startswith("*.") and "." in host:
        return host.split(".", 1)[1] == pattern[2:]
    return pattern == host


def _same_address(text: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    try:
        return ipaddress.ip_address(text.strip()) == address
    except ValueError:
        return False


# ------------------------------------------------------------------ building


def _forgiven_codes(options: Any, wanted: TlsMode) -> frozenset[int]:
    """The verify codes the accept-self-signed options forgive."""
    codes = frozenset(code for code, name in _SELF_SIGNED_OPTIONS.items()
                      if getattr(options, name))
    if not codes or not wanted.outgoing or options.ssl_no_cert_verify:
        return frozenset()
    return codes


def _limit_depth(ctx: ssl.SSLContext, options: Any, forgiven: frozenset[int]) -> int | None:
    """Give a verifying ``ctx`` the OpenSSL verify depth that accepts what
    perdition accepts: a verified chain of at most ``ssl_cert_verify_depth`` + 1
    certificates.  Returns the chain length still to count after the handshake
    (``None``: OpenSSL's limit is exact).

    OpenSSL's depth D counts the CAs between the leaf and the trust anchor: a
    trusted chain of D + 2 certificates passes, one more fails with 22.  So D
    is N - 1, except that D cannot say "the leaf alone" (N = 0), and that an
    untrusted chain ending in a self-signed CA reports 19 (which
    ``--ssl_ca_accept_self_signed`` forgives) only up to D + 1 certificates: to
    forgive it exactly where perdition does, D is then N and trusted chains are
    counted.
    """
    if ctx.verify_mode == ssl.CERT_NONE:
        return None  # perdition's depth only ever bounds a verification
    wanted = options.ssl_cert_verify_depth
    in_chain = _SELF_SIGNED_IN_CHAIN in forgiven
    try:
        _verify_depth.set_verify_depth(ctx, wanted if in_chain else max(wanted - 1, 0))
    except _verify_depth.VerifyDepthError as exc:
        if "ssl_cert_verify_depth" in options.explicit:
            raise TlsSetupError(f"--ssl_cert_verify_depth cannot be applied with this "
                                f"Python's ssl module: {exc}") from None
        log.debug("ssl_cert_verify_depth %d not applied (OpenSSL's default limit "
                  "stays): %s", wanted, exc)
        return None
    return wanted + 1 if in_chain or wanted == 0 else None


def _unverified_context(options: Any) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _common(ctx, options, "outgoing")
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _server_context(options: Any) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _common(ctx, options, "listen")
    if options.ssl_no_cipher_server_preference:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    _load_certificate(ctx, options)
    _load_dh_params(ctx, options)
    if options.ssl_no_cert_verify or options.ssl_no_client_cert_verify:
        ctx.verify_mode = ssl.CERT_NONE
    else:
        # perdition asks clients for a certificate and checks one if given.
        _load_cas(ctx, options)
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def _client_context(options: Any) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _common(ctx, options, "outgoing")
    if options.ssl_no_cert_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    if not _load_cas(ctx, options):
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    ctx.check_hostname = not options.ssl_no_cn_verify
    ctx.hostname_checks_common_name = True  # perdition accepts a matching CN
    if options.ssl_cert_accept_expired or options.ssl_cert_accept_not_yet_valid:
        ctx.verify_flags |= _NO_CHECK_TIME
    return ctx


def _common(ctx: ssl.SSLContext, options: Any, side: str) -> None:
    """Versions, compression and ciphers: the same options exist for each side."""
    minimum = _version(options, f"ssl_{side}_min_proto_version") or _FLOOR
    maximum = _version(options, f"ssl_{side}_max_proto_version")
    try:
        with warnings.catch_warnings():  # old versions are deprecated: the user asked for them
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = minimum
            if maximum is not None:
                ctx.maximum_version = maximum
    except (ValueError, ssl.SSLError) as exc:
        raise TlsSetupError(f"--ssl_{side}_*_proto_version: {exc}") from None
    if getattr(options, f"ssl_{side}_compression"):
        ctx.options &= ~ssl.OP_NO_COMPRESSION
    else:
        ctx.options |= ssl.OP_NO_COMPRESSION
    ciphers = getattr(options, f"ssl_{side}_ciphers")
    if not ciphers and minimum < ssl.TLSVersion.TLSv1_2:
        # The user asked for old protocols: OpenSSL 3 refuses them at its
        # default security level, which would make the option a no-op.
        ciphers = "DEFAULT:@SECLEVEL=0"
    if ciphers:
        try:
            ctx.set_ciphers(ciphers)
        except ssl.SSLError:
            raise TlsSetupError(f"--ssl_{side}_ciphers: no cipher matches {ciphers!r}") from None


def _version(options: Any, attr: str) -> ssl.TLSVersion | None:
    """The version an option names; a minimum only counts when the user gave it
    (perdition's default, tlsv1, is below our floor)."""
    value = getattr(options, attr)
    if not value or (attr.endswith("_min_proto_version") and attr not in options.explicit):
        return None
    return _VERSIONS[value]


def _load_certificate(ctx: ssl.SSLContext, options: Any) -> None:
    cert, key = options.ssl_cert_file, options.ssl_key_file
    if not cert or not key:
        raise TlsSetupError("--ssl_cert_file and --ssl_key_file are both needed to "
                            "accept SSL/TLS connections")
    try:
        ctx.load_cert_chain(cert, key, password=_passphrase(options))
    except (OSError, ssl.SSLError) as exc:
        raise TlsSetupError(f'Error loading certificate chain file "{cert}" or private '
                            f'key file "{key}": {_why(exc)}') from None


def _load_dh_params(ctx: ssl.SSLContext, options: Any) -> None:
    """``--ssl_dh_params_file``, else DH parameters inside the certificate file, if any."""
    path = options.ssl_dh_params_file
    if path:
        try:
            ctx.load_dh_params(path)
        except (OSError, ssl.SSLError) as exc:
            raise TlsSetupError(f'Error reading Diffie-Hellman parameters from file '
                                f'"{path}": {_why(exc)}') from None
        return
    try:
        ctx.load_dh_params(options.ssl_cert_file)
    except (OSError, ssl.SSLError):
        log.debug('no DH parameters in "%s"; ECDHE only', options.ssl_cert_file)


def _load_cas(ctx: ssl.SSLContext, options: Any) -> bool:
    """``--ssl_ca_file``, ``--ssl_ca_path`` and ``--ssl_ca_chain_file``; True if any
    was loaded.  perdition's default CA directory may be missing: then it is skipped."""
    loaded = False
    path = options.ssl_ca_path
    if path == _DEFAULT_CA_PATH and not os.path.isdir(path):
        path = ""
    for cafile, capath in ((options.ssl_ca_file, path), (options.ssl_ca_chain_file, "")):
        if not cafile and not capath:
            continue
        try:
            ctx.load_verify_locations(cafile=cafile or None, capath=capath or None)
        except (OSError, ssl.SSLError) as exc:
            raise TlsSetupError(f'Error loading certificate authority: file="{cafile}" '
                                f'path="{capath}": {_why(exc)}') from None
        loaded = True
    return loaded


def _passphrase(options: Any) -> Callable[[], bytes]:
    """The key's passphrase: the first line of ``--ssl_passphrase_file``, or of
    what ``--ssl_passphrase_fd`` gives (a prompt when that is a terminal).
    Only called if the key is encrypted."""
    def read() -> bytes:
        if options.ssl_passphrase_file:
            with open(options.ssl_passphrase_file, "rb") as handle:
                data = handle.read(_MAX_PASSPHRASE)
        elif os.isatty(options.ssl_passphrase_fd):
            prompt = f"Passphrase for {options.ssl_key_file}: "
            data = getpass.getpass(prompt).encode()
        else:
            data = os.read(options.ssl_passphrase_fd, _MAX_PASSPHRASE)
        return data.split(b"\n", 1)[0].split(b"\r", 1)[0]
    return read


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
