"""`python -m fleetgate.cli`: the `fleetgate` command (how the tests and benchmarks start it)."""

import sys

from fleetgate.cli import main

sys.exit(main())
