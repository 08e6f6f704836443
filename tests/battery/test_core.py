"""BatteryCore behaviours on hand-made batches: alerts once per episode, charging sessions and
faults, pack swaps against other SoC jumps, stale samples, battery_health rows, state formats,
and the grouped numpy helpers against plain loops. No services."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from battery import (
    BATTERY_LOW,
    CHARGING_END,
    CHARGING_FAULT,
    CHARGING_START,
    COLUMNS,
    PACK_SWAPPED,
    BatteryCore,
)
from battery._groups import Groups, decayed_sums, hysteresis
from firmware_sim.model import CHARGING, EBIKE, TRIP, FleetModel
from telemetry.batch import TelemetryBatch
from tests import REPO
from tests.batches import make_batch
from tests.sim_samples import as_batch

T0 = 1_780_000_000_000
MIN = 60_000
EBIKE_V, CAR_V = 1, 2


def core() -> BatteryCore:
    c = BatteryCore()
    c.set_vehicle_types([EBIKE_V, CAR_V], ["ebike", "car"])
    return c


def of_type(events, kind: str) -> list:
    return [e for e in events if e.type == kind]


# ------------------------------------------------------------------------------- low SoC ----

SOC_WALK = [25, 21, 19.9, 20.1, 19.5, 20.4, 18, 24.9, 26, 19, 15, 19.99]


@pytest.mark.parametrize("per_batch", [1, 3, len(SOC_WALK)])
def test_low_soc_alerts_once_per_episode_and_rearms_only_well_above(per_batch):
    c = core()
    rows = [{"vehicle": EBIKE_V, "t": T0 + k * MIN, "soc_pct": s} for k, s in enumerate(SOC_WALK)]
    events = []
    for a in range(0, len(rows), per_batch):
        events += c.update(make_batch(rows[a : a + per_batch])).events
    low = of_type(events, BATTERY_LOW)
    # 19.9 opens an episode; hovering around 20 % does nothing; 26 % (>= 20 + 5) re-arms.
    assert [e.time_ms for e in low] == [T0 + 2 * MIN, T0 + 9 * MIN]
    assert low[0].detail == {"soc_pct": 19.9, "threshold_pct": 20.0}
    assert {e.vehicle for e in low} == {EBIKE_V} and low[0].source == "battery"


def test_each_vehicle_type_has_its_own_low_soc_level():
    c = core()
    u = c.update(
        make_batch(
            [
                {"vehicle": CAR_V, "t": T0, "soc_pct": 18.0},
                {"vehicle": EBIKE_V, "t": T0, "soc_pct": 18.0},
            ]
        )
    )
    assert [e.vehicle for e in of_type(u.events, BATTERY_LOW)] == [EBIKE_V]  # car: 15 %


# ------------------------------------------------------------------------------ charging ----


def charging_rows(
    vehicle: int,
    minutes: int,
    soc0: float,
    soc_per_min: float,
    *,
    flag=True,
    current: float = -27.5,
    volts: float = 400.0,
    start: int = 1,
) -> list[dict]:
    rows = [
        {
            "vehicle": vehicle,
            "t": T0,
            "soc_pct": soc0,
            "pack_a": 0.0,
            "pack_v": volts,
            "charging": 0 if flag else -1,
        }
    ]
    for k in range(start, minutes + 1):
        rows.append(
            {
                "vehicle": vehicle,
                "t": T0 + k * MIN,
                "soc_pct": soc0 + soc_per_min * k,
                "pack_a": current,
                "pack_v": volts,
                "charging": 1 if flag else -1,
            }
        )
    last = rows[-1]
    rows.append(
        {
            "vehicle": vehicle,
            "t": last["t"] + MIN,
            "soc_pct": last["soc_pct"],
            "pack_a": 0.0,
            "pack_v": volts,
            "charging": 0 if flag else -1,
        }
    )
    return rows


@pytest.mark.parametrize("flag", [True, False], ids=["flag", "negative_current"])
def test_a_charging_session_reports_its_start_end_and_energy(flag):
    c = core()
    # A car at 27.5 A into 400 V for an hour: 27.5 Ah, 11 kWh; SoC +22 %.
    u = c.update(make_batch(charging_rows(CAR_V, 60, 30.0, 22.0 / 60, flag=flag)))
    start, end = of_type(u.events, CHARGING_START), of_type(u.events, CHARGING_END)
    assert [e.time_ms for e in start] == [T0 + MIN] and start[0].detail == {"soc_pct": 30.0}
    assert [e.time_ms for e in end] == [T0 + 61 * MIN]
    d = end[0].detail
    assert d["soc_start_pct"] == 30.0 and d["soc_pct"] == pytest.approx(52.0)
    assert d["duration_s"] == 3600.0
    assert d["charge_ah"] == pytest.approx(27.5) and d["energy_wh"] == pytest.approx(11_000.0)
    assert not of_type(u.events, CHARGING_FAULT)
    assert u.estimates.charging.tolist() == [0]


def test_a_session_spanning_many_batches_adds_up_the_same():
    rows = charging_rows(CAR_V, 60, 30.0, 22.0 / 60)
    whole, split = core(), core()
    e1 = whole.update(make_batch(rows)).events
    e2 = [
        e for k in range(0, len(rows), 7) for e in split.update(make_batch(rows[k : k + 7])).events
    ]
    assert e1 == e2


def test_a_charging_fault_is_raised_once_when_the_soc_stalls():
    c = core()
    # Charging reported for 50 minutes, SoC stuck at 40 %: one fault after 30 minutes.
    u = c.update(make_batch(charging_rows(CAR_V, 50, 40.0, 0.0, current=-0.1)))
    faults = of_type(u.events, CHARGING_FAULT)
    assert [e.time_ms for e in faults] == [T0 + 31 * MIN]
    assert faults[0].detail == {"soc_pct": 40.0, "stalled_s": 1800.0}
    # A full pack that stops rising is not a fault; nor is slow but steady progress.
    c = core()
    u = c.update(make_batch(charging_rows(CAR_V, 50, 99.0, 0.0, current=-0.5)))
    assert not of_type(u.events, CHARGING_FAULT)
    u = c.update(
        make_batch([{**r, "t": r["t"] + 3_600_000} for r in charging_rows(CAR_V, 90, 50.0, 0.02)])
    )
    assert not of_type(u.events, CHARGING_FAULT)


# ------------------------------------------------------------------------- swaps, jumps -----


def ride(m: FleetModel, c: BatteryCore, minutes: int) -> list:
    events = []
    for _ in range(minutes // 60):
        events += c.update(
            TelemetryBatch.concat([as_batch(m.step(60.0)) for _ in range(60)])
        ).events
    return events


def keep_riding(m: FleetModel) -> None:
    """Keep vehicle 0 on trips (never parked long, never serviced) whatever its SoC."""
    m.phase_end_ms[m.phase != TRIP] = m.t_ms


def test_a_pack_swap_starts_a_new_history_that_converges_to_the_new_pack():
    m = FleetModel([EBIKE], seed=5, ageing_speedup=50.0)
    m.soc[:] = 95.0
    c = BatteryCore()
    c.set_vehicle_types([0], ["ebike"])
    ride(m, c, 60)
    while not np.isfinite(c.estimates([0]).soh_pct[0]):
        keep_riding(m)
        ride(m, c, 60)
    before = c.estimates([0])
    assert before.soh_pct[0] == pytest.approx(m.soh()[0] * 100, abs=1.0)
    reported = c.estimates([0]).soc_pct[0]
    swap = m.swap_pack(0)
    assert abs(swap.new_capacity_ah - swap.old_capacity_ah) / swap.old_capacity_ah > 0.03
    u = c.update(as_batch(m.step(60.0)))
    # The swap happened between two samples: the next one shows it.
    assert [(e.type, e.time_ms) for e in u.events] == [(PACK_SWAPPED, swap.t_ms + MIN)]
    assert u.events[0].detail["soc_before_pct"] == round(float(reported), 2)
    assert u.events[0].detail["pack_seq"] == 1
    after = u.estimates
    assert np.isnan(after.soh_pct[0]) and np.isnan(after.range_m[0])
    assert after.efc[0] < 0.01 and after.pack_seq[0] == 1
    assert np.isfinite(after.energy_wh_per_km[0]), "energy per km belongs to the vehicle"
    while not np.isfinite(c.estimates([0]).soh_pct[0]):
        keep_riding(m)
        ride(m, c, 60)
    now = c.estimates([0])
    assert now.soh_pct[0] == pytest.approx(m.soh()[0] * 100, abs=1.0)
    assert abs(now.soh_pct[0] - before.soh_pct[0]) > 1.0


def test_soc_jumps_that_are_not_swaps_raise_nothing_and_corrupt_nothing():
    c = core()
    rows = []
    soc = 80.0
    for k in range(120):  # a car driving down 0.2 %/min at 15 A
        if k == 60:
            soc += 20.0  # BMS recalibration: up 20 % in a minute, a car has no swappable pack
        rows.append(
            {
                "vehicle": CAR_V,
                "t": T0 + k * MIN,
                "soc_pct": soc,
                "pack_a": 15.0,
                "pack_v": 380.0,
                "ignition": 1,
                "odometer_m": 1000.0 * k,
            }
        )
        soc -= 0.2
    u = c.update(make_batch(rows))
    assert not of_type(u.events, PACK_SWAPPED)
    # The window across the jump was dropped: the capacity is that of the clean windows,
    # 15 A for a minute (0.25 Ah) per 0.2 % = 125 Ah.
    assert u.estimates.capacity_ah[0] == pytest.approx(125.0, rel=1e-6)
    # An e-bike whose SoC rose while it was offline for 3 hours was charged, not swapped.
    c = core()
    u = c.update(
        make_batch(
            [
                {"vehicle": EBIKE_V, "t": T0, "soc_pct": 19.0},
                {"vehicle": EBIKE_V, "t": T0 + 3 * 3_600_000, "soc_pct": 95.0},
            ]
        )
    )
    assert [e.type for e in u.events] == [BATTERY_LOW]
    # ... but back to 19 % and up to 97 % within minutes: a swap (the drop is a discontinuity).
    u = c.update(
        make_batch(
            [
                {"vehicle": EBIKE_V, "t": T0 + 3 * 3_600_000 + MIN, "soc_pct": 19.0},
                {"vehicle": EBIKE_V, "t": T0 + 3 * 3_600_000 + 2 * MIN, "soc_pct": 97.0},
            ]
        )
    )
    assert [e.type for e in u.events] == [BATTERY_LOW, PACK_SWAPPED]


def test_stale_duplicate_and_redelivered_samples_are_counted_and_ignored():
    c = core()
    rows = [{"vehicle": EBIKE_V, "t": T0 + k * MIN, "soc_pct": 50.0 - k} for k in range(10)]
    u = c.update(make_batch(rows + rows[3:5]))
    assert (u.used, u.stale) == (10, 2)
    again = c.update(make_batch(rows[::-1]))
    assert (again.used, again.stale) == (0, 10) and not again.events and not len(again.estimates)
    late = c.update(make_batch([{"vehicle": EBIKE_V, "t": T0 + 5 * MIN + 1, "soc_pct": 99.0}]))
    assert late.stale == 1 and c.estimates([EBIKE_V]).soc_pct[0] == 41.0


def test_a_vehicle_of_no_configured_type_gets_what_needs_no_nominal_pack():
    c = core()
    rows = [
        {
            "vehicle": 77,
            "t": T0 + k * MIN,
            "soc_pct": 30.0 - 0.2 * k,
            "pack_a": 15.0,
            "pack_v": 380.0,
            "aux_v": 12.6,
            "ignition": 1,
            "odometer_m": 500.0 * k,
        }
        for k in range(120)
    ]
    u = c.update(make_batch(rows))
    e = u.estimates
    assert e.vehicle.tolist() == [77] and e.soc_pct[0] == pytest.approx(6.2, abs=1e-4)
    assert e.capacity_ah[0] == pytest.approx(125.0, rel=1e-5)  # Coulomb counting needs no type
    assert np.isnan([e.soh_pct[0], e.efc[0], e.range_m[0], e.resistance_ohm[0]]).all()
    assert [x.type for x in u.events] == [BATTERY_LOW]  # at the generic 20 %


# ---------------------------------------------------------------- rows, state, migration ----


def test_battery_health_rows_come_per_interval_and_at_session_boundaries():
    c = core()
    u = c.update(
        make_batch(
            [
                {"vehicle": EBIKE_V, "t": T0, "soc_pct": 50.0},
                {"vehicle": CAR_V, "t": T0, "soc_pct": 60.0, "aux_v": 12.5, "ignition": 0},
            ]
        )
    )
    assert sorted(u.history.vehicle.tolist()) == [EBIKE_V, CAR_V]
    rows = dict((r[0], r) for r in u.history.rows())
    assert rows[EBIKE_V][:3] == (EBIKE_V, T0, 50.0)
    unknown = dict(zip(COLUMNS, rows[EBIKE_V]))
    assert unknown["efc"] == 0.0 and unknown["charging"] is None and unknown["pack_seq"] == 0
    assert all(unknown[k] is None for k in COLUMNS[3:] if k not in ("efc", "pack_seq"))
    assert len(rows[EBIKE_V]) == len(COLUMNS)
    step = 15 * MIN
    assert not len(c.update(make_batch([{"vehicle": EBIKE_V, "t": T0 + MIN}])).history)
    due = c.update(make_batch([{"vehicle": EBIKE_V, "t": T0 + step + 1}])).history
    assert due.vehicle.tolist() == [EBIKE_V]
    start = c.update(make_batch([{"vehicle": EBIKE_V, "t": T0 + step + 2, "charging": 1}]))
    assert start.history.vehicle.tolist() == [EBIKE_V] and start.history.charging.tolist() == [1]


def test_state_round_trips_through_json_and_unknown_formats_are_refused():
    c = core()
    c.update(make_batch(charging_rows(CAR_V, 30, 30.0, 22.0 / 60)[:-1]))
    states = json.loads(json.dumps(c.export_state()))
    d = BatteryCore()
    d.set_vehicle_types([CAR_V], ["car"])
    d.restore({int(v): s for v, s in states.items()})
    assert d.export_state() == c.export_state()
    with pytest.raises(ValueError, match="unknown battery state format"):
        d.restore({CAR_V: {**states[str(CAR_V)], "format": 99}})


@pytest.mark.parametrize("seed", range(4))
def test_state_export_is_each_vehicles_own_row_and_histogram(seed):
    """export() renders many vehicles in one pass: each state must be its own vehicle's fields
    (NaN as None, Python scalars), its histogram's non-empty bins in order, whatever the mix of
    vehicles asked for (unknown, never seen, repeated, out of range)."""
    rng = np.random.default_rng(seed)
    c = core()
    st_ = c._state
    c.update(make_batch([{"vehicle": v, "t": T0 + v, "soc_pct": 50.0} for v in range(1, 40)]))
    filled = rng.random(st_.r_w.shape) < 0.05
    st_.r_w[filled] = rng.random(int(filled.sum()))
    st_.r_wl[filled] = rng.normal(size=int(filled.sum()))
    st_.soc[rng.random(st_.size) < 0.3] = np.nan
    asked = [*rng.integers(-3, 45, 80).tolist(), st_.size, st_.size + 7]
    out = st_.export(asked)
    expected = [v for v in dict.fromkeys(asked) if 0 <= v < st_.size and st_.t[v] >= 0]
    assert list(out) == expected and len(expected) > 10
    for v, state in out.items():
        bins = np.flatnonzero(st_.r_w[v])
        assert state["r_bins"] == bins.tolist()
        assert state["r_w"] == st_.r_w[v, bins].tolist()
        assert state["r_wl"] == st_.r_wl[v, bins].tolist()
        soc = st_.soc[v]
        assert state["soc"] == (None if np.isnan(soc) else float(soc))
        assert state["t"] == int(st_.t[v]) and type(state["t"]) is int
        assert type(state["s_on"]) is bool
    assert st_.export([]) == {}


def test_a_restored_state_older_than_the_stored_samples_treats_them_as_a_gap():
    rows = [
        {
            "vehicle": CAR_V,
            "t": T0 + k * MIN,
            "soc_pct": 80.0 - 0.2 * k,
            "pack_a": 15.0,
            "pack_v": 380.0,
            "ignition": 1,
        }
        for k in range(200)
    ]
    c = core()
    c.update(make_batch(rows[:45]))
    saved = c.export_state([CAR_V])
    c.update(make_batch(rows[45:]))
    full = c.estimates([CAR_V])
    d = core()
    d.restore(saved, last_time_ms={CAR_V: rows[60]["t"]})
    d.update(make_batch(rows[61:]))
    resumed = d.estimates([CAR_V])
    # The window open at the checkpoint spans the unseen samples: dropped, not miscounted.
    assert resumed.capacity_ah[0] == pytest.approx(full.capacity_ah[0], rel=1e-6)
    assert d.export_state([CAR_V])[CAR_V]["t"] == rows[-1]["t"]


def test_the_migration_has_a_column_for_every_estimate():
    migrations = REPO / "telemetry" / "migrations"
    for path in sorted(migrations.glob("0006_battery_health*.sql")):
        sql = path.read_text()
        table = re.search(r"CREATE TABLE battery_health \((.*?)\n\);", sql, re.S).group(1)
        names = [
            line.split()[0]
            for line in table.strip().splitlines()
            if line.strip() and not line.strip().startswith(("PRIMARY", "--"))
        ]
        expected = ["time" if c == "time_ms" else c for c in COLUMNS]
        assert sorted(names) == sorted(expected), path.name


# ------------------------------------------------------------------ the grouped helpers ----


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.floats(0, 2), st.floats(-5, 5), st.sampled_from([0, 1, 2])),
        max_size=40,
    )
)
def test_grouped_helpers_equal_the_sequential_loops(items):
    items.sort(key=lambda x: x[0])
    seg = np.array([x[0] for x in items], dtype=np.int64)
    delta = np.array([x[1] for x in items])
    value = np.array([x[2] for x in items])
    carry = np.arange(4, dtype=np.float64) - 1.5
    (got,), _ = decayed_sums(seg, 4, delta, [value], [carry])
    want = carry.copy()
    for s_, d_, x_, _ in items:
        want[s_] = want[s_] * np.exp(-d_) + x_
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    if not items:
        return
    g = Groups(seg)
    code = np.array([x[3] for x in items])  # 0 nothing, 1 fire, 2 re-arm
    armed0 = np.array([True, False, True, False])[g.vehicles]
    raised, armed = hysteresis(g, code == 1, code == 2, armed0)
    a = dict(zip(g.vehicles.tolist(), armed0.tolist()))
    want_raised = []
    for s_, _, _, c_ in items:
        want_raised.append(c_ == 1 and a[s_])
        a[s_] = False if c_ == 1 else (True if c_ == 2 else a[s_])
    assert raised.tolist() == want_raised
    assert armed.tolist() == [a[v] for v in g.vehicles.tolist()]
    present = code > 0
    got_ff = g.ffill(value, present, carry[g.vehicles], inclusive=False)
    last = {}
    for k, (s_, _, x_, c_) in enumerate(items):
        assert got_ff[k] == last.get(s_, carry[s_])
        if c_ > 0:
            last[s_] = x_


def test_fleet_model_charging_is_seen_as_sessions():
    m = FleetModel([EBIKE], seed=2)
    m.soc[:] = 15.0
    m.phase[:] = CHARGING  # a low pack plugged in (not swapped)
    m.charge_target[:] = 60.0
    m.phase_end_ms[:] = np.iinfo(np.int64).max
    c = BatteryCore()
    c.set_vehicle_types([0], ["ebike"])
    events = ride(m, c, 3 * 60)
    start, end = of_type(events, CHARGING_START), of_type(events, CHARGING_END)
    assert len(start) == 1 and len(end) == 1
    # 4 A into the pack's true capacity from 15 % to 60 %.
    expected_ah = 0.45 * m.capacity_ah()[0]
    assert end[0].detail["charge_ah"] == pytest.approx(expected_ah, rel=0.03)
