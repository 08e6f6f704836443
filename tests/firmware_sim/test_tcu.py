"""The simulated TCUs' firmware without a broker: payloads the gateway's decoder accepts,
offline buffering and batch uploads, presence, misbehaviour accounting and commands."""

from __future__ import annotations

from collections import Counter

import cbor2
import numpy as np
import orjson
import pytest

from firmware_sim.model import CAR, EBIKE, TRIP, FleetModel
from firmware_sim.payloads import (
    CBOR,
    JSON,
    MALFORMED_KINDS,
    encode_batch,
    encode_samples,
    malformed_payload,
    sample_row,
)
from firmware_sim.tcu import (
    BATCH,
    DUPLICATE,
    MALFORMED,
    RECEIVED,
    RESULT,
    SAMPLE,
    STATUS,
    CommandBehaviour,
    FleetFirmware,
    Misbehaviour,
    OfflineBuffer,
)
from telemetry.decoder import decode_telemetry

START = 1_764_547_200_000
NOW = START + 3 * 86_400_000  # the gateway's clock: a few days after the samples


def firmware(n_ebikes=3, n_cars=3, seed=1, encodings=None, **kw) -> FleetFirmware:
    model = FleetModel([EBIKE] * n_ebikes + [CAR] * n_cars, seed=seed, start_ms=START)
    ids = [f"{'ebike' if k == EBIKE else 'car'}-{i + 1:04d}" for i, k in enumerate(model.kind)]
    return FleetFirmware(
        model,
        ids,
        topic_root="fgtest/v1",
        encodings=encodings,
        seed=seed,
        wall_ms=lambda: NOW,
        **kw,
    )


class FakeBroker:
    """Acknowledges (or loses) what the firmware publishes and keeps what it received."""

    def __init__(self, fw: FleetFirmware) -> None:
        self.fw = fw
        self.received: list[tuple[str, bytes, bool]] = []  # (topic, payload, retain)

    def connect(self, tcu) -> None:
        self.deliver([(tcu, out) for out in self.fw.connection_up(tcu)])

    def deliver(self, messages, lose=lambda tcu, out: False) -> None:
        for tcu, out in messages:
            if lose(tcu, out):
                self.fw.lost(tcu, out)
            else:
                self.received.append((out.topic, out.payload, out.retain))
                self.fw.acked(tcu, out)

    def run(self, steps: int, dt_ms: int = 1000, lose=lambda tcu, out: False) -> None:
        """Step the fleet; devices whose offline period ended reconnect at once."""
        for _ in range(steps):
            step = self.fw.step(dt_ms)
            self.deliver(step.messages, lose)
            for tcu in step.disconnect:
                self.fw.connection_down(tcu, on_purpose=True)
            for tcu in step.reconnect:
                self.connect(tcu)

    def telemetry(self):
        return [
            (topic.split("/")[-2], p)
            for topic, p, _ in self.received
            if topic.endswith("/telemetry")
        ]

    def decoded(self):
        msgs = self.telemetry()
        registry = {d: i for i, d in enumerate(self.fw.by_id)}
        ids = list(self.fw.by_id)
        r = decode_telemetry(
            [d for d, _ in msgs], [p for _, p in msgs], [NOW] * len(msgs), registry, now_ms=NOW
        )
        keys = Counter(zip((ids[v] for v in r.batch.vehicle.tolist()), r.batch.time_ms.tolist()))
        return keys, r


def online(fw: FleetFirmware) -> FakeBroker:
    broker = FakeBroker(fw)
    for tcu in fw.tcus:
        broker.connect(tcu)
    return broker


