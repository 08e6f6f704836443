"""The `fleetgate` command run in this process (typer's CliRunner), for the tests of the CLI, the
demo and the documented commands."""

from __future__ import annotations

import logging

from typer.testing import CliRunner

from fleetgate.cli import app

RUNNER = CliRunner()


def run_fleetgate(*args: str, env: dict | None = None, input: str | None = None):
    """The command in this process. Its setup_logging points the root logger at the runner's
    stderr, which is closed afterwards; the root logger is put back so that later tests do not
    log into a closed file."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        return RUNNER.invoke(app, list(args), env=env, input=input, catch_exceptions=False)
    finally:
        root.handlers[:], root.level = handlers, level
