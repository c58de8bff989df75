"""The command line and config file of perdition 2.2 → one frozen :class:`Options`.

This module owns: argv[0] → protocol, the popt-like command-line syntax, which
config file is read, how the file and the command line combine (the command
line wins, per attribute), the checks that turn bad input into
:class:`~perditionpy.errors.OptionError`, the refusal of options whose feature
does not exist yet, ``--help``, ``docs/options.md``, and the option log lines
whose checksum ends perdition's greeting.  The table of options itself lives in
:mod:`perditionpy._option_table`; the config-file syntax in
:mod:`perditionpy.config_file`.

Run ``python -m perditionpy.options --markdown`` to print ``docs/options.md``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields, replace

from perditionpy import _option_table as table
from perditionpy._option_table import BadValue, OptionSpec, Updates
from perditionpy.config_file import ConfigFileError, find_config_file, read_config_file
from perditionpy.endpoints import UserServerPort, parse_user_server_port
from perditionpy.errors import NotImplementedOption, OptionError

__all__ = ["Options", "load", "parse", "help_text", "markdown", "greeting_checksum",
           "log_options_lines", "program_protocol", "UsageError"]

_MAP_LIBRARY = "/usr/lib/x86_64-linux-gnu/libperditiondb_gdbm.so.0"
_PROGRAM_PROTOCOLS = {
    "perdition.imap4": "IMAP4", "perdition.imap4s": "IMAP4S", "perdition.imaps": "IMAP4S",
    "perdition.pop3": "POP3", "perdition.pop3s": "POP3S",
    "perdition.managesieve": "MANAGESIEVE",
}
# Options whose repeats add up (perdition ORs their bits) instead of replacing.
_CUMULATIVE = frozenset({"add_domain", "strip_domain", "lower_case", "ssl_mode"})
# perdition passes its arguments to options_set_mask() swapped for -b, so -b
# ORs the caller's flag word into the mask: 0x17 from argv, 0x28 from a file.
_BIND_MASK_ARGV, _BIND_MASK_FILE = 0x17, 0x28
_COMMAND_LINE = "command line"


class UsageError(OptionError):
    """A malformed command line: unknown option, missing argument, stray word."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(option.lstrip("-") or option, None, message)
        self.args = (f"{option}: {message}" if option else message,)


@dataclass(frozen=True, slots=True)
class Options:
    """Everything perdition 2.2 can be told, parsed and checked.

    Attribute names are perdition's long option names.  ``None`` marks the few
    values perdition treats as unset rather than empty (``explicit_domain``,
    ``pid_file`` -- the default path is the server's business -- and the
    ``ssl_*_max_proto_version`` pair).
    """

    add_domain: frozenset[str] = frozenset()
    add_domain_strip_depth: int = 1
    authenticate_in: bool = False
    authenticate_timeout: int = 1800
    no_bind_banner: bool = False
    bind_address: tuple[UserServerPort, ...] = ()
    connection_logging: bool = False
    connect_relog: int = 300
    client_server_specification: bool = False
    domain_delimiter: str = "@"
    debug: bool = False
    explicit_domain: str | None = None
    log_facility: str = "mail"
    config_file: str | None = None
    group: str = "nogroup"
    help: bool = False
    imap_capability: str = "IMAP4 IMAP4REV1"
    managesieve_capability: str = table.MANAGESIEVE_CAPABILITY
    pop_capability: str = "UIDL.USER"
    inetd_mode: bool = False
    connection_limit: int = 0
    listen_port: int = 110
    listen_port_text: str = "pop3"
    login_disabled: bool = False
    log_passwd: frozenset[str] = frozenset()
    lower_case: frozenset[str] = frozenset()
    map_library: str = _MAP_LIBRARY
    map_library_opt: str = ""
    no_daemon: bool = False
    no_lookup: bool = False
    ok_line: str = "You are so in"
    server_resp_line: bool = False
    protocol: str = "POP3"
    outgoing_port: int = 110
    outgoing_port_text: str = "pop3"
    outgoing_server: tuple[UserServerPort, ...] = ()
    pid_file: str | None = None
    strip_domain: frozenset[str] = frozenset()
    timeout: int = 1800
    tcp_keepalive: bool = False
    username: str = "nobody"
    username_from_database: bool = False
    quiet: bool = False
    query_key: tuple[str, ...] = ()
    ssl_mode: frozenset[str] = frozenset()
    ssl_ca_chain_file: str = ""
    ssl_ca_file: str = ""
    ssl_ca_path: str = "/etc/perdition/perdition.ca/"
    ssl_ca_accept_self_signed: bool = False
    ssl_cert_file: str = "/etc/perdition/perdition.crt.pem"
    ssl_dh_params_file: str = ""
    ssl_cert_accept_self_signed: bool = False
    ssl_cert_accept_expired: bool = False
    ssl_cert_accept_not_yet_valid: bool = False
    ssl_cert_verify_depth: int = 9
    ssl_key_file: str = "/etc/perdition/perdition.key.pem"
    ssl_listen_ciphers: str = ""
    ssl_outgoing_ciphers: str = ""
    ssl_no_cert_verify: bool = False
    ssl_no_client_cert_verify: bool = False
    ssl_no_cn_verify: bool = False
    ssl_passphrase_fd: int = 0
    ssl_passphrase_file: str = ""
    ssl_listen_min_proto_version: str = "tlsv1"
    ssl_outgoing_min_proto_version: str = "tlsv1"
    ssl_listen_max_proto_version: str | None = None
    ssl_outgoing_max_proto_version: str | None = None
    ssl_listen_compression: bool = False
    ssl_outgoing_compression: bool = False
    ssl_no_cipher_server_preference: bool = False
    workers: int = 1  # perditionpy's own (table.EXTENSIONS)
    # Not options: where the values came from.
    program: str = "perdition"
    explicit: frozenset[str] = frozenset()
    option_mask: tuple[int, int, int] = (0, 0, 0)
    """perdition's (mask, mask2, ssl_mask): the options given on the command line."""


