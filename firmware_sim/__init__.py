"""Firmware simulator: e-bike, cargo e-bike, scooter, moped and car TCUs that speak
docs/protocol.md, for tests, demos and benchmarks; a device of its own, which knows nothing of
the backend.

model (the vehicles' physics with ground truth) and tcu (device firmware) are sans-IO; fleet
connects them to a broker, one paho-mqtt connection per device (mqtt_connection); coap runs
sleeping NB-IoT locks. `run_fleet` is what `fleetgate sim` runs.
"""

from firmware_sim.accounting import FleetStats
from firmware_sim.fleet import Fleet, FleetOptions, run_fleet, start_time_ms
from firmware_sim.model import CommandRefused, FleetModel
from firmware_sim.payloads import CBOR, JSON, MALFORMED_KINDS
from firmware_sim.sensors import Samples
from firmware_sim.specs import (
    CAR,
    CAR_SPEC,
    CARGO_EBIKE,
    CARGO_EBIKE_SPEC,
    EBIKE,
    EBIKE_SPEC,
    MOPED,
    MOPED_SPEC,
    SCOOTER,
    SCOOTER_SPEC,
    VEHICLE_TYPES,
    Area,
    AuxSpec,
    VehicleSpec,
    parse_mix,
)
from firmware_sim.tcu import CommandBehaviour, FleetFirmware, Misbehaviour, OfflineBuffer, Tcu
from firmware_sim.traction import PackSwap

__all__ = [
    "CAR",
    "CAR_SPEC",
    "CARGO_EBIKE",
    "CARGO_EBIKE_SPEC",
    "CBOR",
    "EBIKE",
    "EBIKE_SPEC",
    "MOPED",
    "MOPED_SPEC",
    "SCOOTER",
    "SCOOTER_SPEC",
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
    "parse_mix",
    "run_fleet",
    "start_time_ms",
]
