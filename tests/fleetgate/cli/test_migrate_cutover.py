"""`fleetgate migrate cutover|rollback|status --cutover` against two real Mosquitto processes (the
legacy broker the devices start on, fleetgate's with the bridge from `migrate bridge-config`),
a gateway with its command service, PostgreSQL, and 50 simulated vehicles speaking Traccar's
OsmAnd dialect: the cut-over half of issue 19's integration test."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid

import orjson
import pytest

from commands import CommandRequest, CommandState, NotHeld
from firmware_sim.fleet import Fleet, FleetOptions
from firmware_sim.tcu import CommandBehaviour
from fleetgate.embedded import Mosquitto
from gateway.mqtt import ConnectOptions, MqttClient
from telemetry.dialect import load_dialects
from telemetry.store import CommandAuthority, TelemetryStore
from tests.cli_runner import run_fleetgate
from tests.dialect_traffic import shipped_path
from tests.harness import eventually, gateway_config, register, running_gateway
from tests.legacy_platform import bridged_brokers
from tests.stored_rows import fetch

pytestmark = pytest.mark.integration

FAST = CommandBehaviour(delay_ms=(20.0, 60.0), acknowledge=True)


@pytest.fixture
def brokers(tmp_path):
    """(legacy, fleetgate): fleetgate's mirrors the legacy one's OsmAnd uplinks (the bridge)."""
    with bridged_brokers(tmp_path, "traccar-osmand") as pair:
        yield pair


def _env(dsn: str, broker: Mosquitto, topic_root: str) -> dict[str, str]:
    return {
        "FLEETGATE_DATABASE_URL": dsn,
        "FLEETGATE_MQTT_URL": broker.url,
        "FLEETGATE_MQTT_TOPIC_ROOT": topic_root,
    }


class LegacyPlatform:
    """What the legacy platform sees: every OsmAnd uplink on its broker, as (device, t ms)."""

    def __init__(self, broker: Mosquitto) -> None:
        self.seen: list[tuple[str, int]] = []
        self.client = MqttClient(
            ConnectOptions(broker.host, broker.port, f"legacy-{uuid.uuid4().hex[:8]}"),
            on_messages=self._messages,
        )

    def _messages(self, messages) -> None:
        for m in messages:
            device = m.topic.split("/")[1]
            body = orjson.loads(m.payload)
            for obj in body if isinstance(body, list) else [body]:
                self.seen.append((device, round(obj["timestamp"] * 1000)))

    async def start(self) -> None:
        await self.client.connect()
        await self.client.subscribe([("traccar/+/osmand", 1)])


async def _keys(dsn: str) -> list[tuple[str, int]]:
    rows = await fetch(
        dsn,
        "SELECT v.device_id AS d, (extract(epoch FROM p.time) * 1000)::bigint AS t "
        "FROM positions p JOIN vehicles v ON v.id = p.vehicle",
    )
    return [(r["d"], r["t"]) for r in rows]


async def _status(env) -> dict[str, str]:
    result = await asyncio.to_thread(
        run_fleetgate, "migrate", "status", "--cutover", "--batch", "pilot", "--json", env=env
    )
    assert result.exit_code == 0, result.output
    (batch,) = json.loads(result.output)
    return {v["device_id"]: v["state"] for v in batch["vehicles"]}


def _request(device_id: str, type_: str = "locate") -> CommandRequest:
    return CommandRequest(
        device_id=device_id, type=type_, idempotency_key=uuid.uuid4().hex, requested_by="rental"
    )


async def test_cutover_of_10_percent_then_rollback_loses_nothing_and_commands_nothing_twice(
    brokers, pg_dsn, topic_root, tmp_path
):
    legacy, ours = brokers
    fleet = Fleet(
        FleetOptions(
            vehicles=50,
            rate_hz=1.0,
            seed=19,
            topic_root=topic_root,
            host=legacy.host,
            port=legacy.port,
            dialect=str(shipped_path("traccar-osmand")),
            session_expiry_s=600,
            commands=FAST,
            track_keys=True,
        )
    )
    ids = await register(pg_dsn, fleet.registrations())
    # As `migrate import --source traccar` leaves them: the legacy platform holds them all.
    async with await TelemetryStore.open(pg_dsn) as store:
        await CommandAuthority(store).hold_for_legacy(ids.values(), "traccar")
    env = _env(pg_dsn, ours, topic_root)
    platform = LegacyPlatform(legacy)
    await platform.start()
    cfg = gateway_config(pg_dsn, ours, topic_root, mqtt_dialects=load_dialects(["traccar-osmand"]))
    stop = asyncio.Event()
    async with running_gateway(cfg) as (gateway, _):
        await eventually(lambda: gateway.commands is not None and gateway.commands.ready.is_set())
        commands = gateway.commands
        await fleet.start()
        running = asyncio.create_task(fleet.run(stop))
        try:
            # The parallel run: every vehicle's uplinks arrive through the bridge.
            async def all_mirrored() -> bool:
                return len({d for d, _ in await _keys(pg_dsn)}) == 50

            await eventually(all_mirrored, timeout=30, what="every vehicle mirrored")
            with pytest.raises(NotHeld) as refused:
                await commands.submit(_request(fleet.device_ids[0]))
            assert refused.value.holder == "traccar"

            # Cut-over of 10 %: 5 vehicles, re-pointed through the legacy broker.
            cut = await asyncio.to_thread(
                run_fleetgate, "migrate", "cutover", "--batch", "pilot", "--percent", "10",
                "--seed", "3", "--legacy-broker", legacy.url, "--wait", "20", env=env,
            )  # fmt: skip
            assert cut.exit_code == 0, cut.output
            assert "fleetgate holds 5 vehicles" in cut.output
            assert "5 of 5 devices carried out set_config" in cut.output
            await eventually(
                lambda: len([d for d in fleet.device_ids if fleet.tcu(d).broker == ours.url]) == 5,
                what="5 devices on fleetgate's broker",
            )
            moved = sorted(d for d in fleet.device_ids if fleet.tcu(d).broker == ours.url)

            async def all_live() -> bool:
                return set((await _status(env)).values()) == {"live"}

            await eventually(all_live, timeout=30, what="the batch live")
            await asyncio.sleep(2.0)  # a few samples on fleetgate's broker
            assert set(await _status(env)) == set(moved)

            # fleetgate commands them now; the others are still the legacy platform's.
            located = await commands.submit(_request(moved[0]))
            done = await commands.wait(located.id, 15)
            assert done.state is CommandState.SUCCEEDED, done
            stay = next(d for d in fleet.device_ids if d not in moved)
            with pytest.raises(NotHeld):
                await commands.submit(_request(stay))

            # A command queued for a vehicle that is away when the batch rolls back.
            away = moved[1]
            fleet.go_offline(away, 3600)

            async def offline() -> bool:
                rows = await fetch(
                    pg_dsn,
                    "SELECT s.online FROM vehicle_state s JOIN vehicles v ON v.id = s.vehicle "
                    "WHERE v.device_id = %s",
                    away,
                )
                return rows[0]["online"] is False

            await eventually(offline, what="the vehicle offline")
            queued = await commands.submit(_request(away, "lock"))
            assert (await commands.get(queued.id)).state is CommandState.QUEUED

            backfill = tmp_path / "backfill.jsonl"
            rolling = asyncio.create_task(
                asyncio.to_thread(
                    run_fleetgate,
                    "migrate",
                    "rollback",
                    "--batch",
                    "pilot",
                    "--legacy-url",
                    legacy.url,
                    "--out",
                    str(backfill),
                    "--wait",
                    "30",
                    env=env,
                )  # fmt: skip
            )

            # The away vehicle comes back during the roll-back: it finds the re-point in its
            # session on fleetgate's broker, not the lock.
            async def failed_not_held() -> bool:
                cmd = await commands.store.get(queued.id)
                return cmd.state is CommandState.FAILED and cmd.reason == "not_held"

            await eventually(failed_not_held, what="the queued command failed")
            fleet.go_online(away)
            back = await rolling
            assert back.exit_code == 0, back.output
            assert "5 vehicles back with traccar" in back.output
            await eventually(
                lambda: all(fleet.tcu(d).broker == legacy.url for d in moved),
                what="every device back on the legacy broker",
            )
            with pytest.raises(NotHeld):
                await commands.submit(_request(moved[0]))
            assert fleet.stats.command_executions[(away, str(queued.id))] == 0
            assert all(cid != str(queued.id) for _, cid in fleet.stats.command_executions)
            assert set((await _status(env)).values()) == {"rolled back"}

            await asyncio.sleep(2.0)  # samples on the legacy broker again
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(running, 10)
            await fleet.stop(flush=True)

        acked = fleet.stats.acked_keys()
        on = fleet.stats.acked_keys_by_broker()
        on_legacy, on_ours = on.get(legacy.url, set()), on.get(ours.url, set())

        async def all_stored() -> bool:
            return set(await _keys(pg_dsn)) >= on_legacy | on_ours

        await eventually(all_stored, timeout=30, what="everything stored at fleetgate")
        await eventually(
            lambda: set(platform.seen) >= on_legacy, what="the legacy platform saw its share"
        )
        await platform.client.disconnect()

    lines = [json.loads(line) for line in backfill.read_text().splitlines()]
    samples = [(r["device_id"], _ms(r["time"])) for r in lines if r["kind"] == "sample"]
    # Every acknowledged sample is stored exactly once on one side or the other: the legacy
    # platform has what its broker acknowledged plus the backfill, with nothing in both.
    assert acked == on_legacy | on_ours and not on_legacy & on_ours
    assert {d for d, _ in on_ours} == set(moved)
    assert len(samples) == len(set(samples)) and set(samples) == on_ours
    assert set(platform.seen) == on_legacy
    assert not set(platform.seen) & set(samples)
    stored = await _keys(pg_dsn)
    assert len(stored) == len(set(stored)) and set(stored) == acked
    async with await TelemetryStore.open(pg_dsn) as store:
        (evidence,) = await store.migration_evidence("rollback", "pilot")
    assert evidence.passed and evidence.detail["vehicles"] == evidence.detail["back"] == 5
    assert evidence.detail["file"] == str(backfill.resolve())
    assert evidence.detail["samples"] == len(samples)


def _ms(text: str) -> int:
    from datetime import datetime

    return round(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


TRACCAR = '[vehicle_types.traccar]\ntruck = "car"\n[units]\nspeed = "knots"\n'


async def _authority(dsn: str) -> list[dict]:
    return await fetch(
        dsn,
        "SELECT v.vehicle_ref, a.holder, a.legacy, a.batch FROM vehicle_authority a "
        "JOIN vehicles v ON v.id = a.vehicle ORDER BY 1",
    )


async def _history(dsn: str) -> list[dict]:
    return await fetch(
        dsn, "SELECT batch, action, vehicle, holder FROM cutover_history ORDER BY id"
    )


def _fails(env, *argv: str, reason: str, status: int = 2) -> None:
    result = run_fleetgate("migrate", *argv, env=env)
    assert result.exit_code == status, result.output
    assert reason in result.output, result.output


async def test_imported_vehicles_are_the_legacy_platforms_and_bad_input_changes_nothing(
    pg_dsn, mosquitto, topic_root, tmp_path
):
    from tests.migration_exports import copy_export

    env = _env(pg_dsn, mosquitto, topic_root)
    mapping = tmp_path / "mapping.toml"
    mapping.write_text(TRACCAR)
    export = copy_export("traccar", tmp_path / "export")
    imported = await asyncio.to_thread(
        run_fleetgate, "migrate", "import", "--source", "traccar", str(export), "--batch", "w1",
        "--mapping", str(mapping), env=env,
    )  # fmt: skip
    assert imported.exit_code == 0, imported.output
    await register(pg_dsn, [("native-1", "veh-native", "ebike")])
    held = await _authority(pg_dsn)
    assert {(r["holder"], r["legacy"], r["batch"]) for r in held} == {("traccar", "traccar", None)}
    refs = sorted(r["vehicle_ref"] for r in held)
    assert len(refs) == 4 and "veh-native" not in refs  # never migrated: fleetgate's

    def file_of(*names: str):
        path = tmp_path / f"v-{uuid.uuid4().hex[:6]}.txt"
        path.write_text("# vehicles\n" + "\n".join(names) + "\n")
        return str(path)

    out = str(tmp_path / "repoint.jsonl")
    exp = ("--export", out)
    run = asyncio.to_thread
    before = (await _authority(pg_dsn), await _history(pg_dsn))
    await run(_fails, env, "cutover", "--batch", "b1", *exp, reason="exactly one of")
    await run(
        _fails, env, "cutover", "--batch", "b1", "--percent", "10", "--zone", "z", *exp,
        reason="exactly one of",
    )  # fmt: skip
    await run(_fails, env, "cutover", "--batch", "b1", "--percent", "10", reason="--legacy-broker")
    await run(_fails, env, "cutover", "--batch", "b 1", "--percent", "10", *exp, reason="--batch")
    await run(
        _fails, env, "cutover", "--batch", "b1", "--vehicles", file_of(refs[0], "veh-nope"), *exp,
        reason="unknown vehicles: veh-nope",
    )  # fmt: skip
    await run(
        _fails, env, "cutover", "--batch", "b1", "--vehicles", file_of("veh-native"), *exp,
        reason="never migrated",
    )  # fmt: skip
    await run(_fails, env, "cutover", "--batch", "b1", "--zone", "nowhere", *exp, reason="no zone")
    await run(
        _fails, env, "cutover", "--batch", "b1", "--percent", "10",
        "--legacy-broker", "mqtt://127.0.0.1:1", reason="nothing cut over",
    )  # fmt: skip
    await run(_fails, env, "rollback", "--batch", "b1", "--legacy-url", "mqtt://l:1883",
              "--out", str(tmp_path / "bf.jsonl"), reason="no cut-over batch 'b1'")  # fmt: skip
    await run(_fails, env, "status", "--cutover", "--batch", "b1", reason="no cut-over batch 'b1'")
    assert (await _authority(pg_dsn), await _history(pg_dsn)) == before
    assert not (tmp_path / "repoint.jsonl").exists()

    # A zone around one vehicle's last fix selects it alone.
    (state,) = await fetch(
        pg_dsn,
        "SELECT s.lat, s.lon FROM vehicle_state s JOIN vehicles v ON v.id = s.vehicle "
        "WHERE v.vehicle_ref = %s",
        refs[0],
    )
    async with await TelemetryStore.open(pg_dsn) as store:
        await store.put_zones(
            [
                {
                    "id": "depot",
                    "geometry": {
                        "type": "Circle",
                        "coordinates": [state["lon"], state["lat"]],
                        "radius_m": 5,
                    },
                }
            ]
        )
    zoned = await run(run_fleetgate, "migrate", "cutover", "--batch", "depot-1", "--zone", "depot",
                      *exp, env=env)  # fmt: skip
    assert zoned.exit_code == 0, zoned.output
    assert "fleetgate holds 1 vehicles" in zoned.output
    lines = [json.loads(x) for x in (tmp_path / "repoint.jsonl").read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["topic"].startswith(f"{topic_root}/")
    payload = json.loads(lines[0]["payload"])
    assert payload["type"] == "set_config" and payload["params"] == {"mqtt_url": mosquitto.url}

    # Already cut over in another batch; a batch name used before; nothing left to select.
    await run(
        _fails, env, "cutover", "--batch", "b2", "--vehicles", file_of(refs[0], refs[1]), *exp,
        reason="batch 'depot-1'",
    )  # fmt: skip
    await run(
        _fails, env, "cutover", "--batch", "depot-1", "--percent", "10", *exp,
        reason="exists already",
    )  # fmt: skip
    rest = await run(run_fleetgate, "migrate", "cutover", "--batch", "b3", "--percent", "100",
                     *exp, env=env)  # fmt: skip
    assert rest.exit_code == 0 and "fleetgate holds 3 vehicles" in rest.output, rest.output
    await run(_fails, env, "cutover", "--batch", "b4", "--percent", "100", *exp, reason="is empty")
    before = (await _authority(pg_dsn), await _history(pg_dsn))
    await run(
        _fails, env, "rollback", "--batch", "b3", "--vehicles", file_of(refs[0]),
        "--legacy-url", "mqtt://l:1883", "--out", str(tmp_path / "bf.jsonl"),
        reason="not held in batch 'b3'",
    )  # fmt: skip
    assert (await _authority(pg_dsn), await _history(pg_dsn)) == before

    # A roll-back whose devices do not answer (none are connected here): the authority is back
    # with the legacy platform all the same, the file is written, the exit status says 1.
    backfill = tmp_path / "bf.jsonl"
    back = await run(
        run_fleetgate, "migrate", "rollback", "--batch", "b3", "--legacy-url", "mqtt://l:1883",
        "--out", str(backfill), "--wait", "0.5", env=env,
    )  # fmt: skip
    assert back.exit_code == 1, back.output
    assert "no answer within 0.5 s from 3" in back.output
    assert backfill.exists()
    now = {r["vehicle_ref"]: (r["holder"], r["batch"]) for r in await _authority(pg_dsn)}
    assert now[refs[0]] == ("fleetgate", "depot-1")
    assert (
        sorted(v for v in now.values() if v != ("fleetgate", "depot-1")) == [("traccar", None)] * 3
    )
    async with await TelemetryStore.open(pg_dsn) as store:
        (evidence,) = await store.migration_evidence("rollback", "b3")
    assert not evidence.passed and evidence.detail["back"] == 0
    assert sorted(evidence.detail["not_back"]) == sorted(
        r["device_id"]
        for r in await fetch(pg_dsn, "SELECT device_id FROM vehicles WHERE vehicle_ref <> ALL(%s)",
                             [refs[0], "veh-native"])
    )  # fmt: skip
    status = await run(run_fleetgate, "migrate", "status", env=env)
    assert "cut-over batch b3: 0 live, 0 pending, 0 not arrived, 3 rolled back" in status.output
    assert "cut-over batch depot-1: 0 live, 1 pending" in status.output
    await run(
        _fails, env, "rollback", "--batch", "b3", "--legacy-url", "mqtt://l:1883",
        "--out", str(backfill), reason="holds no vehicles",
    )  # fmt: skip
