"""BatteryCore: the battery-health estimators over columnar batches, vectorised per vehicle,
sans-IO. update(batch) returns events, the changed estimates (vehicle_state) and the rows due
in battery_health; state round-trips through JSON for restarts."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from battery._batch import SortedSamples, VehicleParams
from battery._state import VehicleArrays
from battery.alerts import low_soc_alerts, vehicle_alerts
from battery.capacity import capacity_estimate, km_per_energy, update_capacity
from battery.charging import update_charging
from battery.config import DEFAULT_TYPES, BatteryPolicy, BatteryType
from battery.energy import energy_per_km, update_energy
from battery.events import CHARGING_END, CHARGING_START, PACK_SWAPPED, BatteryEvent
from battery.low_voltage import AuxEstimate, aux_estimate, update_low_voltage
from battery.resistance import resistance_estimate, update_resistance
from telemetry.batch import TelemetryBatch


@dataclass(slots=True)
class BatteryEstimates:
    """Estimates per vehicle, row i of every array for vehicle[i]; NaN = unknown (not enough
    data yet, or not applicable: no 12 V values for e-bikes). Columns are battery_health's.

    time_ms                 newest sample the estimates include
    soc_pct                 newest reported state of charge, %
    range_m                 distance left at the recent energy per km, m
    soh_pct                 usable capacity / nominal, % (SoH_C)
    capacity_ah             usable capacity, Ah
    resistance_ohm          DC internal resistance of the pack, Ω
    efc                     equivalent full cycles since the pack history began
    energy_wh_per_km        driving energy per km at the pack terminals, Wh/km
    aux_rest_v              12 V resting voltage (now while parked, else the last known), V
    aux_drain_ma            12 V drain while parked, mA
    aux_hours_to_threshold  hours until the 12 V resting voltage reaches the crank threshold
                            if the car stays parked (only while parked)
    charging                1 charging, 0 not, -1 unknown
    pack_seq                pack swaps detected so far (a pack history's number)
    """

    vehicle: np.ndarray
    time_ms: np.ndarray
    soc_pct: np.ndarray
    range_m: np.ndarray
    soh_pct: np.ndarray
    capacity_ah: np.ndarray
    resistance_ohm: np.ndarray
    efc: np.ndarray
    energy_wh_per_km: np.ndarray
    aux_rest_v: np.ndarray
    aux_drain_ma: np.ndarray
    aux_hours_to_threshold: np.ndarray
    charging: np.ndarray
    pack_seq: np.ndarray

    def __len__(self) -> int:
        return len(self.vehicle)

    @classmethod
    def empty(cls) -> BatteryEstimates:
        return cls(
            **{f.name: np.empty(0, dtype=_DTYPES.get(f.name, np.float64)) for f in fields(cls)}
        )

    def take(self, index: np.ndarray) -> BatteryEstimates:
        return BatteryEstimates(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def columns(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def rows(self) -> list[tuple]:
        """One tuple per vehicle in COLUMNS order, NaN as None and charging as bool/None,
        ready for executemany or COPY (time_ms stays ms since the epoch)."""
        cols = []
        for name in COLUMNS:
            x = getattr(self, name)
            if name == "charging":
                cols.append([None if c < 0 else bool(c) for c in x.tolist()])
            elif x.dtype.kind == "f":
                cols.append([None if c != c else c for c in x.tolist()])
            else:
                cols.append(x.tolist())
        return list(zip(*cols))


COLUMNS = tuple(f.name for f in fields(BatteryEstimates))
_DTYPES = {"vehicle": np.int32, "time_ms": np.int64, "charging": np.int8, "pack_seq": np.int32}


@dataclass(slots=True)
class BatteryUpdate:
    """What one batch changed.

    events      new battery events (time order)
    estimates   estimates of every vehicle with fresh samples in the batch (vehicle_state)
    history     the rows of those vehicles due in battery_health: a vehicle's first, then one
                per history_interval_s bucket of sample time, and one at every pack swap and
                charging session start or end
    used        samples that went into the estimators
    stale       samples ignored: not newer than their vehicle's last processed sample
                (duplicates, redeliveries, late out-of-order uploads)
    """

    events: list[BatteryEvent] = field(default_factory=list)
    estimates: BatteryEstimates = field(default_factory=BatteryEstimates.empty)
    history: BatteryEstimates = field(default_factory=BatteryEstimates.empty)
    used: int = 0
    stale: int = 0


class BatteryCore:
    """Per-vehicle battery state over telemetry batches (state of charge, range, SoH, resistance,
    EFC, charging sessions, 12 V drain) and the alerts that follow from it.

    Samples are taken per vehicle in time order. A sample not newer than its vehicle's last
    processed sample (a duplicate, a redelivered batch, a late upload that arrives after newer
    samples) is ignored by every estimator: the estimators are incremental, and such a sample
    would only be a gap in their inputs had it arrived in time. Within a batch, order does not
    matter.
    """

    def __init__(
        self,
        types: Mapping[str, BatteryType] = DEFAULT_TYPES,
        *,
        policy: BatteryPolicy = BatteryPolicy(),
    ) -> None:
        self.types = dict(types)
        self.policy = policy
        self._type_names = list(self.types)
        self._state = VehicleArrays()
        self._params = VehicleParams([self.types[n] for n in self._type_names])

    # ------------------------------------------------------------------------ configuration --

    def set_types(self, types: Mapping[str, BatteryType]) -> None:
        """Add pack types or change existing ones by name (a vehicle type registered while the
        gateway runs). Vehicles take a changed type's values at their next set_vehicle_types()."""
        for name, battery_type in types.items():
            if name in self.types:
                self._params.types[self._type_names.index(name)] = battery_type
            else:
                self._type_names.append(name)
                self._params.types.append(battery_type)
            self.types[name] = battery_type

    def set_vehicle_types(self, vehicles: Sequence[int] | np.ndarray, types: Sequence[str]) -> None:
        """Vehicle type by vehicles.id ('ebike', 'scooter', ...). A vehicle of a type not configured
        (or never assigned) gets SoC, charging, low-SoC and 12 V estimates, but no capacity,
        SoH, EFC, range or resistance (they need the nominal pack)."""
        vehicles = np.asarray(vehicles, dtype=np.int64)
        if not len(vehicles):
            return
        pos = {n: i for i, n in enumerate(self._type_names)}
        idx = np.array([pos.get(str(t), -1) for t in types], dtype=np.int64)
        self._grow(int(vehicles.max()) + 1)
        self._params.assign(vehicles, idx)

    def _grow(self, size: int) -> None:
        self._state.grow(size)
        self._params.grow(size)

    # ------------------------------------------------------------------------------- state --

    def export_state(self, vehicles: Iterable[int] | None = None) -> dict[int, dict[str, Any]]:
        """JSON-able state per vehicle (all known vehicles by default) for vehicle_state's
        battery_state column; restore() takes it back after a restart."""
        st = self._state
        return st.export(st.known().tolist() if vehicles is None else vehicles)

    def restore(
        self, states: Mapping[int, Mapping[str, Any]], last_time_ms: Mapping[int, int] | None = None
    ) -> None:
        """Resume from exported states. If a vehicle's state is older than the newest sample
        already stored for it (last_time_ms, e.g. vehicle_state.time: the state was not saved
        with every batch), the samples in between are never seen again: they are treated as a
        gap (open windows dropped, no current step or distance across it)."""
        st = self._state
        st.restore(states)
        self._params.grow(st.size)
        for v, t in (last_time_ms or {}).items():
            v, t = int(v), int(t)
            if v < st.size and t > st.t[v] >= 0:
                st.t[v] = t
                st.a_bad[v] = st.a_gap[v] = True
                st.prev_v[v] = st.prev_i[v] = st.prev_soc[v] = st.prev_odo[v] = np.nan

    # ----------------------------------------------------------------------------- process --

    def update(self, batch: TelemetryBatch) -> BatteryUpdate:
        """Run the estimators over a batch (samples of many vehicles, any order)."""
        n = len(batch)
        if n == 0:
            return BatteryUpdate()
        st, par, p = self._state, self._params, self.policy
        v_all = batch.vehicle.astype(np.int64)
        self._grow(int(v_all.max()) + 1)
        order = np.lexsort((batch.time_ms, v_all))
        vs, ts = v_all[order], batch.time_ms[order]
        # Duplicates within the batch: the first row stands (the store keeps one of them too).
        fresh = ts > st.t[vs]
        fresh[1:] &= (vs[1:] != vs[:-1]) | (ts[1:] != ts[:-1])
        rows = order[fresh]
        if not len(rows):
            return BatteryUpdate(stale=n)
        b = SortedSamples(batch, rows, st, par, p)

        events = update_capacity(st, b, par, p)
        update_energy(st, b, p)
        update_resistance(st, b, par, p)
        events += update_charging(st, b, p)
        events += low_soc_alerts(st, b, par, p)
        update_low_voltage(st, b, p)
        self._carry_last_values(b)

        veh = b.veh
        t_now = st.t[veh]
        est, soh, aux = self._estimate(veh, t_now)
        events += vehicle_alerts(st, veh, t_now, soh, aux, p)

        # History: one row per vehicle and interval bucket, plus one at swaps and sessions.
        marked = np.zeros(st.size, dtype=bool)
        marked[
            [e.vehicle for e in events if e.type in (PACK_SWAPPED, CHARGING_START, CHARGING_END)]
        ] = True
        h_t = st.h_t[veh]
        step = int(p.history_interval_s * 1000)
        due = (h_t < 0) | (t_now // step > h_t // step) | marked[veh]
        st.h_t[veh[due]] = t_now[due]

        events.sort(key=lambda e: (e.time_ms, e.vehicle, e.type))
        return BatteryUpdate(
            events=events, estimates=est, history=est.take(due), used=len(rows), stale=n - len(rows)
        )

    def estimates(self, vehicles: Sequence[int] | np.ndarray | None = None) -> BatteryEstimates:
        """Current estimates of the given vehicles (all known ones by default), at each one's
        newest processed sample."""
        st = self._state
        if vehicles is None:
            veh = st.known()
        else:
            veh = np.asarray(vehicles, dtype=np.int64)
            seen = np.zeros(len(veh), dtype=bool)
            inside = (veh >= 0) & (veh < st.size)
            seen[inside] = st.t[veh[inside]] >= 0
            veh = veh[seen]
        return self._estimate(veh, st.t[veh])[0]

    # ---------------------------------------------------------------------------- internals --

    def _carry_last_values(self, b: SortedSamples) -> None:
        st, e, veh = self._state, b.g.ends, b.veh
        st.t[veh] = b.t[e]
        st.soc[veh] = b.soc_ff[e]
        st.t_soc[veh] = b.g.ffill(b.t, b.soc_known, st.t_soc[veh])[e]
        st.v_last[veh] = b.v_eff[e]
        st.prev_v[veh], st.prev_i[veh] = b.pv[e], b.i[e]
        st.prev_soc[veh], st.prev_odo[veh] = b.soc[e], b.odo[e]
        st.chg[veh] = b.chg_eff[e]
        st.ign[veh] = b.ign_eff[e]
        st.drv[veh] = b.driving[e]
        st.prev_dt[veh] = b.dt[e]

    def _estimate(
        self, veh: np.ndarray, t_now: np.ndarray
    ) -> tuple[BatteryEstimates, np.ndarray, AuxEstimate]:
        st, par, p = self._state, self._params, self.policy
        tidx = par.type_idx[veh]
        nominal_ah, nominal_v = par.nominal_ah[veh], par.nominal_v[veh]
        cap = capacity_estimate(st, veh, nominal_ah, p)
        soh = 100.0 * cap / nominal_ah
        soc = st.soc[veh]
        per_km = energy_per_km(st, veh, p)
        frac = par.by_type(tidx, soc, "energy_fraction")
        left_wh = cap * nominal_v * par.full_energy(tidx) * frac
        with np.errstate(invalid="ignore", divide="ignore"):
            by_energy = left_wh / per_km * 1000.0
            by_soc = frac * km_per_energy(st, veh, p) * 1000.0
        range_m = np.where(np.isfinite(by_energy), by_energy, by_soc)
        aux = aux_estimate(st, veh, t_now, p)
        est = BatteryEstimates(
            vehicle=veh.astype(np.int32),
            time_ms=t_now.astype(np.int64),
            soc_pct=soc,
            range_m=range_m,
            soh_pct=soh,
            capacity_ah=cap,
            resistance_ohm=resistance_estimate(st, veh, p),
            efc=(st.thru[veh] + np.abs(st.idle_q[veh])) / (2.0 * nominal_ah),
            energy_wh_per_km=per_km,
            aux_rest_v=aux.rest_v,
            aux_drain_ma=aux.drain_ma,
            aux_hours_to_threshold=aux.hours_to_threshold,
            charging=st.chg[veh].copy(),
            pack_seq=st.pack_seq[veh].astype(np.int32),
        )
        return est, soh, aux
