"""Which vehicles a shadow batch watches: a reproducible sample of the fleet, stratified by
vehicle type so that every type is represented in its share (a pilot of e-bikes alone says
nothing about the cars)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


class SampleError(ValueError):
    """A sample that cannot be picked; the message says why."""


def pick_sample(
    vehicles: Sequence[int], vehicle_types: Sequence[str], percent: float, seed: int
) -> list[int]:
    """The vehicle ids of a percent sample: per type, ceil(percent of its vehicles) picked at
    random with seed (the same fleet, percent and seed give the same sample), ids ascending."""
    if not 0 < percent <= 100 or not math.isfinite(percent):
        raise SampleError(f"percent {percent!r} is not in (0, 100]")
    if not 0 <= seed < 2**63:
        raise SampleError(f"seed {seed} is not in [0, 2**63)")
    ids = np.asarray(vehicles, dtype=np.int64)
    types = np.asarray(vehicle_types, dtype=object)
    if len(ids) != len(types):
        raise SampleError("one vehicle type per vehicle")
    if not len(ids):
        raise SampleError("the fleet has no vehicles to sample")
    order = np.argsort(ids, kind="stable")
    ids, types = ids[order], types[order]
    rng = np.random.default_rng(seed)
    picked = []
    for t in sorted(set(types.tolist())):
        members = ids[types == t]
        n = min(len(members), math.ceil(len(members) * percent / 100 - 1e-9))
        picked.append(rng.permutation(members)[:n])
    return sorted(int(v) for v in np.concatenate(picked))
