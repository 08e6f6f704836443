"""The import shell against a real database, on both storage paths: what an import stores, that
it is all or nothing without --skip-invalid, idempotent, resumable as a delta, and recorded."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from migration.errors import UnreadableInput
from migration.importer import ImportOptions, import_export
from migration.mapping import parse_mapping
from migration.traccar_export import read_traccar_folder
from telemetry.store import DeviceCredentials, TelemetryStore, VehicleRegistration
from tests.migration_exports import copy_export, synthetic_export

pytestmark = pytest.mark.integration


@pytest.fixture(params=["native", pytest.param("timescaledb", marks=pytest.mark.timescaledb)])
def dsn(request) -> str:
    return request.getfixturevalue("pg_dsn" if request.param == "native" else "timescale_dsn")


async def rows(dsn: str, query: str, *params) -> list[tuple]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(query, params)
        return await cur.fetchall() if cur.description else []


async def imported(dsn: str, export, batch: str = "wave-1", **options):
    async with await TelemetryStore.open(dsn) as store:
        return await import_export(store, export, batch, ImportOptions(**options))


async def test_a_clean_export_lands_whole(dsn, tmp_path):
    export = read_traccar_folder(copy_export("traccar", tmp_path / "export"))
    report = await imported(dsn, export)
    assert report.outcome == "imported" and report.exit_code == 0
    assert report.imported == {"vehicles": 4, "devices": 4, "zones": 3, "positions": 9}
    assert report.counts == {"devices": 4, "geofences": 3, "groups": 2, "positions": 9}
    vehicles = await rows(dsn, "SELECT vehicle_ref, device_id, vehicle_type FROM vehicles")
    assert sorted(vehicles) == [
        ("Bike 001", "358762090000011", "ebike"),
        ("Car 12 (Zoé)", "358762090000037", "car"),
        ("Moped 3", "358762090000045", "moped"),
        ("Scooter 07", "358762090000029", "scooter"),
    ]
    (bike,) = await rows(
        dsn,
        "SELECT p.speed_kmh, p.soc_pct, p.odometer_m, p.ignition FROM positions p "
        "JOIN vehicles v ON v.id = p.vehicle WHERE v.vehicle_ref = 'Bike 001' "
        "AND p.speed_kmh > 0",
    )
    assert bike[0] == pytest.approx(9.0, abs=1e-3) and bike[1:] == (86, 152410, True)
    (no_fix,) = await rows(
        dsn,
        "SELECT p.lat, p.immobilised, p.pack_v FROM positions p JOIN vehicles v "
        "ON v.id = p.vehicle WHERE v.vehicle_ref = 'Scooter 07' AND p.immobilised",
    )
    assert no_fix[0] is None and no_fix[1] is True and no_fix[2] == pytest.approx(36.1)
    zones = await rows(dsn, "SELECT id, geometry->>'type' FROM zones ORDER BY id")
    assert zones == [("traccar-1", "Polygon"), ("traccar-2", "Circle"), ("traccar-3", "Polygon")]


async def test_the_same_import_twice_adds_nothing(dsn, tmp_path):
    export = read_traccar_folder(copy_export("traccar", tmp_path / "export"))
    await imported(dsn, export)
    async with await TelemetryStore.open(dsn) as store:
        version = await store.zone_set_version()
    again = await imported(dsn, export)
    assert again.outcome == "already_imported"
    assert again.imported == {"vehicles": 0, "devices": 0, "zones": 0, "positions": 0}
    assert again.duplicates == 9
    assert await rows(dsn, "SELECT count(*) FROM positions") == [(9,)]
    async with await TelemetryStore.open(dsn) as store:
        assert await store.zone_set_version() == version


async def test_any_invalid_record_means_nothing_is_imported(dsn, tmp_path):
    export = read_traccar_folder(copy_export("traccar_traps", tmp_path / "export"))
    report = await imported(dsn, export)
    assert report.outcome == "refused" and report.exit_code == 1
    assert report.imported == {"vehicles": 0, "devices": 0, "zones": 0, "positions": 0}
    for table in ("vehicles", "positions", "zones"):
        assert await rows(dsn, f"SELECT count(*) FROM {table}") == [(0,)]
    (run,) = await rows(dsn, "SELECT outcome, skipped->>'unknown_device' FROM migration_runs")
    assert run == ("refused", "1")


async def test_skip_invalid_imports_the_rest_and_counts_what_it_left(dsn, tmp_path):
    export = read_traccar_folder(copy_export("traccar_traps", tmp_path / "export"))
    report = await imported(dsn, export, skip_invalid=True)
    assert report.outcome == "imported" and report.exit_code == 1
    assert report.imported == {"vehicles": 2, "devices": 2, "zones": 1, "positions": 3}
    assert report.skipped["lat_out_of_range"] == 1 and report.skipped["unknown_device"] == 1
    refs = await rows(dsn, "SELECT vehicle_ref FROM vehicles ORDER BY 1")
    assert refs == [("Scooter 201",), ("Scooter 202",)]


async def test_a_device_fitted_to_another_vehicle_rejects_that_vehicle_and_its_chunk(dsn, tmp_path):
    async with await TelemetryStore.open(dsn) as store:
        await store.register_vehicles(
            [VehicleRegistration("already-here", "358762090000029", "ebike")]
        )
    export = read_traccar_folder(copy_export("traccar", tmp_path / "export"))
    refused = await imported(dsn, export)
    assert refused.outcome == "refused"
    assert refused.skipped == {"device_already_fitted": 3}
    report = await imported(dsn, export, skip_invalid=True)
    assert report.imported["vehicles"] == 3 and report.imported["positions"] == 7
    assert await rows(
        dsn,
        "SELECT count(*) FROM positions p JOIN vehicles v ON v.id = p.vehicle "
        "WHERE v.device_id = '358762090000029'",
    ) == [(0,)]


async def test_provision_issues_secrets_once(dsn, tmp_path):
    export = read_traccar_folder(copy_export("traccar", tmp_path / "export"))
    report = await imported(dsn, export, provision=True)
    assert sorted(s.device_id for s in report.secrets) == [
        "358762090000011",
        "358762090000029",
        "358762090000037",
        "358762090000045",
    ]
    async with await TelemetryStore.open(dsn) as store:
        issued = report.secrets[0]
        assert await DeviceCredentials(store).verify(issued.device_id, issued.secret)
    again = await imported(dsn, export, provision=True)
    assert again.secrets == [] and again.outcome == "already_imported"


async def test_since_last_run_takes_exactly_the_new_day(dsn, tmp_path):
    day_1 = int(time.time() * 1000) - int(29.5 * 86_400_000)
    first = synthetic_export(
        tmp_path / "days-1-29", devices=3, days=29, per_day=24, first_day_ms=day_1
    )
    report = await imported(dsn, read_traccar_folder(first))
    assert report.imported["positions"] == 3 * 29 * 24
    # The same export with day 30 appended; a day's rows removed by the operator in between
    # must not come back: the watermark, not deduplication, decides.
    second = synthetic_export(
        tmp_path / "days-1-30", devices=3, days=30, per_day=24, first_day_ms=day_1
    )
    await rows(
        dsn,
        "DELETE FROM positions WHERE time < (SELECT min(time) + interval '1 day' FROM positions)",
    )
    before = await rows(dsn, "SELECT count(*) FROM positions")
    delta = await imported(dsn, read_traccar_folder(second), "cut-over", since_last_run=True)
    assert delta.imported["positions"] == 3 * 24 and delta.duplicates == 0
    after = await rows(dsn, "SELECT count(*) FROM positions")
    assert after[0][0] - before[0][0] == 3 * 24
    (newest,) = await rows(
        dsn,
        "SELECT count(DISTINCT time::date) FROM positions WHERE time > "
        "(SELECT max(time) FROM positions) - interval '1 day'",
    )
    assert newest[0] >= 1
    again = await imported(dsn, read_traccar_folder(second), "cut-over", since_last_run=True)
    assert again.outcome == "already_imported" and again.duplicates == 0


async def test_the_runs_say_what_each_imported_and_skipped(dsn, tmp_path):
    export = read_traccar_folder(copy_export("traccar_traps", tmp_path / "export"))
    await imported(dsn, export, "wave-1")
    await imported(dsn, export, "wave-1", skip_invalid=True)
    async with await TelemetryStore.open(dsn) as store:
        runs = await store.migration_runs("wave-1")
        assert await store.migration_runs("wave-2") == []
    assert [r.outcome for r in runs] == ["imported", "refused"]
    assert runs[0].imported["positions"] == 3 and runs[0].skipped["time_in_future"] == 1
    assert runs[0].report["problems"][0]["file"].endswith("devices.json")


async def test_history_older_than_live_state_does_not_overwrite_it(dsn, tmp_path):
    from telemetry.batch import TelemetryBatch

    async with await TelemetryStore.open(dsn) as store:
        ids = await store.register_vehicles(
            [VehicleRegistration("Bike 001", "358762090000011", "ebike")]
        )
        live = TelemetryBatch.empty(1)
        live.vehicle[:] = ids["358762090000011"]
        live.time_ms[:] = live.received_ms[:] = int(time.time() * 1000)
        live.lat[:], live.lon[:], live.soc_pct[:] = 52.6, 13.5, 41.0
        await store.write(live)
    export = read_traccar_folder(copy_export("traccar", tmp_path / "export"))
    await imported(dsn, export)
    (state,) = await rows(
        dsn,
        "SELECT s.soc_pct, s.lat, s.time > now() - interval '1 minute' FROM vehicle_state s "
        "JOIN vehicles v ON v.id = s.vehicle WHERE v.vehicle_ref = 'Bike 001'",
    )
    assert state == (41.0, 52.6, True)
    assert await rows(
        dsn,
        "SELECT count(*) FROM positions p JOIN vehicles v ON v.id = p.vehicle "
        "WHERE v.vehicle_ref = 'Bike 001'",
    ) == [(4,)]


async def test_a_gbfs_feed_imports_vehicles_positions_zones_and_stations(dsn, tmp_path):
    from migration.gbfs_feeds import read_gbfs

    feeds = read_gbfs(str(copy_export("gbfs_v3", tmp_path / "gbfs")))
    refused = await imported(dsn, feeds, "gbfs")
    assert refused.outcome == "refused" and refused.skipped == {"unknown_vehicle_type": 2}
    report = await imported(dsn, feeds, "gbfs", skip_invalid=True)
    assert report.imported == {"vehicles": 3, "devices": 3, "zones": 3, "positions": 3}
    kinds = await rows(dsn, "SELECT id, kind FROM zones ORDER BY id")
    assert kinds == [
        ("gbfs-0", "other"),
        ("gbfs-station-st-hbf", "station"),
        ("gbfs-station-st-ost", "station"),
    ]
    (soc,) = await rows(
        dsn,
        "SELECT p.soc_pct FROM positions p JOIN vehicles v ON v.id = p.vehicle "
        "WHERE v.vehicle_ref = 'car-3001'",
    )
    assert soc[0] == pytest.approx(70.0)
    types = await rows(dsn, "SELECT vehicle_ref, vehicle_type FROM vehicles ORDER BY 1")
    assert types == [("bk-1001", "ebike"), ("car-3001", "car"), ("sc-2001", "scooter")]


async def test_a_type_the_installation_lacks_is_refused_and_one_it_adds_is_taken(dsn, tmp_path):
    """Types follow the store's registry: a mapping to a type nobody added is
    unknown_vehicle_type; once added (fleetgate vehicle-types add), the same import goes in."""
    from telemetry.vehicle_types import VehicleType

    export = read_traccar_folder(copy_export("traccar", tmp_path / "export"))
    mapping = parse_mapping('[vehicle_types.traccar]\nmotorcycle = "moped_45"\n')
    refused = await imported(dsn, export, mapping=mapping)
    assert refused.skipped == {"unknown_vehicle_type": 2}  # the moped and its position
    (problem,) = refused.problems
    assert (problem.record, problem.field) == ("4", "vehicle_type")
    async with await TelemetryStore.open(dsn) as store:
        await store.upsert_vehicle_types(
            [VehicleType("moped_45", "Moped 45 km/h", "moped", "electric", max_speed_kmh=45.0)]
        )
    report = await imported(dsn, export, mapping=mapping)
    assert report.outcome == "imported" and report.imported["vehicles"] == 4


async def test_a_csv_registers_its_good_lines(dsn):
    from migration.readers import read_export
    from tests.migration_exports import EXPORTS

    export = read_export("csv", str(EXPORTS / "fleet.csv"))
    report = await imported(dsn, export, "csv", skip_invalid=True)
    assert report.imported == {"vehicles": 3, "devices": 3, "zones": 0, "positions": 0}
    assert report.skipped == {
        "device_id_invalid": 1,
        "duplicate_device": 1,
        "unknown_vehicle_type": 1,
    }
    assert [(p.record, p.field) for p in report.problems] == [
        ("line 5", "device_id"),
        ("line 6", "device_id"),
        ("line 7", "vehicle_type"),
    ]
    assert await rows(dsn, "SELECT vehicle_type FROM vehicles WHERE vehicle_ref = 'bike-0101'") == [
        ("ebike",)
    ]


async def test_worker_processes_map_a_folder_as_this_process_does(dsn, tmp_path):
    export = synthetic_export(tmp_path / "export", devices=12, days=2, per_day=50)
    report = await imported(dsn, read_traccar_folder(export), workers=2, keep_bytes=20_000)
    assert report.imported["positions"] == 12 * 2 * 50 and report.counts["positions"] == 1200
    broken = export / "positions" / "device-7.json"
    broken.write_bytes(broken.read_bytes()[:1000])
    with pytest.raises(UnreadableInput) as raised:
        await imported(dsn, read_traccar_folder(export), "again", workers=2)
    assert raised.value.file == str(broken) and raised.value.offset == 1000


async def test_a_database_lost_mid_import_stops_it_and_the_next_run_completes_it(pg_dsn, tmp_path):
    """The connection to PostgreSQL is cut between two chunks (a TCP proxy in between): the
    import stops with the store's error, what it committed stays, and the same import run again
    stores the rest, every row once."""
    from telemetry.store import DataRefused, StoreUnavailable
    from tests.netproxy import TcpProxy

    export = synthetic_export(tmp_path / "export", devices=20, days=3, per_day=200)
    total = 20 * 3 * 200
    proxy = await TcpProxy.start_for(pg_dsn)
    try:
        store = await TelemetryStore.open(proxy.dsn(pg_dsn), timeout_s=2.0)
        importing = asyncio.create_task(
            import_export(store, read_traccar_folder(export), "w1", ImportOptions(chunk_rows=300))
        )
        while not (await rows(pg_dsn, "SELECT count(*) > 0 FROM positions"))[0][0]:
            assert not importing.done(), importing
            await asyncio.sleep(0.02)
        await proxy.cut()
        with pytest.raises((StoreUnavailable, DataRefused)):
            await importing
        await store.close()
    finally:
        await proxy.close()
    (at_cut,) = (await rows(pg_dsn, "SELECT count(*) FROM positions"))[0]
    assert 0 < at_cut < total
    assert await rows(pg_dsn, "SELECT count(*) FROM migration_runs") == [(0,)]
    report = await imported(pg_dsn, read_traccar_folder(export))
    assert report.imported["positions"] == total - at_cut and report.duplicates == at_cut
    assert await rows(
        pg_dsn, "SELECT count(*), count(DISTINCT (vehicle, time)) FROM positions"
    ) == [(total, total)]
