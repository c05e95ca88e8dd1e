"""`python -m graphrun` is the `graphrun` command."""

import sys

from graphrun.cli import main

if __name__ == "__main__":  # not when a spawned engine process imports the parent's main module
    sys.exit(main())
