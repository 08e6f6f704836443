"""Commands and usage over HTTP, with the gateway's command service, the real broker, database
and simulated TCUs: what the rental and billing modules do."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest

from firmware_sim import Fleet, FleetOptions
from firmware_sim.tcu import CommandBehaviour
from tests.api_client import assert_problem
from tests.harness import eventually, gateway_config, register, running_gateway

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def stack(mosquitto, pg_dsn, topic_root, api_server, vehicles: int = 4):
    fleet = Fleet(
        FleetOptions(
            vehicles=vehicles,
            rate_hz=2.0,
            seed=11,
            topic_root=topic_root,
            host=mosquitto.host,
            port=mosquitto.port,
            car_share=0.5,
            commands=CommandBehaviour(delay_ms=(20.0, 60.0), acknowledge=True),
            session_expiry_s=60,
            track_keys=False,
        )
    )
    await register(pg_dsn, fleet.registrations())
    cfg = gateway_config(pg_dsn, mosquitto, topic_root, mqtt_session_expiry_s=60)
    async with running_gateway(cfg) as (gw, reg):
        api_server.context.commands = gw.commands
        await fleet.start()
        stop = asyncio.Event()
        driving = asyncio.create_task(fleet.run(stop))
        try:
            await eventually(
                lambda: _all_online(api_server, vehicles), timeout=20, what="the fleet online"
            )
            yield fleet, gw
        finally:
            stop.set()
            await driving
            await fleet.stop(flush=False)


async def _all_online(api_server, n: int) -> bool:
    async with api_server.client("reader") as c:
        items = (await c.get("/v1/vehicles", params={"online": True})).json()["items"]
    return len(items) == n


def device_of(fleet: Fleet, ref: str) -> str:
    return next(d for d, r, _ in fleet.registrations() if r == ref)


async def test_unlock_waits_for_the_device_and_the_same_key_never_sends_twice(
    mosquitto, pg_dsn, topic_root, api_server
):
    async with stack(mosquitto, pg_dsn, topic_root, api_server) as (fleet, gw):
        key = str(uuid.uuid4())
        async with api_server.client("rental", headers={"Idempotency-Key": key}) as c:
            first = await c.post(
                "/v1/vehicles/veh-0001/commands", params={"wait": 10}, json={"type": "unlock"}
            )
            assert first.status_code == 200, first.text
            body = first.json()
            assert body["state"] == "succeeded" and body["requested_by"] == "rental"
            assert first.headers["location"] == f"/v1/commands/{body['id']}"
            again = await c.post(
                "/v1/vehicles/veh-0001/commands", params={"wait": 10}, json={"type": "unlock"}
            )
            assert again.json()["id"] == body["id"]
            other = await c.post("/v1/vehicles/veh-0001/commands", json={"type": "lock"})
            assert_problem(other, 409, "idempotency key")
        device = device_of(fleet, "veh-0001")
        assert fleet.stats.command_executions[(device, body["id"])] == 1
        async with api_server.client("reader") as c:
            history = (await c.get(f"/v1/commands/{body['id']}/history")).json()
            assert [h["to_state"] for h in history][0] == "queued"
            assert history[-1]["to_state"] == "succeeded"
            listed = (await c.get("/v1/commands", params={"vehicle": "veh-0001"})).json()
            assert [x["id"] for x in listed["items"]] == [body["id"]]


async def test_without_waiting_the_answer_is_202_with_the_commands_url(
    mosquitto, pg_dsn, topic_root, api_server
):
    async with stack(mosquitto, pg_dsn, topic_root, api_server) as (fleet, gw):
        async with api_server.client("rental", headers={"Idempotency-Key": "k-202"}) as c:
            created = await c.post(
                "/v1/vehicles/veh-0002/commands", json={"type": "locate", "params": {"beep": True}}
            )
            assert created.status_code == 202 and created.json()["state"] != "succeeded"
            url = created.headers["location"]

            async def done() -> bool:
                return (await c.get(url)).json()["state"] == "succeeded"

            await eventually(done, timeout=15, what="the locate answered")
            assert_problem(await c.post(f"{url}/cancel"), 409, "cancel")


async def test_a_queued_command_can_be_cancelled_and_bad_requests_get_a_reason(
    mosquitto, pg_dsn, topic_root, api_server
):
    async with stack(mosquitto, pg_dsn, topic_root, api_server) as (fleet, gw):
        fleet.go_offline(device_of(fleet, "veh-0003"), 3600)

        async def offline() -> bool:
            async with api_server.client("reader") as c:
                return not (await c.get("/v1/vehicles/veh-0003")).json()["online"]

        await eventually(offline, timeout=15, what="the will marking it offline")
        async with api_server.client("rental", headers={"Idempotency-Key": "k-cancel"}) as c:
            queued = (
                await c.post(
                    "/v1/vehicles/veh-0003/commands", json={"type": "unlock", "ttl_s": 600}
                )
            ).json()
            assert queued["state"] == "queued"
            cancelled = await c.post(f"/v1/commands/{queued['id']}/cancel")
            assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
            assert_problem(await c.post("/v1/vehicles/ghost/commands", json={"type": "lock"}), 404)
            assert_problem(
                await c.post(
                    "/v1/vehicles/veh-0001/commands",
                    json={"type": "set_speed_limit", "params": {"kph": 1}},
                ),
                422,
                "kph",
            )
            assert_problem(
                await c.post("/v1/vehicles/veh-0001/commands", json={"type": "fly"}), 422, "type"
            )
            past = assert_problem(
                await c.post(
                    "/v1/vehicles/veh-0001/commands",
                    json={"type": "lock", "deadline": "2020-01-01T00:00:00Z"},
                ),
                422,
                "in the past",
            )
            assert [e["loc"] for e in past["errors"]] == [["body", "deadline"]]
            both = assert_problem(
                await c.post(
                    "/v1/vehicles/veh-0001/commands",
                    json={"type": "lock", "ttl_s": 60, "deadline": "2099-01-01T00:00:00Z"},
                ),
                422,
                "not both",
            )
            assert [e["loc"] for e in both["errors"]] == [["body"]]
            assert_problem(await c.get(f"/v1/commands/{uuid.uuid4()}"), 404)
        async with api_server.client("rental") as c:  # no Idempotency-Key
            assert_problem(
                await c.post("/v1/vehicles/veh-0001/commands", json={"type": "lock"}),
                422,
                "Idempotency-Key",
            )
        async with api_server.client("reader", headers={"Idempotency-Key": "k-r"}) as c:
            assert_problem(
                await c.post("/v1/vehicles/veh-0001/commands", json={"type": "lock"}),
                403,
                "commands:write",
            )
        assert (
            fleet.stats.command_executions.get((device_of(fleet, "veh-0003"), queued["id"]), 0) == 0
        )


async def test_usage_of_a_ride_from_unlock_to_lock(mosquitto, pg_dsn, topic_root, api_server):
    async with stack(mosquitto, pg_dsn, topic_root, api_server) as (fleet, gw):
        async with api_server.client("rental") as c:
            unlock = (
                await c.post(
                    "/v1/vehicles/veh-0002/commands",
                    params={"wait": 10},
                    json={"type": "unlock"},
                    headers={"Idempotency-Key": "booking-1-start"},
                )
            ).json()
            assert unlock["state"] == "succeeded"
            await asyncio.sleep(2.0)  # a short ride's worth of samples
            lock = (
                await c.post(
                    "/v1/vehicles/veh-0002/commands",
                    params={"wait": 10},
                    json={"type": "lock"},
                    headers={"Idempotency-Key": "booking-1-end"},
                )
            ).json()
            assert lock["state"] == "succeeded"
            usage = (
                await c.get("/v1/vehicles/veh-0002/usage", params={"unlock_command": unlock["id"]})
            ).json()
    (ride,) = usage["rides"]
    assert ride["lock_command"] == lock["id"] and ride["samples"] >= 2
    assert 1.0 < ride["duration_s"] < 30.0
    assert ride["distance_m"] is not None and ride["distance_m"] >= 0
    assert ride["energy_wh"] is not None and ride["energy_source"] == "pack_power"


async def test_the_api_alone_reads_commands_but_creating_one_needs_the_gateway(api_server):
    async with api_server.client("rental", headers={"Idempotency-Key": "k"}) as c:
        response = await c.post("/v1/vehicles/veh-0001/commands", json={"type": "lock"})
        body = assert_problem(response, 503, "fleetgate run")
        assert body["type"] == "/problems/commands-unavailable"
        assert response.headers["retry-after"] == "30"
        assert (await c.get("/v1/commands")).json() == {"items": [], "next": None}
        assert_problem(await c.get(f"/v1/commands/{uuid.uuid4()}"), 404)


async def test_a_vehicle_another_platform_holds_is_refused_with_409_naming_it(
    mosquitto, pg_dsn, topic_root, api_server
):
    """During a fleet migration (docs/migration.md): a command to a vehicle the legacy platform
    still holds is refused, saying which platform; once cut over, fleetgate commands it."""
    from telemetry.store import CommandAuthority, TelemetryStore
    from tests.stored_rows import fetch

    async with stack(mosquitto, pg_dsn, topic_root, api_server) as (fleet, gw):
        (row,) = await fetch(pg_dsn, "SELECT id FROM vehicles WHERE vehicle_ref = 'veh-0004'")
        async with await TelemetryStore.open(pg_dsn) as store:
            authority = CommandAuthority(store)
            await authority.hold_for_legacy([row["id"]], "traccar")
            async with api_server.client("rental", headers={"Idempotency-Key": "k-held"}) as c:
                refused = await c.post("/v1/vehicles/veh-0004/commands", json={"type": "unlock"})
                body = assert_problem(refused, 409, "traccar", "cut over")
                assert body["holder"] == "traccar" and body["type"].endswith("not-held")
                await authority.cut_over("api-pilot", [row["id"]], {})
                done = await c.post(
                    "/v1/vehicles/veh-0004/commands", params={"wait": 10}, json={"type": "unlock"}
                )
                assert done.status_code == 200 and done.json()["state"] == "succeeded", done.text
        (count,) = await fetch(
            pg_dsn, "SELECT count(*) AS n FROM commands WHERE idempotency_key = 'k-held'"
        )
        assert count["n"] == 1  # the refused request left nothing behind
