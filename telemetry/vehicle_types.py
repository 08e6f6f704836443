"""Vehicle types after GBFS `vehicle_types`: what kind of vehicle a registered vehicle is (its
form factor and propulsion) and the per-type numbers the cores derive their behaviour from
(traction pack, low-battery level, design speed). Plain data, no IO; the store keeps the
registry in table vehicle_types (migration 0014), seeded with BUILTIN_VEHICLE_TYPES.

A new type needs no code: the battery core takes its pack from the nominal values, the
plausibility filter its speed limit from the form factor, the lock interlock treats every
two-wheeled form factor alike, geofence rules match its id in GBFS `vehicle_type_ids`.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

# GBFS v3.0 vehicle_types.json: form_factor and propulsion_type (enums of the schema).
FORM_FACTORS = (
    "bicycle",
    "cargo_bicycle",
    "car",
    "moped",
    "scooter_standing",
    "scooter_seated",
    "other",
)
PROPULSION_TYPES = (
    "human",
    "electric_assist",
    "electric",
    "combustion",
    "combustion_diesel",
    "hybrid",
    "plug_in_hybrid",
    "hydrogen_fuel_cell",
)
# Form factors whose lock is a wheel or steering lock that must not engage while rolling.
TWO_WHEELED = frozenset({"bicycle", "cargo_bicycle", "moped", "scooter_standing", "scooter_seated"})
# The fastest a fix may imply before it is flagged implausible (a GPS jump, not the design speed:
# fixes jitter, and a vehicle in a van or on a train moves faster than it can ride).
PLAUSIBLE_SPEED_KMH = {
    "bicycle": 80.0,
    "cargo_bicycle": 80.0,
    "scooter_standing": 80.0,
    "scooter_seated": 80.0,
    "moped": 150.0,
    "car": 300.0,
    "other": 300.0,
}
VEHICLE_TYPE_ID_RULE = r"^[A-Za-z0-9_.-]{1,64}$"  # a GBFS ID fit for topics, URLs and CSV
_ID = re.compile(VEHICLE_TYPE_ID_RULE)


class InvalidVehicleType(ValueError):
    """A vehicle type the registry cannot hold; the message says which field and why."""


@dataclass(frozen=True, slots=True)
class VehicleType:
    """One row of the vehicle_types registry.

    id                  what vehicles.vehicle_type and GBFS vehicle_type_ids name it by
    name                shown to people
    form_factor         GBFS form_factor (FORM_FACTORS)
    propulsion_type     GBFS propulsion_type (PROPULSION_TYPES)
    max_speed_kmh       design top speed (GBFS max_permitted_speed), None unknown
    max_range_meters    range on a full charge (GBFS max_range_meters), None unknown
    battery_nominal_ah  traction pack nominal capacity, Ah (None: no pack known, e.g. human)
    battery_nominal_v   ... and nominal voltage, V (both or neither)
    low_soc_pct         low-battery alert and map status below this state of charge
    battery_swappable   packs are exchanged (a SoC jump up is a swap, not a charge)
    """

    id: str
    name: str
    form_factor: str
    propulsion_type: str
    max_speed_kmh: float | None = None
    max_range_meters: float | None = None
    battery_nominal_ah: float | None = None
    battery_nominal_v: float | None = None
    low_soc_pct: float = 20.0
    battery_swappable: bool = False

    def __post_init__(self) -> None:
        problem = _problem(self)
        if problem is not None:
            raise InvalidVehicleType(f"vehicle type {self.id!r}: {problem}")

    @property
    def two_wheeled(self) -> bool:
        return self.form_factor in TWO_WHEELED

    @property
    def plausible_speed_kmh(self) -> float:
        """The plausibility filter's limit for this type (never below its design speed)."""
        return max(PLAUSIBLE_SPEED_KMH[self.form_factor], 2.0 * (self.max_speed_kmh or 0.0))

    @property
    def battery_capacity_wh(self) -> float | None:
        if self.battery_nominal_ah is None or self.battery_nominal_v is None:
            return None
        return self.battery_nominal_ah * self.battery_nominal_v

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VehicleType:
        """From a mapping with these field names (unknown keys are an error, not ignored)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InvalidVehicleType(f"unknown field(s) {', '.join(unknown)}")
        missing = [n for n in ("id", "name", "form_factor", "propulsion_type") if n not in data]
        if missing:
            raise InvalidVehicleType(f"missing field(s) {', '.join(missing)}")
        return cls(**data)


COLUMNS = tuple(f.name for f in fields(VehicleType))


def _problem(t: VehicleType) -> str | None:  # noqa: C901 - one flat list of field checks
    if not isinstance(t.id, str) or not _ID.match(t.id):
        return f"id must match {VEHICLE_TYPE_ID_RULE}"
    if not isinstance(t.name, str) or not t.name.strip() or len(t.name) > 200:
        return "name must be 1 to 200 characters"
    if t.form_factor not in FORM_FACTORS:
        return f"form_factor {t.form_factor!r} is not one of {', '.join(FORM_FACTORS)}"
    if t.propulsion_type not in PROPULSION_TYPES:
        return f"propulsion_type {t.propulsion_type!r} is not one of {', '.join(PROPULSION_TYPES)}"
    for name in ("max_speed_kmh", "max_range_meters", "battery_nominal_ah", "battery_nominal_v"):
        value = getattr(t, name)
        if value is not None and not _positive(value):
            return f"{name} must be a positive number"
    if (t.battery_nominal_ah is None) != (t.battery_nominal_v is None):
        return "battery_nominal_ah and battery_nominal_v go together (both or neither)"
    if not (_number(t.low_soc_pct) and 0.0 <= t.low_soc_pct <= 100.0):
        return "low_soc_pct must be between 0 and 100"
    if not isinstance(t.battery_swappable, bool):
        return "battery_swappable must be true or false"
    return None


def _number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _positive(x: object) -> bool:
    return _number(x) and x > 0


# The types every database starts with (migration 0014 seeds the same rows; a test compares).
# 'ebike' and 'car' are the two types fleetgate had before the registry, with their old numbers.
BUILTIN_VEHICLE_TYPES: tuple[VehicleType, ...] = (
    VehicleType(
        "ebike",
        "E-bike",
        "bicycle",
        "electric_assist",
        max_speed_kmh=25.0,
        max_range_meters=60_000.0,
        battery_nominal_ah=500.0 / 36.0,
        battery_nominal_v=36.0,
        low_soc_pct=20.0,
        battery_swappable=True,
    ),  # fmt: skip
    VehicleType(
        "cargo_ebike",
        "Cargo e-bike",
        "cargo_bicycle",
        "electric_assist",
        max_speed_kmh=25.0,
        max_range_meters=50_000.0,
        battery_nominal_ah=1000.0 / 48.0,
        battery_nominal_v=48.0,
        low_soc_pct=20.0,
        battery_swappable=True,
    ),  # fmt: skip
    VehicleType(
        "scooter",
        "E-scooter",
        "scooter_standing",
        "electric",
        max_speed_kmh=20.0,
        max_range_meters=40_000.0,
        battery_nominal_ah=15.3,
        battery_nominal_v=36.0,
        low_soc_pct=20.0,
        battery_swappable=True,
    ),  # fmt: skip
    VehicleType(
        "moped",
        "E-moped",
        "moped",
        "electric",
        max_speed_kmh=45.0,
        max_range_meters=70_000.0,
        battery_nominal_ah=2000.0 / 60.0,
        battery_nominal_v=60.0,
        low_soc_pct=20.0,
        battery_swappable=True,
    ),  # fmt: skip
    VehicleType(
        "car",
        "Electric car",
        "car",
        "electric",
        max_speed_kmh=150.0,
        max_range_meters=300_000.0,
        battery_nominal_ah=125.0,
        battery_nominal_v=400.0,
        low_soc_pct=15.0,
        battery_swappable=False,
    ),  # fmt: skip
)
BUILTIN_BY_ID = {t.id: t for t in BUILTIN_VEHICLE_TYPES}
