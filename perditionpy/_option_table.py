"""The one table of perdition 2.2's options, and the parsers for their values.

Every option perdition 2.2 accepts is one :class:`OptionSpec` in :data:`TABLE`,
in the order of perdition's ``--help``.  The command line, the config file,
``--help``, ``docs/options.md`` and the greeting checksum are all derived from
it.  Defaults are those of Debian bookworm's build of perdition 2.2.

A parser turns the option's text into ``{attribute: value}`` updates for
:class:`perditionpy.options.Options`; it raises :class:`BadValue` with a short
reason, which the caller turns into an ``OptionError`` naming the option, the
value and where it came from.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = [
    "TABLE", "EXTENSIONS", "ALL", "BY_LONG", "BY_SHORT", "BY_ATTR", "DEFAULTS", "OptionSpec", "BadValue", "Updates",
    "PROTOCOLS", "DEFAULT_PORTS", "DEFAULT_PORT_NAMES", "STATE_NAMES", "SSL_MODE_FLAGS",
    "MANAGESIEVE_CAPABILITY", "resolve_port", "split_list", "text_value",
]

Updates = dict[str, object]

# Protocol names as -P accepts them (any case), with their default ports: the
# number, and the service name perdition puts in its option log unless -n.
PROTOCOLS = ("POP3", "IMAP4", "POP3S", "IMAP4S", "MANAGESIEVE")
DEFAULT_PORTS = {"POP3": 110, "POP3S": 995, "IMAP4": 143, "IMAP4S": 993, "MANAGESIEVE": 4190}
DEFAULT_PORT_NAMES = {"POP3": "pop3", "POP3S": "pop3s", "IMAP4": "imap", "IMAP4S": "imaps",
                      "MANAGESIEVE": "sieve"}

STATE_NAMES = ("servername_lookup", "local_authentication", "remote_login")
_STATE_ALIASES = {
    "servername_lookup": ("servername_lookup",), "server_lookup": ("servername_lookup",),
    "local_authentication": ("local_authentication",), "local_auth": ("local_authentication",),
    "remote_login": ("remote_login",), "all": STATE_NAMES,
}
_LOG_PASSWD = {"never": (), "fail": ("fail",), "ok": ("ok",), "always": ("fail", "ok")}

# --ssl_mode words and the atomic flags each stands for.
SSL_MODE_FLAGS: Mapping[str, tuple[str, ...]] = {
    "none": ("none",),
    "ssl_listen": ("ssl_listen",), "ssl_outgoing": ("ssl_outgoing",),
    "ssl_all": ("ssl_listen", "ssl_outgoing"),
    "tls_listen": ("tls_listen",), "tls_outgoing": ("tls_outgoing",),
    "tls_all": ("tls_listen", "tls_outgoing"),
    "tls_listen_force": ("tls_listen", "tls_listen_force"),
    "tls_outgoing_force": ("tls_outgoing", "tls_outgoing_force"),
    "tls_all_force": ("tls_listen", "tls_outgoing", "tls_listen_force", "tls_outgoing_force"),
}
_SSL_VERSIONS = ("sslv3", "tlsv1", "tlsv1.1", "tlsv1.2", "tlsv1.3")  # tlsv1.3: ours

MANAGESIEVE_CAPABILITY = (
    '"IMPLEMENTATION" "perdition"  "SIEVE" "comparator-i;octet comparator-i;ascii-casemap'
    " fileinto reject envelope encoded-character vacation subaddress"
    " comparator-i;ascii-numeric relational regex imap4flags copy include variables body"
    ' enotify environment mailbox date"  "SASL" "PLAIN"  "NOTIFY" "mailto"  "VERSION" "1.0"'
)
_SYSCONFDIR = "/etc/perdition"
_INT_MAX = 2**31 - 1  # perdition keeps these numbers in a C int


class BadValue(ValueError):
    """An option's text is not acceptable; the argument is the reason."""


# ---------------------------------------------------------------- value parsers

def positive(text: str) -> int:
    """A decimal integer from 1 to perdition's C ``int`` maximum."""
    number = uint(text)
    if number < 1:
        raise BadValue("must be at least 1")
    return number


def uint(text: str) -> int:
    """A non-negative decimal integer that fits perdition's C ``int``."""
    if not (text.isascii() and text.isdigit()):
        raise BadValue("must be a non-negative integer")
    if int(text) > _INT_MAX:
        raise BadValue(f"must be at most {_INT_MAX}")
    return int(text)


