"""The topic layout and the device-id rule of docs/protocol.md (telemetry/topics.py)."""

from __future__ import annotations

import pytest

from telemetry.topics import (
    COAP_UPLINKS,
    DEVICE_PUBLISHES,
    DEVICE_SUBSCRIBES,
    device_topic,
    drain_marker_topic,
    every_device,
    gateway_presence_topic,
    is_device_id,
    parse_device_topic,
)

ROOT = "fg/v1"


@pytest.mark.parametrize(
    ("text", "is_one"),
    [
        ("tcu-0001", True),
        ("urn:dev:imei:356938035643809", True),
        ("A.b_c-9", True),
        ("x" * 64, True),
        ("x" * 65, False),
        ("", False),
        ("a/b", False),  # two topic levels
        ("+", False),
        ("lock#1", False),
        ("$gateway", False),  # the `$` levels are the gateway processes'
        ("tcu 1", False),
        ("tcu-1\n", False),  # `$` in a pattern matches before a final newline; the rule does not
        ("tcü-1", False),
    ],
)
def test_a_device_id_is_one_topic_level_of_at_most_64_plain_characters(text, is_one):
    assert is_device_id(text) is is_one


def test_device_topics_are_root_device_kind_and_parse_back():
    for kind in (*DEVICE_PUBLISHES, *DEVICE_SUBSCRIBES):
        topic = device_topic(ROOT, "tcu-1", kind)
        assert topic == f"fg/v1/tcu-1/{kind}"
        assert parse_device_topic(ROOT, topic) == ("tcu-1", kind)
    assert device_topic(ROOT, "tcu-1", "cmd/result") == "fg/v1/tcu-1/cmd/result"
    assert every_device(ROOT, "telemetry") == "fg/v1/+/telemetry"


def test_a_topic_outside_the_root_is_no_device_topic():
    assert parse_device_topic(ROOT, "fg/v2/tcu-1/telemetry") is None
    assert parse_device_topic(ROOT, "fg/v10/tcu-1/telemetry") is None
    assert parse_device_topic(ROOT, "fg/v1") is None
    assert parse_device_topic(ROOT, "$SYS/broker/version") is None


def test_parsing_leaves_odd_device_ids_and_kinds_to_the_caller():
    assert parse_device_topic(ROOT, "fg/v1/a/b/telemetry") == ("a", "b/telemetry")
    assert parse_device_topic(ROOT, "fg/v1//telemetry") == ("", "telemetry")
    assert parse_device_topic(ROOT, "fg/v1/tcu-1") == ("tcu-1", "")


def test_the_gateway_processes_topics_lie_beside_the_devices_under_a_dollar_level():
    assert gateway_presence_topic(ROOT, "gw-1") == "fg/v1/$gateway/gw-1/presence"
    assert drain_marker_topic(ROOT, "gw-1") == "fg/v1/$drain/gw-1/marker"
    device_id, _ = parse_device_topic(ROOT, gateway_presence_topic(ROOT, "gw-1"))
    assert not is_device_id(device_id)


def test_a_device_posts_over_coap_what_it_publishes_over_mqtt_but_its_status():
    assert set(COAP_UPLINKS) == set(DEVICE_PUBLISHES) - {"status"}
