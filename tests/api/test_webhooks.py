"""The webhooks API: subscriptions with a secret shown once, bad input refused with the reason
(unknown event type with the catalogue, a URL that is not http(s) or points at the gateway
itself), and changing nothing when refused."""

import pytest

from outbound import CATALOGUE
from telemetry.batch import DeviceEvent, TelemetryBatch
from tests.api_client import events_settled
from tests.harness import register

pytestmark = pytest.mark.integration


async def test_create_shows_the_secret_once_then_list_change_delete(api_server):
    async with api_server.client("billing") as http:
        created = await http.post(
            "/v1/webhooks",
            json={"url": "https://billing.invalid.example:8443/hooks", "event_types": None},
        )
        # A host that does not resolve (.invalid never does) could never be delivered to.
        assert created.status_code == 422, created.text
        assert "does not resolve" in created.json()["detail"]
        created = await http.post(
            "/v1/webhooks",
            json={
                "url": "http://127.0.0.1:1/hooks",
                "event_types": ["trip.ended", "command.finished", "trip.ended"],
                "description": "billing",
            },
        )
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["secret"].startswith("whsec_")
        assert body["event_types"] == ["command.finished", "trip.ended"]
        sub_id = body["id"]
        listed = (await http.get("/v1/webhooks")).json()["items"]
        assert [s["id"] for s in listed] == [sub_id]
        assert "secret" not in listed[0]
        one = (await http.get(f"/v1/webhooks/{sub_id}")).json()
        assert "secret" not in one and one["enabled"] is True
        patched = await http.patch(
            f"/v1/webhooks/{sub_id}", json={"event_types": None, "description": "all"}
        )
        assert patched.status_code == 200, patched.text
        assert patched.json()["event_types"] is None
        assert patched.json()["description"] == "all"
        deliveries = await http.get(f"/v1/webhooks/{sub_id}/deliveries")
        assert deliveries.status_code == 200 and deliveries.json()["items"] == []
        redrive = await http.post(f"/v1/webhooks/{sub_id}/redrive", json={})
        assert redrive.json() == {"events": 0}
        replay = await http.post(f"/v1/webhooks/{sub_id}/replay", json={"from_event_id": 1})
        assert replay.status_code == 404
        assert replay.json()["type"] == "/problems/unknown-event"
        assert (await http.delete(f"/v1/webhooks/{sub_id}")).status_code == 204
        assert (await http.get(f"/v1/webhooks/{sub_id}")).status_code == 404
        assert (await http.delete(f"/v1/webhooks/{sub_id}")).status_code == 404


async def test_unknown_event_type_is_422_listing_the_catalogue(api_server):
    async with api_server.client("billing") as http:
        answer = await http.post(
            "/v1/webhooks",
            json={"url": "http://127.0.0.1:1/", "event_types": ["trip.ended", "trip.exploded"]},
        )
        assert answer.status_code == 422
        problem = answer.json()
        assert problem["type"] == "/problems/unknown-event-type"
        assert "trip.exploded" in problem["detail"]
        assert problem["catalogue"] == list(CATALOGUE)
        assert problem["errors"][0]["loc"] == ["body", "event_types"]
        assert (await http.get("/v1/webhooks")).json()["items"] == []  # nothing changed


@pytest.mark.parametrize(
    "url", ["ftp://127.0.0.1/hooks", "file:///etc/passwd", "127.0.0.1:9000", "http:///nohost"]
)
async def test_a_url_that_is_not_http_is_422(api_server, url):
    async with api_server.client("billing") as http:
        answer = await http.post("/v1/webhooks", json={"url": url})
        assert answer.status_code == 422, answer.text
        assert answer.json()["type"] == "/problems/bad-webhook-url"
        assert answer.json()["errors"][0]["loc"] == ["body", "url"]
        assert (await http.get("/v1/webhooks")).json()["items"] == []


async def test_a_url_resolving_to_the_gateway_itself_is_422(api_server):
    port = api_server.url.rsplit(":", 1)[1]
    async with api_server.client("billing") as http:
        for url in (f"{api_server.url}/v1/events", f"http://localhost:{port}/x"):
            answer = await http.post("/v1/webhooks", json={"url": url})
            assert answer.status_code == 422, answer.text
            assert "this gateway itself" in answer.json()["detail"]
        created = await http.post("/v1/webhooks", json={"url": "http://127.0.0.1:1/ok"})
        sub_id = created.json()["id"]
        answer = await http.patch(f"/v1/webhooks/{sub_id}", json={"url": f"{api_server.url}/"})
        assert answer.status_code == 422
        assert (await http.get(f"/v1/webhooks/{sub_id}")).json()["url"] == "http://127.0.0.1:1/ok"


async def test_webhooks_need_their_scope(api_server):
    async with api_server.client("reader") as http:
        answer = await http.get("/v1/webhooks")
        assert answer.status_code == 403
        assert answer.json()["scope"] == "webhooks:write"


async def test_the_pull_feed_names_the_outbound_type(api_server):
    store = api_server.store
    dsn = store.pool.conninfo
    ids = await register(dsn, [("pf-1", "PF-1", "ebike")])
    vehicle = ids["pf-1"]
    events = [
        DeviceEvent(vehicle, 1_700_000_000_000, "zone_enter", {"zone": "a"}, "geofence"),
        DeviceEvent(vehicle, 1_700_000_000_001, "door_open", None, "device"),
        DeviceEvent(vehicle, 1_700_000_000_002, "trip.ended", {"distance_m": 3}, "gateway"),
    ]
    await store.write(TelemetryBatch.empty(), events)
    await events_settled(store)
    async with api_server.client("reader") as http:
        items = (await http.get("/v1/events", params={"after": 0})).json()["items"]
        assert [(i["type"], i["outbound_type"]) for i in items] == [
            ("zone_enter", "geofence.zone_enter"),
            ("door_open", None),
            ("trip.ended", "trip.ended"),
        ]
        dotted = (await http.get("/v1/events", params={"type": "trip.ended"})).json()["items"]
        assert [i["type"] for i in dotted] == ["trip.ended"]
