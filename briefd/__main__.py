"""``python -m briefd``: the same as the ``briefd`` command."""

from briefd.cli import main

raise SystemExit(main())