# -- payloads ----------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", [JSON, CBOR])
def test_every_sample_passes_the_gateways_decoder_with_the_fields_of_its_kind(encoding):
    model = FleetModel(
        [EBIKE, CAR] * 5, seed=2, start_ms=START, garage_share=1.0, no_fix_share=0.05
    )
    enc = np.full(model.n, encoding)
    payloads, devices = [], []
    for _ in range(300):
        s = model.step(1.0)
        payloads += encode_samples(s, enc)
        devices += [f"v{i}" for i in range(model.n)]
    r = decode_telemetry(
        devices, payloads, [NOW] * len(payloads), {f"v{i}": i for i in range(model.n)}, now_ms=NOW
    )
    assert r.rejected == {} and len(r.batch) == len(payloads)
    ebike = r.batch.vehicle % 2 == 0
    assert np.isnan(r.batch.aux_v[ebike]).all() and not np.isnan(r.batch.aux_v[~ebike]).any()
    assert (r.batch.ignition[ebike] == -1).all() and (r.batch.ignition[~ebike] >= 0).all()
    assert np.isnan(r.batch.lat).any()  # garages and drop-outs: samples without a fix
    one = (orjson.loads if encoding == JSON else cbor2.loads)(payloads[1])
    assert set(one) >= {
        "t",
        "speed_kmh",
        "heading_deg",
        "soc_pct",
        "pack_v",
        "pack_a",
        "aux_v",
        "odometer_m",
        "locked",
        "ignition",
        "immobilised",
        "charging",
    }


@pytest.mark.parametrize("kind", sorted(MALFORMED_KINDS))
def test_each_malformed_kind_is_rejected_for_its_documented_reason(kind):
    model = FleetModel([EBIKE, CAR], seed=3, start_ms=START)
    s = model.step(1.0)
    rng = np.random.default_rng(0)
    for enc in (JSON, CBOR):
        for i in range(2):
            payload = malformed_payload(kind, sample_row(s, i), enc, NOW, rng)
            r = decode_telemetry(["v"], [payload], [NOW], {"v": 1}, now_ms=NOW)
            assert r.rejected == {MALFORMED_KINDS[kind]: 1} and len(r.batch) == 0


# -- offline buffer ----------------------------------------------------------------------------


def test_the_buffer_uploads_batches_of_at_most_1000_oldest_first_and_forgets_only_acked():
    buf = OfflineBuffer()
    for t in range(2500, 0, -1):  # arrival order does not matter
        buf.add(t, b"{}")
    batches = buf.take()
    assert [len(ts) for ts, _ in batches] == [1000, 1000, 500]
    flat = [t for ts, _ in batches for t in ts]
    assert flat == sorted(flat) == list(range(1, 2501))
    assert len(buf) == 2500 and buf.waiting == 0 and buf.take() == []
    buf.acked(batches[0][0])
    buf.release(batches[1][0])  # its PUBACK never came
    assert len(buf) == 1500
    again = buf.take()
    assert [ts for ts, _ in again] == [batches[1][0]]
    buf.acked(again[0][0])
    buf.acked(batches[2][0])
    assert len(buf) == 0


def test_batches_also_keep_under_the_protocols_message_size():
    buf = OfflineBuffer()
    for t in range(1000):
        buf.add(t, b"x" * 399)
    batches = buf.take()
    assert len(batches) == 2  # 1,000 x 400 B would exceed 256 KiB
    assert all(len(encode_batch(f, JSON)) <= 256 * 1024 for _, f in batches)
    assert [t for ts, _ in batches for t in ts] == list(range(1000))


def test_a_full_buffer_drops_its_oldest_samples_not_in_flight():
    buf = OfflineBuffer(max_samples=10)
    for t in range(10):
        buf.add(t, b"x")
    batches = buf.take(max_per_batch=3)
    buf.release([t for ts, _ in batches[1:] for t in ts])  # only 0, 1, 2 stay in flight
    assert buf.add(10, b"x") == 1
    assert buf.times() == [0, 1, 2, 4, 5, 6, 7, 8, 9, 10] and buf.dropped == 1


# -- devices: presence, buffering, re-sending --------------------------------------------------


def test_on_connect_a_device_publishes_retained_presence_with_its_firmware():
    fw = firmware(1, 1)
    broker = online(fw)
    status = [(t, orjson.loads(p), r) for t, p, r in broker.received if t.endswith("/status")]
    assert [(t, body["online"], body["fw"], r) for t, body, r in status] == [
        ("fgtest/v1/ebike-0001/status", True, "fleetgate-sim/1.0", True),
        ("fgtest/v1/car-0002/status", True, "fleetgate-sim/1.0", True),
    ]
    assert orjson.loads(fw.tcus[0].will_payload) == {"online": False}
    bye = fw.goodbye(fw.tcus[0])
    assert bye.retain and orjson.loads(bye.payload)["online"] is False


