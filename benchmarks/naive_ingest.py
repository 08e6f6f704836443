"""The obvious gateway, as the baseline of benchmarks/ingest.py: aiomqtt + one INSERT per message.

It subscribes with QoS 1 through aiomqtt (paho acknowledges each message on receipt), parses each
payload with json, and runs one autocommitted INSERT ... ON CONFLICT DO NOTHING per sample. It
writes the same table as the real gateway so the two are compared on the same schema.
"""

from __future__ import annotations

import asyncio
import json
import time

import aiomqtt
import psycopg

_INSERT = """
INSERT INTO positions (time, vehicle, lat, lon, speed_kmh, heading_deg, soc_pct, pack_v, pack_a,
                       aux_v, odometer_m, locked, ignition, immobilised, charging, received_at)
VALUES (to_timestamp(%(t)s / 1000.0), %(vehicle)s, %(lat)s, %(lon)s, %(speed_kmh)s,
        %(heading_deg)s, %(soc_pct)s, %(pack_v)s, %(pack_a)s, %(aux_v)s, %(odometer_m)s,
        %(locked)s, %(ignition)s, %(immobilised)s, %(charging)s, now())
ON CONFLICT (vehicle, time) DO NOTHING
"""
_FIELDS = (
    "lat",
    "lon",
    "speed_kmh",
    "heading_deg",
    "soc_pct",
    "pack_v",
    "pack_a",
    "aux_v",
    "odometer_m",
    "locked",
    "ignition",
    "immobilised",
    "charging",
)


async def run_naive_gateway(
    dsn: str,
    host: str,
    port: int,
    topic_root: str,
    vehicle_of: dict[str, int],
    stop: asyncio.Event,
    on_commit=None,
    on_subscribed=None,
) -> int:
    """Consume until stop is set; returns the number of rows inserted.

    on_commit(sample_time_ms, commit_time_ms) is called after each INSERT, for latency figures;
    on_subscribed() once the subscription is in place.
    """
    inserted = 0
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        async with aiomqtt.Client(host, port, identifier=f"naive-{time.time_ns()}") as client:
            await client.subscribe(f"{topic_root}/+/telemetry", qos=1)
            if on_subscribed is not None:
                on_subscribed()
            messages = aiomqtt_messages(client, stop)
            async for message in messages:
                device_id = str(message.topic).split("/")[-2]
                vehicle = vehicle_of.get(device_id)
                if vehicle is None:
                    continue
                try:
                    body = json.loads(message.payload)
                except ValueError:
                    continue
                for sample in body if isinstance(body, list) else [body]:
                    params = {k: sample.get(k) for k in _FIELDS}
                    params.update(t=sample["t"], vehicle=vehicle)
                    cur = await conn.execute(_INSERT, params)
                    inserted += cur.rowcount
                    if on_commit is not None:
                        on_commit(sample["t"], time.time() * 1000.0)
    return inserted


async def aiomqtt_messages(client: aiomqtt.Client, stop: asyncio.Event):
    """client.messages, ending when stop is set."""
    iterator = client.messages.__aiter__()
    stopping = asyncio.ensure_future(stop.wait())
    try:
        while True:
            nxt = asyncio.ensure_future(iterator.__anext__())
            await asyncio.wait({nxt, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not nxt.done():
                nxt.cancel()
                return
            yield nxt.result()
    finally:
        stopping.cancel()
