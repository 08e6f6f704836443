"""The fleet model: where every simulated vehicle is and what its batteries do, in simulated time.

All state lives in numpy arrays indexed by vehicle; `step` advances every vehicle at once and
returns one sample per vehicle. It never touches a clock or a socket, is deterministic for a seed
and a sequence of steps, and exposes the ground truth the battery-health core is checked against.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from telemetry.batch import TelemetryBatch

EBIKE, CAR = 0, 1
VEHICLE_TYPES = ("ebike", "car")  # vehicles.vehicle_type in the registry, by kind

PARKED, TRIP, CHARGING = 0, 1, 2

EARTH_RADIUS_M = 6_371_008.8  # the same sphere as telemetry.plausibility.haversine_m
M_PER_DEG_LAT = np.pi * EARTH_RADIUS_M / 180.0
DAY_MS = 86_400_000

# Per-cell open-circuit voltage of an NMC lithium-ion cell against state of charge; the pack's
# OCV is this times its cells in series.
_OCV_SOC = np.array([0, 5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 100], dtype=np.float64)
_OCV_CELL = np.array([3.00, 3.30, 3.45, 3.52, 3.57, 3.63, 3.68, 3.73, 3.79, 3.86, 3.94, 4.04, 4.18])
# Cumulative integral of the cell OCV over SoC (V·%), for the energy left in a pack.
_SOC_FINE = np.linspace(0.0, 100.0, 1001)
_OCV_FINE = np.interp(_SOC_FINE, _OCV_SOC, _OCV_CELL)
_OCV_CUM = np.concatenate(
    [[0.0], np.cumsum((_OCV_FINE[1:] + _OCV_FINE[:-1]) / 2 * np.diff(_SOC_FINE))]
)

# 12 V lead-acid resting voltage is linear in state of charge between these points (DOMAIN.md 6:
# 12.6 V ≈ 100 %, 12.4 ≈ 75 %, 12.2 ≈ 50 %, 12.0 "discharged" ≈ 25 %).
AUX_V_EMPTY, AUX_V_PER_SOC = 11.8, 0.8
AUX_CHARGING_V = 14.1  # DC/DC or alternator output while the ignition is on


def cell_ocv(soc_pct: np.ndarray | float) -> np.ndarray:
    """Open-circuit voltage of one cell (V) at a state of charge (%)."""
    return np.interp(soc_pct, _OCV_SOC, _OCV_CELL)


def aux_rest_voltage(aux_soc: np.ndarray | float) -> np.ndarray:
    """Resting voltage (V) of a 12 V battery at a state of charge (0..1)."""
    return AUX_V_EMPTY + AUX_V_PER_SOC * np.clip(aux_soc, 0.0, 1.0)


class CommandRefused(Exception):
    """The vehicle will not carry out a command; `reason` is the protocol's result reason."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


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


@dataclass(frozen=True, slots=True)
class PackSwap:
    """Ground truth of one e-bike pack swap."""

    vehicle: int
    t_ms: int
    old_pack: int
    new_pack: int
    old_capacity_ah: float
    new_capacity_ah: float
    soc_before: float
    soc_after: float


