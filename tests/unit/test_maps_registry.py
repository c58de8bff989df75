"""The map registry: every ``-M`` form, its errors, and plugin loading."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from perditionpy.errors import NotImplementedOption, OptionError
from perditionpy.maps import (
    ENTRY_POINT_GROUP,
    MapNotImplemented,
    available_maps,
    find_factory,
    open_map,
)
from perditionpy.maps.base import LookupContext, Map
from perditionpy.maps.gdbm import GdbmMap

PLUGIN_SOURCE = textwrap.dedent("""
    from perditionpy.endpoints import parse_user_server_port

    class DictMap:
        name = "dict"

        def __init__(self, options):
            self.entries = dict(item.split("=", 1) for item in options.split(",") if item)
            self.closed = False

        def get(self, key, context):
            value = self.entries.get(key)
            return None if value is None else parse_user_server_port(value)

        def close(self):
            self.closed = True

    def map_factory(options):
        return DictMap(options)

    def other_factory(options):
        return DictMap("fixed=other.example:110")

    def not_a_map(options):
        return 42
""")


@pytest.fixture
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An importable module ``site_dict_map`` holding the plugin source."""
    (tmp_path / "site_dict_map.py").write_text(PLUGIN_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "site_dict_map", raising=False)
    return "site_dict_map"


@pytest.fixture
def plugin_file(tmp_path: Path) -> Path:
    path = tmp_path / "plugins" / "dictmap.py"
    path.parent.mkdir()
    path.write_text(PLUGIN_SOURCE)
    return path


@pytest.fixture
def entry_point(tmp_path: Path, plugin_module: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """An installed distribution (a real .dist-info) offering map ``sitedict``."""
    info = tmp_path / "site_dict_map-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: site-dict-map\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nsitedict = {plugin_module}:map_factory\n"
        f"odbc = {plugin_module}:other_factory\n"
    )
    return "sitedict"


def test_empty_library_means_no_map() -> None:
    assert open_map("", "") is None
    assert open_map("", "/some/file") is None


@pytest.mark.parametrize(
    "library",
    [
        "/usr/lib/x86_64-linux-gnu/libperditiondb_gdbm.so.0",
        "/nonexistent/dir/libperditiondb_gdbm.so.0.0.0",
        "/usr/lib/libperditiondb_gdbm.so",
        "libperditiondb_gdbm.so.0",
        "libperditiondb_gdbm.so",
        "gdbm",
    ],
)
def test_gdbm_selected_by_any_name(library: str, tmp_path: Path) -> None:
    path = str(tmp_path / "popmap.gdbm.db")
    opened = open_map(library, path)
    try:
        assert isinstance(opened, GdbmMap)
        assert opened.path == path
        assert isinstance(opened, Map)
    finally:
        assert opened is not None
        opened.close()


@pytest.mark.parametrize(
    "library",
    [
        "libperditiondb_daemon.so.0",
        "/usr/lib/x86_64-linux-gnu/libperditiondb_odbc.so.0",
        "libperditiondb_odbc.so",
        "daemon",
        "odbc",
    ],
)
def test_planned_kinds_are_not_implemented_yet(library: str) -> None:
    with pytest.raises(NotImplementedOption) as caught:
        open_map(library, "")
    assert caught.value.option == "map_library"
    assert repr(library) in str(caught.value)


def test_not_implemented_message_names_the_library() -> None:
    with pytest.raises(MapNotImplemented) as caught:
        open_map("libperditiondb_odbc.so.0", "localhost")
    assert str(caught.value) == "--map_library: not implemented yet: 'libperditiondb_odbc.so.0'"


@pytest.mark.parametrize(
    "library",
    [
        "/usr/local/lib/libmysitemap.so",
        "/opt/maps/custom.so.1",
        "legacy:/opt/maps/custom.so.1",
        "isolated,timeout=2:/usr/lib/libperditiondb_gdbm.so.0",
    ],
)
def test_other_c_libraries_go_to_the_cabi_loader(library: str) -> None:
    # Loading real libraries is tested in tests/unit/test_cabi*.py; here: routing only.
    with pytest.raises(OptionError, match="no such file") as caught:
        open_map(library, "")
    assert not isinstance(caught.value, NotImplementedOption)


