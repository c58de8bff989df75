"""``SSL_CTX_set_verify_depth`` for a Python :class:`ssl.SSLContext`: the one
OpenSSL setting ``--ssl_cert_verify_depth`` needs that Python's ``ssl`` module
cannot make.

How, and what keeps it safe:

* libssl is reached through the handle of CPython's own ``_ssl`` extension
  (``dlopen`` with ``RTLD_NOLOAD``: the copy already loaded).  ``dlsym`` on that
  handle searches ``_ssl`` and then the libraries it was linked against, so the
  functions found are the ones ``_ssl`` itself calls, never another libssl that
  happens to be on the system.  Its ``OpenSSL_version_num()`` must also equal
  ``ssl.OPENSSL_VERSION_NUMBER``.
* The ``SSL_CTX *`` is the first field after ``PyObject_HEAD`` in CPython's
  ``PySSLContext``.  Before anything is written through it, libssl reads back
  through it what Python reports for the same context: the options and the
  verify mode must match, and the depth read back after setting it must be the
  one set.  Any mismatch is a :class:`VerifyDepthError` and nothing is written.

Only called while the contexts are built at start-up, before any handshake
uses them (OpenSSL does not lock a context's settings against handshakes).
"""

from __future__ import annotations

import ssl
import sys
import threading
from typing import Any

import cffi

__all__ = ["VerifyDepthError", "get_verify_depth", "set_verify_depth"]

CDEF = """
typedef struct ssl_ctx_st SSL_CTX;
void SSL_CTX_set_verify_depth(SSL_CTX *ctx, int depth);
int SSL_CTX_get_verify_depth(const SSL_CTX *ctx);
int SSL_CTX_get_verify_mode(const SSL_CTX *ctx);
uint64_t SSL_CTX_get_options(const SSL_CTX *ctx);
unsigned long OpenSSL_version_num(void);
"""

# What CPython's _ssl.c passes to SSL_CTX_set_verify for each ssl.VerifyMode
# (SSL_VERIFY_PEER = 1, SSL_VERIFY_FAIL_IF_NO_PEER_CERT = 2).
_OPENSSL_VERIFY_MODE = {ssl.CERT_NONE: 0, ssl.CERT_OPTIONAL: 1, ssl.CERT_REQUIRED: 3}

_ffi = cffi.FFI()
_ffi.cdef(CDEF)
_lock = threading.Lock()
_loaded: list[Any] = []  # the library, once opened (the handle lives as long as the process)


class VerifyDepthError(Exception):
    """The depth cannot be set on this Python: the text says why."""


def set_verify_depth(ctx: ssl.SSLContext, depth: int) -> None:
    """``SSL_CTX_set_verify_depth(ctx, depth)`` once the pointer is proven to be ``ctx``'s."""
    if depth < 0:
        raise ValueError(f"verify depth {depth} < 0")
    lib, pointer = _checked(ctx)
    lib.SSL_CTX_set_verify_depth(pointer, depth)
    if lib.SSL_CTX_get_verify_depth(pointer) != depth:
        raise VerifyDepthError("the depth read back is not the depth set")


def get_verify_depth(ctx: ssl.SSLContext) -> int:
    """``SSL_CTX_get_verify_depth(ctx)``: -1 while OpenSSL's default (100) applies."""
    lib, pointer = _checked(ctx)
    return int(lib.SSL_CTX_get_verify_depth(pointer))


def _checked(ctx: ssl.SSLContext) -> tuple[Any, Any]:
    """The library and ``ctx``'s ``SSL_CTX *``, after reading back what Python reports."""
    lib = _library()
    pointer = _context_pointer(ctx)
    if lib.SSL_CTX_get_options(pointer) != int(ctx.options):
        raise VerifyDepthError("the SSL_CTX found does not have the context's options")
    if lib.SSL_CTX_get_verify_mode(pointer) != _OPENSSL_VERIFY_MODE[ctx.verify_mode]:
        raise VerifyDepthError("the SSL_CTX found does not have the context's verify mode")
    return lib, pointer


def _context_pointer(ctx: ssl.SSLContext) -> Any:
    if sys.implementation.name != "cpython":
        raise VerifyDepthError(f"needs CPython, not {sys.implementation.name}")
    if not isinstance(ctx, ssl.SSLContext):
        raise TypeError(f"not an ssl.SSLContext: {type(ctx).__name__}")
    offset = object.__basicsize__  # sizeof(PyObject): where PyObject_HEAD ends
    if type(ctx).__basicsize__ < offset + _ffi.sizeof("void *"):
        raise VerifyDepthError("ssl.SSLContext is smaller than CPython's PySSLContext")
    pointer = _ffi.cast("SSL_CTX **", id(ctx) + offset)[0]
    if pointer == _ffi.NULL:
        raise VerifyDepthError("the context has no SSL_CTX")
    return pointer


def _library() -> Any:
    with _lock:
        if not _loaded:
            _loaded.append(_open())
        return _loaded[0]


def _open() -> Any:
    import _ssl  # the extension module whose libssl we must call

    path = getattr(_ssl, "__file__", None)
    if not path:
        raise VerifyDepthError("the _ssl module is built into the interpreter: no handle "
                               "to find its libssl through")
    try:
        lib = _ffi.dlopen(path, _ffi.RTLD_NOLOAD | _ffi.RTLD_NOW)
        version = lib.OpenSSL_version_num()
        for name in ("SSL_CTX_set_verify_depth", "SSL_CTX_get_verify_depth",
                     "SSL_CTX_get_verify_mode", "SSL_CTX_get_options"):
            getattr(lib, name)
    except (OSError, AttributeError) as exc:
        raise VerifyDepthError(f"libssl's functions are not reachable through {path}: "
                               f"{exc}") from None
    if version != ssl.OPENSSL_VERSION_NUMBER:
        raise VerifyDepthError(f"the libssl found is version {version:#x}, the ssl module's "
                               f"is {ssl.OPENSSL_VERSION_NUMBER:#x}")
    return lib
