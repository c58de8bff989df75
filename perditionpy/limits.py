"""Every limit on input, named in one place."""

from __future__ import annotations

# perdition's MAX_LINE_LENGTH: longest command line read from a client or back-end.
MAX_LINE_LENGTH = 4096
# perdition: tokens (atoms, quoted strings, literals) longer than this are refused.
MAX_TOKEN_LENGTH = 4096
# Largest literal a client may announce during login ({n} / {n+}).
MAX_LITERAL_LENGTH = 4096
# Bytes buffered from a client before authentication, beyond which it is cut off.
MAX_PREAUTH_BUFFER = 64 * 1024
# perdition's PERDITION_AUTH_FAIL_SLEEP / VANESSA_LOGGER_ERR_SLEEP: seconds slept
# before any "failed:" reply and before answering an invalid command.
AUTH_FAIL_DELAY = 3.0
# Relay buffer size (perdition's BUFFER_SIZE is 8 KiB; we read more at once).
RELAY_BUFFER_SIZE = 64 * 1024
# The relay wakes at least this often (seconds) to check idle time and re-log.
RELAY_TICK = 5.0
# Bytes a back-end may send during login without ending a line.
MAX_BACKEND_LINE = 64 * 1024
