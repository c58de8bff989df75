"""The C-ABI loader (perditionpy/maps/cabi.py) and the host shim, with small test libraries.

The libraries are compiled here with gcc from the C below; each logs what the
host called into a file named by ``-m`` so that the order of ``dbserver_init``
and ``dbserver_fini`` can be checked.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from perditionpy.endpoints import UserServerPort, parse_user_server_port
from perditionpy.errors import MapError, OptionError
from perditionpy.maps import cabi, open_map
from perditionpy.maps._cabi_ffi import load_shim
from perditionpy.maps.base import LookupContext
from tests.support.procs import REPO_ROOT

CONTEXT = LookupContext()

# Logs each call to the file named by the options; answers by key:
#   "int"   → writes an int (not a size_t) through len_return, as Debian's libraries do
#   "empty" → 0 with an empty string;  "access" → -1;  "other" → -3;  "long" → len bounds it
RECORDER = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void note(const char *options, const char *what) {
    FILE *f = fopen(options, "a");
    if (f) { fprintf(f, "%s\n", what); fclose(f); }
}
int dbserver_init(char *options) { note(options, "init"); return INIT_STATUS; }
int dbserver_fini(void) { note(getenv("RECORDER_LOG"), "fini"); return 0; }
#ifdef WITH_GET
int dbserver_get(const char *key, const char *options, char **out, size_t *len) {
    note(options, "get");
    if (!strcmp(key, "access")) return -1;
    if (!strcmp(key, "other")) return -3;
    if (!strcmp(key, "missing")) return -2;
    if (!strcmp(key, "empty")) { *out = strdup(""); *(int *) len = 0; return 0; }
    if (!strcmp(key, "long")) { *out = strdup("host.example:143trailing"); *len = 16; return 0; }
    *out = strdup("carol@host.example:110");
    *(int *) len = (int) strlen(*out);
    return 0;
}
#endif
#ifdef WITH_GET2
int dbserver_get2(const char *key, const char *options, char **user, char **server,
                  char **port) {
    note(options, "get2");
    if (!strcmp(key, "missing")) return -2;
    if (!strcmp(key, "useronly")) { *user = strdup("bob"); return 0; }
    if (!strcmp(key, "empty")) return 0;
    *user = strdup("dave"); *server = strdup("two.example"); *port = strdup("993");
    return 0;
}
#endif
"""