def test_an_offline_device_buffers_and_uploads_everything_after_reconnecting():
    fw = firmware(2, 1)
    broker = online(fw)
    broker.run(10)
    tcu = fw.go_offline("ebike-0001", 2_500)
    broker.run(2_600)  # offline for 2,500 s at 1 Hz, back on for the last 100
    ups = [(topic, p) for topic, p, _ in broker.received if topic == tcu.topic_telemetry]
    batches = [orjson.loads(p) for _, p in ups if p.startswith(b"[")]
    assert [len(b) for b in batches] == [1000, 1000, 500]
    ts = [s["t"] for b in batches for s in b]
    assert ts == sorted(ts) and len(set(ts)) == 2500
    assert len(tcu.buffer) == 0
    keys, r = broker.decoded()
    assert set(keys) == fw.stats.acked_keys() and max(keys.values()) == 1 and r.rejected == {}
    assert fw.stats.samples_acked == fw.stats.samples_generated == 3 * 2610
    assert fw.stats.samples_buffered == 2500 and fw.stats.batches_published == 3


def test_samples_whose_puback_never_came_go_out_again():
    fw = firmware(2, 2)
    broker = online(fw)
    lost_once: set = set()

    def lose_some(tcu, out):
        # Every 7th single-sample message and the first upload of each batch are lost.
        key = (tcu.index, out.kind, str(out.ref))
        if out.kind == SAMPLE and out.ref % 7000 == 0 or out.kind == BATCH and key not in lost_once:
            lost_once.add(key)
            return True
        return False

    broker.run(100, lose=lose_some)
    assert fw.stats.samples_resent > 0
    for tcu in fw.tcus:  # the transport reconnects; the device uploads what is unacknowledged
        fw.connection_down(tcu, on_purpose=False)
        broker.connect(tcu)
        while tcu.buffer.waiting:  # the first upload of a batch was lost too: once more
            fw.connection_down(tcu, on_purpose=False)
            broker.connect(tcu)
    assert all(len(t.buffer) == 0 for t in fw.tcus)
    keys, _ = broker.decoded()
    assert set(keys) == fw.stats.acked_keys() and len(keys) == fw.stats.samples_generated == 400
    assert fw.stats.connection_losses >= 4


# -- misbehaviour ------------------------------------------------------------------------------


def test_misbehaviour_is_accounted_so_a_test_knows_exactly_what_must_land():
    mb = Misbehaviour(
        duplicate_share=0.03,
        malformed_share=0.03,
        out_of_order_share=1.0,
        disconnects_per_h=40.0,
        offline_s=(30.0, 200.0),
    )
    fw = firmware(5, 5, encodings=[JSON, CBOR] * 5, misbehaviour=mb)
    broker = online(fw)

    # The fake broker loses what a device publishes in the step it drops its connection.
    def lose_on_disconnect(tcu, out):
        return not tcu.online and tcu.offline_until_ms is not None

    broker.run(1800, lose=lose_on_disconnect)
    for tcu in fw.end_offline_periods():
        fw.connection_down(tcu, on_purpose=True)
        broker.connect(tcu)
    st = fw.stats
    assert st.disconnects > 5 and st.batches_out_of_order > 0
    assert st.duplicates_sent > 100 and sum(st.malformed_sent.values()) > 100
    assert set(st.malformed_sent) == set(MALFORMED_KINDS)
    keys, r = broker.decoded()
    # Every valid sample landed; the decoder saw each once, plus the duplicates on purpose.
    assert set(keys) == st.acked_keys() and st.samples_acked == st.samples_generated == 18_000
    assert sum(keys.values()) - len(keys) == st.duplicates_acked
    assert r.rejected == dict(st.expected_rejections())
    # Some uploads really were out of order.
    batches = [
        orjson.loads(p) if p[:1] == b"[" else cbor2.loads(p)
        for _, p in broker.telemetry()
        if p[:1] == b"[" or 0x80 <= p[0] <= 0x9F
    ]
    orders = [[s["t"] for s in b] for b in batches if len(b) > 2]
    assert any(o != sorted(o) for o in orders)


