"""CoAP devices against the gateway's CoAP ingress: the ingest pipeline with the ingress as its
"coap" transport in this process, locks provisioned with their secrets, aiocoap's client, and a
lock's sample."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import aiocoap
from prometheus_client import CollectorRegistry

from gateway.coap import CoapIngress
from gateway.metrics import GatewayMetrics
from gateway.pipeline import DeviceRegistry, IngestPipeline, PipelineLimits
from telemetry.plausibility import PlausibilityFilter
from telemetry.store import DeviceCredentials, TelemetryStore
from tests.device_credentials import credentials
from tests.harness import register

DEVICES = [
    ("lock-0001", "bike-0001", "ebike"),
    ("lock-0002", "bike-0002", "ebike"),
    ("lock-0003", "bike-0003", "ebike"),
]


@dataclass
class CoapGateway:
    """The ingest pipeline with the CoAP ingress as its "coap" transport (the wiring the
    Gateway gets), on a free UDP port of 127.0.0.1."""

    coap: CoapIngress
    pipeline: IngestPipeline
    store: TelemetryStore
    registry: CollectorRegistry

    @property
    def port(self) -> int:
        return self.coap.port

    def uri(self, device_id: str, token: str | None, resource: str = "telemetry") -> str:
        query = f"?t={token}" if token is not None else ""
        return f"coap://127.0.0.1:{self.port}/fg/v1/{device_id}/{resource}{query}"


@contextlib.asynccontextmanager
async def coap_gateway(
    dsn: str,
    *,
    commands=None,
    on_committed=None,
    max_age_ms: int = 20,
    max_pending: int = 65535,
    **ingress,
):
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)
    store = await TelemetryStore.open(dsn)
    plausibility = PlausibilityFilter(default_max_speed_kmh=300.0)
    devices = DeviceRegistry(store, plausibility, {"ebike": 80.0, "car": 300.0})
    box: list[CoapIngress] = []
    pipeline = IngestPipeline(
        store,
        devices,
        plausibility,
        {"coap": lambda tokens: box[0].acknowledge(tokens)},
        limits=PipelineLimits(max_age_ms=max_age_ms, max_pending=max_pending),
        metrics=metrics,
        on_committed=on_committed,
    )
    coap = CoapIngress(
        pipeline,
        DeviceCredentials(store).verify,
        metrics=metrics,
        host="127.0.0.1",
        port=0,
        commands=commands,
        **ingress,
    )
    box.append(coap)
    writer = asyncio.create_task(pipeline.run())
    await coap.start()
    try:
        yield CoapGateway(coap, pipeline, store, registry)
    finally:
        coap.pause()
        pipeline.close()
        await asyncio.wait_for(writer, 30)
        await coap.stop()
        await store.close()


async def provision(dsn: str, devices=DEVICES) -> dict[str, str]:
    """Register the devices and give each a secret; device id -> token."""
    await register(dsn, devices)
    async with credentials(dsn) as creds:
        issued = await creds.provision_many([d for d, _, _ in devices])
    return {i.device_id: i.secret for i in issued}


@contextlib.asynccontextmanager
async def coap_client():
    ctx = await aiocoap.Context.create_client_context()
    try:
        yield ctx
    finally:
        await ctx.shutdown()


async def post(
    ctx, uri: str, payload: bytes, content_format: int | None = None, **opts
) -> aiocoap.Message:
    msg = aiocoap.Message(code=aiocoap.POST, uri=uri, payload=payload, **opts)
    if content_format is not None:
        msg.opt.content_format = content_format
    return await asyncio.wait_for(ctx.request(msg).response, 30)


def sample(t: int, **over) -> dict:
    s = {
        "t": t,
        "lat": 52.52,
        "lon": 13.405,
        "speed_kmh": 0.0,
        "soc_pct": 64.5,
        "pack_v": 36.4,
        "locked": True,
    }
    s.update(over)
    return s
