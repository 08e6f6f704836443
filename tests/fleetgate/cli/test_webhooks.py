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


async def test_webhooks_worker_alone_delivers_and_ends_on_sigterm(pg_dsn):
    """`fleetgate webhooks worker` without a gateway (e.g. on another machine): it takes the
    lease, delivers what is committed, and SIGTERM ends it cleanly."""
    import os
    import signal
    import subprocess
    import sys

    from outbound import new_secret
    from telemetry.store import TelemetryStore, Webhooks
    from tests.harness import eventually, register
    from tests.webhook_events import write_zone_events
    from tests.webhook_receiver import WebhookReceiver

    ids = await register(pg_dsn, [("wa-1", "WA-1", "ebike"), ("wa-2", "WA-2", "ebike")])
    store = await TelemetryStore.open(pg_dsn)
    receiver = WebhookReceiver()
    await Webhooks(store).create(await receiver.start(), None, "alone", new_secret())
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleetgate.cli", "webhooks", "worker"],
        env={**os.environ, "FLEETGATE_DATABASE_URL": pg_dsn, "FLEETGATE_LOG_FORMAT": "json"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert await write_zone_events(store, sorted(ids.values()), 3) == 6
        await eventually(lambda: len(receiver.received) >= 6, timeout=60, what="deliveries")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, proc.stdout.read().decode()[-2000:]
        assert b"webhook_worker_started" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        await receiver.close()
        await store.close()
