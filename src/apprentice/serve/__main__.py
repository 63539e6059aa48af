"""``python -m apprentice.serve RUN_DIR``: the same options as ``apprentice serve``."""

from apprentice.serve.cli import main

raise SystemExit(main())
