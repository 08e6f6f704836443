"""GET /v1/migration/validation: a shadow batch's parity report over HTTP, recording nothing;
POST /v1/migration/validations: the same, recorded as evidence like the command's, with the write
scope. An unknown batch a 404, a bad threshold a 422, the scopes required."""

from __future__ import annotations

import json

import pytest

from tests.api_client import assert_problem
from tests.cli_runner import run_fleetgate
from tests.fixtures_db import run_async
from tests.harness import register
from tests.shadow_runs import an_hour_ago, both_sides, parallel_run_evidence

pytestmark = pytest.mark.integration


@pytest.fixture
def batch(pg_dsn):
    run_async(register(pg_dsn, [(f"tcu-{n:02d}", f"veh-{n:02d}", "ebike") for n in range(40)]))
    result = run_fleetgate(
        "migrate", "shadow", "start", "--batch", "pilot", "--percent", "5", "--json",
        "--now", an_hour_ago(),
        env={"FLEETGATE_DATABASE_URL": pg_dsn},
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


async def test_the_report_says_each_metric_and_the_share_below_the_minimum(
    api_server, pg_dsn, batch
):
    await both_sides(pg_dsn, batch, shift_m=50.0)
    async with api_server.client("reader") as c:
        r = await c.get("/v1/migration/validation", params={"batch": "pilot"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["batch"] == "pilot" and len(body["vehicles"]) == 2
    assert body["below_minimum"] is True and body["percent"] == 5.0
    assert any("below the go-live minimum of 10 %" in n for n in body["notes"])
    assert body["metrics"]["position"]["colour"] == "red"
    assert body["metrics"]["position"]["p50_m"] == pytest.approx(50.0, abs=0.1)
    assert body["metrics"]["coverage"]["colour"] == "green"
    assert body["overall"] == "red" and body["passed"] is False
    assert body["evidence_id"] is None
    assert await parallel_run_evidence(pg_dsn) == [], "a look records nothing"

    async with api_server.client("legacy") as c:
        recorded = await c.post("/v1/migration/validations", json={"batch": "pilot"})
    assert recorded.status_code == 201, recorded.text
    assert {k: v for k, v in recorded.json().items() if k != "evidence_id"} == {
        k: v for k, v in body.items() if k != "evidence_id"
    }
    evidence = await parallel_run_evidence(pg_dsn)
    assert [(e.id, e.batch, e.passed, e.detail["below_minimum"]) for e in evidence] == [
        (recorded.json()["evidence_id"], "pilot", False, True)
    ]


async def test_thresholds_are_given_by_name(api_server, pg_dsn, batch):
    await both_sides(pg_dsn, batch, shift_m=50.0)
    loose = [
        f"position_p{q}_m.{c}={v}" for q in (50, 95) for c, v in (("green", 60), ("yellow", 90))
    ]
    async with api_server.client("reader") as c:
        r = await c.get("/v1/migration/validation", params={"batch": "pilot", "threshold": loose})
    assert r.status_code == 200, r.text
    assert r.json()["metrics"]["position"]["colour"] == "green"
    assert r.json()["thresholds"]["position_p95_m"]["green"] == 60.0
    async with api_server.client("legacy") as c:
        body = {
            "batch": "pilot",
            "thresholds": {t.split("=")[0]: float(t.split("=")[1]) for t in loose},
        }
        recorded = await c.post("/v1/migration/validations", json=body)
    assert recorded.status_code == 201, recorded.text
    assert recorded.json()["metrics"]["position"]["colour"] == "green"


async def test_an_unknown_batch_is_a_404_and_a_bad_threshold_a_422_recording_nothing(
    api_server, pg_dsn, batch
):
    async with api_server.client("reader") as c:
        unknown = await c.get("/v1/migration/validation", params={"batch": "nope"})
        bad = await c.get(
            "/v1/migration/validation", params={"batch": "pilot", "threshold": "speed=3"}
        )
        malformed = await c.get("/v1/migration/validation", params={"batch": "a b"})
    async with api_server.client("legacy") as c:
        post = "/v1/migration/validations"
        unknown_post = await c.post(post, json={"batch": "nope"})
        bad_post = await c.post(post, json={"batch": "pilot", "thresholds": {"speed": 3}})
        not_a_number = await c.post(post, json={"batch": "pilot", "thresholds": {"x": "high"}})
    assert_problem(unknown, 404, "no shadow batch 'nope'")
    assert_problem(bad, 422, "unknown threshold 'speed'")
    assert_problem(malformed, 422)
    assert_problem(unknown_post, 404, "no shadow batch 'nope'")
    assert_problem(bad_post, 422, "unknown threshold 'speed'")
    assert_problem(not_a_number, 422)
    assert await parallel_run_evidence(pg_dsn) == []


async def test_the_read_scope_looks_and_only_the_write_scope_records(api_server, pg_dsn, batch):
    async with api_server.client("legacy") as c:
        r = await c.get("/v1/migration/validation", params={"batch": "pilot"})
    async with api_server.client("reader") as c:
        w = await c.post("/v1/migration/validations", json={"batch": "pilot"})
    assert_problem(r, 403, "fleet:read")
    assert_problem(w, 403, "migration:write")
    assert await parallel_run_evidence(pg_dsn) == []


async def test_a_shadow_batch_is_started_listed_and_stopped_and_overlaps_are_a_409(
    api_server, pg_dsn
):
    await register(pg_dsn, [(f"tcu-{n:02d}", f"veh-{n:02d}", "ebike") for n in range(20)])
    async with api_server.client("legacy") as w, api_server.client("reader") as r:
        first = await w.post(
            "/v1/migration/shadow-batches", json={"batch": "pilot", "percent": 5, "seed": 3}
        )
        again = await w.post("/v1/migration/shadow-batches", json={"batch": "pilot"})
        wide = await w.post("/v1/migration/shadow-batches", json={"batch": "w", "percent": 100})
        bad = await w.post("/v1/migration/shadow-batches", json={"batch": "x", "percent": 0})
        read_only = await r.post("/v1/migration/shadow-batches", json={"batch": "y"})
        listed = await r.get("/v1/migration/shadow-batches")
        stopped = await w.post("/v1/migration/shadow-batches/pilot/stop")
        stopped_again = await w.post("/v1/migration/shadow-batches/pilot/stop")
        wide_now = await w.post("/v1/migration/shadow-batches", json={"batch": "w", "percent": 100})
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["state"] == "running" and body["below_minimum"] is True
    assert body["by_type"] == {"ebike": 1} and len(body["vehicles"]) == 1
    assert_problem(again, 409, "shadow batch 'pilot' is running")
    assert_problem(wide, 409, "running shadow batch 'pilot'")
    assert_problem(bad, 422)
    assert_problem(read_only, 403, "migration:write")
    assert [b["batch"] for b in listed.json()] == ["pilot"]
    assert stopped.status_code == 200 and stopped.json()["state"] == "stopped"
    assert_problem(stopped_again, 404, "no running shadow batch 'pilot'")
    assert wide_now.status_code == 201 and len(wide_now.json()["vehicles"]) == 20
