"""The simulated fleet speaking a legacy dialect: the same samples as the native fleet of the same
seed, on the dialect's topics, read back by the gateway's dialect decoder (sans-IO: the firmware
with an in-memory broker, as tests/firmware_sim/test_tcu.py has it)."""

from __future__ import annotations

import numpy as np
import pytest

from firmware_sim.model import CAR, EBIKE, FleetModel
from firmware_sim.tcu import FleetFirmware
from telemetry.decoder import decode_telemetry
from telemetry.dialect import load_dialect
from tests.dialect_traffic import encoder, mapped_fields

START = 1_764_410_000_000
NOW = START + 3_600_000


def fleet(dialect_name: str | None) -> FleetFirmware:
    model = FleetModel([EBIKE, CAR] * 3, seed=5, start_ms=START)
    ids = [f"legacy-{i:03d}" for i in range(model.n)]
    return FleetFirmware(
        model,
        ids,
        topic_root="fg/v1",
        seed=5,
        wall_ms=lambda: NOW,
        dialect=encoder(dialect_name) if dialect_name else None,
    )


def run(fw: FleetFirmware) -> list[tuple[str, bytes]]:
    """Every telemetry message the fleet publishes in 120 steps, two vehicles offline for a while
    (their samples come as batches)."""
    sent: list[tuple[str, bytes]] = []

    def deliver(messages) -> None:
        for tcu, out in messages:
            sent.append((out.topic, out.payload))
            fw.acked(tcu, out)

    for tcu in fw.tcus:
        deliver([(tcu, out) for out in fw.connection_up(tcu)])
    for k in range(120):
        if k == 10:
            fw.go_offline("legacy-001", 30)
            fw.go_offline("legacy-004", 30)
        deliver(fw.step(1000).messages)
        if k == 40:
            for device_id in ("legacy-001", "legacy-004"):
                tcu = fw.go_online(device_id)
                deliver([(tcu, out) for out in fw.connection_up(tcu)])
    return sent


def decode(fw: FleetFirmware, sent, dialect=None):
    registry = {d: i for i, d in enumerate(fw.by_id)}
    if dialect is None:
        msgs = [(t.split("/")[-2], p) for t, p in sent if t.endswith("/telemetry")]
    else:
        msgs = [(dialect.device_of(t), p) for t, p in sent if dialect.device_of(t) is not None]
    r = decode_telemetry(
        [d for d, _ in msgs],
        [p for _, p in msgs],
        [NOW] * len(msgs),
        registry,
        now_ms=NOW,
        dialects=[dialect] * len(msgs) if dialect else None,
    )
    order = np.lexsort((r.batch.time_ms, r.batch.vehicle))
    return r, r.batch.take(order), len(msgs)


@pytest.mark.parametrize("name", ["fleetgate", "traccar-osmand", "flat-json"])
def test_the_fleet_in_a_dialect_sends_what_the_native_fleet_sends(name):
    native_fw, legacy_fw = fleet(None), fleet(name)
    native_sent, legacy_sent = run(native_fw), run(legacy_fw)
    dialect = load_dialect(name)
    _, want, native_messages = decode(native_fw, native_sent)
    got_result, got, legacy_messages = decode(legacy_fw, legacy_sent, dialect)
    assert got_result.rejected == {}
    assert legacy_messages == native_messages  # batches included (the offline vehicles')
    assert legacy_messages < len(want)
    assert len(got) == len(want) == 6 * 120
    columns = {"time_ms", "vehicle"} | (mapped_fields(name) - {"lat", "lon"})
    for column in sorted(columns):
        g, w = got.columns()[column], want.columns()[column]
        if column == "odometer_m" and name == "flat-json":  # km and back: the last bit may move
            np.testing.assert_allclose(g, w, rtol=1e-12)
        else:
            np.testing.assert_array_equal(g, w, err_msg=column)
    np.testing.assert_array_equal(got.lat, want.lat)
    np.testing.assert_array_equal(got.lon, want.lon)
