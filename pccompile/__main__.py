"""``python -m pccompile``: the command line (see :mod:`pccompile.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
