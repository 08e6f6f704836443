"""schemathesis (property-based, from the OpenAPI spec) against a live `fleetgate run`: the API
beside the gateway and its command dispatcher, a real broker and database, a key with every
scope. No input, however odd, gets a server error, and every answer is as the spec says.

A bounded run (fixed seed, few examples per operation); scripts/fuzz-api runs for longer."""

from __future__ import annotations

import pytest

from tests.api_fuzz import (
    prepare,
    run_schemathesis,
    schemathesis_binary,
    server_errors,
    start_server,
    wait_ready,
)

pytestmark = pytest.mark.integration


async def test_no_generated_request_gets_a_server_error_or_an_undocumented_answer(
    mosquitto, pg_dsn, tmp_path
):
    if schemathesis_binary() is None:
        pytest.skip("schemathesis is not installed (pip install -e '.[test]')")
    key = await prepare(pg_dsn)
    # The vehicles are not connected: commands wait in the dispatcher's queue.
    gw, url = start_server(pg_dsn, mosquitto, tmp_path / "fleetgate.log")
    try:
        await wait_ready(gw, url)
        report, status = await run_schemathesis(
            url, key, tmp_path, seed=1, max_examples=25, timeout=300
        )
        assert status == 0, report[-6000:]
        assert server_errors(gw) == [], "the server logged unexpected errors"
        assert gw.proc.poll() is None, "fleetgate run is still serving"
    finally:
        gw.stop()
