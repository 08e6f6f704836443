"""The vehicle type model (GBFS vehicle_types): what a valid type is and what follows from it."""

from __future__ import annotations

import pytest

from telemetry.vehicle_types import (
    BUILTIN_BY_ID,
    BUILTIN_VEHICLE_TYPES,
    FORM_FACTORS,
    PROPULSION_TYPES,
    InvalidVehicleType,
    VehicleType,
)


def test_the_form_factors_and_propulsion_types_are_gbfs_v3s():
    # The enums of GBFS v3.0 vehicle_types.json (form_factor, propulsion_type), copied here.
    assert FORM_FACTORS == (
        "bicycle",
        "cargo_bicycle",
        "car",
        "moped",
        "scooter_standing",
        "scooter_seated",
        "other",
    )
    assert PROPULSION_TYPES == (
        "human",
        "electric_assist",
        "electric",
        "combustion",
        "combustion_diesel",
        "hybrid",
        "plug_in_hybrid",
        "hydrogen_fuel_cell",
    )


def test_builtin_types_keep_the_two_old_ones_and_add_scooters_mopeds_and_cargo_bikes():
    assert set(BUILTIN_BY_ID) == {"ebike", "cargo_ebike", "scooter", "moped", "car"}
    ebike, car = BUILTIN_BY_ID["ebike"], BUILTIN_BY_ID["car"]
    # The numbers fleetgate used before the registry: 0.5 kWh / 36 V swappable, 50 kWh / 400 V.
    assert ebike.battery_capacity_wh == pytest.approx(500.0)
    assert (ebike.battery_nominal_v, ebike.low_soc_pct, ebike.battery_swappable) == (36, 20, True)
    assert car.battery_capacity_wh == pytest.approx(50_000.0)
    assert (car.low_soc_pct, car.battery_swappable) == (15, False)
    assert BUILTIN_BY_ID["scooter"].form_factor == "scooter_standing"
    assert BUILTIN_BY_ID["moped"].form_factor == "moped"
    assert {t.id for t in BUILTIN_VEHICLE_TYPES if t.two_wheeled} == {
        "ebike",
        "cargo_ebike",
        "scooter",
        "moped",
    }


def test_the_plausible_speed_follows_the_form_factor_and_never_undercuts_the_design_speed():
    assert BUILTIN_BY_ID["ebike"].plausible_speed_kmh == 80.0  # the old e-bike limit
    assert BUILTIN_BY_ID["car"].plausible_speed_kmh == 300.0  # the old car limit
    assert BUILTIN_BY_ID["moped"].plausible_speed_kmh == 150.0
    fast = VehicleType("speed-pedelec", "S-pedelec", "bicycle", "electric_assist", 45.0)
    assert fast.plausible_speed_kmh == 90.0


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"id": "has space"}, "id must match"),
        ({"id": ""}, "id must match"),
        ({"name": " "}, "name must be"),
        ({"form_factor": "hoverboard"}, "form_factor 'hoverboard' is not one of bicycle"),
        ({"propulsion_type": "steam"}, "propulsion_type 'steam' is not one of human"),
        ({"max_speed_kmh": 0}, "max_speed_kmh must be a positive number"),
        ({"max_range_meters": float("nan")}, "max_range_meters must be a positive"),
        ({"battery_nominal_ah": 10.0, "battery_nominal_v": None}, "both or neither"),
        ({"battery_nominal_v": True}, "battery_nominal_v must be a positive"),
        ({"low_soc_pct": 101}, "low_soc_pct must be between 0 and 100"),
        ({"battery_swappable": "yes"}, "battery_swappable must be true or false"),
    ],
)
def test_an_invalid_type_is_refused_saying_which_field_and_why(changes, reason):
    fields = {**BUILTIN_BY_ID["scooter"].to_dict(), **changes}
    with pytest.raises(InvalidVehicleType, match=reason):
        VehicleType(**fields)


def test_from_dict_refuses_unknown_and_missing_fields():
    with pytest.raises(InvalidVehicleType, match="unknown field.*colour"):
        VehicleType.from_dict({**BUILTIN_BY_ID["car"].to_dict(), "colour": "red"})
    with pytest.raises(InvalidVehicleType, match="missing field.*form_factor"):
        VehicleType.from_dict({"id": "x", "name": "x", "propulsion_type": "human"})
    assert VehicleType.from_dict(BUILTIN_BY_ID["car"].to_dict()) == BUILTIN_BY_ID["car"]


def test_a_human_powered_type_has_no_pack():
    bike = VehicleType("bike", "Bicycle", "bicycle", "human")
    assert bike.battery_capacity_wh is None and bike.two_wheeled
