"""`fleetgate devices register`: one device from the arguments or a fleet from a CSV or JSON file,
checked as `POST /v1/devices` checks it, stored whole or not at all, against a real database."""

from __future__ import annotations

import asyncio
import os

import orjson
import pytest

from telemetry.store import TelemetryStore
from tests.cli_runner import run_fleetgate
from tests.fixtures_db import run_async

pytestmark = pytest.mark.integration


def run(*args: str, dsn: str, input: str | None = None):
    env = {
        **{k: None for k in os.environ if k.startswith("FLEETGATE_")},
        "FLEETGATE_DATABASE_URL": dsn,
    }
    return run_fleetgate("devices", "register", *args, env=env, input=input)


def registry(dsn: str) -> dict[str, tuple[str, str]]:
    """vehicle_ref -> (device_id, vehicle_type) of every registered vehicle."""

    async def load():
        store = await TelemetryStore.open(dsn)
        try:
            return {
                d.vehicle_ref: (d.device_id, d.vehicle_type)
                for d in (await store.load_registry()).values()
            }
        finally:
            await store.close()

    return run_async(load())


def test_one_device_then_a_fleet_from_csv_then_from_json_on_standard_input(pg_dsn, tmp_path):
    one = run("bike-0001", "tcu-0001", "--type", "ebike", dsn=pg_dsn)
    assert one.exit_code == 0, one.output
    assert "registered 1 vehicle: 1 new" in one.stdout
    assert "devices without a secret yet: 1" in one.stderr

    fleet = tmp_path / "fleet.csv"  # as a spreadsheet saves it: a BOM, spaces, a blank line
    fleet.write_text(
        "\ufeffvehicle_ref, device_id, vehicle_type, notes\n"
        "bike-0001, tcu-0001, ebike, unchanged\n\n"
        "bike-0002, tcu-0002, ebike,\n"
        "car-0001, tcu-0101, car, new\n",
        encoding="utf-8",
    )
    from_csv = run("--file", str(fleet), dsn=pg_dsn)
    assert from_csv.exit_code == 0, from_csv.output
    assert "registered 3 vehicles: 2 new, 1 unchanged" in from_csv.stdout

    swap = [
        {"vehicle_ref": "bike-0002", "device_id": "tcu-0009", "vehicle_type": "ebike"},
        {"vehicle_ref": "car-0001", "device_id": "tcu-0101", "vehicle_type": "ebike"},
    ]
    from_json = run("--file", "-", dsn=pg_dsn, input=orjson.dumps(swap).decode())
    assert from_json.exit_code == 0, from_json.output
    assert from_json.stdout.splitlines() == [
        "registered 2 vehicles: 2 changed",
        "bike-0002: device tcu-0009 replaces tcu-0002 (whose secret stops working)",
        "car-0001: vehicle type ebike (was car)",
    ]
    assert registry(pg_dsn) == {
        "bike-0001": ("tcu-0001", "ebike"),
        "bike-0002": ("tcu-0009", "ebike"),
        "car-0001": ("tcu-0101", "ebike"),
    }


def test_a_fleet_file_with_bad_entries_registers_nothing_and_names_every_one(pg_dsn, tmp_path):
    fleet = tmp_path / "fleet.csv"
    fleet.write_text(
        "vehicle_ref,device_id,vehicle_type\n"
        "bike-0001,tcu-0001,ebike\n"
        "bike-0002,tcu 0002,ebike\n"
        "bike-0003,tcu-0003,bike\n"
        "bike-0004,tcu-0001,ebike\n"
        "bike-0005,tcu-0005\n"
    )
    result = run("--file", str(fleet), dsn=pg_dsn)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "fleetgate: nothing registered:",
        (
            f"  {fleet} line 3: device_id 'tcu 0002': String should match pattern "
            "'^[A-Za-z0-9_.:-]{1,64}$'"
        ),
        (
            f"  {fleet} line 4: vehicle_type 'bike': unknown; known types are car, "
            "cargo_ebike, ebike, moped, scooter"
        ),
        f"  {fleet} line 5: device_id 'tcu-0001' is already on {fleet} line 2",
        f"  {fleet} line 6: 2 values where the header has 3",
    ]
    assert registry(pg_dsn) == {}

    no_header = tmp_path / "no-header.csv"
    no_header.write_text("bike-0001,tcu-0001,ebike\n")
    headless = run("--file", str(no_header), dsn=pg_dsn)
    assert headless.exit_code == 2 and "needs the columns vehicle_ref, device_id" in headless.stderr
    broken = run("--file", "-", dsn=pg_dsn, input='[{"vehicle_ref": "bike-0001",')
    assert broken.exit_code == 2 and "standard input is not valid JSON" in broken.stderr
    missing = run("--file", "-", dsn=pg_dsn, input='[{"vehicle_ref": "bike-0001"}, 7]')
    assert missing.exit_code == 2
    assert "standard input[0]: device_id: missing" in missing.stderr
    assert "standard input[1]: not an object" in missing.stderr
    assert registry(pg_dsn) == {}