# ---------------------------------------------------------------- occurrences

@dataclass(frozen=True, slots=True)
class _Given:
    """One option as given: on the command line, or on a config-file line."""

    spec: OptionSpec
    value: str | None
    path: str | None = None
    line: int = 0

    def error(self, reason: str, value: object = None) -> OptionError:
        shown = self.value if value is None else value
        if self.path is None:
            return OptionError(self.spec.long, shown, reason)
        return ConfigFileError(self.path, self.line, self.spec.long, shown, reason)


def _split_argv(argv: Sequence[str]) -> list[_Given]:
    """Tokenise argv as popt does: ``--opt v``, ``--opt=v``, ``-x v``, ``-xv``, ``-abc``."""
    given: list[_Given] = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg == "--" or not arg.startswith("-") or arg == "-":
            stray = argv[index + 1:] if arg == "--" else argv[index:]
            if stray:
                raise UsageError("", f"unexpected argument: {stray[0]!r}")
            break
        take = _long(arg, argv, index, given) if arg.startswith("--") else \
            _short(arg, argv, index, given)
        index += 1 + take
    return given


def _long(arg: str, argv: Sequence[str], index: int, out: list[_Given]) -> int:
    """One ``--name[=value]``; returns how many following words it used."""
    name, eq, value = arg[2:].partition("=")
    spec = table.BY_LONG.get(name)
    if spec is None:
        raise UsageError(f"--{name}", "unknown option")
    if spec.is_flag:
        if eq:
            raise UsageError(f"--{name}", "option does not take an argument")
        out.append(_Given(spec, None))
        return 0
    if eq:
        out.append(_Given(spec, value))
        return 0
    out.append(_Given(spec, _next_word(argv, index, f"--{name}")))
    return 1


def _short(arg: str, argv: Sequence[str], index: int, out: list[_Given]) -> int:
    """One bundle ``-abc`` / ``-xVALUE`` / ``-x=VALUE``; returns the words used after it."""
    for pos in range(1, len(arg)):
        spec = table.BY_SHORT.get(arg[pos])
        if spec is None:
            raise UsageError(f"-{arg[pos]}", "unknown option")
        if spec.is_flag:
            out.append(_Given(spec, None))
            continue
        rest = arg[pos + 1:]
        rest = rest[1:] if rest.startswith("=") else rest
        if rest:
            out.append(_Given(spec, rest))
            return 0
        out.append(_Given(spec, _next_word(argv, index, f"-{arg[pos]}")))
        return 1
    return 0


def _next_word(argv: Sequence[str], index: int, option: str) -> str:
    # popt takes the next word even when it looks like an option ("-O -q").
    if index + 1 >= len(argv):
        raise UsageError(option, "missing argument")
    return argv[index + 1]


