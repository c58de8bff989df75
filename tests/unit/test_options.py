"""Options: the table, the command line, the config file, --help and the greeting checksum."""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path

import pytest

from perditionpy import _option_table as table
from perditionpy import options as options_mod
from perditionpy.config_file import ConfigFileError
from perditionpy.endpoints import UserServerPort
from perditionpy.errors import NotImplementedOption, OptionError
from perditionpy.options import Options, greeting_checksum, help_text, load, parse

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    """An empty sysconfdir, so no host config file leaks into a test."""
    path = tmp_path / "etc"
    path.mkdir()
    return path


def opts(*argv: str, prog: str = "perdition", etc: Path | None = None) -> Options:
    sysconfdir = str(etc) if etc is not None else "/nonexistent/perditionpy-test"
    return load(list(argv), prog, sysconfdir=sysconfdir)


def fails(*argv: str, prog: str = "perdition") -> OptionError:
    with pytest.raises(OptionError) as info:
        opts(*argv, prog=prog)
    return info.value


# ---------------------------------------------------------------- defaults

def test_defaults_are_debians() -> None:
    o = opts()
    assert (o.protocol, o.listen_port, o.listen_port_text) == ("POP3", 110, "pop3")
    assert (o.outgoing_port, o.outgoing_port_text) == (110, "pop3")
    assert o.map_library == "/usr/lib/x86_64-linux-gnu/libperditiondb_gdbm.so.0"
    assert (o.username, o.group) == ("nobody", "nogroup")
    assert (o.timeout, o.authenticate_timeout, o.connect_relog) == (1800, 1800, 300)
    assert o.pop_capability == "UIDL.USER"
    assert o.imap_capability == "IMAP4 IMAP4REV1"
    assert o.managesieve_capability.startswith('"IMPLEMENTATION" "perdition"  "SIEVE"')
    assert o.ssl_cert_file == "/etc/perdition/perdition.crt.pem"
    assert o.ssl_listen_min_proto_version == "tlsv1"
    assert (o.pid_file, o.explicit_domain, o.config_file) == (None, None, None)
    assert o.explicit == frozenset() and o.help is False


def test_dataclass_defaults_agree_with_the_table() -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(Options)}
    for attr, value in table.DEFAULTS.items():
        if value is not None:
            assert defaults[attr] == value, attr


def test_every_table_option_has_a_unique_spelling() -> None:
    longs = [spec.long for spec in table.TABLE]
    shorts = [spec.short for spec in table.TABLE if spec.short]
    assert len(longs) == len(set(longs)) == 69  # perdition 2.2's popt table
    assert len(shorts) == len(set(shorts))


# ---------------------------------------------------------------- syntax

@pytest.mark.parametrize("argv", [
    ["--timeout", "5"], ["--timeout=5"], ["-t", "5"], ["-t5"], ["-t=5"], ["-dt", "5"], ["-dt5"],
])
def test_value_spellings(argv: list[str]) -> None:
    assert opts(*argv).timeout == 5


def test_bundled_flags() -> None:
    o = opts("-dnqU")
    assert (o.debug, o.no_lookup, o.quiet, o.username_from_database) == (True,) * 4


def test_value_may_look_like_an_option() -> None:
    o = opts("-O", "-q")
    assert o.ok_line == "-q" and o.quiet is False


def test_empty_value_with_equals() -> None:
    assert opts("--ok_line=").ok_line == ""


@pytest.mark.parametrize(("argv", "text"), [
    (["--nope"], "--nope: unknown option"),
    (["-j"], "-j: unknown option"),
    (["--no_dae"], "--no_dae: unknown option"),        # popt does not abbreviate
    (["-no_daemon"], "-_: unknown option"),              # ... nor take one-dash long names
    (["--debug=yes"], "--debug: option does not take an argument"),
    (["-s"], "-s: missing argument"),
    (["--timeout"], "--timeout: missing argument"),
    (["stray"], "unexpected argument: 'stray'"),
    (["--", "x"], "unexpected argument: 'x'"),
])
def test_usage_errors(argv: list[str], text: str) -> None:
    assert text in str(fails(*argv))


