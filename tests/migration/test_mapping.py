"""The TOML mapping file: every key optional, tables added to the defaults, bad keys named."""

from __future__ import annotations

import pytest

from migration.mapping import DEFAULT, MappingError, parse_mapping


def test_no_file_means_the_documented_defaults():
    assert DEFAULT.speed_unit == "knots" and DEFAULT.speed_factor() == 1.852
    assert DEFAULT.odometer == ("odometer", "totalDistance")
    assert DEFAULT.traccar_categories["motorcycle"] == "moped"
    assert DEFAULT.gbfs_form_factors["cargo_bicycle"] == "cargo_ebike"
    assert DEFAULT.power_column("car") == "aux_v" and DEFAULT.power_column("scooter") == "pack_v"
    assert parse_mapping("") == DEFAULT


def test_tables_add_to_the_defaults_and_scalars_replace_them():
    mapping = parse_mapping(
        '[vehicle_types.traccar]\ntruck = "car"\n[units]\nspeed = "kmh"\n'
        '[traccar]\nodometer = "totalDistance"\ntime = "deviceTime"\n'
        '[csv.columns]\nvehicle_ref = "Fahrzeug"\n'
    )
    assert mapping.traccar_categories["truck"] == "car"
    assert mapping.traccar_categories["bicycle"] == "ebike"
    assert mapping.speed_factor() == 1.0 and mapping.odometer == ("totalDistance",)
    assert mapping.time == "deviceTime"
    assert mapping.csv_columns == {
        "vehicle_ref": "Fahrzeug",
        "device_id": "device_id",
        "vehicle_type": "vehicle_type",
    }


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[unit]\nspeed = 'kmh'\n", "unknown section [unit]"),
        ("[units]\nspeed = 'furlongs'\n", "units.speed = 'furlongs'; expected knots | kmh"),
        ("[traccar]\ntime = 'whenever'\n", "traccar.time"),
        ("[traccar.power_to]\ncar = 'battery'\n", "traccar.power_to: 'battery'"),
        ("[zones.kinds]\nMitte = 'downtown'\n", "zones.kinds {'Mitte': 'downtown'}"),
        ("[zones]\nstation_radius_m = -1\n", "station_radius_m must be a number > 0"),
        ("[vehicle_types.traccar]\nbicycle = 3\n", "[vehicle_types.traccar] must map names"),
        ("[units\n", "mapping.toml:"),
    ],
)
def test_a_bad_mapping_file_is_refused_naming_the_key(text, words):
    with pytest.raises(MappingError) as raised:
        parse_mapping(text, "mapping.toml")
    assert words in str(raised.value)