def _from_file(path: str) -> list[_Given]:
    """The options of one config file; keys are long names or short letters."""
    given = []
    for entry in read_config_file(path):
        key, value = _file_key_value(entry.key, entry.value)
        spec = table.BY_LONG.get(key) if len(entry.key) > 1 else table.BY_SHORT.get(key)
        if spec is None:
            raise ConfigFileError(path, entry.line, key, None, "unknown option")
        item = _Given(spec, value, path, entry.line)
        _check_file_entry(item)
        given.append(item)
    return given


def _file_key_value(key: str, value: str | None) -> tuple[str, str | None]:
    # perdition hands "--key" to popt, so a lone "timeout=60" works as --timeout=60.
    if value is None and "=" in key[1:]:
        name, _, text = key.partition("=")
        return name, text
    return key, value


def _check_file_entry(item: _Given) -> None:
    if not item.spec.in_file:
        raise item.error("not allowed in a config file")
    if item.spec.is_flag and item.value is not None:
        raise item.error("takes no value")
    if not item.spec.is_flag and item.value is None:
        raise item.error("needs a value")


# ---------------------------------------------------------------- values

def _updates(item: _Given) -> Updates:
    if item.spec.parse is None:
        return dict.fromkeys(item.spec.targets, True)
    assert item.value is not None
    try:
        return item.spec.parse(item.value)
    except BadValue as exc:
        raise item.error(str(exc)) from None


def _layer(given: Iterable[_Given]) -> Updates:
    """The attribute values one source (file or argv) sets, in order."""
    values: Updates = {}
    for item in given:
        for attr, value in _updates(item).items():
            if attr in _CUMULATIVE and attr in values:
                value = values[attr] | value  # type: ignore[operator]
            values[attr] = value
    return values


def _mask(argv_given: Iterable[_Given], file_given: Iterable[_Given]) -> tuple[int, int, int]:
    words = [0, 0, 0]
    for item in argv_given:
        word, bits = item.spec.mask
        if item.spec.long == "add_domain" and not _has_state(item.value or ""):
            bits = 0  # perdition marks -A given only when it names a state
        words[word] |= _BIND_MASK_ARGV if item.spec.long == "bind_address" else bits
    if any(item.spec.long == "bind_address" for item in file_given):
        words[0] |= _BIND_MASK_FILE
    return words[0], words[1], words[2]


def _has_state(text: str) -> bool:
    return any(not item.isdigit() for item in table.split_list(text))


def program_protocol(prog: str) -> str:
    """The protocol perdition picks from the name it was started as."""
    return _PROGRAM_PROTOCOLS.get(os.path.basename(prog), "POP3")


def _servers(text: object, delimiter: str) -> tuple[UserServerPort, ...]:
    if not isinstance(text, str):
        return ()
    return tuple(parse_user_server_port(item, delimiter) for item in table.split_list(text))


def _ports(values: Updates, protocol: str, no_lookup: bool) -> Updates:
    """Fill in the protocol's default ports, in number and in perdition's text."""
    number = table.DEFAULT_PORTS[protocol]
    text = str(number) if no_lookup else table.DEFAULT_PORT_NAMES[protocol]
    out: Updates = {}
    for attr in ("listen_port", "outgoing_port"):
        if attr not in values:
            out[attr], out[f"{attr}_text"] = number, text
    return out


# ---------------------------------------------------------------- load

def load(argv: Sequence[str], prog: str, *, sysconfdir: str = "/etc/perdition") -> Options:
    """Build the Options for ``prog argv...`` (argv without argv[0]).

    Raises ``OptionError`` naming the option and value (and file and line for
    the config file), and ``NotImplementedOption`` for a feature still to come.
    """
    options = parse(argv, prog, sysconfdir=sysconfdir)
    if not options.help:
        _refuse_unimplemented(options)
    return options


def parse(argv: Sequence[str], prog: str, *, sysconfdir: str = "/etc/perdition") -> Options:
    """:func:`load` without refusing features perditionpy lacks (for checksums, docs)."""
    program = os.path.basename(prog) or "perdition"
    argv_given = _split_argv(argv)
    if any(item.spec.long == "help" for item in argv_given):
        return Options(help=True, program=program)
    argv_values = _layer(argv_given)
    path = _config_path(argv_values, program, sysconfdir)
    file_given = _from_file(path) if path else []
    options = _build({**_layer(file_given), **argv_values}, program, path)
    return replace(options, option_mask=_mask(argv_given, file_given))


