"""The migration room's mappers are sans-IO, like the cores: importing them loads no database
driver, HTTP client or web framework, so they map plain data anywhere (a test, a notebook, a
worker process). The IO edge is traccar_export, gbfs_feeds, readers and importer."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests import REPO

MAPPERS = (
    "migration.records",
    "migration.mapping",
    "migration.columns",
    "migration.sources",
    "migration.traccar",
    "migration.gbfs",
    "migration.csv_source",
    "migration.analysis",
    "migration.report",
    "migration.gate",
    "migration.sample",
)
IO_MODULES = (
    "psycopg",
    "psycopg_pool",
    "httpx",
    "urllib.request",
    "http.client",
    "fastapi",
    "starlette",
    "aiocoap",
    "telemetry.store",
)

_PROBE = """
import importlib, json, sys
importlib.import_module({module!r})
print(json.dumps(sorted(m for m in {io!r} if m in sys.modules)))
"""


@pytest.mark.parametrize("module", MAPPERS)
def test_importing_a_mapper_loads_no_io_library(module):
    run = subprocess.run(
        [sys.executable, "-c", _PROBE.format(module=module, io=IO_MODULES)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == [], f"importing {module} loads IO libraries"
