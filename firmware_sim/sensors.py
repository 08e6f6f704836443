"""What each TCU measures of its vehicle, with the noise of real sensors: a GPS fix metres off
the true position (none in a garage, and now and then none at all), speed and heading, the
BMS's state of charge, voltage and current, the 12 V voltage, the lock and ignition states.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from firmware_sim.specs import CAR, M_PER_DEG_LAT

if TYPE_CHECKING:
    from firmware_sim.model import FleetModel


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


@dataclass(frozen=True)
class Sensors:
    """The noise of every vehicle's sensors: GPS metres (one sigma), the share of samples that
    get no fix anyway, and the BMS's and the 12 V measurement noise (one sigma, per vehicle)."""

    gps_noise_m: float
    no_fix_share: float
    pack_v_noise: np.ndarray
    pack_a_noise: np.ndarray
    aux_v_noise: float

    def read(self, model: FleetModel, noise: np.ndarray, no_fix_draw: np.ndarray) -> Samples:
        """Every vehicle's sample now; noise is a (9, n) standard normal draw of the step."""
        motion, traction = model.motion, model.traction
        lat, lon = motion.latlon()
        lat = lat + noise[2] * (self.gps_noise_m / M_PER_DEG_LAT)
        lon = lon + noise[3] * (self.gps_noise_m / motion.m_per_deg_lon)
        no_fix = (model.in_garage & ~model.on_trip()) | (no_fix_draw < self.no_fix_share)
        lat[no_fix] = np.nan
        lon[no_fix] = np.nan
        speed_mps, heading = motion.speed, motion.heading
        moving = speed_mps > 0.0
        speed = np.where(moving, np.maximum(speed_mps * 3.6 * (1.0 + 0.01 * noise[4]), 0.0), 0.0)
        heading = np.where(moving, (heading + 1.0 * noise[5]) % 360.0, heading)
        is_car = model.kind == CAR
        aux_v = np.where(is_car, model.aux_voltage() + self.aux_v_noise * noise[6], np.nan)
        return Samples(
            t_ms=model.t_ms,
            kind=model.kind,
            lat=lat,
            lon=lon,
            speed_kmh=speed,
            heading_deg=heading,
            soc_pct=traction.soc.copy(),
            pack_v=traction.pack_v + self.pack_v_noise * noise[7],
            pack_a=traction.pack_a + self.pack_a_noise * noise[8],
            aux_v=aux_v,
            odometer_m=motion.odometer.copy(),
            locked=model.locked.copy(),
            ignition=model.ignition.copy(),
            immobilised=model.immobilised.copy(),
            charging=model.charging(),
        )
