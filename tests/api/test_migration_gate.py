"""GET /v1/migration/gate: a batch's go-live gate over HTTP, as the roof wires it (the
evaluation of fleetgate/go_live.py), from evidence of every age in the real database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from fleetgate.settings import Settings
from fleetgate.wiring import migration_gate
from tests.api_client import assert_problem

pytestmark = pytest.mark.integration

GREEN = {"coverage": "green", "position": "green", "state": "green", "usage": "green"}


async def record(store, kind: str, batch: str | None, days_ago: float, **detail) -> int:
    return await store.record_migration_evidence(
        kind,
        batch=batch,
        passed=True,
        detail=detail,
        recorded_at=datetime.now(UTC) - timedelta(days=days_ago),
    )


async def test_the_gate_of_a_batch_with_what_is_missing_and_an_unknown_batch_404(api_server):
    # The API's own /readyz is the one process the deployment names here.
    settings = Settings.load(migration_ready_urls=f"{api_server.url}/readyz")
    api_server.context.migration_gate = migration_gate(settings)
    store = api_server.store
    await record(store, "parallel_run", "berlin-1", 0.5, percent=10.0, days=14.2, colours=GREEN)
    await record(store, "signoff", "berlin-1", 1, percent=10.0, by="Ada")
    rehearsal = await record(store, "rehearsal", None, 35)
    await record(store, "rollback", "pilot", 2)
    await record(store, "failover_drill", None, 3)
    async with api_server.client("reader") as c:
        r = await c.get("/v1/migration/gate", params={"batch": "berlin-1"})
        assert r.status_code == 200, r.text
        gate = r.json()
        assert gate["batch"] == "berlin-1" and gate["passed"] is False
        met = {c["name"]: c["met"] for c in gate["criteria"]}
        assert met == {
            "parallel_run": True,
            "signoff": True,
            "rehearsal": False,
            "rollback": True,
            "failover_drill": True,
            "load": False,
            "processes_ready": True,
        }
        details = {c["name"]: c for c in gate["criteria"]}
        assert details["rehearsal"]["detail"].startswith(
            "no passed rehearsal within 30 days: the newest is 35.0 days old"
        )
        assert details["rehearsal"]["evidence"] == rehearsal

        await record(store, "rehearsal", None, 1)
        await record(store, "load", None, 1, factor=1.7, rate=17000, expected_rate=10000)
        r = await c.get("/v1/migration/gate", params={"batch": "berlin-1"})
        assert r.json()["passed"] is True, r.json()

        r = await c.get("/v1/migration/gate", params={"batch": "hamburg"})
        assert_problem(r, 404, "unknown batch 'hamburg'")
        assert_problem(await c.get("/v1/migration/gate"), 422)
    async with api_server.client("legacy") as c:
        r = await c.get("/v1/migration/gate", params={"batch": "berlin-1"})
        assert r.status_code == 403


async def test_an_api_without_the_gate_wired_says_so(api_server):
    async with api_server.client("reader") as c:
        r = await c.get("/v1/migration/gate", params={"batch": "berlin-1"})
    assert_problem(r, 503, "without the go-live gate")
