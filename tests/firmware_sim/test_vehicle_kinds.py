"""Scooters, mopeds and cargo e-bikes in the simulator: their specs drive them as the specs say,
they behave as two-wheelers (no 12 V, no immobiliser, a lock that refuses while riding), and a
fleet can be any mix of kinds, spread evenly over the device numbers."""

from __future__ import annotations

import numpy as np
import pytest

from firmware_sim import Fleet, FleetOptions, parse_mix
from firmware_sim.coap import CoapFleet, CoapFleetOptions
from firmware_sim.model import (
    CAR,
    CARGO_EBIKE,
    CARGO_EBIKE_SPEC,
    EBIKE,
    MOPED,
    MOPED_SPEC,
    SCOOTER,
    SCOOTER_SPEC,
    TRIP,
    CommandRefused,
    FleetModel,
)
from firmware_sim.roster import spread_mix

START = 1_764_547_200_000
NEW_KINDS = [(SCOOTER, SCOOTER_SPEC), (MOPED, MOPED_SPEC), (CARGO_EBIKE, CARGO_EBIKE_SPEC)]


def riding(kinds, seed: int, minutes: int = 120) -> tuple[FleetModel, np.ndarray]:
    """Every vehicle kept on trips for a while; the top speed each reached, km/h."""
    m = FleetModel(kinds, seed=seed, start_ms=START)
    top = np.zeros(m.n)
    for _ in range(minutes * 60):
        m.phase_end_ms[m.phase != TRIP] = m.t_ms
        m.soc[:] = np.maximum(m.soc, 60.0)
        top = np.maximum(top, m.step(1.0).speed_kmh)
    return m, top


@pytest.mark.parametrize(("kind", "spec"), NEW_KINDS)
def test_each_new_kind_rides_within_its_spec_and_drains_its_own_pack(kind, spec):
    m, top = riding([kind] * 4, seed=40 + kind)
    assert (top > spec.cruise_kmh[0]).all() and (top <= spec.cruise_kmh[1] * 1.05).all()
    assert np.allclose(m.nominal_ah, spec.nominal_ah)
    used_wh = (m.efc() * m.nominal_ah * spec.nominal_v).sum()
    assert used_wh > 0
    assert m.wh_per_km.min() >= spec.wh_per_km[0] and m.wh_per_km.max() <= spec.wh_per_km[1]


def test_the_new_kinds_are_two_wheelers_without_12v_or_immobiliser():
    m, _ = riding([SCOOTER, MOPED, CARGO_EBIKE, CAR], seed=44, minutes=5)
    sample = m.step(1.0)
    assert np.isnan(sample.aux_v[:3]).all() and np.isfinite(sample.aux_v[3])
    for i, name in enumerate(["scooters", "mopeds", "cargo ebikes"]):
        with pytest.raises(CommandRefused, match=f"{name} have no immobiliser") as exc:
            m.immobilise(i)
        assert exc.value.reason == "not_supported"
        if m.speed[i] > 0:
            with pytest.raises(CommandRefused, match="is riding") as exc:
                m.lock(i)
            assert exc.value.reason == "vehicle_moving"
    assert (m.speed[:3] > 0).any(), "at least one two-wheeler caught riding"


def test_a_mix_is_parsed_normalised_and_refused_with_a_reason():
    assert parse_mix("ebike=60, scooter=30,car=10") == {"ebike": 0.6, "scooter": 0.3, "car": 0.1}
    assert parse_mix("moped=1,cargo_ebike=1") == {"moped": 0.5, "cargo_ebike": 0.5}
    for text, reason in [
        ("bus=10", "unknown vehicle type 'bus': one of ebike, car, scooter, moped, cargo_ebike"),
        ("ebike", "is not TYPE=SHARE"),
        ("ebike=lots", "'lots' is not a number"),
        ("ebike=-1", "must be a number >= 0"),
        ("ebike=nan", "must be a number >= 0"),
        ("ebike=0,car=0", "the mix has no vehicles"),
        ("ebike=1,ebike=2", "ebike is given twice"),
    ]:
        with pytest.raises(ValueError, match=reason):
            parse_mix(text)


def test_a_mixed_fleet_spreads_its_kinds_evenly_over_the_numbers():
    kinds = spread_mix(20, {"ebike": 0.6, "scooter": 0.3, "car": 0.1})
    assert np.bincount(kinds, minlength=5).tolist() == [12, 2, 6, 0, 0]
    # Every prefix is within one vehicle of its share.
    for n in range(1, 21):
        counts = np.bincount(kinds[:n], minlength=5)
        assert abs(counts[EBIKE] - 0.6 * n) <= 1 and abs(counts[SCOOTER] - 0.3 * n) <= 1


def test_mqtt_and_coap_fleets_take_the_mix_and_name_vehicles_by_type():
    opts = dict(vehicles=4, device_id_pattern="{type}-{n:02d}", vehicle_ref_pattern="v{i}")
    mix = parse_mix("scooter=50,moped=25,cargo_ebike=25")
    mqtt = Fleet(FleetOptions(mix=mix, **opts))
    coap = CoapFleet(CoapFleetOptions(mix=mix, **opts))
    assert (
        mqtt.registrations()
        == coap.registrations()
        == [
            ("scooter-01", "v0", "scooter"),
            ("moped-02", "v1", "moped"),
            ("cargo_ebike-03", "v2", "cargo_ebike"),
            ("scooter-04", "v3", "scooter"),
        ]
    )
    assert mqtt.model.kind.tolist() == [SCOOTER, MOPED, CARGO_EBIKE, SCOOTER]
