"""`python -m graphrun` is the `graphrun` command."""

import sys

from graphrun.cli import main

sys.exit(main())