def test_misbehaviour_leaves_the_models_samples_alone_and_is_itself_deterministic():
    def run(mb):
        fw = firmware(3, 3, seed=5, misbehaviour=mb)
        broker = online(fw)
        broker.run(400)
        return [p for _, p, _ in broker.received]

    mb = Misbehaviour(duplicate_share=0.05, malformed_share=0.05)
    assert run(mb) == run(mb)
    clean = [p for p in run(Misbehaviour()) if p.startswith(b'{"t"')]
    messy = [p for p in run(mb) if p.startswith(b'{"t"')]
    assert set(clean) <= set(messy)


# -- commands ----------------------------------------------------------------------------------


def command(cid, ctype, **kw):
    return orjson.dumps({"id": cid, "type": ctype, "params": kw.pop("params", {}), **kw})


def answer(fw, tcu, payload):
    d = fw.command_received(tcu, payload)
    if d is None:
        return None, []
    out = fw.execute(tcu, d)
    return d, out


def result_of(out):
    results = [orjson.loads(o.payload) for o in out if o.kind == RESULT]
    assert len(results) == 1
    return results[0]


def test_a_retried_command_is_answered_again_but_executed_once():
    fw = firmware(1, 1)
    online(fw)
    car = fw.tcus[1]
    d, out = answer(fw, car, command("c-1", "unlock"))
    assert 0.05 <= d.delay_s <= 0.3
    first = result_of(out)
    assert first["status"] == "succeeded" and first["reason"] is None and first["id"] == "c-1"
    assert not fw.model.locked[1]
    d2, out2 = answer(fw, car, command("c-1", "unlock"))
    assert out2[0].payload == out[0].payload
    assert fw.stats.command_executions[("car-0002", "c-1")] == 1


def test_a_retry_while_the_first_is_still_being_executed_gets_no_second_execution():
    fw = firmware(0, 1)
    online(fw)
    tcu = fw.tcus[0]
    first = fw.command_received(tcu, command("c-2", "lock"))
    assert fw.command_received(tcu, command("c-2", "lock")) is None
    fw.execute(tcu, first)
    assert fw.stats.command_executions[("car-0001", "c-2")] == 1


def test_the_device_refuses_to_immobilise_a_moving_car_and_does_it_standing():
    fw = firmware(0, 4)
    online(fw)
    m = fw.model
    m.phase_end_ms[:] = m.t_ms
    m.soc[:] = 80.0
    while not (m.speed > 3.0).any():
        fw.step(1000)
    moving = int(np.argmax(m.speed))
    parked = int(np.flatnonzero(m.phase != TRIP)[0]) if (m.phase != TRIP).any() else None
    _, out = answer(fw, fw.tcus[moving], command("c-3", "immobilise"))
    assert result_of(out) == {
        "id": "c-3",
        "status": "failed",
        "t": m.t_ms,
        "reason": "vehicle_moving",
    }
    assert not m.immobilised[moving]
    if parked is not None:
        _, out = answer(fw, fw.tcus[parked], command("c-4", "immobilise"))
        assert result_of(out)["status"] == "succeeded" and m.immobilised[parked]


def test_expired_refused_dropped_and_unknown_commands():
    fw = firmware(1, 1)
    online(fw)
    bike, car = fw.tcus
    _, out = answer(fw, car, command("c-5", "lock", deadline=NOW - 1))
    assert result_of(out)["reason"] == "expired"
    assert fw.stats.command_executions[("car-0002", "c-5")] == 0
    _, out = answer(fw, bike, command("c-6", "immobilise"))
    assert result_of(out)["reason"] == "not_supported"
    _, out = answer(fw, bike, command("c-7", "self_destruct"))
    assert result_of(out)["reason"] == "unsupported_command"
    _, out = answer(fw, bike, command("c-8", "set_speed_limit", params={"kph": 18}))
    assert result_of(out)["status"] == "succeeded" and fw.model.speed_limit[0] == pytest.approx(5.0)
    car.command_behaviour = CommandBehaviour(refuse_share=1.0)
    _, out = answer(fw, car, command("c-9", "unlock"))
    assert result_of(out)["reason"] == "refused" and fw.model.locked[1]
    car.command_behaviour = CommandBehaviour(drop_share=1.0)
    assert answer(fw, car, command("c-10", "unlock")) == (None, [])
    assert fw.stats.commands_dropped == 1
    assert answer(fw, car, b"not json") == (None, [])


