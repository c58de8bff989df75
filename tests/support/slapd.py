"""A private OpenLDAP slapd for tests: cn=config in a temp dir, loopback ports, our schema.

``Slapd(workdir).start()`` builds a slapd.d with ``slapadd -n0`` (core schema,
perditionpy's ``etc/ldap/perdition.ldif``, one mdb database for
``dc=nodomain`` whose root is ``cn=admin,dc=nodomain`` / ``secret``, readable
by everyone), starts ``slapd -d 0`` in the foreground on a free
``ldap://127.0.0.1:<port>/`` and, when ``tls`` files are given, on
``ldaps://127.0.0.1:<port>/`` too, and returns once an anonymous search of
the root DSE succeeds.  ``stop()`` / ``start()`` keep the data and the ports:
that is how tests take the directory away from a running map.
``Slapd(workdir, schemas=…, suffix=…)`` loads other schema LDIF files and
serves another suffix instead (its root is then ``cn=admin,<suffix>``).

``ldif()`` loads entries as the root DN with ldapmodify; ``connections()``
counts the TCP connections the server has open on its plain port (from
/proc/net/tcp), to check that maps do not leak them.

LDAPv2 binds are refused, as by any modern slapd (perdition's default
protocol version is 2, so sites write ``3:ldap://…``).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.ports import LOOPBACK, free_ports

__all__ = ["ADMIN_DN", "ADMIN_PASSWORD", "SUFFIX", "Slapd", "SlapdError", "TlsFiles",
           "slapd_available", "make_tls_files", "shared_slapd", "popmap_entry", "ou_entry"]

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_LDIF = REPO_ROOT / "etc" / "ldap" / "perdition.ldif"
SUFFIX = "dc=nodomain"
ADMIN_DN = "cn=admin,dc=nodomain"
ADMIN_PASSWORD = "secret"
_SLAPD = "/usr/sbin/slapd"
_SLAPADD = "/usr/sbin/slapadd"
_MODULE_PATH = "/usr/lib/ldap"
_CORE_SCHEMA = "/etc/ldap/schema/core.ldif"
_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 15.0
_POLL_INTERVAL = 0.05
_TCP_ESTABLISHED = "01"


class SlapdError(RuntimeError):
    """slapd could not be configured or started; the message carries its log."""


@dataclass(frozen=True)
class TlsFiles:
    """A CA and a server certificate (for 127.0.0.1 and localhost) made by openssl."""

    ca: Path
    cert: Path
    key: Path


def slapd_available() -> bool:
    return all(Path(tool).exists() for tool in (_SLAPD, _SLAPADD, _CORE_SCHEMA)) and \
        shutil.which("ldapmodify") is not None


def make_tls_files(directory: Path, openssl: str = "openssl") -> TlsFiles:
    """A throw-away CA and a server certificate it signed, valid for 127.0.0.1/localhost."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    cert, key, csr = directory / "server.pem", directory / "server.key", directory / "server.csr"
    ext = directory / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                   "extendedKeyUsage=serverAuth\n")
    steps = [
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca,
         "-days", "2", "-subj", "/CN=perditionpy test CA"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
         "-subj", "/CN=localhost"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
         "-out", cert, "-days", "2", "-extfile", ext],
    ]
    for step in steps:
        subprocess.run([openssl, *map(str, step)], check=True, capture_output=True, timeout=60)
    key.chmod(0o644)  # slapd may run as another user
    return TlsFiles(ca, cert, key)


def ou_entry(ou: str) -> str:
    """LDIF for ``ou=<ou>,dc=nodomain``."""
    return f"dn: ou={ou},{SUFFIX}\nobjectClass: organizationalUnit\nou: {ou}\n\n"


def popmap_entry(ou: str, uid: str, **attributes: str) -> str:
    """LDIF for one ``perditionPopmap`` entry ``uid=<uid>,ou=<ou>,dc=nodomain``."""
    lines = [f"dn: uid={uid},ou={ou},{SUFFIX}", "objectClass: top", "objectClass: uidObject",
             "objectClass: perditionPopmap", f"uid: {uid}"]
    lines += [f"{name}: {value}" for name, value in attributes.items()]
    return "\n".join(lines) + "\n\n"


_BASE_ENTRY = f"""dn: {SUFFIX}
objectClass: dcObject
objectClass: organization
o: perditionpy tests
dc: nodomain

"""
_shared: Slapd | None = None


def shared_slapd(make_dir: Callable[[str], Path], add_cleanup: Callable[[Callable[[], None]], None],
                 openssl: str = "openssl") -> Slapd:
    """The one slapd of a test session (with TLS), started on first use.

    ``make_dir`` is ``tmp_path_factory.mktemp`` and ``add_cleanup`` is
    ``request.session.config.add_cleanup``: test modules' session fixtures
    call this so that they all share one server.
    """
    global _shared
    if _shared is None:
        tls = make_tls_files(make_dir("slapd-tls"), openssl)
        server = Slapd(make_dir("slapd"), tls).start()
        add_cleanup(server.stop)
        server.ldif(_BASE_ENTRY)
        _shared = server
    if not _shared.running():  # a test stopped it and failed before restarting it
        _shared.start()
    return _shared


