"""The map registry: what ``-M``/``--map_library`` names, turned into a ``Map``.

``open_map(library, options)`` accepts every form below and is the only way the
rest of perditionpy gets a map:

* ``""`` — no map at all (perdition's "pure proxy"): ``None``.
* perdition's own library, by path or by name, whether or not the file exists:
  ``/usr/lib/x86_64-linux-gnu/libperditiondb_gdbm.so.0``,
  ``libperditiondb_gdbm.so`` — any ``libperditiondb_<kind>.so*`` selects our
  native map of that kind.
* a short name: ``gdbm`` — a built-in kind, or the name of an entry point in
  the ``perditionpy.maps`` group (how an installed package adds a map).
* ``package.module:attr`` — a factory (or a ``Map`` class) to import.
* ``/path/to/map.py`` or ``/path/to/map.py:attr`` — a Python file defining a
  factory; ``attr`` defaults to ``map_factory``.
* ``/path/to/libsomething.so`` (any shared object that is not one of
  perdition's own) — a legacy C map library, through the C-ABI loader
  (``maps/cabi``), in this process.
* ``legacy:/path/lib.so`` — the C-ABI loader explicitly, even for perdition's
  own ``libperditiondb_<kind>.so*``; ``isolated[,timeout=S][,workers=N]:/path``
  — the same in helper processes, so a crash or a hang costs one lookup.

A factory is called with the ``-m`` string and must return something with
``name``, ``get()`` and ``close()`` (``maps.base.Map``); the result is checked
here so that a broken plugin is reported by name at start-up.  Built-in maps
are imported only when asked for.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import sys
from importlib import metadata

from perditionpy.errors import NotImplementedOption, OptionError
from perditionpy.maps.base import LookupContext, Map, MapError, MapFactory, UserServerPort

__all__ = [
    "open_map", "find_factory", "available_maps", "MapNotImplemented",
    "ENTRY_POINT_GROUP", "FILE_FACTORY_ATTRIBUTE",
    "Map", "MapFactory", "MapError", "LookupContext", "UserServerPort",
]

# Third-party maps register a factory under this entry-point group.
ENTRY_POINT_GROUP = "perditionpy.maps"
# The attribute a ``map.py`` file must define when no ``:attr`` is given.
FILE_FACTORY_ATTRIBUTE = "map_factory"

_OPTION = "map_library"

# Built-in kinds: name → "module:factory", imported on first use.
_BUILTIN: dict[str, str] = {
    "cdb": "perditionpy.maps.cdb:open_cdb_map",
    "gdbm": "perditionpy.maps.gdbm:open_gdbm_map",
    "bdb": "perditionpy.maps.bdb:open_bdb_map",
    "posix_regex": "perditionpy.maps.posix_regex:open_posix_regex_map",
    "ldap": "perditionpy.maps.ldap:open_ldap_map",
    "nis": "perditionpy.maps.nis:open_nis_map",
    "mysql": "perditionpy.maps.mysql:open_mysql_map",
    "postgresql": "perditionpy.maps.postgresql:open_postgresql_map",
}

# Kinds perdition 2.2 ships that perditionpy does not have yet.
_PLANNED = frozenset({
    "daemon", "odbc",
})

_PERDITION_LIBRARY = re.compile(r"libperditiondb_(?P<kind>\w+)\.so(\.[0-9.]*)?")
# The C-ABI loader asked for by name: legacy:/path.so, isolated[,k=v...]:/path.so
_LEGACY_FORM = re.compile(r"(legacy|isolated)(,[^:]*)?:.+", re.S)
_SHARED_OBJECT = re.compile(r".*\.so(\.[0-9.]*)?")
_DOTTED_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_SHORT_NAME = re.compile(r"[A-Za-z_][\w-]*")


class MapNotImplemented(NotImplementedOption):
    """``-M`` names a map perdition has and perditionpy has not yet; names the library."""

    def __init__(self, library: str) -> None:
        # NotImplementedOption carries no value; this one must name the library.
        OptionError.__init__(self, _OPTION, library, "not implemented yet")


def available_maps() -> list[str]:
    """The short names usable with ``-M``: built-in kinds and installed entry points."""
    installed = {point.name for point in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    return sorted(installed | set(_BUILTIN))


def open_map(library: str, options: str) -> Map | None:
    """Open the map ``-M library`` with ``-m options``; ``None`` when ``library`` is ``""``.

    Raises ``OptionError`` (``MapNotImplemented`` for maps still to come) when
    ``library`` names nothing usable, and lets a factory's ``MapError`` through
    when the map cannot be set up at all.
    """
    if library == "":
        return None
    factory = find_factory(library)
    return _checked(factory(options), library)


def find_factory(library: str) -> MapFactory:
    """The factory ``library`` names, loaded and checked to be callable."""
    factory = _resolve(library)
    if not callable(factory):
        raise OptionError(_OPTION, library, "does not name a callable map factory")
    return factory


def _resolve(library: str) -> MapFactory:
    if _LEGACY_FORM.fullmatch(library) and not _DOTTED_NAME.fullmatch(library.partition(":")[2]):
        return _legacy_factory(library)
    basename = os.path.basename(library)
    perdition = _PERDITION_LIBRARY.fullmatch(basename)
    if perdition is not None:
        return _kind_factory(perdition["kind"], library, c_library=True)
    head, colon, attr = library.rpartition(":")
    if colon and _DOTTED_NAME.fullmatch(attr):
        if head.endswith(".py"):
            return _load_file(head, attr, library)
        if _DOTTED_NAME.fullmatch(head):
            return _load_attribute(head, attr, library)
    if library.endswith(".py"):
        return _load_file(library, FILE_FACTORY_ATTRIBUTE, library)
    if _SHARED_OBJECT.fullmatch(basename):
        return _legacy_factory(library)  # a site's own C map
    if _SHORT_NAME.fullmatch(library):
        return _kind_factory(library, library, c_library=False)
    raise OptionError(_OPTION, library, "not a map name, module:attr, .py file or library")


def _kind_factory(kind: str, library: str, *, c_library: bool) -> MapFactory:
    """A built-in kind, else an entry point of that name, else an error naming ``library``."""
    target = _BUILTIN.get(kind)
    if target is not None:
        module, _, attr = target.partition(":")
        return _load_attribute(module, attr, library)
    point = _entry_point(kind)
    if point is not None:
        return _load_entry_point(point, library)
    if kind in _PLANNED or c_library:
        raise MapNotImplemented(library)
    known = ", ".join(available_maps())
    raise OptionError(_OPTION, library, f"unknown map (known: {known})")


def _legacy_factory(library: str) -> MapFactory:
    """The C-ABI loader's factory for ``library`` (a path, ``legacy:…``, ``isolated…:…``)."""
    from perditionpy.maps import cabi

    try:
        return cabi.factory_for(library)
    except ValueError as exc:
        raise OptionError(_OPTION, library, str(exc)) from None


