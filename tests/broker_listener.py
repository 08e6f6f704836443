"""A plain subscriber on the gateway's MQTT client that keeps every message a device sends, as the
gateway would receive them, and reads its telemetry with the gateway's decoder: what the
simulator's and the load generator's tests check arrives."""

from __future__ import annotations

import time
from collections import Counter

from gateway.mqtt import ConnectOptions, MqttClient
from telemetry.decoder import decode_telemetry


class Listener:
    """A plain subscriber that keeps every message, as the gateway would receive them."""

    def __init__(self, broker, topic_root: str) -> None:
        self.messages: list = []
        self.client = MqttClient(
            ConnectOptions(broker.host, broker.port, f"listener-{time.monotonic_ns() % 10**9}"),
            on_messages=self.messages.extend,
        )
        self.root = topic_root

    async def __aenter__(self) -> Listener:
        await self.client.connect()
        await self.client.subscribe(
            [
                (f"{self.root}/+/telemetry", 1),
                (f"{self.root}/+/status", 1),
                (f"{self.root}/+/cmd/result", 1),
            ]
        )
        return self

    async def __aexit__(self, *exc) -> None:
        await self.client.disconnect()

    def of(self, kind: str) -> list:
        return [m for m in self.messages if m.topic.endswith("/" + kind)]

    def decoded(self, device_ids: list[str]):
        msgs = self.of("telemetry")
        registry = {d: i for i, d in enumerate(device_ids)}
        now = int(time.time() * 1000)
        r = decode_telemetry(
            [m.topic.split("/")[-2] for m in msgs],
            [m.payload for m in msgs],
            [now] * len(msgs),
            registry,
            now_ms=now,
        )
        owners = (device_ids[v] for v in r.batch.vehicle.tolist())
        keys = Counter(zip(owners, r.batch.time_ms.tolist()))
        return keys, r
