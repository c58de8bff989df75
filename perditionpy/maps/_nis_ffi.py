"""Raw cffi (ABI mode) declarations for the NIS client in libnsl 2, and libc ``free``.

Only declarations, constants and the loader live here, written the way
``<rpcsvc/ypclnt.h>`` declares them; every pointer is owned by
:mod:`perditionpy.maps.nis`.  Nothing is loaded at import time and nothing is
cached here: each caller gets its own ``FFI`` and library handles (the dynamic
linker shares the code, and with it libnsl's one binding table).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "CDEF",
    "NSL_LIBRARY",
    "NisBinding",
    "load",
    "YPERR_SUCCESS",
    "YPERR_KEY",
    "YPERR_MAP",
    "YPERR_DOMAIN",
    "YPERR_NODOM",
]

# The soname perdition 2.2's libperditiondb_nis.so.0 links against (libnsl2).
NSL_LIBRARY = "libnsl.so.2"

# yp_* return codes (ypclnt.h) that the wrapper tells apart.
YPERR_SUCCESS = 0
YPERR_DOMAIN = 3
YPERR_MAP = 4
YPERR_KEY = 5
YPERR_NODOM = 12

CDEF = """
int yp_get_default_domain(char **);
int yp_match(const char *, const char *, const char *, const int, char **, int *);
const char *yperr_string(const int);

void free(void *);
"""


@dataclass(frozen=True, slots=True)
class NisBinding:
    """One ``FFI`` with libnsl and libc opened through it."""

    ffi: Any
    nsl: Any
    libc: Any


def load(library: str = NSL_LIBRARY) -> NisBinding:
    """Parse :data:`CDEF` and ``dlopen`` libnsl and libc.

    Raises ``OSError`` when libnsl cannot be found.
    """
    import cffi  # imported only when a NIS map is used

    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    return NisBinding(ffi=ffi, nsl=ffi.dlopen(library), libc=ffi.dlopen(None))
