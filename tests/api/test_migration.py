"""GET /v1/migration/runs: the recorded migration runs, newest first, paged, for fleet:read."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

pytestmark = pytest.mark.integration


async def record(store, batch: str, outcome: str, positions: int) -> int:
    report = {
        "imported": {"vehicles": 1, "devices": 1, "zones": 0, "positions": positions},
        "skipped": {"lat_out_of_range": 2} if outcome == "refused" else {},
        "problems": [
            {"file": "p.json", "record": "7", "field": "latitude", "reason": "lat_out_of_range"}
        ]
        if outcome == "refused"
        else [],
    }
    return await store.record_migration_run(
        batch=batch,
        source="traccar",
        origin="/exports/traccar",
        delta=False,
        outcome=outcome,
        started_at=datetime.now(UTC),
        report=report,
    )


async def test_runs_are_listed_newest_first_and_paged(api_server):
    first = await record(api_server.store, "wave-1", "refused", 0)
    await record(api_server.store, "wave-1", "imported", 120)
    await record(api_server.store, "wave-2", "imported", 80)
    async with api_server.client("reader") as client:
        page = (await client.get("/v1/migration/runs", params={"limit": 2})).json()
        assert [r["batch"] for r in page["items"]] == ["wave-2", "wave-1"]
        rest = (await client.get(page["next"])).json()
        assert [r["id"] for r in rest["items"]] == [first] and rest["next"] is None
        refused = rest["items"][0]
        assert refused["outcome"] == "refused"
        assert refused["skipped"] == {"lat_out_of_range": 2}
        assert refused["problems"][0]["reason"] == "lat_out_of_range"
        wave = (await client.get("/v1/migration/runs", params={"batch": "wave-1"})).json()
        assert [r["imported"]["positions"] for r in wave["items"]] == [120, 0]


async def test_runs_need_fleet_read(api_server):
    async with api_server.client("provisioning") as client:
        response = await client.get("/v1/migration/runs")
    assert response.status_code == 403 and response.json()["scope"] == "fleet:read"
    async with api_server.client("reader") as client:
        bad = await client.get("/v1/migration/runs", params={"limit": 0})
    assert bad.status_code in (400, 422)