@dataclass(slots=True)
class Samples:
    """One sample per vehicle at time t_ms, in the protocol's fields and units.

    lat/lon are NaN when the vehicle has no fix; aux_v is NaN and ignition/immobilised are
    meaningless for e-bikes (payload encoders leave those fields out by kind).
    """

    t_ms: int
    kind: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    speed_kmh: np.ndarray
    heading_deg: np.ndarray
    soc_pct: np.ndarray
    pack_v: np.ndarray
    pack_a: np.ndarray
    aux_v: np.ndarray
    odometer_m: np.ndarray
    locked: np.ndarray
    ignition: np.ndarray
    immobilised: np.ndarray
    charging: np.ndarray

    def __len__(self) -> int:
        return len(self.kind)

    def has_fix(self) -> np.ndarray:
        return ~np.isnan(self.lat)

    def row(self, i: int) -> dict:
        """Vehicle i's sample as a protocol object (fields its kind does not report left out)."""
        out: dict = {"t": self.t_ms}
        if not np.isnan(self.lat[i]):
            out["lat"] = float(self.lat[i])
            out["lon"] = float(self.lon[i])
        for name in ("speed_kmh", "heading_deg", "soc_pct", "pack_v", "pack_a"):
            out[name] = float(getattr(self, name)[i])
        if self.kind[i] == CAR:
            out["aux_v"] = float(self.aux_v[i])
        out["odometer_m"] = float(self.odometer_m[i])
        out["locked"] = bool(self.locked[i])
        if self.kind[i] == CAR:
            out["ignition"] = bool(self.ignition[i])
            out["immobilised"] = bool(self.immobilised[i])
        out["charging"] = bool(self.charging[i])
        return out

    def to_batch(self, vehicle: np.ndarray | None = None) -> TelemetryBatch:
        """The samples as the pipeline's columnar batch (vehicle ids default to 0..n-1), for
        feeding cores directly without a broker."""
        n = len(self)
        b = TelemetryBatch.empty(n)
        b.vehicle[:] = np.arange(n) if vehicle is None else vehicle
        b.time_ms[:] = self.t_ms
        for name in (
            "lat",
            "lon",
            "speed_kmh",
            "heading_deg",
            "soc_pct",
            "pack_v",
            "pack_a",
            "aux_v",
            "odometer_m",
        ):
            getattr(b, name)[:] = getattr(self, name)
        car = self.kind == CAR
        b.locked[:] = self.locked
        b.charging[:] = self.charging
        b.ignition[car] = self.ignition[car]
        b.immobilised[car] = self.immobilised[car]
        return b


def _uniform(
    rng: np.random.Generator, lo_hi_by_kind: list[tuple[float, float]], kind: np.ndarray
) -> np.ndarray:
    lo = np.array([r[0] for r in lo_hi_by_kind])[kind]
    hi = np.array([r[1] for r in lo_hi_by_kind])[kind]
    return lo + (hi - lo) * rng.random(len(kind))


@dataclass
class _Options:
    gps_noise_m: float
    no_fix_share: float
    garage_share: float
    ageing_speedup: float
    max_legs: int


