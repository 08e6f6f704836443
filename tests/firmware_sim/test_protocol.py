"""The simulator's own reading of the device protocol, checked against the gateway's: its SenML
packs decode to the samples they carry, its device-id rule and limits are the gateway's, and a
fleet refuses device ids the protocol does not allow. No services."""

from __future__ import annotations

import re

import cbor2
import numpy as np
import orjson
import pytest

from firmware_sim import Fleet, FleetOptions
from firmware_sim.coap import CoapFleet, CoapFleetOptions
from firmware_sim.model import CAR, EBIKE, FleetModel
from firmware_sim.payloads import sample_row
from firmware_sim.protocol import (
    MAX_MESSAGE_BYTES,
    MAX_SAMPLES_PER_BATCH,
    DeviceTopics,
    check_device_id,
    coap_path,
)
from firmware_sim.senml import senml_pack
from telemetry import schema, senml
from telemetry.decoder import decode_telemetry

START = 1_764_547_200_000


def model_rows(steps: int = 5) -> list[dict]:
    """Rounded sample rows of e-bikes and cars, some without a fix, as devices report them."""
    m = FleetModel([EBIKE, CAR] * 3, seed=3, start_ms=START, garage_share=1.0)
    rows = []
    for _ in range(steps):
        s = m.step(30.0)
        rows.extend(sample_row(s, i) for i in range(m.n))
    return rows


@pytest.mark.parametrize("cbor", [True, False])
def test_the_devices_senml_packs_decode_to_exactly_the_samples_they_carry(cbor):
    rows = model_rows()
    device = rows[::6]  # one device's samples, oldest first
    payload = senml_pack(device, cbor=cbor, base_name="lock-0001/")
    back = senml.to_samples(cbor2.loads(payload) if cbor else orjson.loads(payload), START)
    assert [r["t"] for r in back] == [r["t"] for r in device]
    for got, want in zip(back, device):
        assert got.keys() == want.keys()
        for k, v in want.items():
            assert got[k] == pytest.approx(v, rel=1e-12), k


def test_a_senml_uplink_passes_the_gateways_decoder_with_nothing_rejected():
    rows = model_rows(2)
    car = rows[1::6]  # one car: 12 V, ignition, immobiliser; in its garage, no fix
    for cbor, content_type in [(True, "application/senml+cbor"), (False, "application/senml+json")]:
        r = decode_telemetry(
            ["car-1"],
            [senml_pack(car, cbor=cbor)],
            [START + 86_400_000],
            {"car-1": 7},
            now_ms=START + 86_400_000,
            content_types=[content_type],
        )
        assert not r.rejected and r.batch.time_ms.tolist() == [s["t"] for s in car]
        assert r.batch.aux_v.tolist() == pytest.approx([s["aux_v"] for s in car])


def test_an_empty_senml_pack_is_refused_by_the_device():
    with pytest.raises(ValueError):
        senml_pack([])
    with pytest.raises(ValueError):
        senml_pack([{"t": START}])


@pytest.mark.parametrize(
    "device_id",
    [
        "a",
        "car-0001",
        "urn:dev:imei:356938035643809",
        "x" * 64,
        "x" * 65,
        "",
        "$gateway",
        "a/b",
        "a+b",
        "a#b",
        "a b",
        "lock-ä",
        "-_.:",
    ],
)
def test_the_device_id_rule_is_the_gateways(device_id):
    gateway_allows = re.fullmatch(schema.DEVICE_ID_PATTERN, device_id) is not None
    if gateway_allows:
        assert check_device_id(device_id) == device_id
    else:
        with pytest.raises(ValueError):
            check_device_id(device_id)


def test_a_trailing_newline_is_not_part_of_an_allowed_device_id():
    with pytest.raises(ValueError):
        check_device_id("car-0001\n")


def test_the_limits_and_topics_are_the_protocols():
    assert MAX_MESSAGE_BYTES == schema.MAX_PAYLOAD_BYTES
    assert MAX_SAMPLES_PER_BATCH == schema.MAX_SAMPLES_PER_MESSAGE
    t = DeviceTopics.of("fg/v1", "car-0002")
    assert (t.telemetry, t.event, t.status, t.cmd, t.result) == (
        "fg/v1/car-0002/telemetry",
        "fg/v1/car-0002/event",
        "fg/v1/car-0002/status",
        "fg/v1/car-0002/cmd",
        "fg/v1/car-0002/cmd/result",
    )
    assert coap_path("fg/v1", "lock-0001", "cmd/result") == (
        "fg",
        "v1",
        "lock-0001",
        "cmd",
        "result",
    )


@pytest.mark.parametrize("pattern", ["dev/{n}", "car {n}", "{type}+{n}", "$sys-{n}"])
def test_a_fleet_refuses_device_ids_the_protocol_does_not_allow(pattern):
    with pytest.raises(ValueError, match="not allowed by the protocol"):
        Fleet(FleetOptions(vehicles=2, device_id_pattern=pattern))
    with pytest.raises(ValueError, match="not allowed by the protocol"):
        CoapFleet(CoapFleetOptions(vehicles=2, device_id_pattern=pattern))


def test_both_fleets_name_their_vehicles_alike():
    opts = dict(vehicles=4, device_id_pattern="{type}-{n:02d}", vehicle_ref_pattern="v{i}")
    mqtt = Fleet(FleetOptions(car_share=0.5, **opts)).registrations()
    coap = CoapFleet(CoapFleetOptions(car_share=0.5, **opts)).registrations()
    assert (
        mqtt
        == coap
        == [
            ("ebike-01", "v0", "ebike"),
            ("car-02", "v1", "car"),
            ("ebike-03", "v2", "ebike"),
            ("car-04", "v3", "car"),
        ]
    )
    assert np.array_equal(Fleet(FleetOptions(car_share=0.5, **opts)).model.kind, [0, 1, 0, 1])
