"""benchmarks/fuzz.py in small: 2,000 adversarial MQTT messages and 100 CoAP datagrams through
`fleetgate run` (a child process, its own broker and database), every check of the full campaign
met: valid samples stored once, counters equal to the decoder's judgement, no stall, nothing
quarantined."""

from __future__ import annotations

import json

import pytest

from benchmarks import fuzz

pytestmark = pytest.mark.integration


def test_a_small_fuzz_campaign_stores_every_valid_sample_and_accounts_for_every_message(
    pg_server, monkeypatch, capsys
):
    monkeypatch.setenv("FLEETGATE_BENCH_PG_DSN", pg_server.dsn)
    fuzz.main(["--messages", "2000", "--coap", "100", "--seed", "3"])  # exits 1 on a failed check
    report = json.loads(capsys.readouterr().out)
    assert report["failed_checks"] == {} and all(report["checks"].values())
    assert report["mqtt"]["messages"] == 2000 and report["coap"]["requests"] == 100
    assert report["mqtt"]["valid_samples"] and report["coap"]["valid_samples"]
    assert len(report["mqtt"]["by_family"]) >= 10, "most generator families took part"