def _config_path(argv_values: Updates, program: str, sysconfdir: str) -> str | None:
    """``-f`` if given (``""``: none), else the first file of perdition's search."""
    if "config_file" in argv_values:
        chosen = argv_values["config_file"]
        assert isinstance(chosen, str)
        if chosen and not os.path.isfile(chosen):
            raise OptionError("config_file", chosen, "no such file")
        return chosen or None
    # perdition searches with the protocol argv[0] implies, whatever -P says.
    return find_config_file(program, program_protocol(program), sysconfdir)


def _build(values: Updates, program: str, path: str | None) -> Options:
    protocol = str(values.get("protocol") or program_protocol(program))
    delimiter = str(values.get("domain_delimiter", "@"))
    derived: Updates = {
        "protocol": protocol, "config_file": path, "program": program,
        "bind_address": _servers(values.get("bind_address"), delimiter),
        "outgoing_server": _servers(values.get("outgoing_server"), delimiter),
        "explicit": frozenset(values),
        **_ports(values, protocol, bool(values.get("no_lookup"))),
    }
    return Options(**{**values, **derived})  # type: ignore[arg-type]


def _refuse_unimplemented(options: Options) -> None:
    for spec in table.ALL:
        if not spec.works_with(getattr(options, spec.targets[0])):
            raise NotImplementedOption(spec.long)


# ---------------------------------------------------------------- help and docs

def _default_text(spec: OptionSpec, program: str) -> str | None:
    if spec.is_flag:
        return None
    if spec.default_text is not None:
        return spec.default_text.replace("<program name>", program)
    return f'"{_render(spec.default)}"' if not isinstance(spec.default, int) \
        else str(spec.default)


def _render(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, frozenset | tuple):
        return ",".join(sorted(str(item) for item in value))
    return str(value)


def _flags(spec: OptionSpec) -> str:
    names = f"-{spec.short}|--{spec.long}" if spec.short else f"--{spec.long}"
    return f"{names} {spec.metavar}" if spec.metavar else names


def _wrap(text: str, indent: str, width: int = 76) -> list[str]:
    lines, current = [], ""
    for word in text.split(" "):
        if current and len(indent) + len(current) + 1 + len(word) > width:
            lines.append(indent + current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    return lines + [indent + current] if current else lines


def _help_entry(spec: OptionSpec, program: str) -> list[str]:
    text = spec.help
    if spec.implemented is False:
        text += " Not implemented yet in perditionpy."
    lines = [f" {_flags(spec)}:", *_wrap(text, "    ")]
    default = _default_text(spec, program)
    return lines if default is None else [*lines, f"    (default {default})"]


def help_text(prog: str) -> str:
    """The whole ``--help`` text, in perdition's layout, every option with its default."""
    program = os.path.basename(prog) or "perdition"
    out = [f"{program} (perditionpy), compatible with perdition version 2.2", "",
           "A POP3, IMAP4 and ManageSieve proxy.", "",
           f"Usage: {program} [options]", "", "Options:"]
    for spec in table.TABLE:
        if spec.ssl and spec.long == "ssl_mode":
            out += ["", "SSL/TLS options:"]
        out += _help_entry(spec, program)
    out += ["", "perditionpy's own options:"]
    for spec in table.EXTENSIONS:
        out += _help_entry(spec, program)
    out += ["", " Flags are off unless given. An empty string argument (\"\") turns",
            " the option off unless its text says otherwise. See perdition(8)."]
    return "\n".join(out) + "\n"


def markdown() -> str:
    """``docs/options.md``: the option table as Markdown, generated from the table."""
    out = ["# Options", "",
           "Generated by `python -m perditionpy.options --markdown` from "
           "`perditionpy/_option_table.py`; do not edit.", "",
           "Every option can be given on the command line or, by its long name (or "
           "its one-letter short name), as a `key value` line of the config file. "
           "The command line wins.", "",
           "| option | short | argument | default | implemented | description |",
           "|---|---|---|---|---|---|"]
    for spec in table.TABLE:
        out.append(_markdown_row(spec))
    out += ["", "## perditionpy's own options", "",
            "Not in perdition 2.2; outside its option mask and greeting checksum.", "",
            "| option | short | argument | default | implemented | description |",
            "|---|---|---|---|---|---|"]
    for spec in table.EXTENSIONS:
        out.append(_markdown_row(spec))
    return "\n".join(out) + "\n"


def _markdown_row(spec: OptionSpec) -> str:
    default = _default_text(spec, "perdition") or "off"
    implemented = {True: "yes", False: "no"}.get(spec.implemented, "partly")  # type: ignore[arg-type]
    cells = [f"`--{spec.long}`", f"`-{spec.short}`" if spec.short else "",
             f"`{spec.metavar}`" if spec.metavar else "", _md_escape(default),
             implemented, _md_escape(spec.help)]
    return "| " + " | ".join(cells) + " |"


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "\\<")


