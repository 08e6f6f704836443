"""What the battery core is told: each vehicle type's pack (nominal capacity and voltage, OCV
curve, alert levels) and the fleet-wide thresholds of its estimators and alerts. Plain values;
the gateway builds the packs from the vehicle type registry (battery_types) and the rest from
its settings.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from battery.ocv import NMC, OcvCurve
from telemetry.vehicle_types import BUILTIN_VEHICLE_TYPES, VehicleType


@dataclass(frozen=True, slots=True)
class BatteryType:
    """One kind of vehicle's traction pack and the alert levels that go with it.

    swappable: a SoC jump up that charging cannot explain is a pack swap (e-bikes with
    exchangeable packs), which starts a new pack history; for other types it only breaks the
    estimation windows. max_soc_rate_pct_per_h: the fastest a SoC can change by charging or
    driving; a bigger change between two reports is a discontinuity.
    """

    nominal_ah: float
    nominal_v: float
    low_soc_pct: float = 20.0
    swappable: bool = False
    ocv: OcvCurve = NMC
    max_soc_rate_pct_per_h: float = 100.0

    def __post_init__(self) -> None:
        if not (self.nominal_ah > 0 and self.nominal_v > 0):
            raise ValueError("a battery type needs a positive nominal capacity and voltage")

    @property
    def nominal_kwh(self) -> float:
        return self.nominal_ah * self.nominal_v / 1000.0


def battery_types(vehicle_types: Iterable[VehicleType]) -> dict[str, BatteryType]:
    """The pack of each registered vehicle type that has one (nominal capacity and voltage);
    a type without (human-powered, or not known) gets SoC-only estimates in the core."""
    return {
        t.id: BatteryType(
            nominal_ah=t.battery_nominal_ah,
            nominal_v=t.battery_nominal_v,
            low_soc_pct=t.low_soc_pct,
            swappable=t.battery_swappable,
        )
        for t in vehicle_types
        if t.battery_nominal_ah is not None and t.battery_nominal_v is not None
    }


# The built-in vehicle types' packs (telemetry.vehicle_types): among them a 0.5 kWh / 36 V e-bike
# pack that stations swap and a 50 kWh / 400 V car battery charged in place.
DEFAULT_TYPES: dict[str, BatteryType] = battery_types(BUILTIN_VEHICLE_TYPES)


@dataclass(frozen=True, slots=True)
class BatteryPolicy:
    """Fleet-wide thresholds of the estimators and alerts; each estimator's module says how it
    uses them (battery.capacity, .energy, .resistance, .charging, .low_voltage, .alerts).
    Memories are exponential forgetting scales: longer is steadier, shorter follows faster.
    """

    # -- sampling -----------------------------------------------------------------------------
    max_gap_s: float = 900.0  # a longer silence: nothing is integrated across it
    # -- capacity, SoH, pack swaps -----------------------------------------------------------
    window_pct: float = 10.0  # SoC span of one Coulomb window
    capacity_memory_pct: float = 100.0  # windows over one full discharge's worth of SoC
    min_evidence_pct: float = 10.0  # SoC moved in good windows before SoH is reported
    baseline_pct: float = 30.0  # SoC-only: the early-life distance-per-energy baseline
    jump_pct: float = 3.0  # a faster SoC change than this is a discontinuity
    swap_jump_pct: float = 10.0  # ... and one up by this much on a swappable pack a swap
    capacity_ratio: tuple[float, float] = (0.5, 1.5)  # a window implying C/C_nom outside: dropped
    health_low_pct: float = 80.0  # battery_health_low below this SoH
    health_rearm_pp: float = 2.0
    # -- charging -----------------------------------------------------------------------------
    charging_current_c: float = 0.02  # |I| above this C-rate, negative: charging (no flag)
    charge_fault_after_s: float = 1800.0  # charging reported, SoC not rising for this long
    charge_full_pct: float = 98.0  # ... unless the pack is (nearly) full
    # -- low SoC ------------------------------------------------------------------------------
    low_soc_rearm_pp: float = 5.0
    # -- energy per km, range -----------------------------------------------------------------
    energy_memory_km: float = 200.0  # forgetting of the per-km fit
    min_energy_km: float = 2.0  # driving seen before energy per km is reported
    # -- resistance ---------------------------------------------------------------------------
    pair_max_dt_s: float = 120.0  # two samples this close make a current step
    pair_min_step_c: float = 0.05  # |ΔI| at least this C-rate
    resistance_memory_pairs: float = 100.0  # pair estimates: ~ days of driving
    min_pairs: float = 10.0
    # -- 12 V auxiliary battery ---------------------------------------------------------------
    aux_threshold_v: float = 12.0  # resting voltage a car cannot be relied on to crank
    aux_empty_v: float = 11.8  # resting voltage at 0 % (12.0 V ≈ 25 %, DOMAIN.md 6)
    aux_full_v: float = 12.6  # ... and at 100 %: linear in between
    aux_nominal_ah: float = 60.0  # to turn a voltage slope into a drain current
    aux_surface_tau_s: float = 3600.0  # decay of the surface charge after driving
    aux_settle_s: float = 600.0  # samples this soon after ignition off are not used
    aux_min_samples: int = 20
    aux_min_span_s: float = 5400.0  # a parked episode's fit needs this much settled time
    aux_episode_gap_s: float = 6 * 3600.0  # a longer silence ends a parked episode
    aux_noise_floor_v: float = 0.003  # residual noise never taken below this
    aux_memory_s: float = 7 * 86400.0  # forgetting of past episodes' drain estimates
    aux_max_rel_error: float = 0.06  # drain known when its standard error is below this
    aux_risk_hours: float = 48.0  # aux_battery_at_risk below this time to threshold
    abnormal_drain_ma: float = 50.0  # abnormal_parked_drain above this (sleep: 5-12 mA)
    abnormal_drain_z: float = 3.0  # ... by this many standard errors, ...
    abnormal_drain_max_rel_error: float = 0.25  # ... with the drain known this well
    # -- history ------------------------------------------------------------------------------
    history_interval_s: float = 900.0  # battery_health: one row per vehicle per interval
