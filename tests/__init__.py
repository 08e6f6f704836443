"""fleetgate's tests, a folder per room as the packages are laid out (docs/architecture.md, "Where
the tests are"); the fixtures and the helpers several rooms' tests share are at this level."""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