# ---------------------------------------------------------------- option log

def _states_text(states: frozenset[str]) -> str:
    if set(table.STATE_NAMES) <= states:
        return "all"
    return ",".join(name for name in table.STATE_NAMES if name in states)


def _add_domain_text(options: Options) -> str:
    text = _states_text(options.add_domain)
    # perdition formats this into a 40-byte buffer: at most 38 characters survive.
    return (f"{text},{options.add_domain_strip_depth}")[:38] if text else ""


def _log_passwd_text(outcomes: frozenset[str]) -> str:
    return {0: "never", 1: "fail", 2: "ok", 3: "always"}[
        ("fail" in outcomes) + 2 * ("ok" in outcomes)]


def _servers_text(servers: tuple[UserServerPort, ...], delimiter: str) -> str:
    # perdition shows user<delimiter>server:port, without re-adding IPv6 brackets.
    return ",".join((f"{s.user}{delimiter}" if s.user is not None else "") + (s.server or "")
                    + (f":{s.port}" if s.port is not None else "") for s in servers)


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def _pid_text(options: Options) -> str:
    if options.pid_file is not None:
        return options.pid_file
    return f"/var/run/{options.program}/{options.program}.pid"


def _main_line(o: Options, nodename: str) -> str:
    q = _quoted
    parts = [
        q("add_domain", _add_domain_text(o)), f"authenticate_in={_on(o.authenticate_in)}",
        f"authenticate_timeout={o.authenticate_timeout}",
        q("bind_address", _servers_text(o.bind_address, o.domain_delimiter)),
        f"client_server_specification={_on(o.client_server_specification)}",
        q("config_file", o.config_file or ""), f"connection_limit={o.connection_limit}",
        f"connection_logging={_on(o.connection_logging)}",
        f"connect_relog={o.connect_relog}", f"debug={_on(o.debug)}",
        q("domain_delimiter", o.domain_delimiter), q("explicit_domain", o.explicit_domain or ""),
        q("group", o.group), q("imap_capability", o.imap_capability),
        f"inetd_mode={_on(o.inetd_mode)}", q("listen_port", o.listen_port_text),
        q("log_facility", o.log_facility), q("log_passwd", _log_passwd_text(o.log_passwd)),
        f"login_disabled={_on(o.login_disabled)}", q("lower_case", _states_text(o.lower_case)),
        q("managesieve_capability", o.managesieve_capability), q("map_library", o.map_library),
        q("map_library_opt", o.map_library_opt), f"no_bind_banner={_on(o.no_bind_banner)}",
        f"no_daemon={_on(o.no_daemon)}", f"no_lookup={_on(o.no_lookup)}",
        f"tcp_keepalive={_on(o.tcp_keepalive)}", q("nodename", nodename),
        q("ok_line", o.ok_line), q("outgoing_port", o.outgoing_port_text),
        q("outgoing_server", _servers_text(o.outgoing_server, o.domain_delimiter)),
        q("pid_file", _pid_text(o)), q("pop_capability", o.pop_capability),
        q("protocol", o.protocol), f"server_resp_line={_on(o.server_resp_line)}",
        q("strip_domain", _states_text(o.strip_domain)), f"timeout={o.timeout}",
        q("username", o.username), f"username_from_database={_on(o.username_from_database)}",
        q("query_key", ",".join(o.query_key)),
    ]
    mask, mask2, _ = o.option_mask
    return ", ".join(parts) + f", quiet={_on(o.quiet)} (mask=0x{mask:08x} {mask2:08x})"


def _quoted(name: str, value: str) -> str:
    return f'{name}="{value}"'


