"""schemathesis (property-based, from the OpenAPI spec) against the served API and the real
database: no input, however odd, gets a server error, and every response matches the spec."""

from __future__ import annotations

import asyncio
import shutil
import sys
import uuid
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from commands import CommandConfig, CommandService
from tests.test_api import fleet

pytestmark = pytest.mark.integration

CHECKS = ",".join(["not_a_server_error", "status_code_conformance", "content_type_conformance",
                   "response_schema_conformance", "response_headers_conformance"])


def _schemathesis() -> str:
    found = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip("schemathesis is not installed (pip install -e '.[test]')")
    return found


async def test_no_generated_request_gets_a_server_error_or_an_undocumented_answer(
        api_server, mosquitto, pg_dsn, topic_root, tmp_path):
    await fleet(api_server, 5)
    # A real dispatcher, so that creating and cancelling commands is exercised too (the
    # vehicles are offline: commands wait in the queue).
    service = CommandService(CommandConfig(
        database_url=pg_dsn, mqtt_host=mosquitto.host, mqtt_port=mosquitto.port,
        mqtt_client_id=f"st-{uuid.uuid4().hex[:8]}-cmd", mqtt_topic_root=topic_root,
        mqtt_session_expiry_s=60), registry=CollectorRegistry())
    await service.start()
    api_server.context.commands = service
    try:
        report, returncode = await _run_schemathesis(api_server, tmp_path)
    finally:
        await service.stop()
    assert returncode == 0, report[-6000:]


async def _run_schemathesis(api_server, tmp_path) -> tuple[str, int]:
    proc = await asyncio.create_subprocess_exec(
        _schemathesis(), "run", f"{api_server.url}/openapi.json",
        "--checks", CHECKS, "--max-examples", "25", "--seed", "1", "--workers", "1",
        "--exclude-path", "/v1/stream",  # an endless response: covered by tests/test_api.py
        "-H", f"Authorization: Bearer {api_server.keys['admin']}",
        "--suppress-health-check", "all", "--warnings", "off",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path)
    out, _ = await asyncio.wait_for(proc.communicate(), 600)
    return out.decode(errors="replace"), proc.returncode
