"""Raw cffi (ABI mode) declarations for Berkeley DB 5.3 (``libdb-5.3.so``).

Only declarations, constants and the loader live here; every handle is owned by
:mod:`perditionpy.maps.bdb`.  Nothing is loaded at import time and nothing is
cached here: each caller gets its own ``FFI`` and library handle.

Berkeley DB's methods are function pointers inside its handle structures
(``dbp->open(dbp, ...)``), and the structures are long.  ABI mode cannot ask a
compiler for their layout, so the handles are declared as the *prefix* we use:
the members before each method we call are collapsed into padding of the same
size.  The offsets below were read off ``<db.h>`` of libdb5.3-dev
5.3.28+dfsg2 with ``offsetof()`` on x86_64 (LP64), and the method prototypes
are copied from the same header.  They hold for 5.3 only, which is why
:func:`load` refuses any other version.

=====================  ======  =========================================
member                 offset  prototype (db.h)
=====================  ======  =========================================
``DB.close``             568   ``int (*)(DB *, u_int32_t)``
``DB.cursor``            584   ``int (*)(DB *, DB_TXN *, DBC **, u_int32_t)``
``DB.get``               632   ``int (*)(DB *, DB_TXN *, DBT *, DBT *, u_int32_t)``
``DB.open``             1008   ``int (*)(DB *, DB_TXN *, const char *, const char *, DBTYPE, u_int32_t, int)``
``DB.put``              1024   ``int (*)(DB *, DB_TXN *, DBT *, DBT *, u_int32_t)``
``DB.set_errcall``      1128   ``void (*)(DB *, void (*)(const DB_ENV *, const char *, const char *))``
``DBC.close``            352   ``int (*)(DBC *)``
``DBC.get``              392   ``int (*)(DBC *, DBT *, DBT *, u_int32_t)``
=====================  ======  =========================================

``DBT`` (40 bytes) is declared whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "CDEF", "BDB_LIBRARY", "BDB_VERSION", "OFFSETS", "BdbBinding", "load",
    "DB_HASH", "DB_CREATE", "DB_RDONLY", "DB_TRUNCATE", "DB_NOMMAP", "DB_EXCL",
    "DB_NOOVERWRITE", "DB_NEXT", "DB_NOTFOUND", "DB_KEYEXIST",
]

# The soname perdition 2.2's libperditiondb_bdb.so.0 and makebdb link against.
BDB_LIBRARY = "libdb-5.3.so"

# The (major, minor) release whose structure layout is declared below.
BDB_VERSION = (5, 3)

# Member offsets, as read off <db.h> (see the module docstring); the test
# suite checks the cdef against them.
OFFSETS = {
    ("struct __db", "close"): 568,
    ("struct __db", "cursor"): 584,
    ("struct __db", "get"): 632,
    ("struct __db", "open"): 1008,
    ("struct __db", "put"): 1024,
    ("struct __db", "set_errcall"): 1128,
    ("struct __dbc", "close"): 352,
    ("struct __dbc", "get"): 392,
}

# DBTYPE
DB_HASH = 2

# Flags (db.h, 5.3).
DB_CREATE = 0x00000001
DB_EXCL = 0x00000004
DB_NOMMAP = 0x00000010
DB_RDONLY = 0x00000400
DB_TRUNCATE = 0x00020000
DB_NOOVERWRITE = 20
DB_NEXT = 16

# Return codes.
DB_KEYEXIST = -30994
DB_NOTFOUND = -30988

CDEF = """
typedef unsigned int u_int32_t;
typedef struct __db DB;
typedef struct __dbc DBC;
typedef struct __db_env DB_ENV;
typedef struct __db_txn DB_TXN;
typedef int DBTYPE;

typedef struct __db_dbt {
    void      *data;
    u_int32_t  size;
    u_int32_t  ulen;
    u_int32_t  dlen;
    u_int32_t  doff;
    void      *app_data;
    u_int32_t  flags;
} DBT;

struct __db {
    unsigned char _before_close[568];
    int  (*close)(DB *, u_int32_t);
    unsigned char _compact[8];
    int  (*cursor)(DB *, DB_TXN *, DBC **, u_int32_t);
    unsigned char _del_to_fd[40];
    int  (*get)(DB *, DB_TXN *, DBT *, DBT *, u_int32_t);
    unsigned char _get_alloc_to_key_range[368];
    int  (*open)(DB *, DB_TXN *, const char *, const char *, DBTYPE, u_int32_t, int);
    unsigned char _pget[8];
    int  (*put)(DB *, DB_TXN *, DBT *, DBT *, u_int32_t);
    unsigned char _remove_to_set_encrypt[96];
    void (*set_errcall)(DB *, void (*)(const DB_ENV *, const char *, const char *));
};

struct __dbc {
    unsigned char _before_close[352];
    int  (*close)(DBC *);
    unsigned char _cmp_to_dup[32];
    int  (*get)(DBC *, DBT *, DBT *, u_int32_t);
};

int db_create(DB **, DB_ENV *, u_int32_t);
char *db_strerror(int);
char *db_version(int *, int *, int *);
"""


@dataclass(frozen=True, slots=True)
class BdbBinding:
    """One ``FFI`` with libdb opened through it, and the C callback for its errors.

    ``errcall`` must stay referenced as long as any handle that was given it.
    """

    ffi: Any
    db: Any
    errcall: Any


def load(library: str = BDB_LIBRARY, errcall: Any = None) -> BdbBinding:
    """Parse :data:`CDEF`, ``dlopen`` libdb and check it is release 5.3.

    ``errcall(message: str)`` receives Berkeley DB's error messages (which it
    would otherwise print on stderr).  Raises ``OSError`` when libdb cannot be
    loaded or is another release.
    """
    import cffi  # imported only when a bdb map is used

    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    db = ffi.dlopen(library)
    _check_version(ffi, db)

    def on_error(_env: Any, _prefix: Any, message: Any) -> None:
        if errcall is not None and message != ffi.NULL:
            errcall(ffi.string(message).decode("utf-8", "replace"))

    callback = ffi.callback("void(const DB_ENV *, const char *, const char *)", on_error)
    return BdbBinding(ffi=ffi, db=db, errcall=callback)


def _check_version(ffi: Any, db: Any) -> None:
    major, minor, patch = ffi.new("int *"), ffi.new("int *"), ffi.new("int *")
    db.db_version(major, minor, patch)
    if (major[0], minor[0]) != BDB_VERSION:
        raise OSError(f"{BDB_LIBRARY} is Berkeley DB {major[0]}.{minor[0]}.{patch[0]}; "
                      f"the declarations are for {BDB_VERSION[0]}.{BDB_VERSION[1]}")
