"""``python -m perditionpy``: the same as the ``perdition`` command."""

from perditionpy.cli import main

raise SystemExit(main())
