"""The gateway process keeps the memory a batch frees for the next one (glibc's malloc, tuned in
Gateway.run): a batch's megabytes of numpy arrays are not faulted in afresh every time."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests import REPO

# Allocates and frees what a batch of 5,000 samples does (four arrays of ~750 KB), 20 times, and
# prints the minor page faults that took, with the tuning or without.
_PROBE = """
import resource, sys
import numpy as np
from gateway.service import keep_freed_memory
if sys.argv[1] == "tuned":
    assert keep_freed_memory()
def batch():
    return [np.ones(750_000, np.uint8) for _ in range(4)]
batch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    batch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    run = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    return int(run.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_batch_worth_of_arrays_is_not_faulted_in_again_with_every_batch():
    assert _faults("default") > 20 * 4 * 100  # each array a fresh mapping: ~183 pages apiece
    assert _faults("tuned") < 100