class Slapd:
    """One private directory server; its ports are fixed for its whole life."""

    def __init__(self, workdir: Path, tls: TlsFiles | None = None, *,
                 schemas: Sequence[Path] = (Path(_CORE_SCHEMA), SCHEMA_LDIF),
                 suffix: str = SUFFIX) -> None:
        if not slapd_available():
            raise SlapdError("slapd / slapadd / ldap-utils are not installed")
        self.workdir = workdir
        self.tls = tls
        self.schemas = tuple(schemas)
        self.suffix = suffix
        self.admin_dn = f"cn=admin,{suffix}"
        self.config_dir = workdir / "slapd.d"
        self.data_dir = workdir / "data"
        self.log_path = workdir / "slapd.log"
        self.port, self.ldaps_port = free_ports(2)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ldap://{LOOPBACK}:{self.port}"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://{LOOPBACK}:{self.ldaps_port}"

    # ---------------------------------------------------------------- life cycle

    def start(self, timeout: float = _START_TIMEOUT) -> Slapd:
        """Configure (first time only), start and wait until the root DSE answers."""
        if not self.config_dir.exists():
            self._configure()
        listeners = self.url + "/" + (f" {self.ldaps_url}/" if self.tls else "")
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [_SLAPD, "-d", "0", "-h", listeners, "-F", str(self.config_dir)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_ready(timeout)
        return self

    def stop(self, timeout: float = _STOP_TIMEOUT) -> None:
        """SIGTERM and wait for the exit (SIGKILL after ``timeout``); idempotent."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_text(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    # ---------------------------------------------------------------- data

    def ldif(self, text: str, *, add: bool = True) -> None:
        """Apply LDIF as the root DN (``add``: entries without a changetype are added)."""
        command = ["ldapmodify", "-x", "-H", self.url, "-D", self.admin_dn, "-w", ADMIN_PASSWORD]
        result = subprocess.run([*command, *(["-a"] if add else [])], input=text.encode(),
                                capture_output=True, timeout=30, check=False)
        if result.returncode != 0:
            raise SlapdError(f"ldapmodify failed: {result.stderr.decode(errors='replace')}")

    def connections(self) -> int:
        """Established TCP connections the server holds on its plain port."""
        count = 0
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(OSError), open(table) as lines:
                next(lines, None)
                for line in lines:
                    fields = line.split()
                    local_port = int(fields[1].rsplit(":", 1)[1], 16)
                    if local_port == self.port and fields[3] == _TCP_ESTABLISHED:
                        count += 1
        return count

    # ---------------------------------------------------------------- internals

    def _configure(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_dir.mkdir()
        self.data_dir.mkdir()
        config = self.workdir / "config.ldif"
        config.write_text(self._config_ldif())
        result = subprocess.run([_SLAPADD, "-n", "0", "-F", str(self.config_dir), "-l",
                                 str(config)], capture_output=True, timeout=60, check=False)
        if result.returncode != 0:
            raise SlapdError(f"slapadd -n0 failed:\n{result.stderr.decode(errors='replace')}")

    def _config_ldif(self) -> str:
        tls = "" if self.tls is None else (
            f"olcTLSCACertificateFile: {self.tls.ca}\n"
            f"olcTLSCertificateFile: {self.tls.cert}\n"
            f"olcTLSCertificateKeyFile: {self.tls.key}\n")
        includes = "".join(f"include: file://{schema}\n\n" for schema in self.schemas)
        return f"""dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: {self.workdir / 'slapd.pid'}
{tls}
dn: cn=module{{0}},cn=config
objectClass: olcModuleList
cn: module{{0}}
olcModulePath: {_MODULE_PATH}
olcModuleLoad: back_mdb

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

{includes}dn: olcDatabase={{-1}}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {{-1}}frontend
olcSizeLimit: 500

dn: olcDatabase={{0}}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {{0}}config
olcAccess: {{0}}to * by * none

dn: olcDatabase={{1}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{1}}mdb
olcDbDirectory: {self.data_dir}
olcDbMaxSize: 33554432
olcSuffix: {self.suffix}
olcRootDN: {self.admin_dn}
olcRootPW: {ADMIN_PASSWORD}
olcAccess: {{0}}to * by * read
"""

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if not self.running():
                raise SlapdError(f"slapd exited while starting:\n{self.log_text()}")
            probe = subprocess.run(
                ["ldapsearch", "-x", "-H", self.url, "-b", "", "-s", "base", "-o", "nettimeout=2",
                 "objectClass=*", "1.1"], capture_output=True, timeout=10, check=False)
            if probe.returncode == 0:
                return
            last = probe.stderr.decode(errors="replace")
            time.sleep(_POLL_INTERVAL)  # back-off between readiness attempts
        self.stop()
        raise SlapdError(f"slapd not ready in {timeout}s: {last}\n{self.log_text()}")
