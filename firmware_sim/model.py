"""The fleet model: what every simulated vehicle does in simulated time, and the ground truth.

A vehicle is parked, on a trip or charging; FleetModel moves it between those phases, carries
out commands (lock, immobilise, ...) and composes the physics, one module each: movement
(routes), the traction battery (traction), the cars' 12 V battery (aux_battery) and what the
TCU measures (sensors). All state lives in numpy arrays indexed by vehicle; `step` advances
every vehicle at once. It never touches a clock or a socket, and is deterministic for a seed
and a sequence of steps.
"""

from __future__ import annotations

import numpy as np

from firmware_sim.aux_battery import AuxBatteries, aux_rest_voltage
from firmware_sim.routes import Motion
from firmware_sim.sensors import Samples, Sensors
from firmware_sim.specs import (
    CAR,
    CAR_SPEC,
    CARGO_EBIKE,
    CARGO_EBIKE_SPEC,
    DAY_MS,
    EBIKE,
    EBIKE_SPEC,
    MOPED,
    MOPED_SPEC,
    SCOOTER,
    SCOOTER_SPEC,
    VEHICLE_TYPES,
    Area,
    AuxSpec,
    VehicleSpec,
    per_vehicle,
    uniform_by_kind,
)
from firmware_sim.traction import PackSwap, TractionPacks

__all__ = [
    "CAR",
    "CAR_SPEC",
    "CARGO_EBIKE",
    "CARGO_EBIKE_SPEC",
    "CHARGING",
    "DAY_MS",
    "EBIKE",
    "EBIKE_SPEC",
    "MOPED",
    "MOPED_SPEC",
    "PARKED",
    "SCOOTER",
    "SCOOTER_SPEC",
    "TRIP",
    "VEHICLE_TYPES",
    "Area",
    "AuxSpec",
    "CommandRefused",
    "FleetModel",
    "PackSwap",
    "Samples",
    "VehicleSpec",
    "aux_rest_voltage",
]

PARKED, TRIP, CHARGING = 0, 1, 2
_NEVER_MS = np.iinfo(np.int64).max
_BERLIN = Area()
_AUX_SPEC = AuxSpec()