def test_locate_answers_with_a_fresh_valid_sample_of_its_own():
    fw = firmware(1, 1, encodings=[CBOR, JSON])
    broker = online(fw)
    broker.run(3)
    for tcu in fw.tcus:
        _, out = answer(fw, tcu, command(f"loc-{tcu.index}", "locate"))
        assert [o.kind for o in out] == [RESULT, SAMPLE]
        assert out[1].ref == fw.model.t_ms + 1
        broker.deliver([(tcu, o) for o in out])
    broker.run(2)
    keys, r = broker.decoded()
    assert r.rejected == {} and set(keys) == fw.stats.acked_keys()
    assert fw.stats.samples_generated == 2 * 5 + 2 == len(keys)


def test_a_device_acknowledges_on_receipt_when_asked_to():
    fw = firmware(0, 1)
    online(fw)
    car = fw.tcus[0]
    assert fw.command_received(car, command("c-11", "unlock")).ack is None
    car.command_behaviour = CommandBehaviour(acknowledge=True)
    d = fw.command_received(car, command("c-12", "lock"))
    assert orjson.loads(d.ack) == {"id": "c-12", "status": "received", "t": fw.model.t_ms}
    assert fw.stats.command_acks_sent == 1


def test_a_state_change_is_reported_at_the_execution_time_the_result_carries():
    fw = firmware(0, 1)
    broker = online(fw)
    broker.run(1)
    car = fw.tcus[0]
    _, out = answer(fw, car, command("c-13", "unlock"))
    assert [o.kind for o in out] == [RESULT, SAMPLE]
    t_exec = result_of(out)["t"]
    assert t_exec == fw.model.t_ms + 1 == out[1].ref
    assert orjson.loads(out[1].payload)["locked"] is False
    # A second execution within the same step gets a later time; its report is left to the
    # next regular sample (only t + 1 is sure to be free), so no stale sample looks newer.
    _, out = answer(fw, car, command("c-14", "lock"))
    assert [o.kind for o in out] == [RESULT] and result_of(out)["t"] == t_exec + 1
    car.command_behaviour = CommandBehaviour(report_state=False)
    broker.run(1)
    _, out = answer(fw, car, command("c-15", "unlock"))
    assert [o.kind for o in out] == [RESULT]


def test_a_command_due_after_its_deadline_is_not_executed():
    wall = [NOW]
    model = FleetModel([CAR], seed=1, start_ms=START)
    fw = FleetFirmware(model, ["car-0001"], wall_ms=lambda: wall[0])
    online(fw)
    car = fw.tcus[0]
    d = fw.command_received(car, command("c-16", "unlock", deadline=NOW + 100))
    assert d.command is not None
    wall[0] = NOW + 101  # the device's delay ran past the deadline
    out = fw.execute(car, d)
    assert result_of(out)["reason"] == "expired" and model.locked[0]
    assert fw.stats.command_executions[("car-0001", "c-16")] == 0


def test_a_late_answer_is_held_and_retries_get_nothing_until_it_goes_out():
    fw = firmware(0, 1)
    online(fw)
    car = fw.tcus[0]
    car.command_behaviour = CommandBehaviour(late_share=1.0, late_delay_ms=(5000.0, 5000.0))
    d = fw.command_received(car, command("c-17", "unlock"))
    assert d.answer_after_s == 5.0 and d.delay_s < 1.0
    fw.execute(car, d)
    assert not fw.model.locked[0]  # executed at once ...
    assert fw.command_received(car, command("c-17", "unlock")) is None  # ... answered later
    fw.answer_held(car, "c-17")
    again = fw.command_received(car, command("c-17", "unlock"))
    assert orjson.loads(again.result)["status"] == "succeeded"
    assert fw.stats.command_executions[("car-0001", "c-17")] == 1


