"""The TimescaleDB storage path: hypertable, compression, retention, the continuous aggregate,
and the same answers as the native path."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from telemetry.store import StorageMismatch, TelemetryStore, VehicleRegistration, migrate
from tests.batches import DAY_MS, HOUR_MS, make_batch, ms, now_ms
from tests.stored_rows import assert_samples_between_reads_back_what_was_written, fetch

pytestmark = [pytest.mark.integration, pytest.mark.timescaledb]


async def registered(store: TelemetryStore, n: int = 2) -> list[int]:
    ids = await store.register_vehicles(
        [VehicleRegistration(f"veh-{i}", f"tcu-{i}", "ebike") for i in range(n)]
    )
    return [ids[f"tcu-{i}"] for i in range(n)]


async def jobs(dsn: str) -> dict[str, dict]:
    rows = await fetch(
        dsn,
        "SELECT proc_name, config FROM timescaledb_information.jobs "
        "WHERE proc_name LIKE 'policy_%%'",
    )
    return {r["proc_name"]: r["config"] for r in rows}


async def test_positions_is_a_compressed_hypertable_with_retention_and_refresh_policies(
    timescale_dsn,
):
    (dim,) = await fetch(
        timescale_dsn,
        "SELECT column_name, time_interval "
        "FROM timescaledb_information.dimensions "
        "WHERE hypertable_name = 'positions'",
    )
    assert dim["column_name"] == "time" and dim["time_interval"].days == 1
    settings = await fetch(
        timescale_dsn,
        "SELECT segmentby, orderby "
        "FROM timescaledb_information.hypertable_compression_settings "
        "WHERE hypertable = 'positions'::regclass",
    )
    assert settings == [{"segmentby": "vehicle", "orderby": '"time" DESC'}]
    policies = await jobs(timescale_dsn)
    assert policies["policy_retention"]["drop_after"] == "30 days"
    assert policies["policy_compression"]["compress_after"] == "7 days"
    assert "policy_refresh_continuous_aggregate" in policies
    (cagg,) = await fetch(
        timescale_dsn,
        "SELECT materialized_only "
        "FROM timescaledb_information.continuous_aggregates "
        "WHERE view_name = 'positions_1m'",
    )
    assert cagg["materialized_only"] is False, "recent minutes are answered in real time"


async def test_a_reupload_into_a_compressed_chunk_is_still_counted_as_duplicates(timescale_dsn):
    async with await TelemetryStore.open(timescale_dsn) as store:
        (v, _) = await registered(store)
        t = now_ms() - 3 * DAY_MS
        batch = make_batch([{"vehicle": v, "t": t + k * 1000, "soc_pct": 50} for k in range(50)])
        assert (await store.write(batch, [])).inserted == 50
        async with await psycopg.AsyncConnection.connect(timescale_dsn, autocommit=True) as conn:
            await conn.execute("SELECT compress_chunk(c) FROM show_chunks('positions') c")
        (compressed,) = await fetch(
            timescale_dsn,
            "SELECT count(*) AS n FROM timescaledb_information.chunks "
            "WHERE hypertable_name = 'positions' AND is_compressed",
        )
        assert compressed["n"] >= 1

        again = await store.write(batch, [])
        assert (again.inserted, again.duplicates) == (0, 50)
        late = await store.write(make_batch([{"vehicle": v, "t": t + 100_000}]), [])
        assert late.inserted == 1, "a late sample still lands in the compressed chunk"
    (count,) = await fetch(timescale_dsn, "SELECT count(*) AS n FROM positions")
    assert count["n"] == 51


async def test_positions_1m_gives_the_same_answer_on_both_storage_paths(timescale_dsn, pg_dsn):
    minute = (now_ms() - HOUR_MS) // 60_000 * 60_000
    answers = []
    for dsn in (pg_dsn, timescale_dsn):
        async with await TelemetryStore.open(dsn) as store:
            a, b = await registered(store)
            await store.write(
                make_batch(
                    [
                        {
                            "vehicle": a,
                            "t": minute + 1000,
                            "lat": 52.50,
                            "lon": 13.40,
                            "speed_kmh": 10,
                            "soc_pct": 80,
                        },
                        {
                            "vehicle": a,
                            "t": minute + 30_000,
                            "lat": 52.51,
                            "lon": 13.41,
                            "speed_kmh": 14,
                        },
                        {"vehicle": a, "t": minute + 50_000, "lat": 9.0, "lon": 9.0, "flags": 1},
                        {"vehicle": a, "t": minute + 70_000, "speed_kmh": 3, "soc_pct": 79.5},
                        {"vehicle": b, "t": minute + 5000, "lat": 48.1, "lon": 11.5},
                    ]
                ),
                [],
            )
        answers.append(await fetch(dsn, "SELECT * FROM positions_1m ORDER BY vehicle, bucket"))
    native, timescale = answers
    assert native == timescale
    assert [(r["vehicle"], ms(r["bucket"]), r["samples"]) for r in native] == [
        (a, minute, 3),
        (a, minute + 60_000, 1),
        (b, minute, 1),
    ]
    assert (native[0]["lat"], native[0]["lon"], native[0]["soc_pct"]) == (52.51, 13.41, 80.0)

    # Materialised by the refresh job, the aggregate still says the same.
    async with await psycopg.AsyncConnection.connect(timescale_dsn, autocommit=True) as conn:
        await conn.execute("CALL refresh_continuous_aggregate('positions_1m', NULL, NULL)")
    materialised = await fetch(timescale_dsn, "SELECT * FROM positions_1m ORDER BY vehicle, bucket")
    assert materialised == native


async def test_maintain_puts_back_a_missing_policy_and_is_quiet_otherwise(timescale_dsn):
    async with await psycopg.AsyncConnection.connect(timescale_dsn, autocommit=True) as conn:
        await conn.execute("SELECT remove_retention_policy('positions')")
    async with await TelemetryStore.open(timescale_dsn) as store:
        report = await store.maintain()
        assert report.policies_fixed == ["retention policy on positions"]
        assert (await store.maintain()).policies_fixed == []
    assert (await jobs(timescale_dsn))["policy_retention"]["drop_after"] == "30 days"


async def test_a_new_retention_setting_updates_the_policies(timescale_dsn):
    report = await migrate(timescale_dsn, retention_days=10)
    assert report.storage == "timescaledb" and report.applied == []
    assert "retention changed from 30 to 10 days" in str(report)
    policies = await jobs(timescale_dsn)
    assert policies["policy_retention"]["drop_after"] == "10 days"
    assert policies["policy_compression"]["compress_after"] == "5 days"


async def test_auto_picks_timescaledb_where_it_loads_and_never_switches(timescale_server):
    with timescale_server.database("fgtest_tsdb") as dsn:
        report = await migrate(dsn, storage="auto")
        assert report.storage == "timescaledb" and report.version == report.applied[-1]
        assert report.changes == [], "the policies the migrations create match the settings"
        with pytest.raises(StorageMismatch, match="migrated with timescaledb storage"):
            await migrate(dsn, storage="native")


async def test_maintain_reports_timescaledb_jobs_whose_last_run_failed(timescale_dsn):
    """A policy can exist and still fail on every run: maintain() names such jobs and their
    error, and the gateway logs them and exports fleetgate_timescaledb_jobs_failing."""
    async with await psycopg.AsyncConnection.connect(timescale_dsn, autocommit=True) as conn:
        await conn.execute("""
            CREATE PROCEDURE broken_job(job_id int, config jsonb) LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'the disk is full'; END $$""")
        job = (
            await (
                await conn.execute(
                    "SELECT add_job('broken_job', INTERVAL '1 hour', initial_start => now())"
                )
            ).fetchone()
        )[0]
    async with await TelemetryStore.open(timescale_dsn) as store:
        for _ in range(200):  # the scheduler starts the job within a few seconds
            report = await store.maintain()
            if any(f"job {job} broken_job" in j for j in report.failing_jobs):
                break
            await asyncio.sleep(0.1)
        mine = [j for j in report.failing_jobs if f"job {job} " in j]
        assert mine and "the disk is full" in mine[0]
        assert "failing:" in str(report)


async def test_samples_between_reads_compressed_and_uncompressed_chunks(timescale_dsn):
    async def compress_every_chunk() -> None:
        async with await psycopg.AsyncConnection.connect(timescale_dsn, autocommit=True) as conn:
            await conn.execute(
                "SELECT compress_chunk(c, if_not_compressed => true) "
                "FROM show_chunks('positions') c"
            )
        (row,) = await fetch(
            timescale_dsn,
            "SELECT count(*) AS n FROM "
            "timescaledb_information.chunks WHERE "
            "hypertable_name = 'positions' AND is_compressed",
        )
        assert row["n"] >= 1

    async with await TelemetryStore.open(timescale_dsn) as store:
        vehicles = await registered(store, 3)
        # What a replay may meet: samples in a compressed chunk, and in a chunk being written.
        await assert_samples_between_reads_back_what_was_written(
            store, vehicles, now_ms() - 3 * DAY_MS, before_read=compress_every_chunk
        )
        await assert_samples_between_reads_back_what_was_written(
            store, vehicles, now_ms() - 2 * HOUR_MS
        )
