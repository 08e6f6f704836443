"""Rules of the house that no behaviour test shows: a core (sans-IO) loads no IO library, not
even through its package's face, so it stays usable and testable without a database, broker or
web framework; the tree keeps ruff's rules and the import contracts; the tests mirror the rooms."""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests import REPO

# What a core must not bring in: the database driver and pool, the metrics client, the web
# framework, the CoAP stack, the gateway's MQTT client.
IO_MODULES = (
    "psycopg",
    "psycopg_pool",
    "prometheus_client",
    "fastapi",
    "starlette",
    "aiocoap",
    "gateway.mqtt",
)

# Imports every module of the package in a fresh interpreter, then names the IO modules loaded.
_PROBE = """
import importlib, json, pkgutil, sys
package = importlib.import_module({core!r})
for module in pkgutil.walk_packages(package.__path__, {core!r} + "."):
    importlib.import_module(module.name)
print(json.dumps(sorted(m for m in {io!r} if m in sys.modules)))
"""


@pytest.mark.parametrize(
    "core", ["commands", "geofence", "battery", "feeds", "outbound", "alarms", "trips", "parity"]
)
def test_importing_a_core_loads_no_io_library(core):
    probe = _PROBE.format(core=core, io=IO_MODULES)
    run = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == [], f"importing {core} loads IO libraries"


def _methods(protocol: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for klass in protocol.__mro__
        if klass.__module__ == "commands.ports"
        for name, member in vars(klass).items()
        if inspect.iscoroutinefunction(member)
    }


@pytest.mark.parametrize(
    ("port", "shell"),
    [("CommandReader", "CommandReads"), ("CommandDispatcher", "CommandService")],
)
def test_the_command_shell_implements_the_ports_the_api_holds(port, shell):
    """Every call of the port exists on the shell, accepting the port's parameters by the same
    names (the API calls them by keyword)."""
    import commands.ports
    import gateway.commands

    methods = _methods(getattr(commands.ports, port))
    assert {"get", "history", "list"} <= methods.keys()
    implementation = getattr(gateway.commands, shell)
    for name, wanted in methods.items():
        offered = inspect.signature(getattr(implementation, name)).parameters
        missing = [p for p in wanted.parameters if p not in offered]
        assert not missing, f"{shell}.{name} lacks {missing}"


# --- the style and the floors, checked on every run of the suite ---------------------------------


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *argv], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_ruff_finds_nothing():
    """The lint rules of pyproject.toml ([tool.ruff.lint]) hold for the whole tree."""
    run = _run("ruff", "check", "--no-cache", ".")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]


def test_the_tree_is_formatted_as_ruff_format_writes_it():
    run = _run("ruff", "format", "--no-cache", "--check", ".")
    assert run.returncode == 0, "run `ruff format .`:\n" + run.stdout[-4000:] + run.stderr[-2000:]


def test_the_import_contracts_hold():
    """The floors of docs/architecture.md ([tool.importlinter] in pyproject.toml): the roof
    over the shells over the cores over the ground, the simulator apart, the cores without IO."""
    run = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]


# --- the tests mirror the rooms (docs/architecture.md, "Where the tests are") --------------------

TESTS = REPO / "tests"


def test_every_room_has_its_tests_and_every_test_folder_mirrors_a_package():
    """A room's tests are in tests/<room>/, a subpackage's in the folder of the same path, and
    nothing lies loose at the top, so the test of a module is where its module is. Each folder is
    a package: pytest then imports tests/gateway/commands/test_store.py and
    tests/telemetry/store/test_store.py under their own names."""
    rooms = [d.name for d in REPO.iterdir() if (d / "__init__.py").is_file() and d != TESTS]
    assert not [room for room in rooms if not list((TESTS / room).rglob("test_*.py"))]
    assert not sorted(p.name for p in TESTS.glob("test_*.py")), "move them into their room"
    folders = [d.relative_to(TESTS) for d in TESTS.rglob("*") if d.is_dir()]
    folders = [f for f in folders if "__pycache__" not in f.parts]
    # A folder without any Python file is test data (e.g. tests/migration/exports/, a legacy
    # platform's export as it lies on disk), not a test package.
    folders = [f for f in folders if any((TESTS / f).rglob("*.py"))]
    assert not [f for f in folders if not (TESTS / f / "__init__.py").is_file()]
    assert not [f for f in folders if not (REPO / f / "__init__.py").is_file()], "no such package"


def test_no_test_module_imports_another():
    """What several test modules share lives in a support module at the top of tests/ (no
    test_ prefix), so that a test module can move without its neighbours."""
    importing = re.compile(r"^\s*(?:from|import)\s+tests(?:\.\w+)*\.test_\w+", re.MULTILINE)
    offenders = [
        str(path.relative_to(TESTS))
        for path in TESTS.rglob("*.py")
        if importing.search(path.read_text())
    ]
    assert offenders == []
