"""Settings as the wiring turns them into components. The [feeds] settings: read from the TOML
config file or FLEETGATE_FEEDS, checked when the settings load (the field named), turned into the
feeds' system by the wiring; the gateway's read gathering, in milliseconds, into its config."""

from __future__ import annotations

import json

import pytest

from fleetgate.settings import Settings, SettingsError
from fleetgate.wiring import feed_service, gateway_config

FEEDS_TOML = """
[feeds]
system_id = "berlin-bikes"
name = "Berlin Bikes"
operator = "Example Mobility GmbH"
languages = ["de", "en"]
timezone = "Europe/Berlin"
feed_contact_email = "feeds@example.org"
base_url = "https://api.example.org"
mds_provider_id = "5f7114d1-4091-46ee-b492-e55875f7de00"
id_secret = "a long random string, kept secret"

[[feeds.pricing_plans]]
plan_id = "standard"
name = "Standard"
currency = "EUR"
price = 1.0
"""
MINIMAL = {
    "system_id": "x",
    "name": "X",
    "operator": "O",
    "timezone": "UTC",
    "feed_contact_email": "a@b.org",
    "base_url": "http://localhost",
}


def test_a_feeds_table_becomes_the_published_system(tmp_path, monkeypatch):
    config = tmp_path / "fleetgate.toml"
    config.write_text(FEEDS_TOML)
    monkeypatch.setenv("FLEETGATE_CONFIG", str(config))
    settings = Settings.load()
    service = feed_service(settings)
    system = service.system
    assert system is not None and system.system_id == "berlin-bikes"
    assert system.languages == ("de", "en") and system.pricing_plans[0]["plan_id"] == "standard"
    assert system.id_secret == b"a long random string, kept secret"
    assert "kept secret" not in json.dumps(settings.masked())


def test_without_feeds_nothing_is_published_and_without_a_secret_one_is_drawn(monkeypatch):
    monkeypatch.delenv("FLEETGATE_FEEDS", raising=False)
    assert feed_service(Settings.load()).system is None
    monkeypatch.setenv("FLEETGATE_FEEDS", json.dumps(MINIMAL))
    first, second = (feed_service(Settings.load()).system for _ in range(2))
    assert len(first.id_secret) == 32 and first.id_secret != second.id_secret


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"timezone": "Berlin"}, "timezone"),
        ({"mds_provider_id": "nope"}, "provider_id"),
        ({"id_secret": "short"}, "id_secret"),
        ({"languages": ["German"]}, "languages"),
        ({"unknown": 1}, "unknown"),
    ],
)
def test_a_bad_feeds_value_is_refused_at_load_naming_it(monkeypatch, change, words):
    monkeypatch.setenv("FLEETGATE_FEEDS", json.dumps({**MINIMAL, **change}))
    with pytest.raises(SettingsError, match=words):
        Settings.load()


def test_read_gathering_is_off_unless_set_and_reaches_the_gateway_in_seconds(monkeypatch):
    assert gateway_config(Settings.load(), "postgresql://x/y", "h", 1).mqtt_read_gather_s == 0.0
    monkeypatch.setenv("FLEETGATE_MQTT_READ_GATHER_MS", "4")
    cfg = gateway_config(Settings.load(), "postgresql://x/y", "h", 1)
    assert cfg.mqtt_read_gather_s == pytest.approx(0.004)


@pytest.mark.parametrize("value", ["-1", "51"])
def test_a_read_gathering_out_of_range_is_refused_naming_it(monkeypatch, value):
    monkeypatch.setenv("FLEETGATE_MQTT_READ_GATHER_MS", value)
    with pytest.raises(SettingsError, match="mqtt_read_gather_ms"):
        Settings.load()
