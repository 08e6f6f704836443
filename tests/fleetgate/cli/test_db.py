"""`fleetgate db migrate` against an empty database: idempotent, and it says which storage it
made and refuses to switch it."""

from __future__ import annotations

import pytest

from tests.cli_runner import run_fleetgate

pytestmark = pytest.mark.integration


def test_db_migrate_is_idempotent_and_reports_the_storage(empty_pg_dsn):
    env = {"FLEETGATE_DATABASE_URL": empty_pg_dsn, "FLEETGATE_STORAGE": "native"}
    first = run_fleetgate("db", "migrate", env=env)
    assert first.exit_code == 0 and "native storage" in first.output and "applied" in first.output
    again = run_fleetgate("db", "migrate", env=env)
    assert again.exit_code == 0 and "already up to date" in again.output


def test_db_migrate_refuses_to_switch_storage_with_one_line(empty_pg_dsn):
    assert (
        run_fleetgate(
            "db",
            "migrate",
            env={"FLEETGATE_DATABASE_URL": empty_pg_dsn, "FLEETGATE_STORAGE": "native"},
        ).exit_code
        == 0
    )
    result = run_fleetgate(
        "db",
        "migrate",
        env={"FLEETGATE_DATABASE_URL": empty_pg_dsn, "FLEETGATE_STORAGE": "timescaledb"},
    )
    assert result.exit_code == 2 and "migration failed" in result.output
