"""Raw cffi (ABI mode) declarations for glibc's POSIX regex and per-thread locales.

Only declarations, constants and the loader live here, written the way
``<regex.h>`` and ``<locale.h>`` declare them; every pointer is owned by
:mod:`perditionpy.maps.posix_regex`.  Nothing is loaded at import time and
nothing is cached here: each caller gets its own ``FFI`` and library handle.

``regex_t`` is opaque to us: it is declared as a byte array larger than glibc's
own (64 bytes on x86_64 and every other LP64 target, 32 on ILP32), so that
``ffi.new("regex_t *")`` always allocates enough; only libc reads it.
``regoff_t`` is ``int`` in glibc (``_REGEX_LARGE_OFFSETS`` is not defined for
the public API), so ``regmatch_t`` is two ``int``s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "CDEF", "LIBC", "RegexBinding", "load", "REGEX_T_BYTES",
    "REG_EXTENDED", "REG_ICASE", "REG_NEWLINE", "REG_NOMATCH", "LC_ALL_MASK",
]

# The C library; ``None`` asks dlopen for the process's own (glibc).
LIBC: str | None = None

# Generous: glibc's regex_t is 64 bytes on LP64 (checked with sizeof()).
REGEX_T_BYTES = 256

# regcomp cflags and regexec results (<regex.h>, glibc).
REG_EXTENDED = 1
REG_ICASE = 2
REG_NEWLINE = 4
REG_NOMATCH = 1

# newlocale() category mask for every category (<locale.h>, glibc).
LC_ALL_MASK = 0x1FBF

CDEF = f"""
typedef struct {{ unsigned char opaque[{REGEX_T_BYTES}]; }} regex_t;
typedef int regoff_t;
typedef struct {{
    regoff_t rm_so;
    regoff_t rm_eo;
}} regmatch_t;

int regcomp(regex_t *preg, const char *regex, int cflags);
int regexec(const regex_t *preg, const char *string, size_t nmatch,
            regmatch_t pmatch[], int eflags);
size_t regerror(int errcode, const regex_t *preg, char *errbuf, size_t errbuf_size);
void regfree(regex_t *preg);

typedef struct __locale_struct *locale_t;
locale_t newlocale(int category_mask, const char *locale, locale_t base);
locale_t uselocale(locale_t newloc);
void freelocale(locale_t locobj);
"""


@dataclass(frozen=True, slots=True)
class RegexBinding:
    """One ``FFI`` with libc opened through it."""

    ffi: Any
    libc: Any


def load() -> RegexBinding:
    """Parse :data:`CDEF` and open libc.  Raises ``OSError`` if that fails."""
    import cffi  # imported only when a regex map is used

    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    return RegexBinding(ffi=ffi, libc=ffi.dlopen(LIBC))
