"""``python -m mergeline``: the same as the ``mergeline`` console script."""

from mergeline.cli import main

raise SystemExit(main())