def test_message_kinds_cover_what_a_device_sends():
    assert {SAMPLE, BATCH, DUPLICATE, MALFORMED, STATUS, RESULT, RECEIVED} == set(range(7))


# -- fleet options (no broker needed until start) ----------------------------------------------


def test_a_fleet_spreads_its_mix_names_devices_and_dates_its_clock_for_the_gateway():
    from firmware_sim.fleet import Fleet, FleetOptions, start_time_ms

    opts = FleetOptions(
        vehicles=6,
        car_share=0.5,
        cbor_share=1 / 3,
        rate_hz=400.0,
        fast=True,
        samples_per_vehicle=1000,
    )
    fleet = Fleet(opts)
    assert fleet.registrations() == [
        ("ebike-0001", "veh-0001", "ebike"),
        ("car-0002", "veh-0002", "car"),
        ("ebike-0003", "veh-0003", "ebike"),
        ("car-0004", "veh-0004", "car"),
        ("ebike-0005", "veh-0005", "ebike"),
        ("car-0006", "veh-0006", "car"),
    ]
    assert [t.encoding for t in fleet.firmware.tcus] == [JSON, JSON, CBOR, JSON, JSON, CBOR]
    # 400 Hz: 2.5 ms on average in whole milliseconds, never closer than 2 ms.
    times = [opts.step_time_ms(0, k) for k in range(1000)]
    assert times[-1] == 2500 and min(b - a for a, b in zip([0] + times, times)) >= 2
    # A bounded fast run is back-dated so that it ends about now: no sample in the future.
    assert start_time_ms(opts, now_ms=NOW) == NOW - 2500
    assert start_time_ms(FleetOptions(), now_ms=NOW) == NOW
    assert FleetOptions(rate_hz=2.0, duration_s=60).total_steps == 120
    with pytest.raises(ValueError):
        FleetOptions(rate_hz=1000.0)


def test_set_config_mqtt_url_keeps_everything_from_its_execution_for_the_new_broker():
    """docs/protocol.md, Re-pointing a device: samples before the result's t went to the old
    broker, every one from t on waits for the new connection and is uploaded there."""
    fw = firmware(1, 1)
    old = online(fw)
    old.run(3)
    bike = fw.tcus[0]
    _, out = answer(fw, bike, command("c-20", "set_config", params={"mqtt_url": "ftp://x"}))
    assert result_of(out)["reason"] == "invalid_params" and bike.repoint_to is None
    _, out = answer(fw, bike, command("c-21", "set_config", params={"mode": [1]}))
    assert result_of(out)["reason"] == "invalid_params"
    _, out = answer(fw, bike, command("c-22", "set_config", params={"mode": "eco"}))
    assert result_of(out)["status"] == "succeeded" and bike.repoint_to is None
    old.deliver([(bike, o) for o in out])
    before = {t for d, t in fw.stats.acked_keys() if d == bike.device_id}

    url = "mqtt://fleetgate.example:1884"
    _, out = answer(fw, bike, command("c-23", "set_config", params={"mqtt_url": url}))
    result = result_of(out)
    assert result["status"] == "succeeded" and bike.repoint_to == url
    assert bike.config == {"mode": "eco", "mqtt_url": url}
    old.deliver([(bike, o) for o in out])
    old.run(2)  # the transport is still leaving: the samples stay with the device
    assert {t for d, t in fw.stats.acked_keys() if d == bike.device_id} == before
    assert all(t >= result["t"] for t in bike.buffer.times()) and len(bike.buffer) == 2
    fw.connection_down(bike, on_purpose=True)
    bike.broker = url
    new = FakeBroker(fw)
    new.connect(bike)
    assert not bike.buffer.times() and len(new.telemetry()) == 1  # one batch, oldest first
    moved = fw.stats.acked_keys_by_broker()[url]
    assert len(moved) == 2 and all(d == bike.device_id and t >= result["t"] for d, t in moved)
