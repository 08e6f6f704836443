"""Noisy, missing and out-of-order telemetry must not corrupt the battery estimates: batches cut
and shuffled differently, duplicates and redeliveries, NaN voltages, dropped samples, backlogs
uploaded late, a restart from exported state, and the vectorised core against a plain
per-sample implementation. One simulated stream (four days, a mixed fleet) feeds every test."""

from __future__ import annotations

import importlib
import json
from collections import Counter

import numpy as np
import pytest

from battery import (
    BATTERY_LOW,
    CHARGING_END,
    CHARGING_FAULT,
    CHARGING_START,
    COLUMNS,
    PACK_SWAPPED,
    BatteryCore,
)
from firmware_sim.model import CAR, EBIKE, VEHICLE_TYPES, AuxSpec, FleetModel
from telemetry.batch import TelemetryBatch
from tests.sim_samples import as_batch

START = 1_764_547_200_000
HOURS = 4 * 24
# Events judged per sample: their times do not depend on how the samples were batched.
SAMPLE_EVENTS = {BATTERY_LOW, CHARGING_START, CHARGING_END, CHARGING_FAULT, PACK_SWAPPED}
ESTIMATES = [c for c in COLUMNS if c not in ("vehicle", "time_ms", "charging", "pack_seq")]
KINDS = [EBIKE] * 10 + [CAR] * 10


@pytest.fixture(scope="module")
def stream() -> dict:
    m = FleetModel(
        KINDS, seed=33, start_ms=START, ageing_speedup=50.0, aux=AuxSpec(fault_share=0.3)
    )
    hours = [
        TelemetryBatch.concat([as_batch(m.step(60.0)) for _ in range(60)]) for _ in range(HOURS)
    ]
    return {"hours": hours, "truth": m.truth(), "swaps": len(m.swaps)}


def new_core() -> BatteryCore:
    c = BatteryCore()
    c.set_vehicle_types(np.arange(len(KINDS)), [VEHICLE_TYPES[k] for k in KINDS])
    return c


def feed(batches) -> tuple[BatteryCore, list, int]:
    c = new_core()
    events, stale = [], 0
    for b in batches:
        u = c.update(b)
        events += u.events
        stale += u.stale
    return c, events, stale


@pytest.fixture(scope="module")
def clean(stream):
    c, events, _ = feed(stream["hours"])
    return {"core": c, "events": events, "est": c.estimates(np.arange(len(KINDS)))}


def assert_same_estimates(a, b, rtol: float = 1e-9) -> None:
    for name in ESTIMATES:
        np.testing.assert_allclose(
            getattr(a, name), getattr(b, name), rtol=rtol, atol=1e-9, err_msg=name
        )
    assert (a.pack_seq == b.pack_seq).all() and (a.charging == b.charging).all()


def sample_events(events) -> list:
    return sorted(
        (e.vehicle, e.time_ms, e.type, json.dumps(e.detail, sort_keys=True))
        for e in events
        if e.type in SAMPLE_EVENTS
    )


def episodes(events) -> Counter:
    return Counter((e.vehicle, e.type) for e in events if e.type not in SAMPLE_EVENTS)


def within_truth(est, truth) -> None:
    soh = np.isfinite(est.soh_pct)
    assert soh.sum() >= 0.8 * len(est)
    assert np.abs(est.soh_pct[soh] - truth["soh"][soh] * 100).max() <= 3.0
    rng = np.isfinite(est.range_m)
    assert np.abs(est.range_m[rng] / truth["range_m"][rng] - 1).max() <= 0.10


def test_the_clean_stream_is_estimated_within_the_truth_bounds(stream, clean):
    within_truth(clean["est"], stream["truth"])
    assert int(clean["est"].pack_seq.sum()) == stream["swaps"]