@pytest.fixture(scope="module")
def libraries(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    subprocess.run([str(REPO_ROOT / "cplugins" / "build.sh")], check=True, timeout=120)
    directory = tmp_path_factory.mktemp("cabi-libs")
    source = directory / "recorder.c"
    source.write_text(RECORDER)
    built = {}
    variants = {"get": ["-DWITH_GET", "-DINIT_STATUS=0"],
                "get2": ["-DWITH_GET2", "-DINIT_STATUS=0"],
                "both": ["-DWITH_GET", "-DWITH_GET2", "-DINIT_STATUS=0"],
                "neither": ["-DINIT_STATUS=0"],
                "badinit": ["-DWITH_GET", "-DINIT_STATUS=-1"]}
    for name, flags in variants.items():
        target = directory / f"lib{name}.so"
        subprocess.run(["gcc", "-shared", "-fPIC", *flags, "-o", str(target), str(source)],
                       check=True, timeout=60)
        built[name] = target
    return built


@pytest.fixture
def log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "calls.log"
    monkeypatch.setenv("RECORDER_LOG", str(path))
    return path


def calls(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


# ------------------------------------------------------------------ -M forms


@pytest.mark.parametrize(("text", "expected"), [
    ("/x/lib.so", cabi.LegacySpec("/x/lib.so")),
    ("legacy:/x/lib.so", cabi.LegacySpec("/x/lib.so")),
    ("isolated:/x/lib.so", cabi.LegacySpec("/x/lib.so", isolated=True)),
    ("isolated,timeout=2.5,workers=3:/x/lib.so",
     cabi.LegacySpec("/x/lib.so", isolated=True, timeout=2.5, workers=3)),
])
def test_parse_spec(text: str, expected: cabi.LegacySpec) -> None:
    assert cabi.parse_spec(text) == expected


@pytest.mark.parametrize("text", ["isolated,color=red:/x.so", "legacy,timeout=2:/x.so",
                                  "isolated,timeout=0:/x.so", "isolated,workers=x:/x.so"])
def test_parse_spec_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        cabi.parse_spec(text)


def test_bad_spec_is_an_option_error_naming_it(libraries: dict[str, Path]) -> None:
    with pytest.raises(OptionError, match="unknown setting"):
        open_map(f"isolated,color=red:{libraries['get']}", "")


# ------------------------------------------------------------------ results


def test_get_statuses_and_the_int_len_wart(libraries: dict[str, Path], log: Path) -> None:
    opened = open_map(str(libraries["get"]), str(log))
    assert isinstance(opened, cabi.CabiMap)
    try:
        assert opened.get("x", CONTEXT) == UserServerPort("carol", "host.example", "110")
        assert opened.get("long", CONTEXT) == UserServerPort(None, "host.example", "143")
        assert opened.get("missing", CONTEXT) is None
        # 0 with "" is not "not found": it is an empty answer, which ends the search.
        assert opened.get("empty", CONTEXT) == UserServerPort(None, None, None)
        for key, code in [("access", "-1"), ("other", "-3")]:
            with pytest.raises(MapError, match=code):
                opened.get(key, CONTEXT)
    finally:
        opened.close()


def test_get2_is_used_only_without_get(libraries: dict[str, Path], log: Path) -> None:
    for name, expected in [("get2", UserServerPort("dave", "two.example", "993")),
                           ("both", UserServerPort("carol", "host.example", "110"))]:
        opened = open_map(f"legacy:{libraries[name]}", str(log))
        assert opened is not None
        try:
            assert opened.get("x", CONTEXT) == expected
        finally:
            opened.close()
    assert calls(log) == ["init", "get2", "fini", "init", "get", "fini"]


def test_get2_user_only_and_empty(libraries: dict[str, Path], log: Path) -> None:
    opened = cabi.CabiMap(str(libraries["get2"]), str(log))
    try:
        assert opened.get("useronly", CONTEXT) == UserServerPort("bob", None, None)
        assert opened.get("empty", CONTEXT) == UserServerPort(None, None, None)
        assert opened.get("missing", CONTEXT) is None
    finally:
        opened.close()


def test_isolated_gives_the_same_answers(libraries: dict[str, Path], log: Path) -> None:
    opened = open_map(f"isolated,workers=1:{libraries['get']}", str(log))
    assert isinstance(opened, cabi.IsolatedCabiMap)
    try:
        assert opened.get("x", CONTEXT) == UserServerPort("carol", "host.example", "110")
        assert opened.get("missing", CONTEXT) is None
        with pytest.raises(MapError, match="-3"):
            opened.get("other", CONTEXT)
    finally:
        opened.close()
    assert calls(log) == ["init", "get", "get", "get", "fini"]


# ------------------------------------------------------------------ life cycle


def test_reload_order_is_fini_then_init(libraries: dict[str, Path], log: Path) -> None:
    old = cabi.CabiMap(str(libraries["get"]), str(log))
    new = cabi.CabiMap(str(libraries["get"]), str(log))  # what SIGHUP does first
    assert calls(log) == ["init", "fini", "init"]
    old.close()  # ... then this: the library is the new map's now
    assert calls(log) == ["init", "fini", "init"]
    assert new.get("x", CONTEXT) is not None
    new.close()
    new.close()
    assert calls(log) == ["init", "fini", "init", "get", "fini"]
    with pytest.raises(MapError, match="closed"):
        new.get("x", CONTEXT)


@pytest.mark.parametrize("prefix", ["legacy:", "isolated:"])
def test_load_errors(prefix: str, libraries: dict[str, Path], log: Path) -> None:
    with pytest.raises(MapError, match="neither dbserver_get nor dbserver_get2"):
        open_map(prefix + str(libraries["neither"]), str(log))
    with pytest.raises(MapError, match="dbserver_init failed"):
        open_map(prefix + str(libraries["badinit"]), str(log))
    needs = REPO_ROOT / "cplugins" / "build" / "needs_symbol.so"
    with pytest.raises(MapError, match="needs the symbol perdition_symbol_nobody_exports,"):
        open_map(prefix + str(needs), "")


# ------------------------------------------------------------------ the shim


def test_peername_and_sockname_reach_the_library(tmp_path: Path) -> None:
    table = tmp_path / "byaddr"
    table.write_text("2001:db8::7 v6@host.example\n192.0.2.7 v4.example:110\n")
    opened = cabi.CabiMap(str(REPO_ROOT / "cplugins" / "build" / "byaddr.so"), str(table))
    try:
        v6 = LookupContext(client=("2001:db8::7", 1234, 0, 0), local=("::1", 143))
        v4 = LookupContext(client=("192.0.2.7", 1234), local=("127.0.0.1", 143))
        assert opened.get("k", v6) == UserServerPort("v6", "host.example", None)
        assert opened.get("k", v4) == UserServerPort(None, "v4.example", "110")
        assert opened.get("k", LookupContext(client=("192.0.2.8", 1))) is None
        with pytest.raises(MapError):  # no peername at all: the example answers -3
            opened.get("k", CONTEXT)
    finally:
        opened.close()


@pytest.fixture(scope="module")
def shim_parser(libraries: dict[str, Path]) -> Any:
    """The shim's user_server_port_str_assign(), called directly."""
    import cffi  # type: ignore[import-untyped]

    binding = load_shim()
    ffi = cffi.FFI()
    ffi.cdef("""
        typedef struct { char *user; char *server; char *port; } user_server_port_t;
        int user_server_port_str_assign(user_server_port_t **usp, const char *str);
        void user_server_port_destroy(user_server_port_t *usp);
        void perditionpy_shim_set_domain_delimiter(const char *delimiter);
    """)
    shim = ffi.dlopen(str(binding.path))

    def parse(text: bytes, delimiter: bytes) -> tuple[bytes | None, ...]:
        shim.perditionpy_shim_set_domain_delimiter(delimiter)
        usp = ffi.new("user_server_port_t **")
        assert shim.user_server_port_str_assign(usp, text) == 0
        try:
            return tuple(None if p == ffi.NULL else ffi.string(p)
                         for p in (usp[0].user, usp[0].server, usp[0].port))
        finally:
            shim.user_server_port_destroy(usp[0])
            shim.perditionpy_shim_set_domain_delimiter(b"@")

    return parse


@pytest.mark.parametrize("text", [
    "host", "host:143", "user@host", "user@host:pop3", "a@b@host:1", "[2001:db8::1]:143",
    "u@[2001:db8::1]", "[::1]", "[::]:110", "host:", "@host", "user@", "", ":143",
    "a:b:c", "[2001:db8::1]x", "u%d@h:1",
])
@pytest.mark.parametrize("delimiter", ["@", "%d", "+"])
def test_shim_parser_agrees_with_ours(shim_parser: Any, text: str, delimiter: str) -> None:
    ours = parse_user_server_port(text, delimiter)
    theirs = shim_parser(text.encode(), delimiter.encode())
    assert theirs == tuple(None if part is None else part.encode()
                           for part in (ours.user, ours.server, ours.port))
