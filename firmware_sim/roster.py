"""Which vehicles a simulated fleet has and what they are called: the mix of kinds spread over
the numbers, each device's id and each vehicle's reference, as the registry gets them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from firmware_sim.protocol import check_device_id
from firmware_sim.specs import CAR, EBIKE, KIND_OF, VEHICLE_TYPES


def spread(n: int, share: float) -> np.ndarray:
    """Which of n items belong to a share, spread evenly (share 0.5: every second one)."""
    i = np.arange(n)
    return np.floor((i + 1) * share) > np.floor(i * share)


def spread_mix(n: int, mix: Mapping[str, float]) -> np.ndarray:
    """The kinds of n vehicles after a mix of shares by vehicle type (summing to 1), spread
    evenly: each vehicle goes to the type furthest behind its share so far (largest deficit;
    ties to the type named first)."""
    kinds = np.array([KIND_OF[name] for name in mix], dtype=np.int8)
    shares = np.array(list(mix.values()), dtype=np.float64)
    given = np.zeros(len(kinds))
    out = np.empty(n, dtype=np.int8)
    for i in range(n):
        k = int(np.argmax(shares * (i + 1) - given))
        given[k] += 1
        out[i] = kinds[k]
    return out


@dataclass(frozen=True)
class Roster:
    """kinds[i] (EBIKE, CAR, SCOOTER, ...), device_ids[i] and vehicle_refs[i] of vehicle i."""

    kinds: np.ndarray
    device_ids: list[str]
    vehicle_refs: list[str]

    @classmethod
    def build(
        cls,
        vehicles: int,
        car_share: float,
        device_id_pattern: str,
        vehicle_ref_pattern: str,
        mix: Mapping[str, float] | None = None,
    ) -> Roster:
        """Patterns are format strings of n (1-based), i (0-based) and type (ebike, car, ...); a
        pattern that gives an id the protocol does not allow is refused (ValueError). A mix
        (shares by vehicle type, specs.parse_mix) replaces car_share (cars, the rest e-bikes)."""
        if mix:
            kinds = spread_mix(vehicles, mix)
        else:
            kinds = np.where(spread(vehicles, car_share), CAR, EBIKE).astype(np.int8)
        names = [(VEHICLE_TYPES[k], i) for i, k in enumerate(kinds.tolist())]
        return cls(
            kinds,
            [check_device_id(device_id_pattern.format(type=t, n=i + 1, i=i)) for t, i in names],
            [vehicle_ref_pattern.format(type=t, n=i + 1, i=i) for t, i in names],
        )

    def registrations(self) -> list[tuple[str, str, str]]:
        """(device_id, vehicle_ref, vehicle_type) of every vehicle, for the device registry."""
        types = (VEHICLE_TYPES[k] for k in self.kinds.tolist())
        return list(zip(self.device_ids, self.vehicle_refs, types))
