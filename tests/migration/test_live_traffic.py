"""An import while the gateway ingests live traffic: a simulated fleet (firmware_sim) through the
real broker and gateway, and a migration of history — of other vehicles and of the simulated
ones themselves — into the same database at the same time. Every simulated sample is stored
exactly once, and so is every imported one."""

from __future__ import annotations

import asyncio
import time

import pytest

from firmware_sim import Fleet, FleetOptions
from migration.importer import ImportOptions, import_export
from migration.traccar_export import read_traccar_folder
from telemetry.store import TelemetryStore
from tests.harness import eventually, gateway_config, metric, register, running_gateway, stored_keys
from tests.migration_exports import synthetic_export

pytestmark = pytest.mark.integration


async def test_every_simulated_sample_is_stored_once_while_an_import_runs(
    mosquitto, pg_dsn, topic_root, tmp_path
):
    fleet = Fleet(
        FleetOptions(
            vehicles=10,
            rate_hz=5.0,
            fast=True,
            samples_per_vehicle=200,
            seed=5,
            track_keys=True,
            host=mosquitto.host,
            port=mosquitto.port,
            topic_root=topic_root,
        )
    )
    await register(pg_dsn, fleet.registrations())
    # Three days of history of 30 other e-bikes and of the 10 simulated vehicles, written in
    # small chunks so that the import's writes interleave with the gateway's batches.
    start = int(time.time() * 1000) - 4 * 86_400_000
    export = synthetic_export(
        tmp_path / "export",
        devices=30,
        days=3,
        per_day=100,
        first_day_ms=start,
        named=[r for r in fleet.registrations() if r[2] == "ebike"]
        + [r for r in fleet.registrations() if r[2] == "car"],
    )
    imported_rows = 40 * 3 * 100
    async with running_gateway(gateway_config(pg_dsn, mosquitto, topic_root)) as (_gw, reg):
        await fleet.start()
        async with await TelemetryStore.open(pg_dsn) as store:
            importing = asyncio.create_task(
                import_export(
                    store, read_traccar_folder(export), "live", ImportOptions(chunk_rows=500)
                )
            )
            stored_when_done: list[float] = []
            importing.add_done_callback(
                lambda _: stored_when_done.append(metric(reg, "fleetgate_samples_stored_total"))
            )
            await fleet.run()
            report = await importing
        stats = await fleet.stop()
        expected = stats.acked_keys()
        assert len(expected) == 10 * 200

        async def all_stored() -> bool:
            return metric(reg, "fleetgate_samples_stored_total") >= len(expected)

        await eventually(all_stored, timeout=60, what="every acknowledged sample stored")
    assert report.outcome == "imported", report.to_json()["problems"]
    assert stored_when_done[0] > 0, "the gateway stored live samples while the import ran"
    assert report.imported["vehicles"] == 30  # the simulated ones were registered already
    assert report.imported["positions"] == imported_rows
    keys = await stored_keys(pg_dsn)
    assert len(keys) == len(set(keys)), "nothing stored twice"
    history = {k for k in keys if k[1] < start + 3 * 86_400_000}
    assert len(history) == imported_rows
    assert set(keys) - history == expected, "exactly the simulated samples, each once"