class CommandRefused(Exception):
    """The vehicle will not carry out a command; `reason` is the protocol's result reason."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class FleetModel:
    """All vehicles of a simulated fleet, advanced together in simulated time.

    kinds[i] is EBIKE, CAR, SCOOTER, MOPED or CARGO_EBIKE (specs). `step(dt_s)` moves the clock
    by dt and returns every vehicle's sample at the new time; nothing depends on the wall clock.
    Commands (lock, immobilise, ...) change state between steps and raise CommandRefused when the
    vehicle cannot comply.

    The physics live in `motion`, `traction` and `aux12v`; the model's own attributes and
    methods below (speed, soc, capacity_ah(), aux_soc, ...) are their ground truth, for tests.
    """

    def __init__(
        self,
        kinds,
        *,
        seed: int = 0,
        start_ms: int = 1_764_547_200_000,
        area: Area = _BERLIN,
        ebike: VehicleSpec = EBIKE_SPEC,
        car: VehicleSpec = CAR_SPEC,
        scooter: VehicleSpec = SCOOTER_SPEC,
        moped: VehicleSpec = MOPED_SPEC,
        cargo_ebike: VehicleSpec = CARGO_EBIKE_SPEC,
        aux: AuxSpec = _AUX_SPEC,
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
        self.specs = specs = (ebike, car, scooter, moped, cargo_ebike)  # by kind (specs.py)
        self.aux = aux
        self.garage_share = garage_share
        self._rng = rng = np.random.default_rng(seed)
        kind = self.kind.astype(np.intp)
        self._is_car = kind == CAR
        self._parked_mean = per_vehicle(specs, kind, "parked_mean_s")
        # The order of the draws below is part of what a seed means: keep it.
        wh_per_km = uniform_by_kind(rng, [s.wh_per_km for s in specs], kind)
        self.motion = Motion(self.kind, specs, area, rng, max_legs)
        self.phase = np.full(n, PARKED, dtype=np.int8)
        self.phase_end_ms = self.t_ms + (rng.exponential(self._parked_mean) * 1000).astype(np.int64)
        self.locked = np.ones(n, dtype=bool)
        self.ignition = np.zeros(n, dtype=bool)
        self.immobilised = np.zeros(n, dtype=bool)
        self.in_garage = self._is_car & (rng.random(n) < garage_share)
        self.traction = TractionPacks(self.kind, specs, rng, self.t_ms, ageing_speedup, wh_per_km)
        self.aux12v = AuxBatteries(self.kind, aux, rng, self.t_ms)
        self.sensors = Sensors(
            gps_noise_m,
            no_fix_share,
            per_vehicle(specs, kind, "pack_v_noise"),
            per_vehicle(specs, kind, "pack_a_noise"),
            aux.noise_v,
        )

    # -- state of the parts, by their ground-truth names -----------------------------------

    @property
    def speed(self) -> np.ndarray:
        """True speed, m/s."""
        return self.motion.speed

    @property
    def heading(self) -> np.ndarray:
        return self.motion.heading

    @property
    def odometer(self) -> np.ndarray:
        return self.motion.odometer

    @property
    def speed_limit(self) -> np.ndarray:
        return self.motion.speed_limit

    @property
    def soc(self) -> np.ndarray:
        """True state of charge of the traction pack, %."""
        return self.traction.soc

    @property
    def pack_id(self) -> np.ndarray:
        return self.traction.pack_id

    @property
    def swaps(self) -> list[PackSwap]:
        return self.traction.swaps

    @property
    def nominal_ah(self) -> np.ndarray:
        return self.traction.nominal_ah

    @property
    def cells(self) -> np.ndarray:
        return self.traction.cells

    @property
    def wh_per_km(self) -> np.ndarray:
        return self.traction.wh_per_km

    @property
    def charge_target(self) -> np.ndarray:
        return self.traction.charge_target

    @property
    def aux_soc(self) -> np.ndarray:
        """True state of charge of the 12 V battery, 0..1."""
        return self.aux12v.soc

    @property
    def aux_capacity_ah(self) -> np.ndarray:
        return self.aux12v.capacity_ah

    @property
    def aux_drain_a(self) -> np.ndarray:
        return self.aux12v.drain_a

    @property
    def aux_faulty(self) -> np.ndarray:
        return self.aux12v.faulty

    # -- ground truth ----------------------------------------------------------------------

    def efc(self) -> np.ndarray:
        """Equivalent full cycles of each vehicle's current pack (Ah throughput / (2·C_nom))."""
        return self.traction.efc()

    def age_days(self) -> np.ndarray:
        """Calendar age of each vehicle's current pack, days (sped up by ageing_speedup)."""
        return self.traction.age_days(self.t_ms)

    def capacity_ah(self) -> np.ndarray:
        """True capacity of each pack now, Ah: fades with cycles and with calendar time."""
        return self.traction.capacity_ah(self.t_ms)

    def soh(self) -> np.ndarray:
        """State of health by capacity, SoH_C = C / C_nom (DOMAIN.md 6), as a fraction."""
        return self.capacity_ah() / self.nominal_ah

    def resistance_ohm(self) -> np.ndarray:
        """True DC internal resistance of each pack now, Ω: grows with cycles and age."""
        return self.traction.resistance_ohm(self.t_ms)

    def ocv(self, soc_pct: np.ndarray | None = None) -> np.ndarray:
        """Pack open-circuit voltage, V, at the current (or a given) state of charge."""
        return self.traction.ocv(soc_pct)

    def energy_left_wh(self) -> np.ndarray:
        """Energy the pack holds above 0 % SoC at open-circuit voltage, Wh."""
        return self.traction.energy_left_wh(self.t_ms)

    def range_m(self) -> np.ndarray:
        """True range at the current SoC and each vehicle's energy per km, m (resistive losses
        and the auxiliary load are left out)."""
        return self.energy_left_wh() / self.wh_per_km * 1000.0

    def aux_rest_v(self) -> np.ndarray:
        """The 12 V battery's resting voltage now (no surface charge, no load), V."""
        return self.aux12v.rest_v()

    def aux_voltage(self) -> np.ndarray:
        """The 12 V battery's terminal voltage now (charging, or resting plus surface charge)."""
        return self.aux12v.voltage(self.t_ms, self.ignition)

    def aux_time_to_threshold_s(self) -> np.ndarray:
        """Seconds until the 12 V battery falls below the crank threshold if the car stays
        parked from now on (inf for e-bikes, 0 when already below)."""
        return self.aux12v.time_to_threshold_s()

    def moving(self) -> np.ndarray:
        return self.speed > 0.0

    def on_trip(self) -> np.ndarray:
        return self.phase == TRIP

    def charging(self) -> np.ndarray:
        return self.phase == CHARGING

    def latlon(self) -> tuple[np.ndarray, np.ndarray]:
        """True positions (no GPS noise)."""
        return self.motion.latlon()

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
        if self.kind[i] != CAR and self.speed[i] > 0:
            # A two-wheeler's lock bolt cannot engage into turning spokes.
            raise CommandRefused("vehicle_moving", f"the {VEHICLE_TYPES[self.kind[i]]} is riding")
        self.locked[i] = True

    def unlock(self, i: int) -> None:
        self.locked[i] = False

    def immobilise(self, i: int) -> None:
        """Engage the immobiliser; only a car standing still complies (a stop in traffic ends
        its trip there)."""
        if self.kind[i] != CAR:
            raise CommandRefused("not_supported", self._no_immobiliser(i))
        if self.speed[i] > 0:
            raise CommandRefused("vehicle_moving", f"speed {self.speed[i] * 3.6:.0f} km/h")
        self.immobilised[i] = True
        if self.phase[i] == TRIP:
            self._end_trips(np.array([i]))

    def mobilise(self, i: int) -> None:
        if self.kind[i] != CAR:
            raise CommandRefused("not_supported", self._no_immobiliser(i))
        self.immobilised[i] = False

    def _no_immobiliser(self, i: int) -> str:
        kind = "e-bike" if self.kind[i] == EBIKE else VEHICLE_TYPES[self.kind[i]].replace("_", " ")
        return f"{kind}s have no immobiliser"

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
        return self.traction.swap(np.array([i]), self._rng, self.t_ms)[0]

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
        moved, arrivals = self.motion.move(dt, noise[0], np.flatnonzero(self.on_trip()))
        for arrived in arrivals:
            self._end_trips(arrived)
        charged = self.traction.flow(
            self.t_ms, dt, moved, self.on_trip(), self.charging(), noise[1]
        )
        self._park(charged)
        self.aux12v.flow(dt, self.ignition)
        return self.sensors.read(self, noise, no_fix_draw)

    # -- phases: parked, on a trip, charging -----------------------------------------------

    def _park(self, idx: np.ndarray) -> None:
        """Start a parked phase of random length."""
        if not len(idx):
            return
        self.phase[idx] = PARKED
        dur = np.maximum(self._rng.exponential(self._parked_mean[idx]), 60.0)
        self.phase_end_ms[idx] = self.t_ms + (dur * 1000).astype(np.int64)

    def _end_trips(self, idx: np.ndarray) -> None:
        self.motion.halt(idx)
        self.locked[idx] = True
        off = idx[self.ignition[idx]]
        self.ignition[idx] = False
        self.aux12v.ignition_off(off, self.t_ms)
        garage = self._rng.random(len(idx)) < self.garage_share
        self.in_garage[idx] = self._is_car[idx] & garage
        self._park(idx)

    def _end_phases(self) -> None:
        """Parked vehicles whose parking is over: service a low pack, else start a trip."""
        due = np.flatnonzero((self.phase == PARKED) & (self.phase_end_ms <= self.t_ms))
        if not len(due):
            return
        low = self.soc[due] < self.traction.service_below[due]
        if low.any():
            self._service(due[low])
            due = due[~low]
        ok = (~self.immobilised[due]) & (self.soc[due] >= self.traction.min_trip_soc[due])
        ok &= ~self._is_car[due] | (self.aux_rest_v()[due] >= self.aux.crank_threshold_v)
        self._park(due[~ok])
        self._start_trips(due[ok])

    def _service(self, idx: np.ndarray) -> None:
        """Low packs at the end of parking: swapped (e-bikes, mostly) or put on charge."""
        swap_share = np.array([s.swap_share for s in self.specs])[self.kind[idx]]
        swapped = idx[self._rng.random(len(idx)) < swap_share]
        if len(swapped):
            self.traction.swap(swapped, self._rng, self.t_ms)
            self._park(swapped)
        charge = np.setdiff1d(idx, swapped)
        if len(charge):
            self.phase[charge] = CHARGING
            self.traction.start_charging(charge, self._rng)
            self.phase_end_ms[charge] = _NEVER_MS

    def _start_trips(self, idx: np.ndarray) -> None:
        if not len(idx):
            return
        self.motion.plan_trips(idx, self._rng)
        self.phase[idx] = TRIP
        self.phase_end_ms[idx] = _NEVER_MS
        self.locked[idx] = False
        self.in_garage[idx] = False
        self.ignition[idx] = self._is_car[idx]
