"""The `fleetgate` command against a real database: migrations, zones in and out, settings."""

from __future__ import annotations

import json

import orjson
import pytest

from tests.cli_runner import run_fleetgate
from tests.zones import gbfs_doc

pytestmark = pytest.mark.integration

RULE = {
    "ride_start_allowed": False,
    "ride_end_allowed": False,
    "ride_through_allowed": True,
    "maximum_speed_kph": 10,
}


def feature(x0: float, y0: float, x1: float, y1: float, name: str) -> dict:
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    return {
        "type": "Feature",
        "geometry": {"type": "MultiPolygon", "coordinates": [[ring]]},
        "properties": {"name": [{"text": name, "language": "en"}], "rules": [RULE]},
    }


def test_zones_import_list_and_export_as_gbfs(pg_dsn, tmp_path):
    env = {"FLEETGATE_DATABASE_URL": pg_dsn}
    path = tmp_path / "geofencing_zones.json"
    path.write_bytes(
        orjson.dumps(
            gbfs_doc(
                feature(13.40, 52.50, 13.41, 52.51, "Mitte"),
                feature(13.42, 52.50, 13.43, 52.51, "Kreuzberg"),
            )
        )
    )
    result = run_fleetgate("zones", "import", str(path), "--replace", env=env)
    assert result.exit_code == 0, result.output
    assert "2 zones replace the zone set" in result.output

    listed = run_fleetgate("zones", "list", env=env).output
    assert "Mitte" in listed and "Kreuzberg" in listed

    exported = json.loads(run_fleetgate("zones", "export", "--gbfs", env=env).output)
    names = [
        f["properties"]["name"][0]["text"] for f in exported["data"]["geofencing_zones"]["features"]
    ]
    assert names == ["Mitte", "Kreuzberg"]  # file order is precedence, kept
    assert exported["data"]["geofencing_zones"]["features"][0]["properties"]["rules"] == [RULE]


def test_an_invalid_zone_file_is_refused_and_changes_nothing(pg_dsn, tmp_path):
    env = {"FLEETGATE_DATABASE_URL": pg_dsn}
    good = tmp_path / "good.json"
    good.write_bytes(orjson.dumps(gbfs_doc(feature(13.40, 52.50, 13.41, 52.51, "Mitte"))))
    assert run_fleetgate("zones", "import", str(good), env=env).exit_code == 0
    before = run_fleetgate("zones", "export", env=env).output

    bowtie = {
        "type": "Feature",
        "properties": {"rules": [RULE]},
        "geometry": {
            "type": "MultiPolygon",
            "coordinates": [
                [[[13.40, 52.50], [13.41, 52.51], [13.41, 52.50], [13.40, 52.51], [13.40, 52.50]]]
            ],
        },
    }
    bad = tmp_path / "bad.json"
    bad.write_bytes(orjson.dumps(gbfs_doc(bowtie)))
    result = run_fleetgate("zones", "import", str(bad), "--replace", env=env)
    assert result.exit_code == 2
    assert "rejected, nothing changed" in result.output and "Self-intersection" in result.output
    assert run_fleetgate("zones", "export", env=env).output == before


def test_a_gbfs_import_sets_kinds_by_zone_name_or_id_and_refuses_unknown_ones(pg_dsn, tmp_path):
    env = {"FLEETGATE_DATABASE_URL": pg_dsn}
    path = tmp_path / "geofencing_zones.json"
    path.write_bytes(
        orjson.dumps(
            gbfs_doc(
                feature(13.3, 52.4, 13.5, 52.6, "Service area"),
                feature(13.40, 52.50, 13.41, 52.51, "Mitte"),
                feature(13.42, 52.50, 13.43, 52.51, "Kreuzberg"),
            )
        )
    )
    mapping = tmp_path / "kinds.json"
    mapping.write_bytes(orjson.dumps({"gbfs-2": "slow"}))
    for bad, words in (
        (["--kind", "Tiergarten=no_parking"], ["'Tiergarten'", "'Mitte'"]),
        (["--kind", "Mitte=parking_lot"], ["parking_lot", "operating_area"]),
        (["--kind", "Mitte"], ["NAME_OR_ID=KIND"]),
        (["--kind", "Mitte=slow", "--kind", "gbfs-1=station"], ["two kinds"]),
    ):
        result = run_fleetgate("zones", "import", str(path), *bad, env=env)
        assert result.exit_code == 2, (bad, result.output)
        assert all(w in result.output for w in words), (bad, result.output)
        assert "0 zones" in run_fleetgate("zones", "list", env=env).output, "nothing stored"

    result = run_fleetgate(
        "zones",
        "import",
        str(path),
        "--kind",
        "Service area=operating_area",
        "--kind",
        "Mitte=no_parking",
        "--kinds",
        str(mapping),
        env=env,
    )
    assert result.exit_code == 0, result.output
    exported = json.loads(run_fleetgate("zones", "export", env=env).output)
    assert [(z["id"], z["name"], z["kind"]) for z in exported["zones"]] == [
        ("gbfs-0", "Service area", "operating_area"),
        ("gbfs-1", "Mitte", "no_parking"),
        ("gbfs-2", "Kreuzberg", "slow"),
    ]


