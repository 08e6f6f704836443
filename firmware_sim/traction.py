"""The traction battery of every vehicle: its true capacity and resistance as the pack ages
(with cycles and with calendar time), the current a trip's power demand draws, state of charge
counted against the true capacity, charging sessions and e-bike pack swaps.

This is the ground truth the gateway's battery-health core is checked against.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from firmware_sim.specs import DAY_MS, VehicleSpec, per_vehicle, uniform_by_kind

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


def cell_ocv(soc_pct: np.ndarray | float) -> np.ndarray:
    """Open-circuit voltage of one cell (V) at a state of charge (%)."""
    return np.interp(soc_pct, _OCV_SOC, _OCV_CELL)


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


class TractionPacks:
    """The pack fitted to each vehicle, in arrays by vehicle; times are the model's clock (ms).

    wh_per_km[i] is vehicle i's energy use at the pack terminals. Draws come from the model's
    generator, in a fixed order.
    """

    def __init__(
        self,
        kind: np.ndarray,
        specs: tuple[VehicleSpec, ...],
        rng: np.random.Generator,
        t_ms: int,
        ageing_speedup: float,
        wh_per_km: np.ndarray,
    ) -> None:
        n = len(kind)
        self.kind = kind = kind.astype(np.intp)
        self.specs = specs
        self.ageing_speedup = ageing_speedup
        self.wh_per_km = wh_per_km
        self._idle_w = per_vehicle(specs, kind, "idle_w")
        self._driving_aux_w = per_vehicle(specs, kind, "driving_aux_w")
        self._wh_noise = per_vehicle(specs, kind, "wh_per_km_noise")
        self.nominal_ah = per_vehicle(specs, kind, "nominal_ah")
        self.cells = per_vehicle(specs, kind, "cells_series")
        self._charge_a = per_vehicle(specs, kind, "charge_a")
        self.service_below = per_vehicle(specs, kind, "service_below_pct")
        self.min_trip_soc = per_vehicle(specs, kind, "min_trip_soc_pct")
        self._r_growth_efc = per_vehicle(specs, kind, "r_growth_per_efc")
        self._r_growth_cal = per_vehicle(specs, kind, "r_growth_per_sqrt_day")
        self.charge_target = np.full(n, 100.0)  # SoC a charging session stops at

        # Everything needed to know each pack's true capacity and resistance at any time.
        self.pack_id = np.arange(n, dtype=np.int64)
        self._next_pack = n
        self._cap_new_ah, self._r0 = np.zeros(n), np.zeros(n)
        self._efc0, self._age0_days = np.zeros(n), np.zeros(n)
        self._fade_efc, self._fade_cal = np.zeros(n), np.zeros(n)
        self._throughput_ah = np.zeros(n)
        self._fitted_ms = np.full(n, t_ms, dtype=np.int64)
        self._fit_packs(np.arange(n), rng, t_ms)
        self.soc = rng.uniform(35.0, 95.0, n)
        self.pack_a = np.zeros(n)  # the current of the last step, A, positive = discharging
        self.pack_v = self.ocv()
        self.swaps: list[PackSwap] = []

    # -- ground truth ----------------------------------------------------------------------

    def efc(self) -> np.ndarray:
        """Equivalent full cycles of each vehicle's current pack (Ah throughput / (2·C_nom))."""
        return self._efc0 + self.ageing_speedup * self._throughput_ah / (2 * self.nominal_ah)

    def age_days(self, t_ms: int) -> np.ndarray:
        """Calendar age of each vehicle's current pack, days (sped up by ageing_speedup)."""
        return self._age0_days + self.ageing_speedup * (t_ms - self._fitted_ms) / DAY_MS

    def capacity_ah(self, t_ms: int) -> np.ndarray:
        """True capacity of each pack, Ah: fades with cycles and with calendar time."""
        fade = self._fade_efc * self.efc() + self._fade_cal * np.sqrt(self.age_days(t_ms))
        return self._cap_new_ah * np.maximum(1.0 - fade, 0.3)

    def resistance_ohm(self, t_ms: int) -> np.ndarray:
        """True DC internal resistance of each pack, Ω: grows with cycles and age."""
        sqrt_days = np.sqrt(self.age_days(t_ms))
        return self._r0 * (1.0 + self._r_growth_efc * self.efc() + self._r_growth_cal * sqrt_days)

    def ocv(self, soc_pct: np.ndarray | None = None) -> np.ndarray:
        """Pack open-circuit voltage, V, at the current (or a given) state of charge."""
        return self.cells * cell_ocv(self.soc if soc_pct is None else soc_pct)

    def energy_left_wh(self, t_ms: int) -> np.ndarray:
        """Energy the pack holds above 0 % SoC at open-circuit voltage, Wh."""
        cum = np.interp(self.soc, _SOC_FINE, _OCV_CUM)  # V·% per cell
        return cum / 100.0 * self.cells * self.capacity_ah(t_ms)

    # -- time --------------------------------------------------------------------------------

    def flow(
        self,
        t_ms: int,
        dt: float,
        moved_m: np.ndarray,
        on_trip: np.ndarray,
        charging: np.ndarray,
        noise: np.ndarray,
    ) -> np.ndarray:
        """Power demand -> current -> SoC against the TRUE capacity, over dt seconds ending at
        t_ms; returns the vehicles whose charging reached its target."""
        cap = self.capacity_ah(t_ms)
        r = self.resistance_ohm(t_ms)
        ocv = self.ocv()
        # Wh/km × km/h = W. The noise is per step so energy per km is exact on average.
        kmh = moved_m / dt * 3.6
        p = self.wh_per_km * np.maximum(1.0 + self._wh_noise * noise, 0.2) * kmh
        p += self._idle_w + np.where(on_trip, self._driving_aux_w, 0.0)
        p[self.soc <= 0.0] = 0.0  # an empty pack gives nothing (the rider pedals, a car rolls out)
        # Terminal power P = V·I with V = OCV − I·R:  I = (OCV − sqrt(OCV² − 4RP)) / 2R.
        i = (ocv - np.sqrt(np.maximum(ocv * ocv - 4.0 * r * p, 0.0))) / (2.0 * r)
        if charging.any():
            # Constant current to 80 %, then tapering towards a tenth of it at 100 %.
            taper = np.clip((100.0 - self.soc) / 20.0, 0.1, 1.0)
            i = np.where(charging, -self._charge_a * taper, i)
        self.soc = np.clip(self.soc - i * dt / 3600.0 / cap * 100.0, 0.0, 100.0)
        self._throughput_ah += np.abs(i) * dt / 3600.0
        self.pack_a = i
        # The voltage the BMS reports goes with the SoC it reports: after the step.
        self.pack_v = self.ocv() - i * r
        return np.flatnonzero(charging & (self.soc >= self.charge_target))

    def start_charging(self, idx: np.ndarray, rng: np.random.Generator) -> None:
        """Plug vehicles idx in, each until a target SoC drawn from its kind's range."""
        self.charge_target[idx] = uniform_by_kind(
            rng, [s.charge_to_pct for s in self.specs], self.kind[idx]
        )

    def swap(self, idx: np.ndarray, rng: np.random.Generator, t_ms: int) -> list[PackSwap]:
        """Put a fresh pack from the station's pool into vehicles idx (ground truth in swaps)."""
        old_cap = self.capacity_ah(t_ms)[idx]
        old_soc = self.soc[idx].copy()
        old_ids = self.pack_id[idx].copy()
        self.pack_id[idx] = self._next_pack + np.arange(len(idx))
        self._next_pack += len(idx)
        self._fit_packs(idx, rng, t_ms)
        self.soc[idx] = rng.uniform(95.0, 100.0, len(idx))
        new_cap = self.capacity_ah(t_ms)[idx]
        swaps = [
            PackSwap(int(i), t_ms, int(o), int(p), float(c0), float(c1), float(s0), float(s1))
            for i, o, p, c0, c1, s0, s1 in zip(
                idx, old_ids, self.pack_id[idx], old_cap, new_cap, old_soc, self.soc[idx]
            )
        ]
        self.swaps.extend(swaps)
        return swaps

    def _fit_packs(self, idx: np.ndarray, rng: np.random.Generator, t_ms: int) -> None:
        """Draw the life so far and the ageing rates of packs now fitted to vehicles idx."""
        kind, specs = self.kind[idx], self.specs
        spread = uniform_by_kind(rng, [s.capacity_spread for s in specs], kind)
        self._cap_new_ah[idx] = self.nominal_ah[idx] * spread
        self._r0[idx] = uniform_by_kind(rng, [s.r0_ohm for s in specs], kind)
        self._efc0[idx] = uniform_by_kind(rng, [s.initial_efc for s in specs], kind)
        self._age0_days[idx] = uniform_by_kind(rng, [s.initial_age_days for s in specs], kind)
        self._fade_efc[idx] = uniform_by_kind(rng, [s.fade_per_efc for s in specs], kind)
        self._fade_cal[idx] = uniform_by_kind(rng, [s.fade_per_sqrt_day for s in specs], kind)
        self._throughput_ah[idx] = 0.0
        self._fitted_ms[idx] = t_ms