def port(attr: str) -> Callable[[str], Updates]:
    """A port option: its number, and its text as perdition logs it (``<attr>_text``)."""
    def parse(text: str) -> Updates:
        return {attr: resolve_port(text), f"{attr}_text": text}
    return parse


def resolve_port(text: str) -> int:
    """A TCP port number, or a service name looked up in the services database."""
    if text.isascii() and text.isdigit():
        if int(text) > 65535:
            raise BadValue("port number out of range")
        return int(text)
    if not text:
        raise BadValue("empty port")
    try:
        return socket.getservbyname(text, "tcp")
    except OSError:
        raise BadValue("unknown port name") from None


def split_list(text: str) -> list[str]:
    """Split on ``,`` as perdition does: ``""`` is no items, a trailing ``,`` is dropped."""
    items = text.split(",")
    return items[:-1] if items[-1] == "" else items


def states(text: str) -> frozenset[str]:
    """A STATE list (names in any case); ``""`` is the empty list."""
    return frozenset(name for item in split_list(text) for name in _state(item))


def _state(item: str) -> tuple[str, ...]:
    names = _STATE_ALIASES.get(item.lower())
    if names is None:
        raise BadValue(f"unknown state {item!r}")
    return names


def add_domain(text: str) -> Updates:
    """STATE[,STATE...][,STRIP_DEPTH]: a number is the depth; the last one wins."""
    found: set[str] = set()
    updates: Updates = {}
    for item in split_list(text):
        if item.isascii() and item.isdigit():
            updates["add_domain_strip_depth"] = uint(item)
        else:
            found.update(_state(item))
    if found:  # a bare STRIP_DEPTH leaves the states to the other source
        updates["add_domain"] = frozenset(found)
    return updates


def log_passwd(text: str) -> frozenset[str]:
    """never / fail / ok / always, as the set of outcomes whose password is logged."""
    outcomes = _LOG_PASSWD.get(text.lower())
    if outcomes is None:
        raise BadValue("must be one of never, fail, ok, always")
    return frozenset(outcomes)


def protocol(text: str) -> str:
    """A protocol name, any case."""
    if text.upper() not in PROTOCOLS:
        raise BadValue("unknown protocol; known: " + ", ".join(PROTOCOLS))
    return text.upper()


def pid_file(text: str) -> str:
    """An absolute path, or ``""`` for no pid file."""
    if text and not text.startswith("/"):
        raise BadValue("must be empty or an absolute path")
    return text


def server_list(text: str) -> str:
    """``SERVER[,SERVER...]``: checked here, split into parts once ``-D`` is known."""
    if "" in split_list(text):
        raise BadValue("empty entry in the list")
    return text


def query_keys(text: str) -> tuple[str, ...]:
    """``FORMAT[,FORMAT...]``; ``""`` is no formats."""
    return tuple(split_list(text))


def ssl_mode(text: str) -> frozenset[str]:
    """``MODE[,MODE...]`` as a set of atomic flags; SSL and TLS on one side conflict."""
    flags: set[str] = set()
    for item in split_list(text):
        words = SSL_MODE_FLAGS.get(item.lower())
        if words is None:
            raise BadValue(f"unknown ssl_mode {item!r}")
        flags.update(words)
    for side in ("listen", "outgoing"):
        if {f"ssl_{side}", f"tls_{side}"} <= flags:
            raise BadValue(f"ssl_{side} and tls_{side} cannot be combined")
    return frozenset(flags)


def ssl_version(text: str) -> str:
    """A minimum SSL/TLS protocol version; may not be empty."""
    if text.lower() not in _SSL_VERSIONS:
        raise BadValue("must be one of " + ", ".join(_SSL_VERSIONS))
    return text.lower()


def ssl_max_version(text: str) -> str | None:
    """A maximum SSL/TLS protocol version; ``""`` means the library's default."""
    return ssl_version(text) if text else None


def text_value(text: str) -> str:
    """Any text."""
    return text


# ---------------------------------------------------------------- the table