def test_db_migrate_is_idempotent_and_reports_the_storage(empty_pg_dsn):
    env = {"FLEETGATE_DATABASE_URL": empty_pg_dsn, "FLEETGATE_STORAGE": "native"}
    first = run_fleetgate("db", "migrate", env=env)
    assert first.exit_code == 0 and "native storage" in first.output and "applied" in first.output
    again = run_fleetgate("db", "migrate", env=env)
    assert again.exit_code == 0 and "already up to date" in again.output


def test_db_migrate_refuses_to_switch_storage_with_one_line(empty_pg_dsn):
    assert (
        run_fleetgate(
            "db",
            "migrate",
            env={"FLEETGATE_DATABASE_URL": empty_pg_dsn, "FLEETGATE_STORAGE": "native"},
        ).exit_code
        == 0
    )
    result = run_fleetgate(
        "db",
        "migrate",
        env={"FLEETGATE_DATABASE_URL": empty_pg_dsn, "FLEETGATE_STORAGE": "timescaledb"},
    )
    assert result.exit_code == 2 and "migration failed" in result.output


def test_config_show_masks_secrets_and_bad_settings_exit_2():
    shown = run_fleetgate(
        "config",
        "show",
        env={
            "FLEETGATE_DATABASE_URL": "postgresql://fg:hunter2@db/fg",
            "FLEETGATE_MQTT_PASSWORD": "s3cret",
        },
    )
    assert shown.exit_code == 0
    assert "hunter2" not in shown.output and "s3cret" not in shown.output
    assert json.loads(shown.output)["database_url"] == "postgresql://fg:***@db/fg"
    bad = run_fleetgate("config", "show", env={"FLEETGATE_BATCH_MAX_AGE_MS": "-5"})
    assert bad.exit_code == 2 and "batch_max_age_ms" in bad.output


def test_a_config_file_is_read_the_environment_wins_and_sources_are_shown(tmp_path):
    config = tmp_path / "fleetgate.toml"
    config.write_text(
        'mqtt_client_id = "gw-from-file"\nretention_days = 90\n'
        'database_url = "postgresql://fg:hunter2@db/fg"\n'
    )
    env = {"FLEETGATE_CONFIG": str(config), "FLEETGATE_RETENTION_DAYS": "45"}
    shown = run_fleetgate("config", "show", "--sources", env=env)
    assert shown.exit_code == 0, shown.output
    settings = json.loads(shown.output)
    assert settings["mqtt_client_id"] == {
        "value": "gw-from-file",
        "source": f"config file {config}",
    }
    assert settings["retention_days"] == {
        "value": 45,
        "source": "environment FLEETGATE_RETENTION_DAYS",
    }
    assert settings["batch_max_age_ms"] == {"value": 50, "source": "default"}
    assert settings["database_url"]["value"] == "postgresql://fg:***@db/fg"
    assert "hunter2" not in shown.output


def test_a_bad_config_file_names_the_key_and_the_file(tmp_path):
    config = tmp_path / "fleetgate.toml"
    config.write_text("mqtt_protcol = 5\nbatch_max_age_ms = -5\n")
    result = run_fleetgate("config", "show", env={"FLEETGATE_CONFIG": str(config)})
    assert result.exit_code == 2
    assert f"mqtt_protcol (config file {config}): unknown setting" in result.output
    assert f"batch_max_age_ms = -5 (config file {config}):" in result.output
    config.write_text("retention_days = [30\n")
    broken = run_fleetgate("config", "show", env={"FLEETGATE_CONFIG": str(config)})
    assert broken.exit_code == 2 and f"{config} is not valid TOML" in broken.output
    missing = run_fleetgate("config", "show", env={"FLEETGATE_CONFIG": str(tmp_path / "nope.toml")})
    assert missing.exit_code == 2 and "no such file" in missing.output


def test_credentials_in_the_mqtt_url_are_refused_not_shown():
    result = run_fleetgate(
        "config", "show", env={"FLEETGATE_MQTT_URL": "mqtt://gw:s3cret@broker:1883"}
    )
    assert result.exit_code == 2
    assert "mqtt_url" in result.output and "mqtt_username and mqtt_password" in result.output
    assert "s3cret" not in result.output and "mqtt://gw:***@broker:1883" in result.output
    shown = run_fleetgate(
        "config",
        "show",
        env={
            "FLEETGATE_MQTT_URL": "mqtt://broker:1883",
            "FLEETGATE_MQTT_USERNAME": "gw",
            "FLEETGATE_MQTT_PASSWORD": "s3cret",
        },
    )
    assert shown.exit_code == 0 and "s3cret" not in shown.output
