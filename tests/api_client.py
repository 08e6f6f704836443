"""What the API tests share, as a client of the API sees it: a fleet to ask about (vehicles
with a sample each, in the served database) and the shape every problem answer has (docs/api.md)."""

from __future__ import annotations

from telemetry.store import TelemetryStore, VehicleRegistration
from tests.batches import make_batch, now_ms

LAT0, LON0 = 52.52, 13.40
PROBLEM = "application/problem+json"


async def fleet(store: TelemetryStore, n: int = 25) -> dict[str, int]:
    """n vehicles (even: e-bikes, odd: cars) with one sample each; ref -> vehicles.id."""
    regs = [
        VehicleRegistration(f"veh-{i:03d}", f"tcu-{i:03d}", "ebike" if i % 2 == 0 else "car")
        for i in range(n)
    ]
    ids = await store.register_vehicles(regs)
    t = now_ms() - 60_000
    rows = []
    for i, r in enumerate(regs):
        rows.append(
            {
                "vehicle": ids[r.device_id],
                "t": t,
                "lat": LAT0 + i * 0.001,
                "lon": LON0 + i * 0.001,
                "soc_pct": 10.0 if i == 3 else 80.0,
                "locked": i != 5,
                "speed_kmh": 18.0 if i == 5 else 0.0,
                "immobilised": i == 7 if i % 2 else -1,
            }
        )
    await store.write(make_batch(rows), [])
    return {r.vehicle_ref: ids[r.device_id] for r in regs}


def assert_problem(response, status: int, *words: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status and body["title"] and body["detail"]
    for word in words:
        assert word in body["detail"], body
    if status == 422:  # docs/api.md: every 422 lists its reasons
        assert body["errors"], body
        for error in body["errors"]:
            assert isinstance(error["loc"], list) and error["msg"], body
    return body


async def events_settled(store: TelemetryStore, timeout: float = 60.0) -> None:
    """Wait until every event committed so far is past the commit-order horizon, so that
    /v1/events lists it (api/queries.py: no transaction that began before it still runs; on the
    shared test server other sessions' transactions count too)."""
    from tests.harness import eventually

    async def settled() -> bool:
        async with store.connection() as conn:
            cur = await conn.execute(
                "SELECT pg_snapshot_xmin(pg_current_snapshot()) > greatest("
                "(SELECT max(xid) FROM events), (SELECT max(xid) FROM command_history), '0')"
            )
            return (await cur.fetchone())[0]

    await eventually(settled, timeout, what="the events past the commit-order horizon")
