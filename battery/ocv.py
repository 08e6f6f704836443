"""Open-circuit voltage of a traction pack against state of charge, and the energy a pack holds.

Curves are per cell and scaled to a pack by its nominal voltage (nominal_v / cell_nominal_v
cells in series), which is all the core knows about a pack's build.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, slots=True)
class OcvCurve:
    """Cell OCV (V) at SoC points (%), piecewise linear; cell_nominal_v is the cell voltage the
    pack's nominal voltage counts cells by (3.6 V for NMC)."""

    soc_pct: tuple[float, ...]
    cell_v: tuple[float, ...]
    cell_nominal_v: float = 3.6
    # Cumulative integral of the cell OCV over SoC (V·%) on a fine grid, for energy left.
    _fine_soc: np.ndarray = field(init=False, repr=False, compare=False)
    _fine_cum: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.soc_pct) != len(self.cell_v) or len(self.soc_pct) < 2:
            raise ValueError("an OCV curve needs as many voltages as SoC points, at least two")
        soc = np.asarray(self.soc_pct, dtype=np.float64)
        if soc[0] != 0.0 or soc[-1] != 100.0 or np.any(np.diff(soc) <= 0):
            raise ValueError("OCV SoC points must rise strictly from 0 to 100 %")
        fine = np.linspace(0.0, 100.0, 1001)
        v = np.interp(fine, self.soc_pct, self.cell_v)
        cum = np.concatenate([[0.0], np.cumsum((v[1:] + v[:-1]) / 2 * np.diff(fine))])
        object.__setattr__(self, "_fine_soc", fine)
        object.__setattr__(self, "_fine_cum", cum)

    def relative(self, soc_pct: np.ndarray) -> np.ndarray:
        """Pack OCV as a multiple of the pack's nominal voltage."""
        return np.interp(soc_pct, self.soc_pct, self.cell_v) / self.cell_nominal_v

    def energy_fraction(self, soc_pct: np.ndarray) -> np.ndarray:
        """Energy held between 0 % and soc_pct, as a fraction of the energy at 100 %."""
        return np.interp(soc_pct, self._fine_soc, self._fine_cum) / self._fine_cum[-1]

    def full_energy_per_ah_v(self) -> float:
        """Wh at 100 % per Ah of capacity and per volt of nominal voltage (≈ 1.03 for NMC)."""
        return float(self._fine_cum[-1] / 100.0 / self.cell_nominal_v)


# A typical NMC lithium-ion cell (datasheet-like shape: steep below 10 %, flat middle, rising to
# 4.18 V at full). E-bike and car packs of the fleet are NMC.
NMC = OcvCurve(
    soc_pct=(0, 5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 100),
    cell_v=(3.00, 3.30, 3.45, 3.52, 3.57, 3.63, 3.68, 3.73, 3.79, 3.86, 3.94, 4.04, 4.18),
)
