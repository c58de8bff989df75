"""Raw declarations for Linux-PAM's application interface (cffi ABI mode: nothing compiled).

Only declarations live here, as ``<security/pam_appl.h>`` and ``<stdlib.h>``
declare them; :mod:`perditionpy.pam` owns every pointer and every call.

:func:`open_global` loads libpam into the process's *global* symbol scope and
returns a library object that looks names up in that scope (``dlopen(NULL)``),
not in libpam itself.  The difference matters: a preloaded library that
defines ``pam_start`` & co. (``LD_PRELOAD=libpam_wrapper.so`` in the tests) comes
first in the global scope, while a lookup in libpam's own handle would go
straight past it.  ``malloc``/``calloc``/``strdup``/``free`` come from the same
scope (the C library), because PAM frees the conversation's answers with
``free()``.
"""

from __future__ import annotations

from typing import Any

import cffi

__all__ = [
    "CDEF", "LIBPAM", "ffi", "open_global",
    "PAM_SUCCESS", "PAM_OPEN_ERR", "PAM_SYMBOL_ERR", "PAM_SERVICE_ERR", "PAM_SYSTEM_ERR",
    "PAM_BUF_ERR", "PAM_CONV_ERR", "PAM_ABORT", "PAM_MODULE_UNKNOWN",
    "PAM_USER", "PAM_RHOST", "PAM_PROMPT_ECHO_OFF", "PAM_PROMPT_ECHO_ON",
    "PAM_ERROR_MSG", "PAM_TEXT_INFO", "PAM_MAX_NUM_MSG",
]

LIBPAM = "libpam.so.0"

CDEF = """
typedef struct pam_handle pam_handle_t;

struct pam_message {
    int msg_style;
    const char *msg;
};

struct pam_response {
    char *resp;
    int resp_retcode;
};

struct pam_conv {
    int (*conv)(int num_msg, const struct pam_message **msg,
                struct pam_response **resp, void *appdata_ptr);
    void *appdata_ptr;
};

int pam_start(const char *service_name, const char *user,
              const struct pam_conv *pam_conversation, pam_handle_t **pamh);
int pam_start_confdir(const char *service_name, const char *user,
                      const struct pam_conv *pam_conversation, const char *confdir,
                      pam_handle_t **pamh);
int pam_end(pam_handle_t *pamh, int pam_status);
int pam_set_item(pam_handle_t *pamh, int item_type, const void *item);
int pam_authenticate(pam_handle_t *pamh, int flags);
int pam_acct_mgmt(pam_handle_t *pamh, int flags);
const char *pam_strerror(pam_handle_t *pamh, int errnum);

void *calloc(size_t nmemb, size_t size);
char *strdup(const char *s);
void free(void *ptr);
"""

# Return codes (<security/_pam_types.h>).
PAM_SUCCESS = 0
PAM_OPEN_ERR = 1
PAM_SYMBOL_ERR = 2
PAM_SERVICE_ERR = 3
PAM_SYSTEM_ERR = 4
PAM_BUF_ERR = 5
PAM_CONV_ERR = 19
PAM_ABORT = 26
PAM_MODULE_UNKNOWN = 28

# Item types for pam_set_item.
PAM_USER = 2
PAM_RHOST = 4

# Message styles a conversation is asked to answer.
PAM_PROMPT_ECHO_OFF = 1
PAM_PROMPT_ECHO_ON = 2
PAM_ERROR_MSG = 3
PAM_TEXT_INFO = 4

# Linux-PAM never sends more messages than this in one call.
PAM_MAX_NUM_MSG = 32

ffi = cffi.FFI()
ffi.cdef(CDEF)


def open_global(soname: str = LIBPAM) -> tuple[Any, Any]:
    """Load ``soname`` with RTLD_GLOBAL; return ``(libpam, global_scope)``.

    Call the functions through ``global_scope``; keep ``libpam`` referenced so
    the library stays loaded.  Raises ``OSError`` when ``soname`` cannot be loaded.
    """
    libpam = ffi.dlopen(soname, ffi.RTLD_NOW | ffi.RTLD_GLOBAL)
    return libpam, ffi.dlopen(None)
