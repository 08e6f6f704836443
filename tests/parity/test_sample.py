"""The shadow sample: reproducible for a seed, every vehicle type in its share."""

from __future__ import annotations

import pytest

from parity import SampleError, pick_sample


def fleet():
    ids = list(range(1, 201))
    types = ["ebike"] * 150 + ["car"] * 40 + ["moped"] * 10
    return ids, types


def test_the_same_seed_picks_the_same_vehicles_and_another_seed_others():
    ids, types = fleet()
    a = pick_sample(ids, types, 10, seed=7)
    assert a == pick_sample(list(reversed(ids)), list(reversed(types)), 10, seed=7)
    assert a != pick_sample(ids, types, 10, seed=8)


def test_every_type_is_sampled_in_its_share():
    ids, types = fleet()
    kind = dict(zip(ids, types, strict=True))
    picked = pick_sample(ids, types, 10, seed=1)
    counts = {t: sum(kind[v] == t for v in picked) for t in ("ebike", "car", "moped")}
    assert counts == {"ebike": 15, "car": 4, "moped": 1}
    # a small share still takes one vehicle of each type
    small = pick_sample(ids, types, 1, seed=1)
    assert sorted(kind[v] for v in small) == ["car", "ebike", "ebike", "moped"]


@pytest.mark.parametrize("percent", [0, -1, 101, float("nan")])
def test_a_share_outside_0_to_100_is_refused(percent):
    with pytest.raises(SampleError):
        pick_sample([1], ["ebike"], percent, seed=1)


def test_an_empty_fleet_is_refused():
    with pytest.raises(SampleError, match="no vehicles"):
        pick_sample([], [], 10, seed=1)


def test_a_negative_seed_is_refused():
    with pytest.raises(SampleError, match="seed -1"):
        pick_sample([1], ["ebike"], 10, seed=-1)