def _quoted_flag(name: str, flag: bool) -> str:
    return _quoted(name, _on(flag))


def _ssl_mode_text(flags: frozenset[str]) -> str:
    if not flags or flags == {"none"}:
        return "none" if flags else ""
    words = []
    for side in ("ssl", "tls"):
        if {f"{side}_listen", f"{side}_outgoing"} <= flags:
            words.append(f"{side}_all")
        else:
            words += [f"{side}_{end}" for end in ("listen", "outgoing")
                      if f"{side}_{end}" in flags]
    if {"tls_listen_force", "tls_outgoing_force"} <= flags:
        words.append("tls_all_force")
    else:
        words += [w for w in ("tls_outgoing_force", "tls_listen_force") if w in flags]
    return ",".join(words)


def _ssl_line(o: Options) -> str:
    q, b = _quoted, _quoted_flag
    parts = [
        q("ssl_mode", _ssl_mode_text(o.ssl_mode)), q("ssl_ca_file", o.ssl_ca_file),
        q("ssl_ca_path", o.ssl_ca_path),
        b("ssl_ca_accept_self_signed", o.ssl_ca_accept_self_signed),
        q("ssl_cert_file", o.ssl_cert_file),
        b("ssl_cert_accept_expired", o.ssl_cert_accept_expired),
        b("ssl_cert_not_yet_valid", o.ssl_cert_accept_not_yet_valid),
        b("ssl_cert_self_signed", o.ssl_cert_accept_self_signed),
        f"ssl_cert_verify_depth={o.ssl_cert_verify_depth}", q("ssl_key_file", o.ssl_key_file),
        q("ssl_listen_ciphers", o.ssl_listen_ciphers),
        q("ssl_outgoing_ciphers", o.ssl_outgoing_ciphers),
        b("ssl_no_cert_verify", o.ssl_no_cert_verify),
        b("ssl_no_client_cert_verify", o.ssl_no_client_cert_verify),
    ]
    # perdition forgets the comma after ssl_no_cn_verify; the checksum needs it missing.
    tail = [
        f"ssl_passphrase_fd={o.ssl_passphrase_fd}",
        q("ssl_passphrase_file", o.ssl_passphrase_file),
        q("ssl_listen_min_proto_version", o.ssl_listen_min_proto_version),
        q("ssl_outgoing_min_proto_version", o.ssl_outgoing_min_proto_version),
        q("ssl_listen_max_proto_version", o.ssl_listen_max_proto_version or ""),
        q("ssl_outgoing_max_proto_version", o.ssl_outgoing_max_proto_version or ""),
        b("ssl_listen_compression", o.ssl_listen_compression),
        b("ssl_outgoing_compression", o.ssl_outgoing_compression),
        b("ssl_no_cipher_server_preference", o.ssl_no_cipher_server_preference),
    ]
    return (", ".join(parts) + ", " + b("ssl_no_cn_verify", o.ssl_no_cn_verify) + " "
            + ", ".join(tail) + f", (ssl_mask=0x{o.option_mask[2]:08x}) ")


def log_options_lines(options: Options, nodename: str | None = None) -> list[str]:
    """perdition's three option log lines (``-d`` logs them at start-up)."""
    node = os.uname().nodename if nodename is None else nodename
    return [f"Starting perdition version=2.2 protocol={options.protocol}",
            _main_line(options, node), _ssl_line(options)]


def greeting_checksum(options: Options, nodename: str | None = None) -> int:
    """The 32-bit checksum perdition appends to its greeting (``%08x``).

    perdition sums every byte but the last of each option log line, each line
    cut to its 4095-byte buffer.
    """
    total = 0
    for line in log_options_lines(options, nodename):
        data = line.encode("utf-8", "surrogateescape")[:4094]
        total += sum(data[:-1])
    return total & 0xFFFFFFFF


def _check_fields() -> None:
    """Every table attribute must be an Options field (a cheap guard for the table)."""
    names = {f.name for f in fields(Options)}
    missing = [attr for spec in table.TABLE for attr in spec.targets if attr not in names]
    assert not missing, missing


_check_fields()


def _main(args: Sequence[str]) -> int:
    if list(args) == ["--markdown"]:
        sys.stdout.write(markdown())
        return 0
    sys.stderr.write("usage: python -m perditionpy.options --markdown\n")
    return 2


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
