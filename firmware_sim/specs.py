"""What the simulated vehicles are: their kinds, the area they roam, and the specifications of
each kind (riding, energy use, traction pack, 12 V battery) that the physics modules draw from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EBIKE, CAR, SCOOTER, MOPED, CARGO_EBIKE = 0, 1, 2, 3, 4
# vehicles.vehicle_type in the registry, by kind (the backend's built-in vehicle types)
VEHICLE_TYPES = ("ebike", "car", "scooter", "moped", "cargo_ebike")
KIND_OF = {name: kind for kind, name in enumerate(VEHICLE_TYPES)}

EARTH_RADIUS_M = 6_371_008.8  # the mean radius, the sphere the gateway measures distances on
M_PER_DEG_LAT = np.pi * EARTH_RADIUS_M / 180.0
DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class Area:
    """The bounding box vehicles roam in (default: central Berlin, Tiergarten to Friedrichshain)."""

    south: float = 52.490
    west: float = 13.330
    north: float = 52.545
    east: float = 13.460

    @property
    def centre(self) -> tuple[float, float]:
        return (self.south + self.north) / 2, (self.west + self.east) / 2

    def half_size_m(self) -> tuple[float, float]:
        lat0, _ = self.centre
        return (
            (self.east - self.west) / 2 * M_PER_DEG_LAT * np.cos(np.radians(lat0)),
            (self.north - self.south) / 2 * M_PER_DEG_LAT,
        )


@dataclass(frozen=True, slots=True)
class VehicleSpec:
    """What a kind of vehicle does: riding, energy use, traction pack, charging.

    Ranges (lo, hi) are drawn uniformly per vehicle or per trip.
    """

    cruise_kmh: tuple[float, float]  # cruising speed of a trip
    accel_mps2: float
    decel_mps2: float
    turn_kmh: float  # speed through a corner without a stop
    stop_share: float  # share of corners with a stop (lights, give way)
    stop_s: tuple[float, float]
    trip_km: tuple[float, float]  # straight-line distance; the street path is longer
    parked_mean_s: float  # exponential, between trips
    wh_per_km: tuple[float, float]  # per vehicle, at the pack terminals
    wh_per_km_noise: float  # relative, per step (wind, hills, riders)
    idle_w: float  # electronics on the traction pack while parked
    driving_aux_w: float  # extra load while a trip runs (HVAC, lights, DC/DC)
    nominal_kwh: float
    nominal_v: float
    cells_series: int
    capacity_spread: tuple[float, float]  # true new capacity / nominal
    r0_ohm: tuple[float, float]  # pack DC resistance when new
    initial_efc: tuple[float, float]  # the fleet is not new: equivalent full cycles so far
    initial_age_days: tuple[float, float]
    fade_per_efc: tuple[float, float]  # capacity fraction lost per equivalent full cycle
    fade_per_sqrt_day: tuple[float, float]  # calendar fade, fraction per sqrt(day)
    r_growth_per_efc: float  # resistance growth, fraction per cycle
    r_growth_per_sqrt_day: float
    charge_a: float  # constant-current charging current
    service_below_pct: float  # at the end of parking, below this: charge (or swap)
    charge_to_pct: tuple[float, float]
    swap_share: float  # of services done by swapping the pack (e-bikes)
    min_trip_soc_pct: float
    pack_v_noise: float  # measurement noise, V (one sigma)
    pack_a_noise: float  # measurement noise, A

    @property
    def nominal_ah(self) -> float:
        return self.nominal_kwh * 1000.0 / self.nominal_v


EBIKE_SPEC = VehicleSpec(
    cruise_kmh=(13.0, 25.0),
    accel_mps2=0.8,
    decel_mps2=1.5,
    turn_kmh=10.0,
    stop_share=0.25,
    stop_s=(4.0, 30.0),
    trip_km=(0.8, 4.0),
    parked_mean_s=75 * 60.0,
    wh_per_km=(8.0, 12.0),
    wh_per_km_noise=0.15,
    idle_w=0.7,
    driving_aux_w=2.0,
    nominal_kwh=0.5,
    nominal_v=36.0,
    cells_series=10,
    capacity_spread=(0.98, 1.04),
    r0_ohm=(0.12, 0.18),
    initial_efc=(0.0, 600.0),
    initial_age_days=(0.0, 900.0),
    fade_per_efc=(2.0e-4, 3.5e-4),
    fade_per_sqrt_day=(6e-4, 1.2e-3),
    r_growth_per_efc=6e-4,
    r_growth_per_sqrt_day=3e-3,
    charge_a=4.0,
    service_below_pct=20.0,
    charge_to_pct=(95.0, 100.0),
    swap_share=0.7,
    min_trip_soc_pct=5.0,
    pack_v_noise=0.02,
    pack_a_noise=0.02,
)

CAR_SPEC = VehicleSpec(
    cruise_kmh=(25.0, 50.0),
    accel_mps2=1.8,
    decel_mps2=2.5,
    turn_kmh=15.0,
    stop_share=0.4,
    stop_s=(5.0, 45.0),
    trip_km=(1.5, 8.0),
    parked_mean_s=150 * 60.0,
    wh_per_km=(150.0, 200.0),
    wh_per_km_noise=0.10,
    idle_w=0.0,
    driving_aux_w=400.0,
    nominal_kwh=50.0,
    nominal_v=400.0,
    cells_series=110,
    capacity_spread=(0.99, 1.03),
    r0_ohm=(0.08, 0.12),
    initial_efc=(0.0, 300.0),
    initial_age_days=(0.0, 1500.0),
    fade_per_efc=(1.0e-4, 1.8e-4),
    fade_per_sqrt_day=(4e-4, 8e-4),
    r_growth_per_efc=3e-4,
    r_growth_per_sqrt_day=2e-3,
    charge_a=27.5,
    service_below_pct=25.0,
    charge_to_pct=(80.0, 100.0),
    swap_share=0.0,
    min_trip_soc_pct=10.0,
    pack_v_noise=0.2,
    pack_a_noise=0.1,
)


# A shared stand-up e-scooter: ~0.55 kWh / 36 V, 20 km/h (the EU cap), swapped in the street.
SCOOTER_SPEC = VehicleSpec(
    cruise_kmh=(12.0, 20.0),
    accel_mps2=1.0,
    decel_mps2=1.8,
    turn_kmh=10.0,
    stop_share=0.25,
    stop_s=(4.0, 30.0),
    trip_km=(0.5, 3.0),
    parked_mean_s=60 * 60.0,
    wh_per_km=(10.0, 15.0),
    wh_per_km_noise=0.15,
    idle_w=1.0,
    driving_aux_w=3.0,
    nominal_kwh=0.55,
    nominal_v=36.0,
    cells_series=10,
    capacity_spread=(0.97, 1.04),
    r0_ohm=(0.10, 0.16),
    initial_efc=(0.0, 500.0),
    initial_age_days=(0.0, 700.0),
    fade_per_efc=(2.5e-4, 4.0e-4),
    fade_per_sqrt_day=(6e-4, 1.2e-3),
    r_growth_per_efc=7e-4,
    r_growth_per_sqrt_day=3e-3,
    charge_a=5.0,
    service_below_pct=20.0,
    charge_to_pct=(95.0, 100.0),
    swap_share=0.9,
    min_trip_soc_pct=8.0,
    pack_v_noise=0.02,
    pack_a_noise=0.02,
)

# A shared electric moped (L1e, 45 km/h): ~2 kWh / 60 V (16S), packs swapped at stations.
MOPED_SPEC = VehicleSpec(
    cruise_kmh=(25.0, 45.0),
    accel_mps2=1.5,
    decel_mps2=2.5,
    turn_kmh=15.0,
    stop_share=0.35,
    stop_s=(5.0, 40.0),
    trip_km=(1.5, 8.0),
    parked_mean_s=120 * 60.0,
    wh_per_km=(30.0, 45.0),
    wh_per_km_noise=0.12,
    idle_w=1.5,
    driving_aux_w=25.0,
    nominal_kwh=2.0,
    nominal_v=60.0,
    cells_series=16,
    capacity_spread=(0.98, 1.03),
    r0_ohm=(0.08, 0.14),
    initial_efc=(0.0, 400.0),
    initial_age_days=(0.0, 1000.0),
    fade_per_efc=(1.5e-4, 3.0e-4),
    fade_per_sqrt_day=(5e-4, 1.0e-3),
    r_growth_per_efc=5e-4,
    r_growth_per_sqrt_day=2.5e-3,
    charge_a=8.0,
    service_below_pct=25.0,
    charge_to_pct=(90.0, 100.0),
    swap_share=0.8,
    min_trip_soc_pct=8.0,
    pack_v_noise=0.05,
    pack_a_noise=0.05,
)

# A cargo e-bike: ~1 kWh / 48 V (13S), heavier and slower than an e-bike, longer trips.
CARGO_EBIKE_SPEC = VehicleSpec(
    cruise_kmh=(12.0, 22.0),
    accel_mps2=0.6,
    decel_mps2=1.2,
    turn_kmh=8.0,
    stop_share=0.3,
    stop_s=(4.0, 30.0),
    trip_km=(1.0, 5.0),
    parked_mean_s=90 * 60.0,
    wh_per_km=(15.0, 22.0),
    wh_per_km_noise=0.15,
    idle_w=0.8,
    driving_aux_w=2.5,
    nominal_kwh=1.0,
    nominal_v=48.0,
    cells_series=13,
    capacity_spread=(0.98, 1.04),
    r0_ohm=(0.14, 0.22),
    initial_efc=(0.0, 500.0),
    initial_age_days=(0.0, 900.0),
    fade_per_efc=(2.0e-4, 3.5e-4),
    fade_per_sqrt_day=(6e-4, 1.2e-3),
    r_growth_per_efc=6e-4,
    r_growth_per_sqrt_day=3e-3,
    charge_a=5.0,
    service_below_pct=20.0,
    charge_to_pct=(95.0, 100.0),
    swap_share=0.7,
    min_trip_soc_pct=5.0,
    pack_v_noise=0.03,
    pack_a_noise=0.03,
)


def parse_mix(text: str) -> dict[str, float]:
    """A fleet mix "ebike=60,scooter=30,car=10" as shares by vehicle type (they need not add up
    to 100: they are normalised). ValueError names what is wrong."""
    shares: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.strip().partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(
                f"{part.strip()!r} is not TYPE=SHARE (e.g. ebike=60,scooter=30,car=10)"
            )
        if name not in KIND_OF:
            raise ValueError(f"unknown vehicle type {name!r}: one of {', '.join(VEHICLE_TYPES)}")
        if name in shares:
            raise ValueError(f"{name} is given twice")
        try:
            share = float(value)
        except ValueError:
            raise ValueError(f"{name}: {value.strip()!r} is not a number") from None
        if not (share >= 0 and np.isfinite(share)):
            raise ValueError(f"{name}: the share must be a number >= 0")
        shares[name] = share
    total = sum(shares.values())
    if total <= 0:
        raise ValueError("the mix has no vehicles: give some type a share above 0")
    return {name: share / total for name, share in shares.items()}


@dataclass(frozen=True, slots=True)
class AuxSpec:
    """The cars' 12 V battery: capacity, sleep draw, the drain fault and when it cannot start."""

    capacity_ah: tuple[float, float] = (50.0, 70.0)
    sleep_draw_a: tuple[float, float] = (0.005, 0.012)
    fault_share: float = 0.05  # cars with an accessory or TCU left on
    fault_draw_a: tuple[float, float] = (0.25, 0.35)
    charge_a: float = 10.0  # while the ignition is on, tapering when full
    surface_charge_v: float = 0.3  # above resting right after driving ...
    surface_tau_s: float = 3600.0  # ... decaying with this time constant
    # Below this resting voltage the car cannot be relied on to start (≈ 25 % state of charge,
    # "discharged" in DOMAIN.md 6): such a car stays parked, and this is the threshold of the
    # time-to-threshold ground truth.
    crank_threshold_v: float = 12.0
    noise_v: float = 0.01


def uniform_by_kind(
    rng: np.random.Generator, lo_hi_by_kind: list[tuple[float, float]], kind: np.ndarray
) -> np.ndarray:
    """One draw per vehicle, uniform in its kind's (lo, hi)."""
    lo = np.array([r[0] for r in lo_hi_by_kind])[kind]
    hi = np.array([r[1] for r in lo_hi_by_kind])[kind]
    return lo + (hi - lo) * rng.random(len(kind))


def per_vehicle(specs: tuple[VehicleSpec, ...], kind: np.ndarray, name: str) -> np.ndarray:
    """A spec's constant for every vehicle, by its kind (taken once, so steps index no specs)."""
    return np.array([getattr(s, name) for s in specs], dtype=np.float64)[kind]