class FleetModel:
    """All vehicles of a simulated fleet, advanced together in simulated time.

    kinds[i] is EBIKE or CAR. `step(dt_s)` moves the clock by dt and returns every vehicle's
    sample at the new time; nothing depends on the wall clock. Commands (lock, immobilise, ...)
    change state between steps and raise CommandRefused when the vehicle cannot comply.
    """

    def __init__(
        self,
        kinds,
        *,
        seed: int = 0,
        start_ms: int = 1_764_547_200_000,
        area: Area = Area(),
        ebike: VehicleSpec = EBIKE_SPEC,
        car: VehicleSpec = CAR_SPEC,
        aux: AuxSpec = AuxSpec(),
        gps_noise_m: float = 3.0,
        no_fix_share: float = 0.002,
        garage_share: float = 0.15,
        ageing_speedup: float = 1.0,
        max_legs: int = 5,
    ) -> None:
        self.kind = np.asarray(kinds, dtype=np.int8)
        n = self.n = len(self.kind)
        self.t_ms = int(start_ms)
        self.start_ms = int(start_ms)
        self.area = area
        self.specs = (ebike, car)
        self.aux = aux
        self.opt = _Options(gps_noise_m, no_fix_share, garage_share, ageing_speedup, max_legs)
        self._rng = rng = np.random.default_rng(seed)
        kind = self.kind.astype(np.intp)
        self._is_car = kind == CAR
        specs = self.specs

        def per_kind(name: str) -> np.ndarray:
            return np.array([getattr(s, name) for s in specs], dtype=np.float64)[kind]

        # Constants per vehicle, taken from its kind's spec once so steps index no dicts.
        self._accel = per_kind("accel_mps2")
        self._decel = per_kind("decel_mps2")
        self._turn = per_kind("turn_kmh") / 3.6
        self._v_max = np.array([s.cruise_kmh[1] for s in specs])[kind] / 3.6  # pedelec cap, town
        self._idle_w = per_kind("idle_w")
        self._driving_aux_w = per_kind("driving_aux_w")
        self._wh_noise = per_kind("wh_per_km_noise")
        self.nominal_ah = per_kind("nominal_ah")
        self.cells = per_kind("cells_series")
        self._charge_a = per_kind("charge_a")
        self._service_below = per_kind("service_below_pct")
        self._min_trip_soc = per_kind("min_trip_soc_pct")
        self._parked_mean = per_kind("parked_mean_s")
        self._v_noise = per_kind("pack_v_noise")
        self._a_noise = per_kind("pack_a_noise")
        self.wh_per_km = _uniform(rng, [s.wh_per_km for s in specs], kind)

        # Position in metres east/north of the area's centre.
        self._lat0, self._lon0 = area.centre
        self._m_per_deg_lon = M_PER_DEG_LAT * np.cos(np.radians(self._lat0))
        self._half_x, self._half_y = area.half_size_m()
        self.x = (rng.random(n) * 2 - 1) * self._half_x * 0.9
        self.y = (rng.random(n) * 2 - 1) * self._half_y * 0.9
        self.heading = rng.random(n) * 360.0
        self.speed = np.zeros(n)
        self.odometer = np.where(self._is_car, rng.uniform(5e6, 8e7, n), rng.uniform(2e5, 8e6, n))
        self.phase = np.full(n, PARKED, dtype=np.int8)
        self.phase_end_ms = self.t_ms + (rng.exponential(self._parked_mean) * 1000).astype(np.int64)
        k = max_legs
        self._wp_x = np.zeros((n, k))
        self._wp_y = np.zeros((n, k))
        self._wp_stop = np.zeros((n, k), dtype=bool)
        self._wp_dwell = np.zeros((n, k))
        self._wp_count = np.ones(n, dtype=np.intp)
        self._wp_next = np.zeros(n, dtype=np.intp)
        self._cruise = np.zeros(n)
        self._dwell_left = np.zeros(n)
        self.speed_limit = np.full(n, np.inf)  # m/s, set by set_speed_limit
        self.locked = np.ones(n, dtype=bool)
        self.ignition = np.zeros(n, dtype=bool)
        self.immobilised = np.zeros(n, dtype=bool)
        self.in_garage = self._is_car & (rng.random(n) < garage_share)
        self.charge_target = np.full(n, 100.0)

        # Traction pack: everything needed to know its true capacity and resistance at any time.
        self.pack_id = np.arange(n, dtype=np.int64)
        self._next_pack = n
        self._cap_new_ah, self._r0 = np.zeros(n), np.zeros(n)
        self._efc0, self._age0_days = np.zeros(n), np.zeros(n)
        self._fade_efc, self._fade_cal = np.zeros(n), np.zeros(n)
        self._throughput_ah = np.zeros(n)
        self._fitted_ms = np.full(n, self.t_ms, dtype=np.int64)
        self._new_packs(np.arange(n))
        self.soc = rng.uniform(35.0, 95.0, n)
        self.pack_a = np.zeros(n)  # the current of the last step, A, positive = discharging
        self.pack_v = self.ocv()
        self.swaps: list[PackSwap] = []

        # 12 V battery (cars; e-bikes carry zeros that nothing reads).
        self.aux_capacity_ah = _uniform(rng, [aux.capacity_ah] * 2, kind)
        self.aux_faulty = self._is_car & (rng.random(n) < aux.fault_share)
        self.aux_drain_a = np.where(
            self.aux_faulty, rng.uniform(*aux.fault_draw_a, n), rng.uniform(*aux.sleep_draw_a, n)
        )
        self.aux_drain_a[~self._is_car] = 0.0
        self.aux_soc = rng.uniform(0.75, 1.0, n)
        self._aux_surface = np.zeros(n)
        self._aux_off_ms = np.full(n, self.t_ms, dtype=np.int64)

    # -- ground truth ----------------------------------------------------------------------

    def efc(self) -> np.ndarray:
        """Equivalent full cycles of each vehicle's current pack (Ah throughput / (2·C_nom))."""
        return self._efc0 + self.opt.ageing_speedup * self._throughput_ah / (2 * self.nominal_ah)

    def age_days(self) -> np.ndarray:
        """Calendar age of each vehicle's current pack, days (sped up by ageing_speedup)."""
        return self._age0_days + self.opt.ageing_speedup * (self.t_ms - self._fitted_ms) / DAY_MS

    def capacity_ah(self) -> np.ndarray:
        """True capacity of each pack now, Ah: fades with cycles and with calendar time."""
        fade = self._fade_efc * self.efc() + self._fade_cal * np.sqrt(self.age_days())
        return self._cap_new_ah * np.maximum(1.0 - fade, 0.3)

    def soh(self) -> np.ndarray:
        """State of health by capacity, SoH_C = C / C_nom (DOMAIN.md 6), as a fraction."""
        return self.capacity_ah() / self.nominal_ah

    def resistance_ohm(self) -> np.ndarray:
        """True DC internal resistance of each pack now, Ω: grows with cycles and age."""
        spec = self.specs
        g_efc = np.array([s.r_growth_per_efc for s in spec])[self.kind]
        g_cal = np.array([s.r_growth_per_sqrt_day for s in spec])[self.kind]
        return self._r0 * (1.0 + g_efc * self.efc() + g_cal * np.sqrt(self.age_days()))

    def ocv(self, soc_pct: np.ndarray | None = None) -> np.ndarray:
        """Pack open-circuit voltage, V, at the current (or a given) state of charge."""
        return self.cells * cell_ocv(self.soc if soc_pct is None else soc_pct)

    def energy_left_wh(self) -> np.ndarray:
        """Energy the pack holds above 0 % SoC at open-circuit voltage, Wh."""
        cum = np.interp(self.soc, _SOC_FINE, _OCV_CUM)  # V·% per cell
        return cum / 100.0 * self.cells * self.capacity_ah()

    def range_m(self) -> np.ndarray:
        """True range at the current SoC and each vehicle's energy per km, m (resistive losses
        and the auxiliary load are left out)."""
        return self.energy_left_wh() / self.wh_per_km * 1000.0

    def aux_rest_v(self) -> np.ndarray:
        """The 12 V battery's resting voltage now (no surface charge, no load), V."""
        return aux_rest_voltage(self.aux_soc)

    def aux_time_to_threshold_s(self) -> np.ndarray:
        """Seconds until the 12 V battery falls below the crank threshold if the car stays
        parked from now on (inf for e-bikes, 0 when already below)."""
        soc_thr = (self.aux.crank_threshold_v - AUX_V_EMPTY) / AUX_V_PER_SOC
        left_ah = np.maximum(self.aux_soc - soc_thr, 0.0) * self.aux_capacity_ah
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(self._is_car, left_ah / self.aux_drain_a * 3600.0, np.inf)
        return t

    def moving(self) -> np.ndarray:
        return self.speed > 0.0

    def latlon(self) -> tuple[np.ndarray, np.ndarray]:
        """True positions (no GPS noise)."""
        return (self._lat0 + self.y / M_PER_DEG_LAT, self._lon0 + self.x / self._m_per_deg_lon)

    def truth(self) -> dict[str, np.ndarray]:
        """A snapshot of every ground-truth quantity, per vehicle."""
        lat, lon = self.latlon()
        return {
            "t_ms": np.full(self.n, self.t_ms, dtype=np.int64),
            "kind": self.kind.copy(),
            "lat": lat,
            "lon": lon,
            "pack_id": self.pack_id.copy(),
            "capacity_ah": self.capacity_ah(),
            "nominal_ah": self.nominal_ah.copy(),
            "soh": self.soh(),
            "resistance_ohm": self.resistance_ohm(),
            "efc": self.efc(),
            "soc_pct": self.soc.copy(),
            "range_m": self.range_m(),
            "wh_per_km": self.wh_per_km.copy(),
            "aux_rest_v": self.aux_rest_v(),
            "aux_drain_a": self.aux_drain_a.copy(),
            "aux_faulty": self.aux_faulty.copy(),
            "aux_time_to_threshold_s": self.aux_time_to_threshold_s(),
            "odometer_m": self.odometer.copy(),
            "phase": self.phase.copy(),
        }

    # -- commands ----------------------------------------------------------------------------

    def lock(self, i: int) -> None:
        if self.kind[i] == EBIKE and self.speed[i] > 0:
            # An e-bike's lock bolt cannot engage into turning spokes.
            raise CommandRefused("vehicle_moving", "the e-bike is riding")
        self.locked[i] = True

    def unlock(self, i: int) -> None:
        self.locked[i] = False

    def immobilise(self, i: int) -> None:
        """Engage the immobiliser; only a car standing still complies (a stop in traffic ends
        its trip there)."""
        if self.kind[i] != CAR:
            raise CommandRefused("not_supported", "e-bikes have no immobiliser")
        if self.speed[i] > 0:
            raise CommandRefused("vehicle_moving", f"speed {self.speed[i] * 3.6:.0f} km/h")
        self.immobilised[i] = True
        if self.phase[i] == TRIP:
            self._end_trips(np.array([i]))

    def mobilise(self, i: int) -> None:
        if self.kind[i] != CAR:
            raise CommandRefused("not_supported", "e-bikes have no immobiliser")
        self.immobilised[i] = False

    def set_speed_limit(self, i: int, kph: float | None) -> None:
        """Cap speed (e-bike assist, car limiter); None or 0 removes the cap."""
        if kph is None or kph == 0:
            self.speed_limit[i] = np.inf
            return
        if not 5.0 <= float(kph) <= 250.0:
            raise CommandRefused("invalid_params", f"speed limit {kph} km/h outside 5..250")
        self.speed_limit[i] = float(kph) / 3.6

    def swap_pack(self, i: int) -> PackSwap:
        """Put a fresh pack from the station's pool into e-bike i (ground truth in self.swaps)."""
        return self._swap(np.array([i]))[0]

    # -- time --------------------------------------------------------------------------------

    def step(self, dt_s: float) -> Samples:
        return self.step_ms(int(round(dt_s * 1000)))

    def advance_to(self, t_ms: int, max_step_s: float = 60.0) -> Samples:
        """Step in increments of at most max_step_s until t_ms; returns the last samples."""
        if t_ms <= self.t_ms:
            raise ValueError(f"t_ms {t_ms} is not after the model's time {self.t_ms}")
        max_ms = max(1, int(max_step_s * 1000))
        while True:
            dt = min(max_ms, t_ms - self.t_ms)
            samples = self.step_ms(dt)
            if self.t_ms >= t_ms:
                return samples

    def step_ms(self, dt_ms: int) -> Samples:
        """Advance every vehicle by dt_ms of simulated time; one sample each at the new time."""
        if dt_ms < 1:
            raise ValueError("a step is at least 1 ms")
        dt = dt_ms / 1000.0
        self.t_ms += dt_ms
        # One draw of every per-step random number, in a fixed order: the same seed and steps
        # give the same samples whatever happens to which vehicle.
        noise = self._rng.standard_normal((9, self.n))
        no_fix_draw = self._rng.random(self.n)
        self._end_phases()
        moved = self._move(dt, noise[0])
        self._traction(dt, moved, noise[1])
        self._aux_battery(dt)
        return self._samples(noise, no_fix_draw)

    # -- internals ---------------------------------------------------------------------------

    def _new_packs(self, idx: np.ndarray) -> None:
        """Draw the life so far and the ageing rates of packs now fitted to vehicles idx."""
        rng, kind, specs = self._rng, self.kind[idx].astype(np.intp), self.specs
        spread = _uniform(rng, [s.capacity_spread for s in specs], kind)
        self._cap_new_ah[idx] = self.nominal_ah[idx] * spread
        self._r0[idx] = _uniform(rng, [s.r0_ohm for s in specs], kind)
        self._efc0[idx] = _uniform(rng, [s.initial_efc for s in specs], kind)
        self._age0_days[idx] = _uniform(rng, [s.initial_age_days for s in specs], kind)
        self._fade_efc[idx] = _uniform(rng, [s.fade_per_efc for s in specs], kind)
        self._fade_cal[idx] = _uniform(rng, [s.fade_per_sqrt_day for s in specs], kind)
        self._throughput_ah[idx] = 0.0
        self._fitted_ms[idx] = self.t_ms

    def _swap(self, idx: np.ndarray) -> list[PackSwap]:
        old_cap = self.capacity_ah()[idx]
        old_soc = self.soc[idx].copy()
        old_ids = self.pack_id[idx].copy()
        self.pack_id[idx] = self._next_pack + np.arange(len(idx))
        self._next_pack += len(idx)
        self._new_packs(idx)
        self.soc[idx] = self._rng.uniform(95.0, 100.0, len(idx))
        new_cap = self.capacity_ah()[idx]
        swaps = [
            PackSwap(int(i), self.t_ms, int(o), int(p), float(c0), float(c1), float(s0), float(s1))
            for i, o, p, c0, c1, s0, s1 in zip(
                idx, old_ids, self.pack_id[idx], old_cap, new_cap, old_soc, self.soc[idx]
            )
        ]
        self.swaps.extend(swaps)
        return swaps

    def _park(self, idx: np.ndarray) -> None:
        """Start a parked phase of random length."""
        if not len(idx):
            return
        self.phase[idx] = PARKED
        dur = np.maximum(self._rng.exponential(self._parked_mean[idx]), 60.0)
        self.phase_end_ms[idx] = self.t_ms + (dur * 1000).astype(np.int64)

    def _end_trips(self, idx: np.ndarray) -> None:
        self.speed[idx] = 0.0
        self._dwell_left[idx] = 0.0
        self.locked[idx] = True
        off = idx[self.ignition[idx]]
        self.ignition[idx] = False
        # Right after driving the 12 V battery shows surface charge, which fades over hours.
        self._aux_surface[off] = self.aux.surface_charge_v
        self._aux_off_ms[off] = self.t_ms
        garage = self._rng.random(len(idx)) < self.opt.garage_share
        self.in_garage[idx] = self._is_car[idx] & garage
        self._park(idx)

    def _end_phases(self) -> None:
        """Parked vehicles whose parking is over: service a low pack, else start a trip."""
        due = np.flatnonzero((self.phase == PARKED) & (self.phase_end_ms <= self.t_ms))
        if not len(due):
            return
        low = self.soc[due] < self._service_below[due]
        if low.any():
            service = due[low]
            swap_share = np.array([s.swap_share for s in self.specs])[self.kind[service]]
            swapped = service[self._rng.random(len(service)) < swap_share]
            if len(swapped):
                self._swap(swapped)
                self._park(swapped)
            charge = np.setdiff1d(service, swapped)
            if len(charge):
                self.phase[charge] = CHARGING
                self.charge_target[charge] = _uniform(
                    self._rng,
                    [s.charge_to_pct for s in self.specs],
                    self.kind[charge].astype(np.intp),
                )
                self.phase_end_ms[charge] = np.iinfo(np.int64).max
            due = due[~low]
        ok = (~self.immobilised[due]) & (self.soc[due] >= self._min_trip_soc[due])
        ok &= ~self._is_car[due] | (self.aux_rest_v()[due] >= self.aux.crank_threshold_v)
        self._park(due[~ok])
        self._start_trips(due[ok])

    def _start_trips(self, idx: np.ndarray) -> None:
        m = len(idx)
        if not m:
            return
        rng, specs, kind = self._rng, self.specs, self.kind[idx].astype(np.intp)
        legs_max = self.opt.max_legs
        # Destination: a random direction and straight-line distance, reflected into the area.
        dist = _uniform(rng, [s.trip_km for s in specs], kind) * 1000.0
        ang = rng.random(m) * 2 * np.pi
        x0, y0 = self.x[idx], self.y[idx]
        x1 = _reflect(x0 + dist * np.sin(ang), self._half_x)
        y1 = _reflect(y0 + dist * np.cos(ang), self._half_y)
        # A street-like path: a staircase of legs alternating east-west and north-south, each
        # corner nudged so streets are not perfectly axis-aligned.
        legs = rng.integers(2, legs_max + 1, m)
        start_x = rng.random(m) < 0.5
        k = np.arange(legs_max)
        leg_is_x = (k[None, :] % 2 == 0) == start_x[:, None]
        active = k[None, :] < legs[:, None]
        w = rng.random((m, legs_max)) + 0.2
        wx = np.where(leg_is_x & active, w, 0.0)
        wy = np.where(~leg_is_x & active, w, 0.0)
        wx /= np.maximum(wx.sum(1, keepdims=True), 1e-12)
        wy /= np.maximum(wy.sum(1, keepdims=True), 1e-12)
        # A leg along an axis whose share is empty (only one leg of that axis and it got no
        # share) would stall; every axis with legs has a positive share by construction.
        px = x0[:, None] + np.cumsum(wx * (x1 - x0)[:, None], axis=1)
        py = y0[:, None] + np.cumsum(wy * (y1 - y0)[:, None], axis=1)
        corner = active & (k[None, :] < (legs - 1)[:, None])
        jitter = rng.normal(0.0, 25.0, (2, m, legs_max)) * corner
        px = np.clip(px + jitter[0], -self._half_x, self._half_x)
        py = np.clip(py + jitter[1], -self._half_y, self._half_y)
        last = legs - 1
        px[np.arange(m), last] = x1
        py[np.arange(m), last] = y1
        self._wp_x[idx, :legs_max] = px
        self._wp_y[idx, :legs_max] = py
        stop_share = np.array([s.stop_share for s in specs])[kind]
        self._wp_stop[idx, :legs_max] = corner & (rng.random((m, legs_max)) < stop_share[:, None])
        lo = np.array([s.stop_s[0] for s in specs])[kind][:, None]
        hi = np.array([s.stop_s[1] for s in specs])[kind][:, None]
        self._wp_dwell[idx, :legs_max] = lo + (hi - lo) * rng.random((m, legs_max))
        self._wp_count[idx] = legs
        self._wp_next[idx] = 0
        self._cruise[idx] = _uniform(rng, [s.cruise_kmh for s in specs], kind) / 3.6
        self._dwell_left[idx] = 0.0
        self.phase[idx] = TRIP
        self.phase_end_ms[idx] = np.iinfo(np.int64).max
        self.locked[idx] = False
        self.in_garage[idx] = False
        self.ignition[idx] = self._is_car[idx]

    def _move(self, dt: float, noise: np.ndarray) -> np.ndarray:
        """Move vehicles on trips along their legs; returns metres moved per vehicle."""
        moved = np.zeros(self.n)
        trip = np.flatnonzero(self.phase == TRIP)
        if not len(trip):
            return moved
        dwell = self._dwell_left[trip]
        self._dwell_left[trip] = np.maximum(dwell - dt, 0.0)
        m = trip[dwell <= 0.0]
        if not len(m):
            return moved
        k = self._wp_next[m]
        d = np.hypot(self._wp_x[m, k] - self.x[m], self._wp_y[m, k] - self.y[m])
        end_of_leg_stop = (k == self._wp_count[m] - 1) | self._wp_stop[m, k]
        v_end = np.where(end_of_leg_stop, 0.0, self._turn[m])
        v = self.speed[m]
        # Brake early enough to reach the corner at its speed; wobble a little around cruise.
        v_cap = np.minimum(
            np.minimum(self._cruise[m] * (1.0 + 0.04 * noise[m]), self._v_max[m]),
            self.speed_limit[m],
        )
        v_target = np.minimum(v_cap, np.sqrt(v_end**2 + 2.0 * self._decel[m] * d))
        v_new = np.clip(v_target, v - self._decel[m] * dt, v + self._accel[m] * dt)
        v_new = np.maximum(v_new, 0.5)  # creep on to a stop line rather than halt short of it
        self.speed[m] = v_new
        remaining = 0.5 * (v + v_new) * dt
        active = np.arange(len(m))
        for _ in range(self._wp_x.shape[1]):
            if not len(active):
                break
            vi = m[active]
            k = self._wp_next[vi]
            dx = self._wp_x[vi, k] - self.x[vi]
            dy = self._wp_y[vi, k] - self.y[vi]
            d = np.hypot(dx, dy)
            turning = d > 1e-9
            self.heading[vi[turning]] = np.degrees(np.arctan2(dx[turning], dy[turning])) % 360.0
            rem = remaining[active]
            reach = rem >= d
            part = ~reach
            if part.any():
                f = rem[part] / d[part]
                vp = vi[part]
                self.x[vp] += dx[part] * f
                self.y[vp] += dy[part] * f
                moved[vp] += rem[part]
            vr, kr = vi[reach], k[reach]
            self.x[vr] = self._wp_x[vr, kr]
            self.y[vr] = self._wp_y[vr, kr]
            moved[vr] += d[reach]
            remaining[active[reach]] -= d[reach]
            arrived = kr == self._wp_count[vr] - 1
            stop = self._wp_stop[vr, kr] & ~arrived
            self._wp_next[vr[~arrived]] += 1
            if stop.any():
                vs = vr[stop]
                self._dwell_left[vs] = self._wp_dwell[vs, kr[stop]]
                self.speed[vs] = 0.0
            if arrived.any():
                self._end_trips(vr[arrived])
            active = active[reach][~(arrived | stop)]
        self.odometer += moved
        return moved

    def _traction(self, dt: float, moved: np.ndarray, noise: np.ndarray) -> None:
        """Power demand -> current -> SoC against the TRUE capacity; charging sessions."""
        cap = self.capacity_ah()
        r = self.resistance_ohm()
        ocv = self.ocv()
        on_trip = self.phase == TRIP
        # Wh/km × km/h = W. The noise is per step so energy per km is exact on average.
        kmh = moved / dt * 3.6
        p = self.wh_per_km * np.maximum(1.0 + self._wh_noise * noise, 0.2) * kmh
        p += self._idle_w + np.where(on_trip, self._driving_aux_w, 0.0)
        p[self.soc <= 0.0] = 0.0  # an empty pack gives nothing (the rider pedals, a car rolls out)
        # Terminal power P = V·I with V = OCV − I·R:  I = (OCV − sqrt(OCV² − 4RP)) / 2R.
        i = (ocv - np.sqrt(np.maximum(ocv * ocv - 4.0 * r * p, 0.0))) / (2.0 * r)
        charging = self.phase == CHARGING
        if charging.any():
            # Constant current to 80 %, then tapering towards a tenth of it at 100 %.
            taper = np.clip((100.0 - self.soc) / 20.0, 0.1, 1.0)
            i = np.where(charging, -self._charge_a * taper, i)
        self.soc = np.clip(self.soc - i * dt / 3600.0 / cap * 100.0, 0.0, 100.0)
        self._throughput_ah += np.abs(i) * dt / 3600.0
        self.pack_a = i
        # The voltage the BMS reports goes with the SoC it reports: after the step.
        self.pack_v = self.ocv() - i * r
        done = np.flatnonzero(charging & (self.soc >= self.charge_target))
        if len(done):
            self._park(done)

    def _aux_battery(self, dt: float) -> None:
        aux, car = self.aux, self._is_car
        ign = self.ignition & car
        full_taper = np.clip((1.0 - self.aux_soc) / 0.05, 0.05, 1.0)
        charge_a = np.where(ign, aux.charge_a * full_taper, 0.0)
        drain_a = np.where(car & ~ign, self.aux_drain_a, 0.0)
        self.aux_soc = np.clip(
            self.aux_soc + (charge_a - drain_a) * dt / 3600.0 / self.aux_capacity_ah, 0.0, 1.0
        )

    def aux_voltage(self) -> np.ndarray:
        """The 12 V battery's terminal voltage now (charging, or resting plus surface charge)."""
        since_off = (self.t_ms - self._aux_off_ms) / 1000.0
        rest = self.aux_rest_v() + self._aux_surface * np.exp(-since_off / self.aux.surface_tau_s)
        return np.where(self.ignition, AUX_CHARGING_V, rest)

    def _samples(self, noise: np.ndarray, no_fix_draw: np.ndarray) -> Samples:
        o = self.opt
        lat, lon = self.latlon()
        lat = lat + noise[2] * (o.gps_noise_m / M_PER_DEG_LAT)
        lon = lon + noise[3] * (o.gps_noise_m / self._m_per_deg_lon)
        no_fix = (self.in_garage & (self.phase != TRIP)) | (no_fix_draw < o.no_fix_share)
        lat[no_fix] = np.nan
        lon[no_fix] = np.nan
        moving = self.speed > 0.0
        speed = np.where(moving, np.maximum(self.speed * 3.6 * (1.0 + 0.01 * noise[4]), 0.0), 0.0)
        heading = np.where(moving, (self.heading + 1.0 * noise[5]) % 360.0, self.heading)
        aux_v = np.where(self._is_car, self.aux_voltage() + self.aux.noise_v * noise[6], np.nan)
        return Samples(
            t_ms=self.t_ms,
            kind=self.kind,
            lat=lat,
            lon=lon,
            speed_kmh=speed,
            heading_deg=heading,
            soc_pct=self.soc.copy(),
            pack_v=self.pack_v + self._v_noise * noise[7],
            pack_a=self.pack_a + self._a_noise * noise[8],
            aux_v=aux_v,
            odometer_m=self.odometer.copy(),
            locked=self.locked.copy(),
            ignition=self.ignition.copy(),
            immobilised=self.immobilised.copy(),
            charging=self.phase == CHARGING,
        )


def _reflect(v: np.ndarray, half: float) -> np.ndarray:
    """Fold coordinates back into [-half, half] (a trip aimed out of the area turns back in)."""
    span = 2 * half
    u = np.mod(v + half, 2 * span)
    return np.where(u > span, 2 * span - u, u) - half
