"""`fleetgate vehicle-types list|add` against a real database, `devices register` with the new
types, and `fleetgate sim --mix` refusing a bad mix before it touches anything."""

from __future__ import annotations

import os

import orjson
import pytest

from telemetry.store import TelemetryStore
from tests.cli_runner import run_fleetgate
from tests.fixtures_db import run_async

pytestmark = pytest.mark.integration


def run(*args: str, dsn: str | None):
    env = {k: None for k in os.environ if k.startswith("FLEETGATE_")}
    if dsn is not None:
        env["FLEETGATE_DATABASE_URL"] = dsn
    return run_fleetgate(*args, env=env)


def stored_types(dsn: str) -> dict:
    async def load():
        async with await TelemetryStore.open(dsn) as store:
            return await store.vehicle_types()

    return run_async(load())


def test_list_shows_the_builtin_types_as_a_table_and_as_json(pg_dsn):
    table = run("vehicle-types", "list", dsn=pg_dsn)
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].split("\t")[:3] == ["id", "form_factor", "propulsion_type"]
    assert [line.split("\t")[0] for line in lines[1:]] == [
        "car",
        "cargo_ebike",
        "ebike",
        "moped",
        "scooter",
    ]
    assert "scooter\tscooter_standing\telectric\t20\t550.8\t20\tE-scooter" in lines
    as_json = run("vehicle-types", "list", "--json", dsn=pg_dsn)
    listed = orjson.loads(as_json.stdout)
    assert {t["id"]: t["form_factor"] for t in listed}["moped"] == "moped"


def test_add_then_change_a_type_and_register_a_vehicle_of_it(pg_dsn):
    added = run(
        "vehicle-types",
        "add",
        "trike",
        "--form-factor",
        "other",
        "--propulsion",
        "electric_assist",
        "--name",
        "Cargo trike",
        "--max-speed-kmh",
        "25",
        "--battery-ah",
        "20",
        "--battery-v",
        "48",
        "--swappable",
        dsn=pg_dsn,
    )
    assert added.exit_code == 0, added.output
    assert added.stdout.strip() == "vehicle type trike: added"
    trike = stored_types(pg_dsn)["trike"]
    assert (trike.name, trike.battery_capacity_wh, trike.battery_swappable) == (
        "Cargo trike",
        960.0,
        True,
    )
    changed = run(
        "vehicle-types",
        "add",
        "trike",
        "--form-factor",
        "other",
        "--propulsion",
        "electric_assist",
        "--low-soc-pct",
        "30",
        dsn=pg_dsn,
    )
    assert changed.stdout.strip() == "vehicle type trike: changed"
    assert stored_types(pg_dsn)["trike"].low_soc_pct == 30.0
    registered = run("devices", "register", "trike-1", "tcu-trike-1", "--type", "trike", dsn=pg_dsn)
    assert registered.exit_code == 0, registered.output


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (
            ["hb", "--form-factor", "hoverboard", "--propulsion", "electric"],
            "form_factor 'hoverboard' is not one of bicycle, cargo_bicycle, car",
        ),
        (["hb", "--form-factor", "other", "--propulsion", "steam"], "propulsion_type 'steam'"),
        (["h b", "--form-factor", "other", "--propulsion", "human"], "id must match"),
        (
            ["hb", "--form-factor", "other", "--propulsion", "electric", "--battery-ah", "10"],
            "both or neither",
        ),
        (
            ["hb", "--form-factor", "other", "--propulsion", "electric", "--low-soc-pct", "150"],
            "low_soc_pct must be between 0 and 100",
        ),
    ],
)
def test_a_bad_type_is_refused_with_its_reason_and_changes_nothing(pg_dsn, args, reason):
    result = run("vehicle-types", "add", *args, dsn=pg_dsn)
    assert result.exit_code == 2
    assert "nothing changed" in result.stderr and reason in result.stderr
    assert set(stored_types(pg_dsn)) == {"car", "cargo_ebike", "ebike", "moped", "scooter"}


def test_registering_an_unknown_type_names_the_known_ones(pg_dsn):
    result = run("devices", "register", "hb-1", "tcu-hb-1", "--type", "hoverboard", dsn=pg_dsn)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "fleetgate: nothing registered:",
        "  the arguments: vehicle_type 'hoverboard': unknown; known types are car, "
        "cargo_ebike, ebike, moped, scooter",
    ]
    for kind in ("scooter", "moped", "cargo_ebike"):
        ok = run("devices", "register", f"{kind}-1", f"tcu-{kind}-1", "--type", kind, dsn=pg_dsn)
        assert ok.exit_code == 0, ok.output


@pytest.mark.parametrize(
    ("mix", "reason"),
    [("bus=10", "unknown vehicle type 'bus'"), ("ebike=0", "the mix has no vehicles")],
)
def test_sim_refuses_a_bad_mix_before_connecting_anywhere(mix, reason):
    result = run("sim", "--mix", mix, "--samples", "1", dsn=None)
    assert result.exit_code == 2
    assert reason in result.output


def test_sim_registers_a_mixed_fleet(pg_dsn, tmp_path):
    env = {k: None for k in os.environ if k.startswith("FLEETGATE_")}
    env.update(FLEETGATE_DATABASE_URL=pg_dsn, FLEETGATE_DATA_DIR=str(tmp_path))
    result = run_fleetgate(
        "sim", "--vehicles", "10", "--mix", "ebike=60,scooter=30,car=10", "--register-only", env=env
    )
    assert result.exit_code == 0, result.output
    assert "10 simulated devices registered, 10 new secrets" in result.stdout

    async def types_of_registered():
        async with await TelemetryStore.open(pg_dsn) as store:
            return sorted(d.vehicle_type for d in (await store.load_registry()).values())

    assert run_async(types_of_registered()) == ["car"] + ["ebike"] * 6 + ["scooter"] * 3


def test_the_speed_settings_override_a_types_plausibility_limit_only_when_set(monkeypatch):
    from fleetgate.settings import Settings
    from fleetgate.wiring import plausibility_overrides

    for name in [k for k in os.environ if k.startswith("FLEETGATE_")]:
        monkeypatch.delenv(name)
    assert plausibility_overrides(Settings.load()) == {}
    monkeypatch.setenv("FLEETGATE_CAR_MAX_SPEED_KMH", "200")
    assert plausibility_overrides(Settings.load()) == {"car": 200.0}
