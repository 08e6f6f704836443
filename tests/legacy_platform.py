"""A stand-in for the legacy platform during a parallel run: it subscribes on the legacy broker
to the devices' flat-json uplinks, reads them as the legacy platform would, and forwards each as
Traccar's position forwarding does (forward.type=json) to fleetgate's
`POST /v1/migration/shadow/{source}`. A sample without a fix goes as the last known position,
marked invalid, as Traccar sends it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import orjson

from fleetgate.embedded import Mosquitto
from gateway.mqtt import ConnectOptions, MqttClient

KNOT_MS = 1852 / 3600


class LegacyPlatform:
    def __init__(self, host: str, port: int, api_url: str, api_key: str, source: str) -> None:
        self._queue: asyncio.Queue = asyncio.Queue()
        self._client = MqttClient(
            ConnectOptions(host, port, f"legacy-platform-{source}"),
            on_messages=lambda messages: [self._queue.put_nowait(m) for m in messages],
        )
        self._http = httpx.AsyncClient(
            base_url=api_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=30
        )
        self._url = f"/v1/migration/shadow/{source}"
        self._last_fix: dict[str, tuple[float, float]] = {}
        self._workers: list[asyncio.Task] = []
        self.forwarded = 0
        self.refused: list[str] = []

    async def start(self, topic: str = "devices/+/data", workers: int = 8) -> None:
        await self._client.connect()
        await self._client.subscribe([(topic, 1)])
        self._workers = [asyncio.create_task(self._forward()) for _ in range(workers)]

    async def idle(self) -> None:
        """Until everything received so far is forwarded."""
        await self._queue.join()

    async def stop(self) -> None:
        await self._client.disconnect()
        for w in self._workers:
            w.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        await self._http.aclose()

    async def _forward(self) -> None:
        while True:
            message = await self._queue.get()
            try:
                payload = orjson.loads(message.payload)
                if "ts" not in payload:  # not a device's sample (a probe of the bridge)
                    continue
                body = self._traccar_forward(message.topic, payload)
                r = await self._http.post(self._url, json=body)
                if r.status_code == 202:
                    self.forwarded += 1
                else:
                    self.refused.append(r.text)
            finally:
                self._queue.task_done()

    def _traccar_forward(self, topic: str, p: dict) -> dict:
        device = topic.split("/")[1]
        fix = p.get("latitude") is not None and p.get("longitude") is not None
        if fix:
            self._last_fix[device] = (p["latitude"], p["longitude"])
        lat, lon = self._last_fix.get(device, (0.0, 0.0))
        attributes = {
            "batteryLevel": None if p.get("battery") is None else p["battery"] * 100,
            "odometer": None if p.get("odometer_km") is None else p["odometer_km"] * 1000,
            "lock": p.get("locked"),
            "ignition": p.get("ignition"),
        }
        position = {
            "fixTime": datetime.fromisoformat(p["ts"]).isoformat(),
            "latitude": lat,
            "longitude": lon,
            "valid": fix,
            "speed": None if p.get("speed") is None else p["speed"] / KNOT_MS,
            "course": p.get("course"),
            "attributes": {k: v for k, v in attributes.items() if v is not None},
        }
        return {"position": position, "device": {"uniqueId": device}}


@contextlib.contextmanager
def bridged_brokers(tmp_path: Path, dialect: str) -> Iterator[tuple[Mosquitto, Mosquitto]]:
    """(legacy, fleetgate's): the legacy platform's broker, and fleetgate's, which mirrors the
    legacy one's uplinks in `dialect` over the bridge `fleetgate migrate bridge-config` writes;
    both killed afterwards."""
    from tests.cli_runner import run_fleetgate

    legacy = Mosquitto(datadir=tmp_path / "legacy").start()
    try:
        bridge = tmp_path / "bridge.conf"
        made = run_fleetgate(
            "migrate", "bridge-config", "--legacy-url", legacy.url, "--dialect", dialect,
            "--out", str(bridge),
        )  # fmt: skip
        assert made.exit_code == 0, made.output
        ours = Mosquitto(datadir=tmp_path / "fleetgate", extra_config="\n" + bridge.read_text())
        ours.start()
        try:
            yield legacy, ours
        finally:
            ours.stop(kill=True)
    finally:
        legacy.stop(kill=True)
