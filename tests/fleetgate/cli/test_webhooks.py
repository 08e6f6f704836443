"""`fleetgate webhooks ...` against a real database: create with the secret printed once, list,
update, deliveries, replay, re-drive, delete; bad input refused with the reason, changing
nothing."""

from __future__ import annotations

import re

import pytest

from tests.cli_runner import run_fleetgate

pytestmark = pytest.mark.integration


def test_webhooks_create_list_update_delete(pg_dsn):
    env = {"FLEETGATE_DATABASE_URL": pg_dsn, "FLEETGATE_API_PORT": "18080"}
    created = run_fleetgate(
        "webhooks", "create", "http://127.0.0.1:9/hooks", "--type", "trip.ended", env=env
    )
    assert created.exit_code == 0, created.output
    secret = re.search(r"shown once\): (whsec_\S+)", created.output).group(1)
    sub_id = created.output.split()[0]
    assert sub_id.startswith("wh_")
    listed = run_fleetgate("webhooks", "list", env=env)
    assert sub_id in listed.output and "trip.ended" in listed.output
    assert secret not in listed.output
    updated = run_fleetgate("webhooks", "update", sub_id, "--all-types", env=env)
    assert updated.exit_code == 0 and "all types" in updated.output
    assert run_fleetgate("webhooks", "deliveries", sub_id, env=env).output == ""
    redrive = run_fleetgate("webhooks", "redrive", sub_id, env=env)
    assert "0 dead letters" in redrive.output
    replay = run_fleetgate("webhooks", "replay", sub_id, "--from-event-id", "1", env=env)
    assert replay.exit_code != 0 and "no outbound event" in replay.output
    assert "trip.ended" in run_fleetgate("webhooks", "types", env=env).output
    assert run_fleetgate("webhooks", "delete", sub_id, env=env).exit_code == 0
    gone = run_fleetgate("webhooks", "delete", sub_id, env=env)
    assert gone.exit_code != 0 and "no webhook subscription" in gone.output


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["ftp://127.0.0.1/x"], "http or https"),
        (["http://127.0.0.1:18080/v1"], "this gateway itself"),
        (["http://127.0.0.1:9/", "--type", "trip.exploded"], "unknown event type"),
    ],
)
def test_webhooks_create_refuses_bad_input(pg_dsn, args, reason):
    env = {"FLEETGATE_DATABASE_URL": pg_dsn, "FLEETGATE_API_PORT": "18080"}
    refused = run_fleetgate("webhooks", "create", *args, env=env)
    assert refused.exit_code != 0
    assert reason in refused.output
    assert run_fleetgate("webhooks", "list", env=env).output == ""