def _entry_point(name: str) -> metadata.EntryPoint | None:
    for point in metadata.entry_points(group=ENTRY_POINT_GROUP, name=name):
        return point
    return None


def _load_entry_point(point: metadata.EntryPoint, library: str) -> MapFactory:
    try:
        factory: MapFactory = point.load()
    except Exception as exc:
        raise OptionError(_OPTION, library,
                          f"cannot load entry point {point.value}: {exc}") from exc
    return factory


def _load_attribute(module_name: str, attr: str, library: str) -> MapFactory:
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise OptionError(_OPTION, library, f"cannot import {module_name}: {exc}") from exc
    return _attribute(module, attr, library)


def _load_file(path: str, attr: str, library: str) -> MapFactory:
    """Execute the Python file at ``path`` as a fresh module and take ``attr`` from it."""
    if not os.path.isfile(path):
        raise OptionError(_OPTION, library, "no such file")
    digest = hashlib.sha256(os.path.abspath(path).encode("utf-8", "surrogateescape"))
    name = f"perditionpy.maps._file_{digest.hexdigest()[:16]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise OptionError(_OPTION, library, "cannot be loaded as a Python file")
    module = importlib.util.module_from_spec(spec)
    # Registered before running so that dataclasses & co. can find the module;
    # a reload (SIGHUP) runs the file again and replaces the entry.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise OptionError(_OPTION, library, f"cannot load: {exc}") from exc
    return _attribute(module, attr, library)


def _attribute(module: object, attr: str, library: str) -> MapFactory:
    value: object = module
    for part in attr.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise OptionError(_OPTION, library, f"has no attribute {attr!r}") from None
    return value  # type: ignore[return-value]  # checked by find_factory/_checked


def _checked(result: object, library: str) -> Map:
    """Refuse, by library name, a factory result that is not a ``Map``."""
    if not isinstance(result, Map) or not isinstance(getattr(result, "name", None), str):
        raise OptionError(_OPTION, library,
                          f"factory returned {type(result).__name__}, not a map "
                          "(needs a str name, get() and close())")
    return result