def test_repeated_option_last_wins() -> None:
    assert opts("-t", "5", "--timeout", "7").timeout == 7


# ---------------------------------------------------------------- protocols

@pytest.mark.parametrize(("prog", "protocol"), [
    ("perdition", "POP3"), ("/usr/sbin/perdition", "POP3"), ("perdition.pop3", "POP3"),
    ("perdition.imap4", "IMAP4"), ("/x/perdition.imap4", "IMAP4"),
    ("perdition.imaps", "IMAP4S"), ("perdition.imap4s", "IMAP4S"),
    ("perdition.pop3s", "POP3S"), ("perdition.managesieve", "MANAGESIEVE"),
    ("perdition.imap", "POP3"), ("other", "POP3"),
])
def test_protocol_from_program_name(prog: str, protocol: str) -> None:
    assert parse([], prog, sysconfdir="/nonexistent").protocol == protocol


def test_managesieve_is_served() -> None:
    o = opts(prog="perdition.managesieve")
    assert (o.protocol, o.listen_port) == ("MANAGESIEVE", 4190)


def test_dash_p_overrides_program_name_in_any_case() -> None:
    o = opts("-P", "imap4", prog="perdition.pop3")
    assert (o.protocol, o.listen_port, o.outgoing_port_text) == ("IMAP4", 143, "imap")


def test_unknown_protocol() -> None:
    error = fails("-P", "smtp")
    assert error.option == "protocol" and error.value == "smtp"


@pytest.mark.parametrize(("protocol", "port", "name"), [
    ("POP3", 110, "pop3"), ("POP3S", 995, "pop3s"), ("IMAP4", 143, "imap"),
    ("IMAP4S", 993, "imaps"), ("MANAGESIEVE", 4190, "sieve"),
])
def test_default_ports(protocol: str, port: int, name: str) -> None:
    o = parse(["-P", protocol], "perdition", sysconfdir="/nonexistent")
    assert (o.listen_port, o.listen_port_text, o.outgoing_port, o.outgoing_port_text) == (
        port, name, port, name)
    numeric = parse(["-n", "-P", protocol], "perdition", sysconfdir="/nonexistent")
    assert (numeric.listen_port_text, numeric.outgoing_port_text) == (str(port), str(port))


# ---------------------------------------------------------------- values

def test_ports_by_number_and_name() -> None:
    o = opts("-l", "2110", "-p", "imap")
    assert (o.listen_port, o.listen_port_text) == (2110, "2110")
    assert (o.outgoing_port, o.outgoing_port_text) == (socket.getservbyname("imap", "tcp"), "imap")


@pytest.mark.parametrize("value", ["nosuchservice", "70000", ""])
def test_bad_port_names_option_and_value(value: str) -> None:
    error = fails("--outgoing_port", value)
    assert (error.option, error.value) == ("outgoing_port", value)
    assert "--outgoing_port" in str(error)


@pytest.mark.parametrize("option", ["-t", "--authenticate_timeout", "--connect_relog", "-L"])
@pytest.mark.parametrize("value", ["x", "-1", "1.5", "", " 5"])
def test_numbers_must_be_numbers(option: str, value: str) -> None:
    error = fails(option, value)
    assert error.value == value and "integer" in str(error)


def test_numbers() -> None:
    o = opts("-t", "0", "--authenticate_timeout", "30", "--connect_relog", "0", "-L", "10")
    assert (o.timeout, o.authenticate_timeout, o.connect_relog, o.connection_limit) == (
        0, 30, 0, 10)


@pytest.mark.parametrize(("text", "states"), [
    ("servername_lookup", {"servername_lookup"}),
    ("server_lookup", {"servername_lookup"}),
    ("LOCAL_AUTH", {"local_authentication"}),
    ("local_authentication,remote_login", {"local_authentication", "remote_login"}),
    ("all", set(table.STATE_NAMES)),
    ("", set()),
])
def test_state_lists(text: str, states: set[str]) -> None:
    assert opts("-S", text).strip_domain == states
    assert opts("--lower_case", text).lower_case == states


def test_state_lists_add_up_when_repeated() -> None:
    o = opts("-A", "server_lookup", "-A", "remote_login")
    assert o.add_domain == {"servername_lookup", "remote_login"}


