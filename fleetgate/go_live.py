"""The go-live gate of a migration batch over IO (docs/migration.md "The go-live gate"): the
evidence from the store, each named process's /readyz, the gateway processes the database sees;
the verdict from migration/gate.py. `fleetgate migrate gate` prints it, and the roof hands it to
the API (GET /v1/migration/gate), which does not import the migration room.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from migration.gate import GateThresholds, GateVerdict, ProcessReadiness, evaluate_gate

if TYPE_CHECKING:
    from telemetry.store import TelemetryStore

READY_TIMEOUT_S = 5.0
# Every gateway process with commands enabled keeps a session of this name (held or standing by):
# the processes the database knows of (gateway/dispatcher_lease.py).
LEASE_APPLICATION = "fleetgate-dispatcher-lease"


def ready_urls_setting(value: str) -> list[str]:
    """The entries of FLEETGATE_MIGRATION_READY_URLS (comma-separated)."""
    return [part.strip() for part in value.split(",") if part.strip()]


async def known_batch(store: TelemetryStore, batch: str) -> bool:
    """A batch is known once a migration run or a piece of evidence carries its name."""
    return bool(await store.migration_runs(batch, limit=1)) or bool(
        await store.migration_evidence(batch=batch, limit=1)
    )


async def readiness(urls: Sequence[str]) -> list[ProcessReadiness]:
    """Each URL's /readyz answer."""
    import httpx

    async def one(client: httpx.AsyncClient, url: str) -> ProcessReadiness:
        try:
            r = await client.get(url)
        except httpx.HTTPError as exc:
            return ProcessReadiness(url, False, f"no answer: {type(exc).__name__}: {exc}"[:200])
        if r.status_code == 200:
            return ProcessReadiness(url, True)
        reasons = ""
        try:
            checks = r.json().get("checks", {})
            reasons = ", ".join(f"{k}: {v}" for k, v in checks.items() if v != "ok")
        except (ValueError, AttributeError):
            pass
        return ProcessReadiness(url, False, f"{r.status_code}{f': {reasons}' if reasons else ''}")

    async with httpx.AsyncClient(timeout=READY_TIMEOUT_S) as client:
        return list(await asyncio.gather(*(one(client, u) for u in urls)))


async def lease_sessions(store: TelemetryStore) -> int:
    """How many gateway processes the database sees (their dispatcher-lease sessions)."""
    async with store.connection() as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = %s",
            (LEASE_APPLICATION,),
        )
        return (await cur.fetchone())[0]


async def gate_verdict(
    store: TelemetryStore,
    batch: str,
    ready_urls: Sequence[str],
    thresholds: GateThresholds | None = None,
) -> GateVerdict | None:
    """The gate's verdict on batch now; None for a batch nobody has heard of."""
    if not await known_batch(store, batch):
        return None
    evidence = await store.migration_evidence(limit=10_000)
    processes = await readiness(ready_urls)
    sessions = await lease_sessions(store)
    if sessions > len(ready_urls):
        processes.append(
            ProcessReadiness(
                "database",
                False,
                f"it sees {sessions} gateway processes (dispatcher-lease sessions) but "
                f"{len(ready_urls)} readiness URLs are named: name every process",
            )
        )
    return evaluate_gate(batch, evidence, datetime.now(UTC), processes, thresholds)
