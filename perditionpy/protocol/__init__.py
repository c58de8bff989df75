"""Sans-I/O protocol engines: bytes in, events out; events in, bytes out.

Nothing in this package imports ``socket``, ``ssl`` or ``threading``.
"""
