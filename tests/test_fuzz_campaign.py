"""benchmarks/fuzz.py in small: 2,000 adversarial MQTT messages and 100 CoAP datagrams through
`fleetgate run` (a child process, its own broker and database), every check of the full campaign
met: valid samples stored once, counters equal to the decoder's judgement, no stall, nothing
quarantined."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent


def test_a_small_fuzz_campaign_stores_every_valid_sample_and_accounts_for_every_message(
        pg_server):
    env = {**os.environ, "FLEETGATE_BENCH_PG_DSN": pg_server.dsn}
    done = subprocess.run(
        [sys.executable, "benchmarks/fuzz.py", "--messages", "2000", "--coap", "100",
         "--seed", "3"], cwd=REPO, env=env, capture_output=True, timeout=300, check=False)
    assert done.stdout, done.stderr.decode(errors="replace")[-3000:]
    report = orjson.loads(done.stdout)
    assert report["failed_checks"] == {} and all(report["checks"].values()), report["checks"]
    assert done.returncode == 0
    assert report["mqtt"]["messages"] == 2000 and report["coap"]["requests"] == 100
    assert report["mqtt"]["valid_samples"] and report["coap"]["valid_samples"]
    assert len(report["mqtt"]["by_family"]) >= 10, "most generator families took part"
