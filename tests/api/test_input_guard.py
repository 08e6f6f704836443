"""Input the database cannot hold, over real HTTP against the served API, the real database and
a real command dispatcher: a NUL anywhere, JSON that is not strict RFC 8259 or whose numbers do
not fit, a time range that leaves the calendar. Each is a 422 (or 400) problem with its reason,
never a 500, and changes nothing."""

from __future__ import annotations

import uuid

import pytest
from prometheus_client import CollectorRegistry

from gateway.commands import CommandConfig, CommandService
from tests.api_client import assert_problem, fleet

pytestmark = pytest.mark.integration

NUL = "U+0000 (NUL)"


@pytest.fixture
async def dispatcher(api_server, mosquitto, pg_dsn, topic_root):
    """A command dispatcher beside the API, so that command bodies reach the database."""
    service = CommandService(
        CommandConfig(
            database_url=pg_dsn,
            mqtt_host=mosquitto.host,
            mqtt_port=mosquitto.port,
            mqtt_client_id=f"guard-{uuid.uuid4().hex[:8]}-cmd",
            mqtt_topic_root=topic_root,
            mqtt_session_expiry_s=60,
        ),
        registry=CollectorRegistry(),
    )
    await service.start()
    api_server.context.commands = service
    try:
        yield service
    finally:
        await service.stop()


@pytest.mark.parametrize(
    "path, where",
    [
        ("/v1/vehicles/veh-000%00", "path"),
        ("/v1/vehicles/a%00b/track", "path"),
        ("/v1/vehicles/a%00b/usage", "path"),
        ("/v1/vehicles?after=veh%00", "query.after"),
        ("/v1/vehicles?zone=%00", "query.zone"),
        ("/v1/events?vehicle=veh-000%00", "query.vehicle"),
        ("/v1/commands?vehicle=%00", "query.vehicle"),
        ("/v1/commands?requested_by=rental%00", "query.requested_by"),
    ],
)
async def test_a_nul_in_the_path_or_query_is_refused_with_where_it_is(api_server, path, where):
    await fleet(api_server.store, 2)
    async with api_server.client() as c:
        body = assert_problem(await c.get(path), 422, where, NUL)
    assert body["type"] == "/problems/invalid-request"
    assert body["errors"][0]["loc"] == where.split(".")


async def test_a_percent_sign_before_00_is_text_not_a_nul(api_server):
    async with api_server.client() as c:
        answer = await c.get("/v1/vehicles?zone=a%2500")
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize(
    "body, words",
    [
        (b'{"type": "set_config", "params": {"mode": "a\\u0000b"}}', ["body.params.mode", NUL]),
        (b'{"type": "set_config", "params": {"mo\\u0000de": "a"}}', ["body.params.mo", NUL]),
        (
            b'{"type": "set_config", "params": {"mode": "\\ud800"}}',
            ["body.params.mode", "surrogate"],
        ),
        (b'{"type": "set_config", "params": {"mode": 1e400}}', ["1e400", "double"]),
        (
            b'{"type": "set_config", "params": {"mode": 123456789012345678901234567890}}',
            ["123456789012345678901234567890", "64 bits"],
        ),
        (b'{"type": "set_config", "params": {"mode": NaN}}', ["NaN", "RFC 8259"]),
        (b'{"type": "set_config", "params": {"mode": "\xff"}}', ["not UTF-8"]),
        (b"[" * 50_000 + b"]" * 50_000, ["nested too deeply"]),
    ],
)
async def test_a_command_body_the_database_cannot_hold_is_refused_and_nothing_is_sent(
    api_server, dispatcher, body, words
):
    await fleet(api_server.store, 2)
    async with api_server.client(
        headers={"Idempotency-Key": "guard-1", "Content-Type": "application/json"}
    ) as c:
        assert_problem(await c.post("/v1/vehicles/veh-000/commands", content=body), 422, *words)
        assert (await c.get("/v1/commands")).json()["items"] == []
        # The same key then makes the command: the refusal left nothing behind.
        made = await c.post(
            "/v1/vehicles/veh-000/commands", json={"type": "set_config", "params": {"mode": "eco"}}
        )
        assert made.status_code == 202, made.text


async def test_a_zone_or_device_with_a_nul_or_an_out_of_range_priority_is_not_stored(api_server):
    await fleet(api_server.store, 1)
    circle = {"type": "Circle", "coordinates": [13.4, 52.5], "radius_m": 100}
    async with api_server.client() as c:
        assert_problem(
            await c.put("/v1/zones/z1", json={"name": "a\x00", "geometry": circle}),
            422,
            "body.name",
            NUL,
        )
        assert_problem(
            await c.put("/v1/zones/z1", json={"geometry": circle, "priority": 2**31}),
            422,
            "body.priority",
        )
        assert (await c.get("/v1/zones/z1")).status_code == 404
        assert_problem(
            await c.post(
                "/v1/devices",
                json={"vehicle_ref": "veh\x00", "device_id": "tcu-new", "vehicle_type": "car"},
            ),
            422,
            "body.vehicle_ref",
            NUL,
        )
        assert "tcu-new" not in [d["device_id"] for d in (await c.get("/v1/devices")).json()]


@pytest.mark.parametrize(
    "path", ["/v1/events", "/v1/vehicles/veh-000/track", "/v1/vehicles/veh-000/usage"]
)
async def test_a_range_ending_at_the_start_of_the_calendar_is_a_bad_time_range(api_server, path):
    await fleet(api_server.store, 1)
    async with api_server.client() as c:
        assert_problem(
            await c.get(path, params={"to": "0001-01-01T00:30:00Z"}), 400, "too early", "'from'"
        )