@dataclass(frozen=True, slots=True)
class OptionSpec:
    """One option: how it is spelt, parsed, documented and checksummed.

    ``parse`` is ``None`` for flags, which set every target to ``True``.
    ``default`` is the value of the option's own attribute when it is not
    given (``None`` for the protocol- and program-dependent ones, which
    ``options.load`` fills in).  ``implemented`` is ``True``, ``False`` (only
    the default works) or a predicate saying which values work.  ``mask`` is
    the (word, bits) perdition adds to its option mask when the option is
    given on the command line; the greeting checksum covers that mask.
    """

    long: str
    short: str | None
    metavar: str | None
    help: str
    targets: tuple[str, ...]
    parse: Callable[[str], Updates] | None
    default: object
    mask: tuple[int, int]
    default_text: str | None = None
    implemented: bool | Callable[[object], bool] = True
    ssl: bool = False
    in_file: bool = True

    @property
    def is_flag(self) -> bool:
        return self.parse is None

    def works_with(self, value: object) -> bool:
        """Whether perditionpy can honour ``value`` for this option today."""
        if callable(self.implemented):
            return self.implemented(value)
        return self.implemented or value == self.default


def _one(attr: str, convert: Callable[[str], object]) -> Callable[[str], Updates]:
    def parse(text: str) -> Updates:
        return {attr: convert(text)}
    return parse


def _same(attrs: tuple[str, ...]) -> Callable[[str], Updates]:
    def parse(text: str) -> Updates:
        return dict.fromkeys(attrs, text)
    return parse


def _flag(long: str, short: str | None, help: str, mask: tuple[int, int], *,
          target: str | None = None, implemented: bool = True, ssl: bool = False,
          in_file: bool = True) -> OptionSpec:
    return OptionSpec(long, short, None, help, (target or long,), None, False, mask,
                      implemented=implemented, ssl=ssl, in_file=in_file)


def _opt(long: str, short: str | None, metavar: str, help: str,
         convert: Callable[[str], object], default: object, mask: tuple[int, int], *,
         default_text: str | None = None,
         implemented: bool | Callable[[object], bool] = True) -> OptionSpec:
    return OptionSpec(long, short, metavar, help, (long,), _one(long, convert), default, mask,
                      default_text=default_text, implemented=implemented)


def _ssl_flag(long: str, help: str, bits: int, *, implemented: bool = True) -> OptionSpec:
    return _flag(long, None, help, (2, bits), implemented=implemented, ssl=True)


def _ssl_opt(long: str, metavar: str, help: str, convert: Callable[[str], object],
             default: object, bits: int, *, implemented: bool = True) -> OptionSpec:
    return OptionSpec(long, None, metavar, help, (long,), _one(long, convert), default,
                      (2, bits), implemented=implemented, ssl=True)


_STATE_HELP = (" STATE is servername_lookup (or server_lookup), local_authentication "
               "(or local_auth), remote_login, or all.")
_CAPABILITIES = ("imap_capability", "managesieve_capability", "pop_capability")
_PORT_DEFAULTS = "110, 995, 143, 993 or 4190 in POP3, POP3S, IMAP4, IMAP4S or MANAGESIEVE mode"

