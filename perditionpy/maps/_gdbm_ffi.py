"""Raw cffi (ABI mode) declarations for libgdbm 1.x and the libc ``free`` it needs.

Only declarations and the loader live here, written the way ``<gdbm.h>``
declares them; every pointer is owned by :mod:`perditionpy.maps.gdbm`.
Nothing is loaded at import time and nothing is cached here: each caller gets
its own ``FFI`` and library handles (the dynamic linker shares the code).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "CDEF", "GDBM_LIBRARY", "GdbmBinding", "load",
    "GDBM_READER", "GDBM_NEWDB", "GDBM_NOLOCK", "GDBM_NOMMAP", "GDBM_CLOEXEC",
    "GDBM_INSERT", "GDBM_ITEM_NOT_FOUND",
]

# The soname of the library perdition 2.2 links against (Debian: libgdbm6).
GDBM_LIBRARY = "libgdbm.so.6"

# Open modes and flags (gdbm.h).
GDBM_READER = 0
GDBM_NEWDB = 3
GDBM_NOLOCK = 0x0040
GDBM_NOMMAP = 0x0080
GDBM_CLOEXEC = 0x0100

# gdbm_store: never replace an existing entry.
GDBM_INSERT = 0

# gdbm_error code set by a fetch that finds nothing (gdbm.h since 1.13).
GDBM_ITEM_NOT_FOUND = 15

CDEF = """
typedef struct {
    char *dptr;
    int   dsize;
} datum;

typedef struct gdbm_file_info *GDBM_FILE;
typedef int gdbm_error;

GDBM_FILE gdbm_open(const char *, int, int, int, void (*)(const char *));
int gdbm_close(GDBM_FILE);
int gdbm_store(GDBM_FILE, datum, datum, int);
datum gdbm_fetch(GDBM_FILE, datum);
datum gdbm_firstkey(GDBM_FILE);
datum gdbm_nextkey(GDBM_FILE, datum);
int gdbm_sync(GDBM_FILE);

int *gdbm_errno_location(void);
gdbm_error gdbm_last_errno(GDBM_FILE dbf);
int gdbm_check_syserr(gdbm_error n);
const char *gdbm_strerror(gdbm_error);

void free(void *);
"""


@dataclass(frozen=True, slots=True)
class GdbmBinding:
    """One ``FFI`` with libgdbm and libc opened through it."""

    ffi: Any
    gdbm: Any
    libc: Any


def load(library: str = GDBM_LIBRARY) -> GdbmBinding:
    """Parse :data:`CDEF` and ``dlopen`` libgdbm and libc.

    Raises ``OSError`` when libgdbm cannot be found.
    """
    import cffi  # imported only when a gdbm map is used

    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    return GdbmBinding(ffi=ffi, gdbm=ffi.dlopen(library), libc=ffi.dlopen(None))
