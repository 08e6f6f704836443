"""The sans-IO command core without services: request validation, the state machine, the
interlocks and the per-vehicle scheduler."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta

import cbor2
import orjson
import pytest
from pydantic import ValidationError

from commands import (
    TERMINAL,
    TRANSITIONS,
    Action,
    Command,
    CommandRequest,
    CommandState,
    CommandType,
    DeliveryPolicy,
    DeviceResult,
    IllegalTransition,
    InterlockPolicy,
    Motion,
    VehicleSnapshot,
    judge,
    machine,
    motion,
    plan_vehicle,
)

S = CommandState
T0 = datetime(2026, 11, 22, 9, 14, tzinfo=UTC)
POLICY = InterlockPolicy(fresh_s=60.0, moving_kmh=3.0)
DELIVERY = DeliveryPolicy(
    result_timeout_s=5.0, backoff=2.0, max_interval_s=30.0, max_attempts=4, clock_grace_s=2.0
)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


_seq = itertools.count(1)


def cmd(
    type_: str = "unlock",
    *,
    state: S = S.QUEUED,
    ttl: float = 60.0,
    vehicle: int = 42,
    on_unsafe: str = "wait",
    **kw,
) -> Command:
    fields = dict(
        id=uuid.uuid4(),
        seq=next(_seq),
        vehicle_id=vehicle,
        vehicle_ref="car-42",
        device_id="car-0042",
        type=CommandType(type_),
        params={},
        idempotency_key=uuid.uuid4().hex,
        requested_by="rental",
        request_hash="x",
        on_unsafe=on_unsafe,
        state=state,
        created_at=T0,
        deadline=at(ttl),
        updated_at=T0,
    )
    fields.update(kw)
    return Command(**fields)


def snap(
    *,
    online: bool = True,
    age_s: float | None = 1.0,
    now: datetime = T0,
    speed: float | None = 0.0,
    ignition: bool | None = False,
    locked: bool | None = True,
    immobilised: bool | None = False,
    actuated_age_s: float | None = None,
    vehicle_type: str = "car",
    form_factor: str | None = None,
) -> VehicleSnapshot:
    return VehicleSnapshot(
        vehicle_id=42,
        vehicle_type=vehicle_type,
        form_factor=form_factor,
        online=online,
        state_time=None if age_s is None else now - timedelta(seconds=age_s),
        speed_kmh=speed,
        ignition=ignition,
        locked=locked,
        immobilised=immobilised,
        last_actuation=None if actuated_age_s is None else now - timedelta(seconds=actuated_age_s),
    )


# --- requests ---------------------------------------------------------------------------------


def test_requests_are_validated_per_type_and_name_exactly_one_vehicle():
    ok = CommandRequest(
        vehicle="veh-1",
        type="set_speed_limit",
        params={"kph": 20},
        idempotency_key="k",
        requested_by="geofence",
    )
    assert ok.params == {"kph": 20.0} and ok.on_unsafe == "wait"
    assert CommandRequest(
        device_id="d", type="locate", idempotency_key="k", requested_by="ops"
    ).params == {"beep": True, "flash": True}
    assert CommandRequest(
        vehicle_id=3,
        type="set_speed_limit",
        params={"kph": None},
        idempotency_key="k",
        requested_by="g",
    ).params == {"kph": None}
    bad = [
        dict(vehicle="v", type="set_speed_limit", params={"kph": 400}),
        dict(vehicle="v", type="set_speed_limit", params={}),
        dict(vehicle="v", type="unlock", params={"force": True}),
        dict(vehicle="v", type="set_config", params={}),
        dict(vehicle="v", type="set_config", params={f"k{i}": i for i in range(17)}),
        dict(vehicle="v", type="set_config", params={"Bad-Key": 1}),
        dict(vehicle="v", type="self_destruct"),
        dict(type="unlock"),
        dict(vehicle="v", device_id="d", type="unlock"),
        dict(vehicle="v", type="unlock", ttl_s=10, deadline=T0),
        dict(vehicle="v", type="unlock", deadline=T0.replace(tzinfo=None)),
        dict(vehicle="v", type="unlock", ttl_s=0),
        dict(vehicle="v", type="immobilise", on_unsafe="ignore"),
    ]
    for b in bad:
        with pytest.raises(ValidationError):
            CommandRequest(idempotency_key="k", requested_by="x", **b)
    assert CommandRequest(
        vehicle="v",
        type="set_config",
        params={"report_s": 30, "mode": "eco"},
        idempotency_key="k",
        requested_by="x",
    ).params == {"report_s": 30, "mode": "eco"}


def test_the_fingerprint_covers_what_makes_a_request_different():
    a = CommandRequest(vehicle="v", type="unlock", idempotency_key="k", requested_by="r")
    same = CommandRequest(
        vehicle="v", type="unlock", idempotency_key="k", requested_by="r", ttl_s=5
    )  # a deadline relative to "now" differs on every retry
    other = CommandRequest(vehicle="v", type="lock", idempotency_key="k", requested_by="r")
    assert a.fingerprint(1) == same.fingerprint(1) != other.fingerprint(1)
    assert a.fingerprint(1) != a.fingerprint(2)


def test_the_downlink_is_the_protocol_payload():
    c = cmd("set_speed_limit", params={"kph": 20.0})
    assert c.downlink() == {
        "id": str(c.id),
        "type": "set_speed_limit",
        "params": {"kph": 20.0},
        "deadline": int(at(60).timestamp() * 1000),
    }


def test_device_results_parse_from_json_and_cbor_and_reject_junk():
    cid = uuid.uuid4()
    body = {
        "id": str(cid),
        "status": "failed",
        "t": 1764412801456,
        "reason": "vehicle_moving",
        "extra": 1,
    }
    for payload in (orjson.dumps(body), cbor2.dumps(body)):
        r = DeviceResult.parse(payload)
        assert (r.id, r.status, r.t, r.reason) == (cid, "failed", 1764412801456, "vehicle_moving")
    assert DeviceResult.parse(orjson.dumps({"id": str(cid), "status": "received"})).t is None
    for junk in (
        b"{",
        b"\xff\x00",
        b"[1]",
        orjson.dumps({"id": "nope", "status": "succeeded"}),
        orjson.dumps({"id": str(cid), "status": "done"}),
        orjson.dumps({"id": str(cid), "status": "succeeded", "t": "12"}),
        orjson.dumps({"id": str(cid), "status": "succeeded", "t": True}),
    ):
        with pytest.raises(ValueError):
            DeviceResult.parse(junk)


# --- the state machine -----------------------------------------------------------------------


def test_every_transition_not_in_the_table_is_refused_with_a_clear_error():
    allowed = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
    for a, b in itertools.product(S, S):
        c = cmd(state=a)
        if (a, b) in allowed and not (a.in_flight and b is a):
            new, entry = machine.transition(c, b, at(1), reason="r")
            assert (new.state, entry.from_state, entry.to_state) == (b, a, b)
        elif not (a.in_flight and b is a):
            with pytest.raises(IllegalTransition, match=f"from {a.value} to {b.value}"):
                machine.transition(c, b, at(1))
    assert all(not TRANSITIONS[s] for s in TERMINAL)
    assert {s for s in S if s.terminal} == TERMINAL


def test_transitions_keep_the_timestamps_and_attempts():
    c = cmd()
    c, e = machine.transition(c, S.SENT, at(1))
    assert (c.attempts, c.sent_at, c.last_sent_at, e.detail) == (1, at(1), at(1), {"attempt": 1})
    c, e = machine.resend(c, at(6))
    assert (c.state, c.attempts, c.sent_at, c.last_sent_at) == (S.SENT, 2, at(1), at(6))
    assert (e.from_state, e.to_state, e.reason) == (S.SENT, S.SENT, "retry")
    c, _ = machine.transition(c, S.ACKNOWLEDGED, at(7))
    c, _ = machine.resend(c, at(12))
    assert (c.state, c.attempts, c.acknowledged_at) == (S.ACKNOWLEDGED, 3, at(7))
    c, e = machine.transition(c, S.SUCCEEDED, at(13))
    assert c.finished_at == at(13) and c.state.terminal
    with pytest.raises(IllegalTransition):
        machine.resend(c, at(14))
    with pytest.raises(IllegalTransition):
        machine.resend(cmd(), at(1))


def _result(c: Command, status: str, reason: str | None = None, t: int | None = 1_000):
    return DeviceResult(id=c.id, status=status, reason=reason, t=t)


def test_device_results_move_commands_in_flight():
    c, _ = machine.transition(cmd(), S.SENT, at(1))
    acked, e = machine.apply_result(c, _result(c, "received"), at(1.1))
    assert acked.state is S.ACKNOWLEDGED and acked.acknowledged_at == at(1.1)
    assert machine.apply_result(acked, _result(c, "received"), at(1.2)) is None
    done, e = machine.apply_result(acked, _result(c, "succeeded", t=1_764_000_000_000), at(1.3))
    assert (done.state, done.device_status, done.device_t.year) == (S.SUCCEEDED, "succeeded", 2025)
    refused, e = machine.apply_result(c, _result(c, "failed", "vehicle_moving"), at(2))
    assert (refused.state, refused.reason, refused.device_reason) == (
        S.FAILED,
        "vehicle_moving",
        "vehicle_moving",
    )
    # A repeated answer changes nothing; no t: the arrival time stands in for the device's.
    assert machine.apply_result(done, _result(c, "succeeded", t=1_764_000_000_000), at(5)) is None
    no_t, _ = machine.apply_result(c, _result(c, "succeeded", t=None), at(3))
    assert no_t.device_t == at(3)


def test_a_late_answer_after_the_time_out_is_recorded_and_the_state_stays():
    c, _ = machine.transition(cmd(), S.SENT, at(1))
    c, _ = machine.transition(c, S.TIMED_OUT, at(62), reason="no_result")
    late, entry = machine.apply_result(c, _result(c, "succeeded"), at(70))
    assert late.state is S.TIMED_OUT and late.device_status == "succeeded"
    assert (entry.from_state, entry.to_state, entry.reason) == (
        S.TIMED_OUT,
        S.TIMED_OUT,
        "late_result",
    )
    assert entry.detail["device_status"] == "succeeded"
    assert machine.apply_result(late, _result(c, "succeeded"), at(71)) is None  # once


# --- interlocks ------------------------------------------------------------------------------


def test_motion_needs_a_recent_sample():
    assert motion(snap(speed=0.0), T0, POLICY) is Motion.STILL
    assert motion(snap(speed=2.9), T0, POLICY) is Motion.STILL
    assert motion(snap(speed=3.5), T0, POLICY) is Motion.MOVING
    assert motion(snap(speed=0.0, ignition=True), T0, POLICY) is Motion.MOVING  # at a red light
    assert motion(snap(speed=None, ignition=None), T0, POLICY) is Motion.UNKNOWN
    assert motion(snap(speed=None, ignition=True), T0, POLICY) is Motion.MOVING
    assert motion(snap(age_s=61), T0, POLICY) is Motion.UNKNOWN
    assert motion(snap(age_s=None), T0, POLICY) is Motion.UNKNOWN
    assert motion(None, T0, POLICY) is Motion.UNKNOWN


def test_immobilise_is_never_sent_to_a_moving_or_unknown_vehicle():
    wait, refuse = cmd("immobilise"), cmd("immobilise", on_unsafe="refuse")
    assert judge(wait, snap(speed=30.0, ignition=True), T0, POLICY) == (
        Action.WAIT,
        "vehicle_moving",
    )
    assert judge(refuse, snap(speed=30.0), T0, POLICY) == (Action.REFUSE, "vehicle_moving")
    assert judge(wait, snap(age_s=120), T0, POLICY) == (Action.WAIT, "state_unknown")
    assert judge(refuse, snap(age_s=120), T0, POLICY) == (Action.REFUSE, "state_unknown")
    assert judge(wait, snap(online=False, age_s=300), T0, POLICY) == (Action.WAIT, "state_unknown")
    assert judge(wait, snap(), T0, POLICY) == (Action.SEND, None)
    assert judge(wait, snap(online=False), T0, POLICY) == (Action.OFFLINE, "vehicle_offline")


def test_unlock_of_an_unlocked_vehicle_needs_no_round_trip_only_when_the_state_is_current():
    unlock = cmd("unlock")
    assert judge(unlock, snap(locked=False), T0, POLICY) == (Action.NOOP, "already_unlocked")
    assert judge(unlock, snap(locked=False, age_s=61), T0, POLICY) == (Action.SEND, None)
    # The sample predates the last lock/unlock: it cannot tell what that did.
    assert (
        judge(unlock, snap(locked=False, age_s=2, actuated_age_s=1), T0, POLICY).action
        is Action.SEND
    )
    assert (
        judge(unlock, snap(locked=False, age_s=1, actuated_age_s=1), T0, POLICY).action
        is Action.NOOP
    )
    assert judge(unlock, snap(locked=None), T0, POLICY).action is Action.SEND
    assert judge(cmd("lock"), snap(locked=True), T0, POLICY) == (Action.NOOP, "already_locked")
    assert judge(cmd("mobilise"), snap(), T0, POLICY) == (Action.NOOP, "already_mobile")
    assert judge(cmd("immobilise"), snap(immobilised=True, speed=50.0), T0, POLICY) == (
        Action.NOOP,
        "already_immobilised",
    )
    assert judge(cmd("locate"), snap(), T0, POLICY).action is Action.SEND


def test_an_ebike_is_locked_only_when_not_known_to_be_riding():
    lock = cmd("lock")
    assert judge(
        lock, snap(vehicle_type="ebike", speed=18.0, locked=False, ignition=None), T0, POLICY
    ) == (Action.WAIT, "vehicle_moving")
    assert (
        judge(
            lock, snap(vehicle_type="ebike", speed=18.0, locked=False, age_s=300), T0, POLICY
        ).action
        is Action.SEND
    )  # the lock itself refuses when unsure
    assert (
        judge(lock, snap(vehicle_type="car", speed=50.0, locked=False), T0, POLICY).action
        is Action.SEND
    )


@pytest.mark.parametrize(
    ("vehicle_type", "form_factor", "held"),
    [
        ("scooter", None, True),  # a built-in type: its form factor is known without the row
        ("moped", None, True),
        ("cargo_ebike", None, True),
        ("kick-2", "scooter_seated", True),  # an operator's own type, by its form factor
        ("trike", "other", False),
        ("van", "car", False),
        ("unknown-type", None, False),
    ],
)
def test_every_two_wheeler_is_locked_only_when_not_known_to_be_riding(
    vehicle_type, form_factor, held
):
    riding = snap(vehicle_type=vehicle_type, form_factor=form_factor, speed=18.0, locked=False)
    verdict = judge(cmd("lock"), riding, T0, POLICY)
    assert verdict == ((Action.WAIT, "vehicle_moving") if held else (Action.SEND, None))


# --- the scheduler ---------------------------------------------------------------------------


def states(plan) -> list[tuple[str, str]]:
    return [
        (e.from_state.value if e.from_state else None, e.to_state.value) for _, e in plan.changes
    ]


def test_one_command_in_flight_per_vehicle_in_submission_order():
    unlock, lock = cmd("unlock"), cmd("lock")
    p = plan_vehicle([unlock, lock], snap(), T0, delivery=DELIVERY, interlocks=POLICY)
    assert [c.id for c in p.send] == [unlock.id] and states(p) == [("queued", "sent")]
    assert p.wake_at == at(5)  # the retry
    sent = p.send[0]
    p = plan_vehicle([sent, lock], snap(), at(1), delivery=DELIVERY, interlocks=POLICY)
    assert p.send == [] and p.changes == []
    done, _ = machine.transition(sent, S.SUCCEEDED, at(1))
    p = plan_vehicle(
        [lock],
        snap(locked=False, age_s=0.5, now=at(1)),
        at(1),
        delivery=DELIVERY,
        interlocks=POLICY,
    )
    assert [c.id for c in p.send] == [lock.id]


def test_no_op_commands_finish_at_once_and_the_next_one_goes():
    unlock, locate = cmd("unlock"), cmd("locate")
    p = plan_vehicle([unlock, locate], snap(locked=False), T0, delivery=DELIVERY, interlocks=POLICY)
    assert states(p) == [("queued", "succeeded"), ("queued", "sent")]
    assert p.changes[0][0].reason == "already_unlocked" and p.send[0].id == locate.id


def test_retries_back_off_reuse_the_id_and_stop_before_the_deadline():
    c = plan_vehicle([cmd(ttl=60)], snap(), T0, delivery=DELIVERY, interlocks=POLICY).send[0]
    sends = [0.0]
    t = 0.0
    while True:
        p = plan_vehicle([c], snap(now=at(t)), at(t), delivery=DELIVERY, interlocks=POLICY)
        if p.send:
            assert p.send[0].id == c.id
            c = p.send[0]
            sends.append(t)
        if p.wake_at is None or p.changes and p.changes[-1][0].state.terminal:
            break
        t = (p.wake_at - T0).total_seconds()
    assert sends == [0.0, 5.0, 15.0, 35.0]  # 4 attempts: 5, 10, 20 s apart
    assert c.attempts == 4
    assert p.changes[-1][0].state is S.TIMED_OUT and t == 62.0  # deadline + clock grace


def test_a_command_in_flight_to_a_vehicle_that_went_offline_is_retried_when_it_is_back():
    c = plan_vehicle([cmd()], snap(), T0, delivery=DELIVERY, interlocks=POLICY).send[0]
    p = plan_vehicle([c], snap(online=False), at(6), delivery=DELIVERY, interlocks=POLICY)
    assert p.send == [] and p.blocked
    p = plan_vehicle([c], snap(now=at(9)), at(9), delivery=DELIVERY, interlocks=POLICY)
    assert p.send[0].attempts == 2


def test_commands_for_an_offline_vehicle_wait_and_expire_undelivered_at_their_deadline():
    a, b = cmd("unlock", ttl=30), cmd("lock", ttl=10)
    p = plan_vehicle(
        [a, b], snap(online=False, locked=True), T0, delivery=DELIVERY, interlocks=POLICY
    )
    assert states(p) == [("queued", "queued")] and p.changes[0][0].reason == "vehicle_offline"
    assert p.blocked and p.wake_at == at(10) and not p.send
    a = p.changes[0][0]
    p = plan_vehicle([a], snap(online=False), at(5), delivery=DELIVERY, interlocks=POLICY)
    assert p.changes == []  # said once
    p = plan_vehicle(
        [a, b], snap(online=False, age_s=None), at(10), delivery=DELIVERY, interlocks=POLICY
    )
    assert states(p) == [("queued", "expired")] and p.changes[0][0].reason == "not_delivered"
    p = plan_vehicle([a], snap(online=False), at(30), delivery=DELIVERY, interlocks=POLICY)
    assert states(p) == [("queued", "expired")]
    assert p.changes[0][0].reason == "vehicle_offline" and not p.send


def test_immobilise_waits_for_the_car_to_stop_and_blocks_what_comes_after():
    imm, unlock = cmd("immobilise", ttl=600), cmd("unlock")
    p = plan_vehicle(
        [imm, unlock], snap(speed=40.0, ignition=True), T0, delivery=DELIVERY, interlocks=POLICY
    )
    assert states(p) == [("queued", "waiting_for_safe_state")] and p.blocked and not p.send
    imm = p.changes[0][0]
    p = plan_vehicle(
        [imm, unlock],
        snap(speed=0.0, ignition=True, now=at(20)),
        at(20),
        delivery=DELIVERY,
        interlocks=POLICY,
    )
    assert p.changes == [] and not p.send  # stopped at a light, ignition on: still moving
    p = plan_vehicle(
        [imm, unlock],
        snap(speed=0.0, ignition=False, now=at(40)),
        at(40),
        delivery=DELIVERY,
        interlocks=POLICY,
    )
    assert states(p) == [("waiting_for_safe_state", "sent")] and p.send[0].id == imm.id


def test_refuse_mode_fails_at_once_and_the_queue_moves_on():
    imm, lock = cmd("immobilise", on_unsafe="refuse"), cmd("lock")
    p = plan_vehicle(
        [imm, lock], snap(speed=40.0, locked=False), T0, delivery=DELIVERY, interlocks=POLICY
    )
    assert states(p) == [("queued", "failed"), ("queued", "sent")]
    assert p.changes[0][0].reason == "vehicle_moving"


def test_pull_delivery_never_sends_on_its_own():
    c = cmd()
    p = plan_vehicle([c], snap(online=False), T0, delivery=DELIVERY, interlocks=POLICY, push=False)
    assert p.send == [] and not p.blocked and p.changes == []
    sent, _ = machine.transition(c, S.SENT, T0)
    p = plan_vehicle([sent], snap(), at(30), delivery=DELIVERY, interlocks=POLICY, push=False)
    assert p.send == [] and p.wake_at == at(62)
