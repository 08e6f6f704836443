"""Parallel-run parity (sans-IO): what fleetgate observed of a shadow batch beside what the legacy
platform observed of the same vehicles, compared per vehicle and in aggregate, each metric green,
yellow or red against configurable thresholds. Vectorised over the whole sample; no IO."""

from parity.compare import (
    COLOURS,
    METRICS,
    Metric,
    ParityReport,
    VehicleParity,
    compare,
    evidence_detail,
    summary,
)
from parity.observations import Observations, Rides, rides_from_observations
from parity.run import start_shadow_batch, validate_shadow_batch
from parity.sample import SampleError, pick_sample
from parity.thresholds import DEFAULT_THRESHOLDS, GO_LIVE_MIN_PERCENT, Band, Thresholds

__all__ = [
    "COLOURS",
    "METRICS",
    "DEFAULT_THRESHOLDS",
    "GO_LIVE_MIN_PERCENT",
    "Band",
    "Metric",
    "Observations",
    "ParityReport",
    "Rides",
    "SampleError",
    "Thresholds",
    "VehicleParity",
    "compare",
    "evidence_detail",
    "start_shadow_batch",
    "summary",
    "validate_shadow_batch",
    "pick_sample",
    "rides_from_observations",
]
