"""Firmware simulator: e-bike and car TCUs that speak docs/protocol.md, for tests, demos and
benchmarks.

model (vectorised vehicles and batteries with ground truth) and tcu (device firmware) are sans-IO;
fleet connects them to a broker with gateway.mqtt. `run_fleet` is what `fleetgate sim` runs.
"""

from firmware_sim.accounting import FleetStats
from firmware_sim.fleet import Fleet, FleetOptions, run_fleet, start_time_ms
from firmware_sim.model import (
    CAR,
    CAR_SPEC,
    EBIKE,
    EBIKE_SPEC,
    VEHICLE_TYPES,
    Area,
    AuxSpec,
    CommandRefused,
    FleetModel,
    PackSwap,
    Samples,
    VehicleSpec,
)
from firmware_sim.payloads import CBOR, JSON, MALFORMED_KINDS
from firmware_sim.tcu import CommandBehaviour, FleetFirmware, Misbehaviour, OfflineBuffer, Tcu

__all__ = [
    "CAR",
    "CAR_SPEC",
    "CBOR",
    "EBIKE",
    "EBIKE_SPEC",
    "JSON",
    "MALFORMED_KINDS",
    "VEHICLE_TYPES",
    "Area",
    "AuxSpec",
    "CommandBehaviour",
    "CommandRefused",
    "Fleet",
    "FleetFirmware",
    "FleetModel",
    "FleetOptions",
    "FleetStats",
    "Misbehaviour",
    "OfflineBuffer",
    "PackSwap",
    "Samples",
    "Tcu",
    "VehicleSpec",
    "run_fleet",
    "start_time_ms",
]
