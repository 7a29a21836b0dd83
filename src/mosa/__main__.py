"""``python -m mosa``: the command line."""

import sys

from mosa.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