def test_unknown_perdition_kind_is_not_implemented_yet() -> None:
    with pytest.raises(MapNotImplemented, match="not implemented yet"):
        open_map("/usr/lib/libperditiondb_sitebuilt.so.0", "")


@pytest.mark.parametrize("library", ["nosuchmap", "/etc/passwd", "a b"])
def test_unknown_names_are_option_errors(library: str) -> None:
    with pytest.raises(OptionError) as caught:
        open_map(library, "")
    assert not isinstance(caught.value, NotImplementedOption)
    assert repr(library) in str(caught.value)


def test_unknown_short_name_lists_known_maps() -> None:
    with pytest.raises(OptionError, match="known: .*gdbm"):
        open_map("nosuchmap", "")


def test_module_attribute_form(plugin_module: str) -> None:
    opened = open_map(f"{plugin_module}:map_factory", "alice=imap.example:143")
    assert opened is not None
    assert opened.name == "dict"
    found = opened.get("alice", LookupContext())
    assert found is not None and (found.server, found.port) == ("imap.example", "143")
    assert opened.get("bob", LookupContext()) is None


def test_module_attribute_may_name_a_class(plugin_module: str) -> None:
    opened = open_map(f"{plugin_module}:DictMap", "a=b")
    assert opened is not None and opened.get("a", LookupContext()) is not None


def test_python_file_with_default_attribute(plugin_file: Path) -> None:
    opened = open_map(str(plugin_file), "carol=pop.example")
    assert opened is not None
    found = opened.get("carol", LookupContext())
    assert found is not None and found.server == "pop.example"


def test_python_file_with_named_attribute(plugin_file: Path) -> None:
    opened = open_map(f"{plugin_file}:other_factory", "")
    assert opened is not None
    found = opened.get("fixed", LookupContext())
    assert found is not None and found.server == "other.example"


def test_python_file_is_rerun_on_each_open(plugin_file: Path) -> None:
    """A reload (SIGHUP) must pick up an edited plugin file."""
    first = open_map(str(plugin_file), "")
    plugin_file.write_text(PLUGIN_SOURCE.replace('name = "dict"', 'name = "edited"'))
    second = open_map(str(plugin_file), "")
    assert first is not None and second is not None
    assert (first.name, second.name) == ("dict", "edited")


@pytest.mark.parametrize(
    "suffix, reason",
    [
        (":no_such_attribute", "has no attribute"),
        (":not_a_map", "not a map"),
    ],
)
def test_bad_plugin_attribute_is_named(plugin_file: Path, suffix: str, reason: str) -> None:
    library = f"{plugin_file}{suffix}"
    with pytest.raises(OptionError, match=reason) as caught:
        open_map(library, "")
    assert repr(library) in str(caught.value)


def test_missing_python_file(tmp_path: Path) -> None:
    with pytest.raises(OptionError, match="no such file"):
        open_map(str(tmp_path / "absent.py"), "")


def test_broken_python_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.py"
    path.write_text("def map_factory(:\n")
    with pytest.raises(OptionError, match="cannot load"):
        open_map(str(path), "")


def test_unimportable_module() -> None:
    with pytest.raises(OptionError, match="cannot import no_such_module_xyz"):
        open_map("no_such_module_xyz:factory", "")


def test_non_callable_factory(plugin_module: str) -> None:
    with pytest.raises(OptionError, match="callable"):
        find_factory(f"{plugin_module}:__name__")


def test_entry_point_by_short_name(entry_point: str) -> None:
    assert entry_point in available_maps()
    opened = open_map(entry_point, "dave=mail.example:995")
    assert opened is not None
    found = opened.get("dave", LookupContext())
    assert found is not None and found.port == "995"


def test_entry_point_serves_a_planned_kind(entry_point: str) -> None:
    """An installed plugin may provide a kind perditionpy has not implemented."""
    opened = open_map("libperditiondb_odbc.so.0", "ignored")
    assert opened is not None
    found = opened.get("fixed", LookupContext())
    assert found is not None and found.server == "other.example"


def test_builtin_kinds_are_imported_lazily() -> None:
    code = (
        "import sys, perditionpy.maps; "
        "print('perditionpy.maps.gdbm' in sys.modules, 'cffi' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.split() == ["False", "False"]
