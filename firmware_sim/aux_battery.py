"""The cars' 12 V lead-acid battery: charged while the ignition is on, drained by the sleeping
electronics (or a fault) while parked, with the surface charge it shows right after a trip.
E-bikes have none; their arrays hold zeros that nothing reads.
"""

from __future__ import annotations

import numpy as np

from firmware_sim.specs import CAR, VEHICLE_TYPES, AuxSpec, uniform_by_kind

# 12 V lead-acid resting voltage is linear in state of charge between these points (DOMAIN.md 6:
# 12.6 V ≈ 100 %, 12.4 ≈ 75 %, 12.2 ≈ 50 %, 12.0 "discharged" ≈ 25 %).
AUX_V_EMPTY, AUX_V_PER_SOC = 11.8, 0.8
AUX_CHARGING_V = 14.1  # DC/DC or alternator output while the ignition is on


def aux_rest_voltage(aux_soc: np.ndarray | float) -> np.ndarray:
    """Resting voltage (V) of a 12 V battery at a state of charge (0..1)."""
    return AUX_V_EMPTY + AUX_V_PER_SOC * np.clip(aux_soc, 0.0, 1.0)


class AuxBatteries:
    """Every vehicle's 12 V battery, in arrays by vehicle; draws come from the model's generator."""

    def __init__(
        self, kind: np.ndarray, spec: AuxSpec, rng: np.random.Generator, t_ms: int
    ) -> None:
        n = len(kind)
        self.spec = spec
        self.is_car = is_car = kind == CAR
        self.capacity_ah = uniform_by_kind(
            rng, [spec.capacity_ah] * len(VEHICLE_TYPES), kind.astype(np.intp)
        )
        self.faulty = is_car & (rng.random(n) < spec.fault_share)
        self.drain_a = np.where(
            self.faulty, rng.uniform(*spec.fault_draw_a, n), rng.uniform(*spec.sleep_draw_a, n)
        )
        self.drain_a[~is_car] = 0.0
        self.soc = rng.uniform(0.75, 1.0, n)
        self._surface_v = np.zeros(n)
        self._off_ms = np.full(n, t_ms, dtype=np.int64)

    def flow(self, dt: float, ignition: np.ndarray) -> None:
        """Charge with the ignition on (tapering when full), drain with it off, for dt seconds."""
        spec, car = self.spec, self.is_car
        ign = ignition & car
        full_taper = np.clip((1.0 - self.soc) / 0.05, 0.05, 1.0)
        charge_a = np.where(ign, spec.charge_a * full_taper, 0.0)
        drain_a = np.where(car & ~ign, self.drain_a, 0.0)
        self.soc = np.clip(
            self.soc + (charge_a - drain_a) * dt / 3600.0 / self.capacity_ah, 0.0, 1.0
        )

    def ignition_off(self, idx: np.ndarray, t_ms: int) -> None:
        """Right after driving the battery shows surface charge, which fades over hours."""
        self._surface_v[idx] = self.spec.surface_charge_v
        self._off_ms[idx] = t_ms

    def rest_v(self) -> np.ndarray:
        """Resting voltage now (no surface charge, no load), V."""
        return aux_rest_voltage(self.soc)

    def voltage(self, t_ms: int, ignition: np.ndarray) -> np.ndarray:
        """Terminal voltage at t_ms: the charging voltage, or resting plus surface charge."""
        since_off = (t_ms - self._off_ms) / 1000.0
        rest = self.rest_v() + self._surface_v * np.exp(-since_off / self.spec.surface_tau_s)
        return np.where(ignition, AUX_CHARGING_V, rest)

    def time_to_threshold_s(self) -> np.ndarray:
        """Seconds until the resting voltage falls below the crank threshold if the car stays
        parked from now on (inf for e-bikes, 0 when already below)."""
        soc_thr = (self.spec.crank_threshold_v - AUX_V_EMPTY) / AUX_V_PER_SOC
        left_ah = np.maximum(self.soc - soc_thr, 0.0) * self.capacity_ah
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.is_car, left_ah / self.drain_a * 3600.0, np.inf)
