"""Alerts as events, one per episode: an alert disarms when it fires and re-arms only once its
condition has cleared by a margin (hysteresis), so a value hovering at a threshold raises one
event, not one per sample."""

from __future__ import annotations

import numpy as np

from battery._batch import SortedSamples, VehicleParams
from battery._groups import hysteresis
from battery._state import VehicleArrays
from battery.config import BatteryPolicy
from battery.events import (
    ABNORMAL_PARKED_DRAIN,
    AUX_BATTERY_AT_RISK,
    BATTERY_HEALTH_LOW,
    BATTERY_LOW,
    BatteryEvent,
)
from battery.low_voltage import AuxEstimate


def low_soc_alerts(
    st: VehicleArrays, b: SortedSamples, par: VehicleParams, p: BatteryPolicy
) -> list[BatteryEvent]:
    """battery_low, judged per sample (the event carries the sample's time): below the type's
    low_soc_pct, re-armed at low_soc_pct + low_soc_rearm_pp."""
    low = par.low_soc[b.v]
    with np.errstate(invalid="ignore"):
        fire = b.soc < low
        rearm = b.soc >= low + p.low_soc_rearm_pp
    raised, armed = hysteresis(b.g, fire, rearm, st.low_armed[b.veh])
    st.low_armed[b.veh] = armed
    return [
        BatteryEvent(
            int(b.v[k]),
            int(b.t[k]),
            BATTERY_LOW,
            {"soc_pct": round(float(b.soc[k]), 2), "threshold_pct": float(low[k])},
        )
        for k in np.flatnonzero(raised).tolist()
    ]


def vehicle_alerts(
    st: VehicleArrays,
    vehicles: np.ndarray,
    t_now: np.ndarray,
    soh_pct: np.ndarray,
    aux: AuxEstimate,
    p: BatteryPolicy,
) -> list[BatteryEvent]:
    """Alerts on slow estimates (health, 12 V), judged once per batch per vehicle at its newest
    sample: battery_health_low, aux_battery_at_risk, abnormal_parked_drain."""
    events: list[BatteryEvent] = []
    with np.errstate(invalid="ignore"):
        # Pack health below the service threshold.
        fire = soh_pct < p.health_low_pct
        rearm = soh_pct >= p.health_low_pct + p.health_rearm_pp
        for j in _episode(st.health_armed, vehicles, fire, rearm):
            events.append(
                BatteryEvent(
                    int(vehicles[j]),
                    int(t_now[j]),
                    BATTERY_HEALTH_LOW,
                    {"soh_pct": round(float(soh_pct[j]), 2), "threshold_pct": p.health_low_pct},
                )
            )

        # 12 V: will not crank within aux_risk_hours if the car stays parked. The episode is
        # the parking: driving charges the battery and re-arms the alert.
        hours = aux.hours_to_threshold
        fire = aux.fit_valid & ((aux.rest_v <= p.aux_threshold_v) | (hours < p.aux_risk_hours))
        rearm = ~aux.parked | (
            aux.fit_valid & (aux.rest_v > p.aux_threshold_v) & ~(hours < 1.5 * p.aux_risk_hours)
        )
        for j in _episode(st.risk_armed, vehicles, fire, rearm):
            events.append(
                BatteryEvent(
                    int(vehicles[j]),
                    int(t_now[j]),
                    AUX_BATTERY_AT_RISK,
                    {
                        "aux_rest_v": round(float(aux.rest_v[j]), 3),
                        "aux_hours_to_threshold": _r(hours[j], 1),
                        "threshold_v": p.aux_threshold_v,
                    },
                )
            )

        # A drain well above sleep draw while parked: something was left on. Judged on the
        # drain's confidence interval, and only once the drain is known to within a quarter,
        # so that the noise of short parkings, evaluated batch after batch, raises nothing.
        ma_per = p.aux_nominal_ah / (p.aux_full_v - p.aux_empty_v) * 1000.0
        s, se, z = aux.drain_v_per_h, aux.drain_se, p.abnormal_drain_z
        fire = (se <= p.abnormal_drain_max_rel_error * s) & (
            (s - z * se) * ma_per > p.abnormal_drain_ma
        )
        rearm = (s + z * se) * ma_per < 0.6 * p.abnormal_drain_ma
        for j in _episode(st.drain_armed, vehicles, fire, rearm):
            events.append(
                BatteryEvent(
                    int(vehicles[j]),
                    int(t_now[j]),
                    ABNORMAL_PARKED_DRAIN,
                    {
                        "aux_drain_ma": round(float(aux.drain_v_per_h[j] * ma_per), 1),
                        "threshold_ma": p.abnormal_drain_ma,
                    },
                )
            )
    return events


def _episode(
    armed: np.ndarray, vehicles: np.ndarray, fire: np.ndarray, rearm: np.ndarray
) -> list[int]:
    """Positions whose alert fires now; updates the armed flags in place."""
    a = armed[vehicles]
    raised = fire & a
    armed[vehicles] = np.where(fire, False, np.where(rearm, True, a))
    return np.flatnonzero(raised).tolist()


def _r(x: float, digits: int) -> float | None:
    return None if not np.isfinite(x) else round(float(x), digits)
