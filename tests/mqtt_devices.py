"""Devices on the gateway's MQTT client, as the gateway's integration tests drive them: a fleet of
registered TCUs, their samples, a steady stream that records what the broker acknowledged, and
one-off uploads."""

from __future__ import annotations

import asyncio

import orjson

from gateway.mqtt import ConnectOptions, MqttClient

DEVICES = [(f"tcu-{i:03d}", f"veh-{i:03d}", "ebike" if i % 2 else "car") for i in range(20)]


def sample(t: int, i: int = 0, **over) -> dict:
    s = {
        "t": t,
        "lat": 52.50 + (i % 100) * 1e-4,
        "lon": 13.40 + (t % 1000) * 1e-7,
        "speed_kmh": 12.0,
        "soc_pct": 80.0,
        "locked": False,
    }
    s.update(over)
    return s


async def device(broker, device_id: str, **kw) -> MqttClient:
    client = MqttClient(ConnectOptions(broker.host, broker.port, device_id), **kw)
    await client.connect()
    return client


class Stream:
    """Devices publishing one sample per message at a steady rate; records what the broker acked."""

    def __init__(self, clients: dict[str, MqttClient], topic_root: str, t0: int) -> None:
        self.clients, self.root, self.t0 = clients, topic_root, t0
        self.acked: set[tuple[str, int]] = set()
        self.sent = 0

    async def run(self, per_device: int, rate_hz: float) -> None:
        futures = []
        for k in range(per_device):
            t = self.t0 + k * 1000
            for i, (dev, client) in enumerate(self.clients.items()):
                fut = client.publish(
                    f"{self.root}/{dev}/telemetry", orjson.dumps(sample(t, i)), qos=1
                )
                fut.add_done_callback(lambda f, key=(dev, t): f.exception() or self.acked.add(key))
                futures.append(fut)
                self.sent += 1
            await asyncio.sleep(1 / rate_hz)
        await asyncio.gather(*futures)


async def open_devices(broker, n: int = len(DEVICES)) -> dict[str, MqttClient]:
    return {d: await device(broker, d) for d, _, _ in DEVICES[:n]}


async def close_devices(clients: dict[str, MqttClient]) -> None:
    for c in clients.values():
        await c.disconnect()


async def publish(broker, root: str, device_id: str, payloads: list[bytes | dict]) -> None:
    """One device connects, sends each payload (bytes as they are, a dict as JSON) with QoS 1 and
    waits for its PUBACK, then leaves."""
    dev = MqttClient(ConnectOptions(broker.host, broker.port, device_id))
    await dev.connect()
    for p in payloads:
        body = p if isinstance(p, bytes) else orjson.dumps(p)
        await dev.publish(f"{root}/{device_id}/telemetry", body, qos=1)
    await dev.disconnect()
