"""``python -m weakalign``: the same as the ``weakalign`` command."""

import sys

from weakalign.cli import main

if __name__ == "__main__":
    sys.exit(main())
