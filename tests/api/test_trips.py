"""GET /v1/trips, /v1/trips/{id} with its route, and the CSV export, over trips the gateway's
trip measurer measured (figures stored once, never per query)."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

import pytest

from gateway.trips import TripMeasurer
from telemetry.batch import FLAG_IMPLAUSIBLE_JUMP
from telemetry.store import Derived
from tests.api_client import assert_problem, fleet
from tests.batches import HOUR_MS, make_batch, now_ms

pytestmark = pytest.mark.integration


async def _rides(store, vehicle: int, t0: int, rides: int) -> None:
    """`rides` rides of 60 s, 10 minutes apart, eastwards 100 m each, one GPS jump in each."""
    for k in range(rides):
        t = t0 + k * 600_000
        rows = [
            {
                "vehicle": vehicle,
                "t": t + s * 5000,
                "lat": 52.5,
                "lon": 13.4 + k * 0.01 + s * 1.47e-4 * (1 if s != 6 else 30),
                "locked": 0,
                "speed_kmh": 6.0,
                "flags": FLAG_IMPLAUSIBLE_JUMP if s == 6 else 0,
            }
            for s in range(13)
        ]
        derived = Derived(
            trip_starts=[(vehicle, t, 52.5, 13.4)], trip_ends=[(vehicle, t + 60_000, None, None)]
        )
        await store.write(make_batch(rows), derived=derived)
    await TripMeasurer(store, zones=lambda: None, max_speed_kmh=lambda _: 80.0).measure_waiting()


async def test_trips_list_filter_page_and_one_with_its_route(api_server):
    ids = await fleet(api_server.store, 2)
    t0 = now_ms() - 2 * HOUR_MS
    await _rides(api_server.store, ids["veh-000"], t0, 3)
    await _rides(api_server.store, ids["veh-001"], t0 + 60_000, 1)
    async with api_server.client("reader") as c:
        everything = (await c.get("/v1/trips")).json()["items"]
        assert [t["vehicle_ref"] for t in everything] == ["veh-000"] * 3 + ["veh-001"]
        first = (await c.get("/v1/trips", params={"vehicle": "veh-000", "limit": 2})).json()
        assert len(first["items"]) == 2 and first["next"]
        rest = (await c.get(first["next"])).json()
        assert len(rest["items"]) == 1 and rest["next"] is None
        since = datetime.fromtimestamp((t0 + 300_000) / 1000, UTC).isoformat()
        later = (await c.get("/v1/trips", params={"from": since})).json()["items"]
        assert len(later) == 2, "started at or after 'from'"

        trip = everything[0]
        assert trip["status"] == "ended" and trip["revision"] == 1
        assert trip["duration_s"] == 60.0 and trip["fixes_rejected"] == 1
        assert trip["distance_source"] == "fixes"
        assert trip["distance_m"] == pytest.approx(12 * 10.0, rel=0.05), "the jump adds nothing"
        one = (await c.get(f"/v1/trips/{trip['id']}", params={"route": "raw"})).json()
        assert len(one["route"]) == 12, "the plausible fixes of the ride, its end included"
        assert one["distance_m"] == trip["distance_m"]
        coarse = (await c.get(f"/v1/trips/{trip['id']}", params={"route": "1m"})).json()
        assert 1 <= len(coarse["route"]) <= 2
        assert (await c.get(f"/v1/trips/{trip['id']}")).json()["route"] is None

        assert_problem(await c.get("/v1/trips/999999"), 404, "999999")
        assert_problem(await c.get("/v1/trips", params={"vehicle": "ghost"}), 404)
        assert_problem(await c.get(f"/v1/trips/{trip['id']}", params={"route": "2s"}), 422)
        assert_problem(await c.get("/v1/trips", params={"status": "lost"}), 422, "status")


async def test_trips_export_as_csv_with_the_billing_columns(api_server):
    ids = await fleet(api_server.store, 1)
    await _rides(api_server.store, ids["veh-000"], now_ms() - HOUR_MS, 2)
    async with api_server.client("reader") as c:
        response = await c.get("/v1/trips.csv", params={"vehicle": "veh-000"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == 2
    assert float(rows[0]["distance_m"]) == pytest.approx(120, rel=0.05)
    assert rows[0]["duration_s"] == "60.0" and rows[0]["vehicle_ref"] == "veh-000"
    started = datetime.fromisoformat(rows[1]["started_at"]) - datetime.fromisoformat(
        rows[0]["started_at"]
    )
    assert started == timedelta(minutes=10)
