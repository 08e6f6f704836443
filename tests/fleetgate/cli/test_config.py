"""`fleetgate config show`: the settings from a config file and the environment with their
sources, secrets masked, and a bad setting or file named with exit status 2. No services."""

from __future__ import annotations

import json

from tests.cli_runner import run_fleetgate


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


def test_a_bad_dialect_file_stops_the_start_naming_the_file_and_key(tmp_path):
    dialect = tmp_path / "legacy.toml"
    dialect.write_text(
        '[dialect]\nname = "x"\ntopic = "legacy/{device_id}/pos"\n'
        '[time]\nfield = "ts"\nformat = "epoch_us"\n[fields]\nlat = "la"\nlon = "lo"\n'
    )
    bad = run_fleetgate("config", "show", env={"FLEETGATE_MQTT_DIALECTS": f"flat-json,{dialect}"})
    assert bad.exit_code == 2
    assert f"{dialect}: time.format" in bad.output and "epoch_us" in bad.output
    good = run_fleetgate("config", "show", env={"FLEETGATE_MQTT_DIALECTS": "traccar-osmand"})
    assert good.exit_code == 0, good.output
