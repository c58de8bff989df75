"""The ``perdition*`` commands: build the Options, report bad input in one
line, and hand over to the server."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from perditionpy.errors import OptionError, PerditionError

if TYPE_CHECKING:
    from perditionpy.options import Options

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of every console script; the protocol comes from argv[0]."""
    argv = list(sys.argv if argv is None else argv)
    prog = argv[0] if argv else "perdition"
    if os.path.basename(prog) in ("__main__.py", "-c", ""):
        prog = "perdition"  # python -m perditionpy behaves as the plain command
    name = os.path.basename(prog)
    from perditionpy import options as options_mod

    try:
        opts = options_mod.load(argv[1:], prog)
    except OptionError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    if opts.help:
        sys.stdout.write(options_mod.help_text(prog))
        return 0
    return _run(opts, prog, name)


def _run(opts: Options, prog: str, name: str) -> int:
    from perditionpy import log as log_mod
    from perditionpy import server
    from perditionpy.app import App

    try:
        app = App(opts)
    except PerditionError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    try:
        log_mod.setup_logging(opts, prog)
    except OptionError as exc:
        print(f"{name}: Fatal error opening logger: {exc}", file=sys.stderr)
        app.close()
        return 255
    try:
        return server.serve(opts, app.handle, reload=app.reload, prog=prog,
                            start=app.start)
    finally:
        app.close()
