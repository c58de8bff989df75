"""Raw cffi (ABI mode) declarations for perdition's map ABI and perditionpy's host shim.

Only declarations, the shim's location and the loaders live here, written the
way ``cplugins/perditiondb.h`` and ``cplugins/shim.c`` declare them; every
pointer is owned by :mod:`perditionpy.maps.cabi`.

The shim is process-wide by nature (the dynamic linker's global scope is), so
it is loaded once per process, with ``RTLD_GLOBAL``, before any map library.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

__all__ = [
    "CDEF", "SHIM_CDEF", "SHIM_NAME", "SHIM_ENV", "Binding", "shim_candidates",
    "load_shim", "open_library",
]

# The prototypes perdition 2.2's getserver.c looks up (dbserver_init is declared
# there as returning ``int *``; every library returns ``int``, and any non-zero
# value is a failure either way).
CDEF = """
int dbserver_init(char *options_str);
int dbserver_fini(void);
int dbserver_get(const char *key_str, const char *options_str,
                 char **str_return, size_t *len_return);
int dbserver_get2(const char *key_str, const char *options_str,
                  char **user_str, char **server_str, char **port_str);
"""

SHIM_CDEF = """
void perditionpy_shim_set_names(const void *peer, size_t peer_len,
                                const void *sock, size_t sock_len);
void perditionpy_shim_set_domain_delimiter(const char *delimiter);
void perditionpy_shim_set_log_sink(void (*sink)(int priority, const char *line));
int perditionpy_shim_hook_vanessa_logger(void);
void free(void *);
"""

SHIM_NAME = "libperditionpy_shim.so"
# Where to find the shim when it is not in one of the default places.
SHIM_ENV = "PERDITIONPY_SHIM"

_REPO_BUILD = Path(__file__).resolve().parents[2] / "cplugins" / "build"


def shim_candidates() -> list[Path]:
    """Where the shim is looked for, in order: $PERDITIONPY_SHIM, the checkout's
    ``cplugins/build`` (``make cplugins``), then the system library directories."""
    candidates = []
    if os.environ.get(SHIM_ENV):
        candidates.append(Path(os.environ[SHIM_ENV]))
    candidates += [_REPO_BUILD / SHIM_NAME,
                   Path("/usr/local/lib/perditionpy") / SHIM_NAME,
                   Path("/usr/lib/perditionpy") / SHIM_NAME]
    return candidates


class Binding:
    """The process's one ``FFI`` and its shim (``shim.free`` is libc's ``free``)."""

    def __init__(self, ffi: Any, shim: Any, path: Path) -> None:
        self.ffi = ffi
        self.shim = shim
        self.path = path


_lock = threading.Lock()
_binding: Binding | None = None


def load_shim() -> Binding:
    """Load the shim once per process (``RTLD_NOW | RTLD_GLOBAL``).

    Raises ``FileNotFoundError`` when it has not been built, ``OSError`` when
    it cannot be loaded.
    """
    global _binding
    with _lock:
        if _binding is None:
            _binding = _load_shim()
        return _binding


def _load_shim() -> Binding:
    import cffi  # imported only when a C map is used

    path = next((path for path in shim_candidates() if path.is_file()), None)
    if path is None:
        raise FileNotFoundError(f"the host shim {SHIM_NAME} is not built "
                                "(run `make cplugins`, or set $PERDITIONPY_SHIM)")
    ffi = cffi.FFI()
    ffi.cdef(SHIM_CDEF)
    ffi.cdef(CDEF)
    shim = ffi.dlopen(str(path), ffi.RTLD_NOW | ffi.RTLD_GLOBAL)
    return Binding(ffi, shim, path)


def open_library(binding: Binding, path: str) -> Any:
    """``dlopen`` a map library with every symbol bound now (``RTLD_NOW``), so a
    symbol the host does not provide is an ``OSError`` here, not a crash later."""
    return binding.ffi.dlopen(path, binding.ffi.RTLD_NOW)
