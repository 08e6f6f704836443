"""benchmarks/sessions.py in small: a few hundred persistent sessions with last wills through the
real broker, gateway process and database; every device online after the storm, exactly the
killed ones offline after their wills, every sample the broker took stored. The 10,000-session
run is the benchmark itself (benchmarks/README.md)."""

from __future__ import annotations

import json

import pytest

from benchmarks import sessions

pytestmark = pytest.mark.integration


def test_a_small_storm_has_every_device_online_then_exactly_the_killed_ones_offline(
    capsys, monkeypatch, pg_server
):
    monkeypatch.setenv("FLEETGATE_BENCH_PG_DSN", pg_server.dsn)
    argv = ["--devices", "600", "--processes", "2", "--kill", "60", "--steady-s", "2"]
    sessions.main([*argv, "--after-kill-s", "1", "--catch-up-s", "20"])  # exit 1 if wrong
    report = json.loads(capsys.readouterr().out)
    assert report["storm"]["online_after_connect"] == 600 and report["storm"]["presence_correct"]
    assert report["kill"]["offline"] == 60 and report["kill"]["presence_wrong"] == 0
    assert report["kill"]["all_offline_in_db_s"] is not None
    assert report["samples_stored"] >= report["samples_acked_by_broker"] > 0
    assert [d["connections_lost"] for d in report["device_side"]] == [0, 0]
    assert report["steady"]["gateway"]["rss_mib"] > 0 and report["targets"]["presence_correct"]


def test_a_will_is_retained_qos1_on_the_status_topic():
    frame = sessions.connect_with_will("dev-1", 60, 600, "r/v1/dev-1/status", b'{"online": false}')
    flags = frame[2 + 6 + 1]  # fixed header (2 bytes here), "MQTT", protocol level, flags
    assert frame[0] == 0x10 and flags == 0x04 | 0x08 | 0x20  # will, QoS 1, retained; no clean
    assert frame.endswith(b'\x00\x11r/v1/dev-1/status\x00\x11{"online": false}')