def test_unknown_state_names_option() -> None:
    error = fails("-S", "servername_lookup,bogus")
    assert error.option == "strip_domain" and "bogus" in str(error)


@pytest.mark.parametrize(("text", "states", "depth"), [
    ("all,3", set(table.STATE_NAMES), 3),
    ("3", set(), 3),
    ("remote_login", {"remote_login"}, 1),
    ("2,local_auth,4", {"local_authentication"}, 4),
])
def test_add_domain_strip_depth(text: str, states: set[str], depth: int) -> None:
    o = opts("-A", text)
    assert (o.add_domain, o.add_domain_strip_depth) == (frozenset(states), depth)


@pytest.mark.parametrize(("text", "outcomes"), [
    ("never", set()), ("fail", {"fail"}), ("OK", {"ok"}), ("always", {"ok", "fail"}),
])
def test_log_passwd(text: str, outcomes: set[str]) -> None:
    assert opts("--log_passwd", text).log_passwd == outcomes


def test_log_passwd_unknown() -> None:
    assert fails("--log_passwd", "sometimes").option == "log_passwd"


def test_server_lists_use_the_final_delimiter() -> None:
    o = opts("-s", "a.example:1143,u%b.example,[::1]:993", "-D", "%", "-b", "127.0.0.1:2110")
    assert o.outgoing_server == (
        UserServerPort(None, "a.example", "1143"), UserServerPort("u", "b.example", None),
        UserServerPort(None, "::1", "993"))
    assert o.bind_address == (UserServerPort(None, "127.0.0.1", "2110"),)
    assert opts("-s", "").outgoing_server == ()


def test_empty_entry_in_server_list() -> None:
    assert fails("-s", "a,,b").option == "outgoing_server"


def test_query_key() -> None:
    assert opts("--query_key", "\\u,\\d,").query_key == ("\\u", "\\d")


def test_pid_file() -> None:
    assert opts("--pid_file", "").pid_file == ""
    assert opts("--pid_file", "/run/p.pid").pid_file == "/run/p.pid"
    assert fails("--pid_file", "run/p.pid").option == "pid_file"


def test_capability_sets_all_three() -> None:
    o = opts("-I", "X Y", "--pop_capability", "TOP")
    assert (o.imap_capability, o.managesieve_capability, o.pop_capability) == (
        "X Y", "X Y", "TOP")


def test_server_ok_line_is_server_resp_line() -> None:
    assert opts("--server_ok_line").server_resp_line is True
    assert opts("-o").server_resp_line is True


def test_strings() -> None:
    o = opts("-D", "%", "-e", "example.com", "-F", "+", "-g", "mail", "-u", "mail",
             "-M", "", "-m", "/etc/popmap", "-O", "hi")
    assert (o.domain_delimiter, o.explicit_domain, o.log_facility, o.group, o.username) == (
        "%", "example.com", "+", "mail", "mail")
    assert (o.map_library, o.map_library_opt, o.ok_line) == ("", "/etc/popmap", "hi")


def test_explicit_lists_what_was_given() -> None:
    o = opts("-t", "5", "-I", "X", "--server_ok_line")
    assert o.explicit == {"timeout", "imap_capability", "managesieve_capability",
                          "pop_capability", "server_resp_line"}


# ---------------------------------------------------------------- not implemented