_MAIN: tuple[OptionSpec, ...] = (
    OptionSpec(
        "add_domain", "A", "STATE[,STATE...][,STRIP_DEPTH]",
        "In the given states, append to the user name a domain: the reverse lookup of "
        "the address the client connected to, less its first STRIP_DEPTH labels "
        "(default 1)." + _STATE_HELP,
        ("add_domain", "add_domain_strip_depth"), add_domain, frozenset(), (0, 0x1)),
    _flag("authenticate_in", "a",
          "Authenticate the user locally through PAM (service \"perdition\") before "
          "contacting the real server.", (0, 0x2)),
    _opt("authenticate_timeout", None, "SECONDS",
         "Idle timeout until the client has logged in; 0 waits forever.",
         uint, 1800, (1, 0x10)),
    _flag("no_bind_banner", "B",
          "Name this host in the greeting by its node name even when connections "
          "are accepted on a specific address.", (0, 0x00080000)),
    _opt("bind_address", "b", "SERVER[,SERVER...]",
         "Listen only on these addresses, each optionally with :PORT (else listen_port). "
         "Empty listens on every address.", server_list, (), (0, 0x17)),
    _flag("connection_logging", "C",
          "Log every line exchanged with clients and real servers while logging in "
          "(only together with debug).", (0, 0x80)),
    _opt("connect_relog", None, "SECONDS",
         "Log an open connection again this often, for POP/IMAP-before-SMTP; 0 never.",
         uint, 300, (0, 0x40)),
    _flag("client_server_specification", "c",
          "Let the client choose its real server by logging in as "
          "user<delimiter>server[:port].", (0, 0x200)),
    _opt("domain_delimiter", "D", "STRING",
         "What separates user and domain (or server) in a user name.",
         text_value, "@", (0, 0x100)),
    _flag("debug", "d", "Log verbosely, including the options in effect at start-up.",
          (0, 0x80)),
    _opt("explicit_domain", "e", "STRING",
         "With add_domain, append this domain instead of one found from the address "
         "the client connected to.", text_value, None, (1, 0x4)),
    _opt("log_facility", "F", "FACILITY",
         "Where to log: a syslog facility, a file if it starts with '/', '-' for "
         "standard output, '+' for standard error.", text_value, "mail", (0, 0x2000)),
    OptionSpec(
        "config_file", "f", "FILENAME",
        "Read options from this file; options on the command line win. \"\" reads no "
        "file. Without it the first of <sysconfdir>/<program name>.conf, "
        "<sysconfdir>/perdition.<protocol>.conf and <sysconfdir>/perdition.conf that "
        "exists is read.", ("config_file",), _one("config_file", text_value), None,
        (0, 0x400), default_text="searched for", in_file=False),
    _opt("group", "g", "GROUP", "Group to run as.", text_value, "nogroup", (0, 0x800)),
    _flag("help", "h", "Print this help and exit.", (0, 0), in_file=False),
    OptionSpec(
        "capability", "I", "STRING",
        "Deprecated: sets imap_capability, managesieve_capability and pop_capability "
        "together.", _CAPABILITIES, _same(_CAPABILITIES), None, (1, 0xE0),
        default_text="none of its own"),
    _opt("imap_capability", None, "STRING",
         "Capabilities announced in IMAP4 and IMAP4S mode, separated by spaces.",
         text_value, "IMAP4 IMAP4REV1", (1, 0x20)),
    _flag("inetd_mode", "i", "Serve the one connection on standard input and output "
          "(started by inetd).", (0, 0x1000)),
    _opt("connection_limit", "L", "LIMIT",
         "Most connections served at the same time; 0 is no limit.", uint, 0, (0, 0x10)),
    OptionSpec(
        "listen_port", "l", "PORT", "Port to listen on: a number or a service name.",
        ("listen_port", "listen_port_text"), port("listen_port"), None, (0, 0x8000),
        default_text=_PORT_DEFAULTS),
    _flag("login_disabled", None, "Refuse every login (IMAP4 announces LOGINDISABLED).",
          (0, 0x4000)),
    _opt("log_passwd", None, "WHEN",
         "Log passwords: never, fail (of failed logins), ok (of successful logins) or "
         "always (only together with debug).", log_passwd, frozenset(), (1, 0x8),
         default_text='"never"'),
    _opt("lower_case", None, "STATE[,STATE...]",
         "In the given states, lower-case the user name." + _STATE_HELP,
         states, frozenset(), (0, 0x00010000)),
    _opt("managesieve_capability", None, "STRING",
         "Capabilities announced in MANAGESIEVE mode: quoted, with two spaces between "
         "entries.", text_value, MANAGESIEVE_CAPABILITY, (1, 0x40)),
    _opt("map_library", "M", "FILENAME",
         "The map that finds each user's real server: a perdition map library or a "
         "perditionpy map. \"\" uses no map.", text_value,
         "/usr/lib/x86_64-linux-gnu/libperditiondb_gdbm.so.0", (0, 0x00020000)),
    _opt("map_library_opt", "m", "STRING",
         "Option string for the map; what it means depends on the map.",
         text_value, "", (0, 0x00040000)),
    _flag("no_daemon", None, "Stay in the foreground.", (0, 0x00100000)),
    _flag("no_lookup", "n", "Resolve no host or port names: addresses and ports stay "
          "numeric (and the greeting names this host by its address).", (0, 0x00200000)),
    _opt("ok_line", "O", "STRING",
         "Text of the reply to a successful login, unless server_resp_line.",
         text_value, "You are so in", (1, 0x1)),
    _flag("server_ok_line", None, "Deprecated spelling of server_resp_line.",
          (0, 0x02000000), target="server_resp_line"),
    _flag("server_resp_line", "o",
          "Pass on the real server's reply to the login instead of ok_line.",
          (0, 0x02000000)),
    _opt("pop_capability", None, "STRING",
         "Capabilities announced in POP3 and POP3S mode, separated by '.' (or, "
         "deprecated, by two spaces).", text_value, "UIDL.USER", (1, 0x80)),
    _opt("protocol", "P", "PROTOCOL",
         "Protocol to serve: " + ", ".join(PROTOCOLS) + ". Without it, from the "
         "program name (perdition.imap4, perdition.imaps, ...), else POP3. "
         "perditionpy serves POP3, POP3S, IMAP4, IMAP4S and MANAGESIEVE.",
         protocol, None, (0, 0x01000000), default_text='"POP3"'),
    OptionSpec(
        "outgoing_port", "p", "PORT",
        "Port of a real server whose port the map or outgoing_server does not give.",
        ("outgoing_port", "outgoing_port_text"), port("outgoing_port"), None,
        (0, 0x00400000), default_text=_PORT_DEFAULTS),
    _opt("outgoing_server", "s", "SERVER[,SERVER...]",
         "Real servers, used in turn when the map has no answer; each "
         "[user<delimiter>]host[:port].", server_list, (), (0, 0)),
    _opt("pid_file", None, "FILENAME",
         "Where to write the process id: an absolute path, or \"\" for none. "
         "Not used in inetd mode.", pid_file, None, (1, 0x2),
         default_text='"/var/run/<program name>/<program name>.pid"'),
    _opt("strip_domain", "S", "STATE[,STATE...]",
         "In the given states, remove <delimiter>domain from the user name." + _STATE_HELP,
         states, frozenset(), (0, 0x04000000)),
    _opt("timeout", "t", "SECONDS",
         "Idle timeout once the client has logged in; 0 waits forever.",
         uint, 1800, (0, 0x08000000)),
    _flag("tcp_keepalive", None, "Turn on TCP keep-alive towards clients and real servers.",
          (1, 0x100)),
    _opt("username", "u", "USERNAME", "User to run as.", text_value, "nobody",
         (0, 0x10000000)),
    _flag("username_from_database", "U",
          "When the map answers user<delimiter>server, log in to that server as that user.",
          (0, 0x20000000)),
    _flag("quiet", "q", "Log errors only (debug wins).", (0, 0x80000000)),
    _opt("query_key", None, "FORMAT[,FORMAT...]",
         "Keys to look up in the map, in turn, instead of the user name. Escapes: \\U the "
         "user name, \\u its user part, \\d its domain part, \\D the delimiter, \\i \\p the "
         "client's address and port, \\I \\P the local address and port, \\\\ a backslash.",
         query_keys, (), (0, 0)),
)