def test_a_device_fitted_to_another_vehicle_is_refused_and_changes_nothing(pg_dsn):
    assert run("bike-0001", "tcu-0001", "--type", "ebike", dsn=pg_dsn).exit_code == 0
    taken = run(
        "--file",
        "-",
        dsn=pg_dsn,
        input=orjson.dumps(
            [
                {"vehicle_ref": "bike-0002", "device_id": "tcu-0002", "vehicle_type": "ebike"},
                {"vehicle_ref": "bike-0003", "device_id": "tcu-0001", "vehicle_type": "ebike"},
            ]
        ).decode(),
    )
    assert taken.exit_code == 2
    assert "nothing registered" in taken.stderr and "tcu-0001" in taken.stderr
    assert registry(pg_dsn) == {"bike-0001": ("tcu-0001", "ebike")}


def test_the_arguments_are_one_device_or_a_file_never_both(pg_dsn, tmp_path):
    half = run("bike-0001", dsn=pg_dsn)
    assert half.exit_code == 2 and "missing DEVICE_ID, --type" in half.output
    both = run("bike-0001", "tcu-0001", "--type", "ebike", "--file", "x.csv", dsn=pg_dsn)
    assert both.exit_code == 2 and "either VEHICLE_REF DEVICE_ID --type, or --file" in both.output
    nowhere = run("--file", str(tmp_path / "nope.csv"), dsn=pg_dsn)
    assert nowhere.exit_code == 2 and "cannot read" in nowhere.output
    assert registry(pg_dsn) == {}


BODIES = [
    {"vehicle_ref": "bike-1", "device_id": "tcu-1", "vehicle_type": "ebike"},
    {"vehicle_ref": "car-1", "device_id": "tcu.car:1_A", "vehicle_type": "car"},
    {"vehicle_ref": "r" * 128, "device_id": "d" * 64, "vehicle_type": "car"},
    {"vehicle_ref": "r" * 129, "device_id": "tcu-2", "vehicle_type": "car"},
    {"vehicle_ref": "bike-3", "device_id": "d" * 65, "vehicle_type": "ebike"},
    {"vehicle_ref": "bike-4", "device_id": "a/b", "vehicle_type": "ebike"},
    {"vehicle_ref": "", "device_id": "tcu-5", "vehicle_type": "ebike"},
    {"vehicle_ref": "bike-6", "device_id": "tcu-6", "vehicle_type": "bus"},
    {"vehicle_ref": "bike-7", "device_id": "tcu-7"},
]


async def test_the_command_line_accepts_and_refuses_what_post_v1_devices_does(api_server, pg_dsn):
    async with api_server.client("provisioning") as client:
        for body in BODIES:
            # The command runs its own event loop: in a thread, beside the API's.
            cli = await asyncio.to_thread(
                run, "--file", "-", dsn=pg_dsn, input=orjson.dumps(body).decode()
            )
            api = await client.post("/v1/devices", json=body)
            assert (cli.exit_code, api.status_code) in ((0, 201), (2, 422)), (
                body,
                cli.output,
                api.text,
            )