def _unimplemented(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Mark ``name`` as "only its default works" (every option works today)."""
    specs = tuple(dataclasses.replace(spec, implemented=False) if spec.long == name else spec
                  for spec in table.ALL)
    monkeypatch.setattr(table, "ALL", specs)


def test_unimplemented_options_fail_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    _unimplemented(monkeypatch, "ssl_cert_verify_depth")
    with pytest.raises(NotImplementedOption) as info:
        opts("--ssl_cert_verify_depth", "3")
    assert str(info.value) == "--ssl_cert_verify_depth: not implemented yet"
    assert opts("--ssl_cert_verify_depth", "9").ssl_cert_verify_depth == 9


def test_ssl_cert_verify_depth_is_implemented() -> None:
    spec = next(spec for spec in table.ALL if spec.long == "ssl_cert_verify_depth")
    assert spec.implemented is True
    entry = help_text("perdition").split("--ssl_cert_verify_depth DEPTH:")[1].split(" --")[0]
    assert "Not implemented" not in entry and "(default 9)" in entry


@pytest.mark.parametrize(("text", "depth"), [("0", 0), ("3", 3), ("9", 9), ("100", 100)])
def test_ssl_cert_verify_depth(text: str, depth: int, tmp_path: Path) -> None:
    assert opts("--ssl_cert_verify_depth", text).ssl_cert_verify_depth == depth
    conf = tmp_path / "p.conf"
    conf.write_text(f"ssl_cert_verify_depth {text}\n")
    assert opts("-f", str(conf)).ssl_cert_verify_depth == depth


@pytest.mark.parametrize("text", ["-1", "three", ""])
def test_ssl_cert_verify_depth_must_be_a_number(text: str) -> None:
    assert fails("--ssl_cert_verify_depth", text).option == "ssl_cert_verify_depth"


@pytest.mark.parametrize("argv", [
    ["--ssl_mode", "none"], ["--ssl_mode", ""], ["--ssl_cert_file", "/etc/perdition/perdition.crt.pem"],
    ["--ssl_listen_max_proto_version", ""],
])
def test_unimplemented_options_at_their_default_are_fine(argv: list[str]) -> None:
    assert opts(*argv).protocol == "POP3"


def test_unimplemented_values_are_still_checked() -> None:
    assert fails("--ssl_mode", "tls_all,ssl_all").option == "ssl_mode"
    assert fails("--ssl_listen_min_proto_version", "").option == "ssl_listen_min_proto_version"
    assert parse(["--ssl_mode", "TLS_ALL_FORCE"], "perdition", sysconfdir="/x").ssl_mode == {
        "tls_listen", "tls_outgoing", "tls_listen_force", "tls_outgoing_force"}


# ---------------------------------------------------------------- config file

def test_search_order(etc: Path) -> None:
    (etc / "perdition.conf").write_text("timeout 1\n")
    assert opts(prog="perdition.imap4", etc=etc).config_file == str(etc / "perdition.conf")
    (etc / "perdition.imap4.conf").write_text("timeout 2\n")
    assert opts(prog="perdition.imap4", etc=etc).timeout == 2
    (etc / "perdition.pop3.conf").write_text("timeout 3\n")
    assert opts(prog="/usr/sbin/perdition", etc=etc).timeout == 3
    (etc / "perdition.pop3-test.conf").write_text("timeout 4\n")
    assert opts(prog="perdition.pop3-test", etc=etc).timeout == 4


def test_search_uses_program_protocol_not_dash_p(etc: Path) -> None:
    (etc / "perdition.imap4.conf").write_text("timeout 2\n")
    assert opts("-P", "IMAP4", etc=etc).config_file is None


def test_dash_f(etc: Path, tmp_path: Path) -> None:
    (etc / "perdition.conf").write_text("timeout 1\n")
    mine = tmp_path / "mine.conf"
    mine.write_text("timeout 9\n")
    assert opts("-f", str(mine), etc=etc).timeout == 9
    o = opts("-f", "", etc=etc)
    assert (o.config_file, o.timeout) == (None, 1800)


def test_dash_f_missing_file(tmp_path: Path) -> None:
    error = fails("-f", str(tmp_path / "nope.conf"))
    assert error.option == "config_file" and "nope.conf" in str(error)


def test_command_line_wins_per_attribute(tmp_path: Path) -> None:
    conf = tmp_path / "p.conf"
    conf.write_text("timeout 9\nP IMAP4\ncapability A B\ns 10.0.0.1\nadd_domain all\n")
    o = opts("-f", str(conf), "-t", "5", "--pop_capability", "TOP", "-s", "10.0.0.2", "-A", "2")
    assert (o.timeout, o.protocol) == (5, "IMAP4")
    assert (o.imap_capability, o.pop_capability) == ("A B", "TOP")
    assert o.outgoing_server == (UserServerPort(None, "10.0.0.2", None),)
    assert (o.add_domain, o.add_domain_strip_depth) == (frozenset(table.STATE_NAMES), 2)
    assert {"timeout", "protocol", "outgoing_server"} <= o.explicit


def test_file_flags_and_short_keys(tmp_path: Path) -> None:
    conf = tmp_path / "p.conf"
    conf.write_text("  debug\n\tn\nok_line 'so in'  # comment\n")
    o = opts("-f", str(conf))
    assert (o.debug, o.no_lookup, o.ok_line) == (True, True, "so in")


@pytest.mark.parametrize(("text", "option", "line"), [
    ("debug\ntimeout soon\n", "timeout", 2),
    ("# c\nno_such_option 1\n", "no_such_option", 2),
    ("debug yes\n", "debug", 1),
    ("\n\ntimeout\n", "timeout", 3),
    ("listen_port nosuchservice\n", "listen_port", 1),
    ("config_file /etc/other.conf\n", "config_file", 1),
    ("S bogus\n", "strip_domain", 1),
])
def test_bad_file_line_names_option_file_and_line(tmp_path: Path, text: str, option: str,
                                                   line: int) -> None:
    conf = tmp_path / "bad.conf"
    conf.write_text(text)
    with pytest.raises(ConfigFileError) as info:
        opts("-f", str(conf))
    assert (info.value.option, info.value.line, info.value.path) == (option, line, str(conf))
    assert f"{conf}:{line}:" in str(info.value) and option in str(info.value)


def test_unimplemented_option_in_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _unimplemented(monkeypatch, "ssl_cert_verify_depth")
    conf = tmp_path / "p.conf"
    conf.write_text("ssl_cert_verify_depth 3\n")
    with pytest.raises(NotImplementedOption):
        opts("-f", str(conf))


def test_debian_default_config_loads() -> None:
    path = Path("/etc/perdition/perdition.conf")
    if not path.exists():
        pytest.skip("perdition's Debian config is not installed")
    o = load([], "perdition.imap4")
    assert (o.config_file, o.protocol) == (str(path), "IMAP4")


# ---------------------------------------------------------------- help and docs

def test_help_flag() -> None:
    assert opts("-h").help is True
    assert opts("-d", "--help").help is True


def test_help_text_names_every_option_and_default() -> None:
    text = help_text("/usr/sbin/perdition.imap4")
    for spec in table.TABLE:
        assert f"--{spec.long}" in text, spec.long
        if spec.short:
            assert f"-{spec.short}|--{spec.long}" in text
    for default in ('(default 1800)', '(default 300)', '(default "nogroup")',
                    '(default "UIDL.USER")', '(default "/etc/perdition/perdition.key.pem")',
                    "/usr/lib/x86_64-linux-gnu/libperditiondb_gdbm.so.0",
                    "/var/run/perdition.imap4/perdition.imap4.pid", "(default 9)"):
        assert default in text, default
    assert "Usage: perdition.imap4 [options]" in text


def test_docs_options_md_is_current() -> None:
    assert (REPO / "docs" / "options.md").read_text() == options_mod.markdown()


def test_markdown_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert options_mod._main(["--markdown"]) == 0
    assert "`--ssl_mode`" in capsys.readouterr().out
    assert options_mod._main([]) == 2


# ---------------------------------------------------------------- greeting checksum

_IMAP = ["--no_daemon", "-f", "", "-P", "IMAP4"]
_BASE = ["-b", "127.0.0.1", "-M", "", "-s", "127.0.0.1", "-F", "+", "--pid_file", ""]

# Observed from Debian's perdition 2.2 on a host whose node name is "vm":
# (argv[0], argv[1:], the greeting's last word).
OBSERVED = [
    ("perdition", [*_IMAP, "-l", "41143", *_BASE], "0002bade"),
    ("perdition", ["--no_daemon", "-f", "", "-P", "POP3", "-l", "41110", *_BASE], "0002ba42"),
    ("perdition", ["--no_daemon", "-f", "", "-P", "imap4", "-l", "41144", "-b", "127.0.0.1",
                   "-M", "", "-s", "a.example:1143,u@b.example,127.0.0.1", "-F", "+",
                   "--pid_file", ""], "0002c3e6"),
    ("perdition", [*_IMAP, "-l", "41145", *_BASE, "-A", "servername_lookup,local_auth,2",
                   "-S", "all", "--lower_case", "remote_login"], "0002d0c9"),
    ("perdition", [*_IMAP, "-l", "41146", *_BASE, "-t", "60", "--authenticate_timeout", "30",
                   "--connect_relog", "0", "-L", "10"], "0002b9f3"),
    ("perdition", [*_IMAP, "-l", "41147", "-b", "127.0.0.1", "-M",
                   "/usr/lib/x86_64-linux-gnu/libperditiondb_gdbm.so.0", "-m",
                   "/tmp/optprobe/none.db", "-s", "127.0.0.1", "-F", "+", "--pid_file", ""],
     "0002d4d5"),
    ("perdition", [*_IMAP, "-l", "41148", *_BASE, "-n", "-d"], "0002b922"),
    ("perdition", ["--no_daemon", "-f", "", "-P", "POP3", "-l", "41111", *_BASE,
                   "--log_passwd", "ok", "-O", "hello there", "-D", "%", "-c", "-U", "-o",
                   "--login_disabled", "-I", "X Y", "-e", "example.com", "-g", "users",
                   "-u", "mail", "--query_key", "\\u,\\d", "--tcp_keepalive", "-p", "1143"],
     "000249d7"),
    ("perdition.imap4", ["--no_daemon", "-f", "", "-l", "41149", "-b", "127.0.0.1", "-M", "",
                         "-s", "127.0.0.1", "-F", "+", "--pid_file", "/tmp/optprobe/p.pid",
                         "-B", "-C", "--server_ok_line"], "0002c126"),
    ("perdition", [*_IMAP, "-l", "41151", *_BASE, "--imap_capability", "IMAP4REV1 LITERAL+",
                   "--pop_capability", "TOP.UIDL", "--managesieve_capability", '"X"',
                   "--log_passwd", "always", "-q"], "00024f6c"),
    ("perdition", [*_IMAP, "-l", "41152", *_BASE, "--ssl_mode", "tls_outgoing",
                   "--ssl_ca_file", "/tmp/ca.pem", "--ssl_no_cn_verify",
                   "--ssl_cert_verify_depth", "3"], "0002c386"),
    ("perdition", [*_IMAP, "-l", "41153", "-b", "127.0.0.1", "-M", "", "-s",
                   "[::1]:143,127.0.0.1", "-F", "+", "--pid_file", "", "-A", "all", "-nt9"],
     "0002bc25"),
]


@pytest.mark.parametrize(("prog", "argv", "expected"), OBSERVED)
def test_checksum_matches_perdition(prog: str, argv: list[str], expected: str) -> None:
    o = parse(argv, prog, sysconfdir="/nonexistent")
    assert f"{greeting_checksum(o, 'vm'):08x}" == expected


def test_checksum_with_config_file(tmp_path: Path) -> None:
    # Observed with the file at /tmp/optprobe/a.conf; the checksum is a byte sum,
    # so moving the file changes it by the difference of the paths' byte sums.
    conf = tmp_path / "a.conf"
    conf.write_text("protocol IMAP4\nbind_address 127.0.0.1\noutgoing_server 127.0.0.1:1143\n"
                    "timeout 77\n# comment\nstrip_domain servername_lookup\nA 3\n")
    o = parse(["--no_daemon", "-f", str(conf), "-l", "41150", "-M", "", "-F", "+",
               "--pid_file", ""], "perdition", sysconfdir="/nonexistent")
    expected = 0x0002CA34 - sum(b"/tmp/optprobe/a.conf") + sum(str(conf).encode())
    assert greeting_checksum(o, "vm") == expected
    assert o.option_mask[0] & 0x28 == 0x28  # perdition's -b-in-a-file mask quirk


_NO_PID = ["--no_daemon", "-f", "", "-P", "IMAP4"]
_PLAIN = ["-b", "127.0.0.1", "-M", "", "-s", "127.0.0.1", "-F", "+"]

# More observations (same host), these without --pid_file "".
OBSERVED_MORE = [
    ([*_NO_PID, "-l", "41201", *_PLAIN, "-A", "local_authentication,remote_login,123456789"],
     "0002d5a8"),  # add_domain cut to 38 bytes: "...remote_login,12345"
    ([*_NO_PID, "-l", "41202", *_PLAIN, "-I", "X Y", "--imap_capability", "IMAP4REV1 LITERAL+"],
     "00025a35"),  # -I sets all three, the later --imap_capability wins for IMAP
    ([*_NO_PID, "-l", "41203", *_PLAIN, "-s", "u@h:110,[::1]:143,[fe80::1]"],
     "0002cb15"),  # IPv6 servers are logged without their brackets
]


@pytest.mark.parametrize(("argv", "expected"), OBSERVED_MORE)
def test_more_checksums_match_perdition(argv: list[str], expected: str) -> None:
    o = parse(argv, "perdition", sysconfdir="/nonexistent")
    assert f"{greeting_checksum(o, 'vm'):08x}" == expected


@pytest.mark.parametrize(("port", "text", "observed", "extra"), [
    # key=value lines (perdition hands "--key=value" to popt) and an empty value.
    (41204, "timeout=9\nmap_library_opt=\nO hi there\n", 0x0002CBF8, []),
    # strip_domain from the file is overridden by -S; -b in the file marks mask 0x28.
    (41205, "strip_domain servername_lookup\nbind_address 127.0.0.1\n", 0x0002D68D,
     ["-S", "local_auth"]),
])
def test_more_checksums_with_config_file(tmp_path: Path, port: int, text: str, observed: int,
                                         extra: list[str]) -> None:
    # Observed with the file at /tmp/h1exp/rec.conf; see test_checksum_with_config_file.
    conf = tmp_path / "rec.conf"
    conf.write_text(text)
    argv = ["--no_daemon", "-f", str(conf), "-P", "IMAP4", "-l", str(port), *_PLAIN, *extra]
    o = parse(argv, "perdition", sysconfdir="/nonexistent")
    expected = observed - sum(b"/tmp/h1exp/rec.conf") + sum(str(conf).encode())
    assert greeting_checksum(o, "vm") == expected


def test_file_key_equals_value_lines(tmp_path: Path) -> None:
    conf = tmp_path / "p.conf"
    conf.write_text("timeout=9\nok_line='so in'\nmap_library_opt=\n")
    o = opts("-f", str(conf))
    assert (o.timeout, o.ok_line, o.map_library_opt) == (9, "so in", "")
    assert {"timeout", "ok_line", "map_library_opt"} <= o.explicit


@pytest.mark.parametrize(("text", "option"), [
    ("ok_line=a b\n", "ok_line=a"),  # perdition: a stray argument "b"; here: no such option
    ("t=5\n", "t"),  # only long names take the =value form, as with popt's --t=5
    ("timeout=soon\n", "timeout"),
])
def test_file_key_equals_value_errors(tmp_path: Path, text: str, option: str) -> None:
    conf = tmp_path / "p.conf"
    conf.write_text(text)
    with pytest.raises(ConfigFileError) as info:
        opts("-f", str(conf))
    assert (info.value.option, info.value.line) == (option, 1)


def test_log_lines_shape() -> None:
    o = parse([*_IMAP, "-l", "41143", *_BASE], "perdition", sysconfdir="/nonexistent")
    first, main, ssl = options_mod.log_options_lines(o, "vm")
    assert first == "Starting perdition version=2.2 protocol=IMAP4"
    assert main.startswith('add_domain="", authenticate_in=off, authenticate_timeout=1800, ')
    assert 'listen_port="41143"' in main and 'outgoing_port="imap"' in main
    assert 'nodename="vm"' in main and main.endswith("quiet=off (mask=0x0112a417 00000002)")
    assert ssl.endswith("(ssl_mask=0x00000000) ")


def test_checksum_depends_on_nodename() -> None:
    o = opts()
    assert greeting_checksum(o, "a") != greeting_checksum(o, "b")
    assert greeting_checksum(o) == greeting_checksum(o, os.uname().nodename)


def test_add_domain_log_is_cut_like_perditions_buffer() -> None:
    o = opts("-A", "servername_lookup,local_auth,5")
    assert 'add_domain="servername_lookup,local_authentication",' in \
        options_mod.log_options_lines(o, "vm")[1]
