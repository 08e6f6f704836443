"""The battery core for every vehicle type: packs taken from the vehicle type registry as plain
data, types added while running, and scooters, mopeds and cargo e-bikes of the simulator
estimated as well as e-bikes and cars are. No services."""

from __future__ import annotations

import numpy as np
import pytest

from battery import DEFAULT_TYPES, PACK_SWAPPED, BatteryCore, BatteryType, battery_types
from firmware_sim.model import CARGO_EBIKE, MOPED, SCOOTER, VEHICLE_TYPES, FleetModel
from telemetry.batch import TelemetryBatch
from telemetry.vehicle_types import BUILTIN_VEHICLE_TYPES, VehicleType
from tests.batches import make_batch
from tests.sim_samples import as_batch

T0 = 1_780_000_000_000
MIN = 60_000


def driving(vehicle: int, minutes: int = 120) -> list[dict]:
    """A pack discharging at 15 A for two hours, reporting every minute."""
    return [
        {
            "vehicle": vehicle,
            "t": T0 + k * MIN,
            "soc_pct": 90.0 - 0.3 * k,
            "pack_a": 15.0,
            "pack_v": 50.0,
            "odometer_m": 400.0 * k,
        }
        for k in range(minutes)
    ]


def test_the_builtin_packs_are_the_registrys_and_ebike_and_car_are_unchanged():
    assert DEFAULT_TYPES == battery_types(BUILTIN_VEHICLE_TYPES)
    assert set(DEFAULT_TYPES) == {"ebike", "cargo_ebike", "scooter", "moped", "car"}
    # What battery/config.py held before the registry.
    assert DEFAULT_TYPES["ebike"] == BatteryType(
        nominal_ah=500.0 / 36.0, nominal_v=36.0, low_soc_pct=20.0, swappable=True
    )
    assert DEFAULT_TYPES["car"] == BatteryType(nominal_ah=125.0, nominal_v=400.0, low_soc_pct=15.0)


def test_a_type_without_a_pack_gets_none_and_soc_only_estimates():
    bike = VehicleType("bike", "Bicycle", "bicycle", "human")
    assert battery_types([bike]) == {}


def test_a_type_added_while_running_gives_its_vehicles_the_nominal_pack():
    c = BatteryCore()
    trike = VehicleType(
        "trike",
        "Cargo trike",
        "other",
        "electric_assist",
        battery_nominal_ah=20.0,
        battery_nominal_v=48.0,
        low_soc_pct=30.0,
    )
    c.set_types(battery_types([trike]))
    c.set_vehicle_types([5], ["trike"])
    u = c.update(make_batch(driving(5)))
    assert np.isfinite(u.estimates.efc[0])  # cycles need the nominal capacity
    # Its own low-battery level: 30 % is crossed at minute 201, not within these 2 hours.
    assert not [e for e in u.events if e.type == "battery_low"]
    # A changed type reaches vehicles at their next assignment.
    c.set_types(battery_types([VehicleType(**{**trike.to_dict(), "low_soc_pct": 70.0})]))
    c.set_vehicle_types([5], ["trike"])
    more = c.update(make_batch(driving(5, 130)[120:]))  # on from 54 %
    assert [e.type for e in more.events] == ["battery_low"]


def test_a_vehicle_set_to_a_type_the_core_does_not_know_gets_no_pack():
    # Not the last configured type's pack: index -1 used to pick it.
    c = BatteryCore()
    c.set_vehicle_types([3], ["no-such-type"])
    u = c.update(make_batch(driving(3)))
    assert np.isnan([u.estimates.efc[0], u.estimates.soh_pct[0]]).all()


@pytest.fixture(scope="module")
def run():
    """Two sped-up weeks of a simulated fleet of the new kinds, one sample a minute."""
    kinds = [SCOOTER] * 6 + [MOPED] * 6 + [CARGO_EBIKE] * 6
    m = FleetModel(kinds, seed=31, ageing_speedup=50.0)
    c = BatteryCore()  # the built-in types: the registry's packs
    c.set_vehicle_types(np.arange(len(kinds)), [VEHICLE_TYPES[k] for k in kinds])
    events = []
    for _ in range(14 * 24):
        batch = TelemetryBatch.concat([as_batch(m.step(60.0)) for _ in range(60)])
        events += c.update(batch).events
    return m, c, events


class TestScootersMopedsAndCargoBikes:
    def test_soh_follows_the_true_fade_where_known(self, run):
        m, c, _ = run
        est, true_soh = c.estimates(np.arange(m.n)), m.soh() * 100.0
        known = np.isfinite(est.soh_pct)
        assert known.sum() >= 0.7 * m.n
        for kind in (SCOOTER, MOPED, CARGO_EBIKE):
            assert known[m.kind == kind].any(), VEHICLE_TYPES[kind]
        # The registry's scooter pack (15.3 Ah) is the simulator's 0.55 kWh / 36 V to 0.2 %.
        assert np.abs(est.soh_pct[known] - true_soh[known]).max() <= 4.0

    def test_every_pack_swap_is_detected(self, run):
        m, _, events = run
        assert len(m.swaps) > 20
        detected = sorted((e.vehicle, e.time_ms) for e in events if e.type == PACK_SWAPPED)
        assert detected == sorted((s.vehicle, s.t_ms) for s in m.swaps)
