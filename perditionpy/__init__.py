"""perditionpy: a drop-in replacement for the perdition mail retrieval proxy."""

__version__ = "0.1.0"
# The version string perdition's greeting and --help are compatible with.
PERDITION_COMPAT_VERSION = "2.2"