def test_batch_cuts_row_order_duplicates_and_redeliveries_change_nothing(stream, clean):
    rng = np.random.default_rng(1)
    rows = TelemetryBatch.concat(stream["hours"])
    cuts = np.sort(rng.choice(np.arange(1, len(rows)), size=300, replace=False))
    batches, sent = [], []
    for part in np.split(np.arange(len(rows)), cuts):
        b = rows.take(part)
        dup = rng.choice(len(b), size=len(b) // 10)
        b = TelemetryBatch.concat([b, b.take(dup)])
        batches.append(b.take(rng.permutation(len(b))))
        sent.append(b)
        if rng.random() < 0.2:  # a whole earlier batch delivered again (gateway crash, QoS 1)
            batches.append(sent[rng.integers(len(sent))])
    c, events, stale = feed(batches)
    assert stale == sum(len(b) for b in batches) - len(rows)
    assert_same_estimates(c.estimates(np.arange(len(KINDS))), clean["est"])
    assert sample_events(events) == sample_events(clean["events"])
    assert episodes(events) == episodes(clean["events"])


def test_nan_voltages_leave_capacity_alone_and_the_rest_close(stream, clean):
    rng = np.random.default_rng(2)
    noisy = []
    for b in stream["hours"]:
        b = b.take(np.arange(len(b)))
        for col in ("pack_v", "aux_v"):
            x = getattr(b, col)
            x[rng.random(len(x)) < 0.1] = np.nan
        noisy.append(b)
    c, events, _ = feed(noisy)
    est, ref = c.estimates(np.arange(len(KINDS))), clean["est"]
    np.testing.assert_allclose(est.soh_pct, ref.soh_pct, rtol=1e-9)
    np.testing.assert_allclose(est.efc, ref.efc, rtol=1e-9)
    np.testing.assert_allclose(est.range_m, ref.range_m, rtol=0.02)
    np.testing.assert_allclose(est.energy_wh_per_km, ref.energy_wh_per_km, rtol=0.02)
    np.testing.assert_allclose(est.resistance_ohm, ref.resistance_ohm, rtol=0.05)
    np.testing.assert_allclose(est.aux_rest_v, ref.aux_rest_v, atol=0.01)
    # The same events at the same samples (a session's energy differs by the missing volts).
    assert [x[:3] for x in sample_events(events)] == [x[:3] for x in sample_events(clean["events"])]
    within_truth(est, stream["truth"])


def test_dropped_samples_and_late_backlogs_do_not_corrupt_the_estimates(stream, clean):
    rng = np.random.default_rng(3)
    batches, backlog = [], []
    in_order, reversed_ = [2, 13], [5, 17]  # TCUs offline for six hours in every twelve
    offline = in_order + reversed_
    for h, b in enumerate(stream["hours"]):
        b = b.take(rng.random(len(b)) > 0.05)  # lost samples
        away = np.isin(b.vehicle, offline)
        if h % 12 < 6:
            backlog.append(b.take(away))
            batches.append(b.take(~away))
            continue
        if backlog:
            late = TelemetryBatch.concat(backlog)
            backlog = []
            # The protocol's way: the buffer oldest first, before anything new ...
            good = late.take(np.isin(late.vehicle, in_order))
            batches += [good.take(part) for part in np.array_split(np.arange(len(good)), 4)]
            # ... and misbehaving firmware: the live sample first, then the buffer newest first.
            batches.append(b)
            bad = late.take(np.isin(late.vehicle, reversed_))
            bad = bad.take(np.argsort(-bad.time_ms, kind="stable"))
            batches += [bad.take(part) for part in np.array_split(np.arange(len(bad)), 4)]
        else:
            batches.append(b)
    c, events, stale = feed(batches)
    assert stale > 0  # the reversed uploads, older than what their vehicles already sent
    est = c.estimates(np.arange(len(KINDS)))
    within_truth(est, stream["truth"])
    # No swap is invented by the gaps or the lost samples.
    swaps = Counter(e.vehicle for e in events if e.type == PACK_SWAPPED)
    clean_swaps = Counter(e.vehicle for e in clean["events"] if e.type == PACK_SWAPPED)
    assert all(n <= clean_swaps[v] for v, n in swaps.items())
    assert sum(swaps.values()) >= 0.9 * sum(clean_swaps.values())


def test_a_restart_from_exported_state_continues_like_an_uninterrupted_core(stream, clean):
    first, second = stream["hours"][:50], stream["hours"][50:]
    c, events_before, _ = feed(first)
    saved = json.loads(json.dumps(c.export_state()))  # the jsonb column and back
    d = new_core()
    d.restore({int(v): s for v, s in saved.items()})
    events_after = []
    for b in second:
        events_after += d.update(b).events
    assert_same_estimates(d.estimates(np.arange(len(KINDS))), clean["est"], rtol=1e-12)
    split = stream["hours"][50].time_ms.min()
    assert [e for e in clean["events"] if e.time_ms >= split] == events_after


def _reference_module():
    pytest.importorskip("pandas")
    return importlib.import_module("benchmarks.battery")


def test_the_vectorised_core_equals_the_plain_per_sample_implementation(stream):
    ref_mod = _reference_module()
    rng = np.random.default_rng(4)
    c = new_core()
    ref = ref_mod.ReferenceBattery(
        dict(c.types), c.policy, {v: VEHICLE_TYPES[k] for v, k in enumerate(KINDS)}, {}
    )
    held = None
    for h, b in enumerate(stream["hours"][:36]):
        b = b.take(rng.random(len(b)) > 0.02)
        for col, share in (
            ("pack_v", 0.05),
            ("pack_a", 0.01),
            ("soc_pct", 0.02),
            ("aux_v", 0.05),
            ("odometer_m", 0.01),
        ):
            x = getattr(b, col)
            x[rng.random(len(x)) < share] = np.nan
        b.pack_a[b.vehicle < 3] = np.nan  # SoC-only vehicles
        b.charging[(b.vehicle == 12) & (h % 9 == 3)] = 1  # a stuck charging flag
        if held is not None and h % 5 == 0:
            b = TelemetryBatch.concat([b, held])
        held = b if h % 4 == 0 else held
        b = b.take(rng.permutation(len(b)))
        u = c.update(b)
        ref_events, ref_est = ref.update(ref_mod.batch_frame(b))
        cmp = ref_mod.compare(u.estimates, ref_est, rtol=1e-6)
        assert not cmp["mismatches"] and not cmp["vehicles_only_in_one"], (h, cmp)
        assert [(e.vehicle, e.time_ms, e.type, e.detail) for e in u.events] == [
            (e.vehicle, e.time_ms, e.type, e.detail) for e in ref_events
        ], h
        assert sorted(u.history.vehicle.tolist()) == sorted(
            v for v, e in ref_est.items() if e["history_due"]
        ), h
