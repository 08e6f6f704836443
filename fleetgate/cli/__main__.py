"""`python -m fleetgate.cli`: the `fleetgate` command (how the tests and benchmarks start it)."""

import sys

from fleetgate.cli import main

# Guarded: worker processes (`fleetgate migrate import --workers`) import the main module again.
if __name__ == "__main__":
    sys.exit(main())
