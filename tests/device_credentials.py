"""Device secrets for the tests of device identity (the gateway's broker auth and the CLI that
provisions them) and of the CoAP devices: three locks to register, and the credential store on a
test's database."""

from __future__ import annotations

import contextlib

from telemetry.store import DeviceCredentials, TelemetryStore

DEVICES = [
    ("lock-a", "bike-a", "ebike"),
    ("lock-b", "bike-b", "ebike"),
    ("lock-c", "bike-c", "ebike"),
]


@contextlib.asynccontextmanager
async def credentials(dsn: str):
    store = await TelemetryStore.open(dsn)
    try:
        yield DeviceCredentials(store)
    finally:
        await store.close()
