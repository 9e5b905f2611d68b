"""`python -m app.cli`: the same entry point as the `healthcode` command."""

import sys

from app.cli import main

sys.exit(main())