_SSL: tuple[OptionSpec, ...] = (
    OptionSpec(
        "ssl_mode", None, "MODE[,MODE...]",
        "Use SSL and/or TLS towards clients and/or real servers. MODE is none, "
        "ssl_listen, ssl_outgoing, ssl_all, tls_listen, tls_outgoing, tls_all, "
        "tls_listen_force, tls_outgoing_force or tls_all_force.",
        ("ssl_mode",), _one("ssl_mode", ssl_mode), frozenset(), (2, 0x400), ssl=True),
    _ssl_opt("ssl_ca_chain_file", "FILENAME",
             "Certificate authorities sent along with our certificate, in chain order; "
             "overrides ssl_ca_file and ssl_ca_path.", text_value, "", 0x1),
    _ssl_opt("ssl_ca_file", "FILENAME",
             "Certificate authorities trusted when checking certificates.",
             text_value, "", 0x2),
    _ssl_opt("ssl_ca_path", "DIRECTORY",
             "Directory of certificate authorities trusted when checking certificates.",
             text_value, f"{_SYSCONFDIR}/perdition.ca/", 0x4),
    _ssl_flag("ssl_ca_accept_self_signed",
              "Accept a real server whose chain ends in a self-signed certificate "
              "authority that is not trusted.", 0x8),
    _ssl_opt("ssl_cert_file", "FILENAME", "Our certificate, shown to clients.",
             text_value, f"{_SYSCONFDIR}/perdition.crt.pem", 0x10),
    _ssl_opt("ssl_dh_params_file", "FILENAME",
             "Diffie-Hellman parameters (else looked for in ssl_cert_file).",
             text_value, "", 0x20000),
    _ssl_flag("ssl_cert_accept_self_signed",
              "Accept a real server's self-signed certificate.", 0x80),
    _ssl_flag("ssl_cert_accept_expired", "Accept expired certificates.", 0x20),
    _ssl_flag("ssl_cert_accept_not_yet_valid", "Accept certificates not valid yet.", 0x40),
    _ssl_opt("ssl_cert_verify_depth", "DEPTH",
             "Longest certificate chain accepted: at most DEPTH certificates above the "
             "one verified (its CAs, the trusted one included).", uint, 9, 0x100),
    _ssl_opt("ssl_key_file", "FILENAME", "The private key of ssl_cert_file.",
             text_value, f"{_SYSCONFDIR}/perdition.key.pem", 0x200),
    _ssl_opt("ssl_listen_ciphers", "STRING",
             "OpenSSL cipher list towards clients (\"\": OpenSSL's default).",
             text_value, "", 0x800),
    _ssl_opt("ssl_outgoing_ciphers", "STRING",
             "OpenSSL cipher list towards real servers (\"\": OpenSSL's default).",
             text_value, "", 0x800),
    _ssl_flag("ssl_no_cert_verify", "Do not verify certificates cryptographically.", 0x1000),
    _ssl_flag("ssl_no_client_cert_verify",
              "Do not verify client certificates cryptographically.", 0x3000),
    _ssl_flag("ssl_no_cn_verify",
              "Do not check that a real server's certificate names the host connected to.",
              0x4000),
    _ssl_opt("ssl_passphrase_fd", "FD",
             "File descriptor to read the key's passphrase from (its first line).", uint, 0,
             0x8000),
    _ssl_opt("ssl_passphrase_file", "FILENAME",
             "File to read the key's passphrase from (its first line); not together with "
             "ssl_passphrase_fd.", text_value, "", 0x10000),
    _ssl_opt("ssl_listen_min_proto_version", "VERSION",
             "Oldest protocol accepted from clients: sslv3, tlsv1, tlsv1.1, tlsv1.2 or "
             "tlsv1.3. perditionpy speaks nothing older than tlsv1.2 unless this is given.",
             ssl_version, "tlsv1", 0x40000),
    _ssl_opt("ssl_outgoing_min_proto_version", "VERSION",
             "Oldest protocol used with real servers: sslv3, tlsv1, tlsv1.1, tlsv1.2 or "
             "tlsv1.3. perditionpy speaks nothing older than tlsv1.2 unless this is given.",
             ssl_version, "tlsv1", 0x80000),
    _ssl_opt("ssl_listen_max_proto_version", "VERSION",
             "Newest protocol accepted from clients (\"\": OpenSSL's default).",
             ssl_max_version, None, 0x100000),
    _ssl_opt("ssl_outgoing_max_proto_version", "VERSION",
             "Newest protocol used with real servers (\"\": OpenSSL's default).",
             ssl_max_version, None, 0x200000),
    _ssl_flag("ssl_listen_compression", "Allow SSL/TLS compression with clients.", 0x400000),
    _ssl_flag("ssl_outgoing_compression", "Allow SSL/TLS compression with real servers.",
              0x800000),
    _ssl_flag("ssl_no_cipher_server_preference",
              "Let the client's order of ciphers win over ours.", 0x1000000),
)

