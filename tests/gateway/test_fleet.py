"""A misbehaving simulated fleet through the real broker, gateway and database: exactly the
samples the broker acknowledged are stored, each once, whatever the devices did."""

from __future__ import annotations

import pytest

from firmware_sim import Fleet, FleetOptions, Misbehaviour
from tests.harness import (
    eventually,
    gateway_config,
    metric,
    register,
    running_gateway,
    stored_keys,
)

pytestmark = pytest.mark.integration


async def test_n_vehicles_m_samples_exactly_m_rows_despite_duplicates_reorders_and_garbage(
    mosquitto, pg_dsn, topic_root
):
    mb = Misbehaviour(
        duplicate_share=0.03,
        malformed_share=0.02,
        # Every buffered upload out of order: with a share below 1 the few uploads of a fast
        # run on a busy machine were sometimes all in order (1 run in 10 under load).
        out_of_order_share=1.0,
        disconnects_per_h=150.0,
        offline_s=(2.0, 6.0),
    )
    fleet = Fleet(
        FleetOptions(
            vehicles=20,
            rate_hz=5.0,
            fast=True,
            samples_per_vehicle=80,
            cbor_share=0.5,
            misbehaviour=mb,
            seed=23,
            track_keys=True,
            host=mosquitto.host,
            port=mosquitto.port,
            topic_root=topic_root,
            session_expiry_s=30,
        )
    )
    await register(pg_dsn, fleet.registrations())
    async with running_gateway(gateway_config(pg_dsn, mosquitto, topic_root)) as (gw, reg):
        await fleet.start()
        await fleet.run()
        stats = await fleet.stop()  # flushes: every buffered sample uploaded and acknowledged
        expected = stats.acked_keys()
        assert len(expected) == 20 * 80, "every sample generated was acknowledged in the end"

        async def all_stored() -> bool:
            return metric(reg, "fleetgate_samples_stored_total") >= len(expected)

        await eventually(all_stored, timeout=30, what="every acknowledged sample stored")
        # The devices really misbehaved: duplicates, reconnects with buffered uploads out of
        # order, malformed messages rejected by reason.
        assert stats.duplicates_sent > 0 and stats.disconnects > 0
        assert stats.batches_out_of_order > 0
        # Duplicates lost with a dropped connection are not sent again: some, not all, arrive.
        assert metric(reg, "fleetgate_samples_duplicate_total") > 0
        rejected = sum(
            metric(reg, "fleetgate_samples_rejected_total", reason=r, transport="mqtt")
            for r in stats.expected_rejections()
        )
        assert sum(stats.expected_rejections().values()) <= rejected
    keys = await stored_keys(pg_dsn)
    assert len(keys) == len(set(keys)), "nothing stored twice"
    assert set(keys) == expected, "exactly the acknowledged samples, nothing else"