# perditionpy's own options (docs/compatibility.md): not in perdition's option log,
# so outside its option mask and greeting checksum.
EXTENSIONS: tuple[OptionSpec, ...] = (
    _opt("workers", None, "N",
         "perditionpy only: serve the listeners with N processes (SO_REUSEPORT); a parent "
         "starts them, restarts one that dies, passes SIGHUP/SIGTERM on and owns the pid "
         "file. 1 serves from one process.", positive, 1, (0, 0)),
)

# perdition 2.2's options, in the order of its --help (its popt table).
TABLE: tuple[OptionSpec, ...] = _MAIN + _SSL
ALL: tuple[OptionSpec, ...] = TABLE + EXTENSIONS
BY_LONG: Mapping[str, OptionSpec] = {spec.long: spec for spec in ALL}
BY_SHORT: Mapping[str, OptionSpec] = {spec.short: spec for spec in ALL if spec.short}
# The option owning each Options attribute: the one spelt like it, else the only one.
BY_ATTR: Mapping[str, OptionSpec] = {
    attr: BY_LONG.get(attr, spec) for spec in ALL for attr in spec.targets}
# Attribute defaults; None where options.load works them out (protocol, ports, ...).
DEFAULTS: Mapping[str, object] = {
    **{attr: spec.default for attr, spec in BY_ATTR.items() if spec.long == attr},
    "add_domain_strip_depth": 1,
}
