"""The live map in headless Chromium (Debian's chromium + chromium-driver): it loads with the
simulated fleet, draws the zones, markers move as telemetry arrives; a screenshot is written to
artifacts/map.png."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from firmware_sim import Fleet, FleetOptions
from tests.harness import REPO, eventually, gateway_config, register, running_gateway
from tests.test_gateway_geofence import put_zones, square

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = REPO / "artifacts"


def browser():
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("Debian's chromium and chromium-driver are not installed (scripts/setup "
                    "installs them for the tests)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1280,800"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


async def test_the_map_shows_the_fleet_and_markers_move_live(mosquitto, pg_dsn, topic_root,
                                                            api_server):
    fleet = Fleet(FleetOptions(vehicles=12, rate_hz=2.0, seed=3, topic_root=topic_root,
                               host=mosquitto.host, port=mosquitto.port, speedup=20.0))
    await register(pg_dsn, fleet.registrations())
    await put_zones(pg_dsn, [square("old-town", -2000, 2000, kind="slow")])
    driver = await asyncio.to_thread(browser)
    stop = asyncio.Event()
    try:
        async with running_gateway(gateway_config(pg_dsn, mosquitto, topic_root)) as (gw, reg):
            gw.change_listeners.append(api_server.context.live.notify)
            await fleet.start()
            driving = asyncio.create_task(fleet.run(stop))
            await asyncio.sleep(2.0)  # some telemetry first, so the page starts with positions
            url = f"{api_server.url}/map/#key={api_server.keys['reader']}"
            await asyncio.to_thread(driver.get, url)

            def js(expr):  # selenium blocks: always called in a thread
                return asyncio.to_thread(driver.execute_script, f"return {expr}")

            await eventually(lambda: js("window.fleetgateMap && window.fleetgateMap.ready"),
                             timeout=20, what="the page loaded vehicles and zones")
            first = await js("window.fleetgateMap.positions()")
            async with api_server.client("reader") as c:
                located = [v["vehicle_ref"] for v in
                           (await c.get("/v1/vehicles", params={"limit": 100})).json()["items"]
                           if v["lat"] is not None]
            # A marker for every vehicle with a position (a car in a garage has none yet).
            assert len(located) >= 10 and set(located) <= set(first), (located, first)
            assert await js("window.fleetgateMap.zones()") == 1
            statuses = set((await js("window.fleetgateMap.statuses()")).values())
            assert statuses <= {"available", "on_trip", "low_battery", "offline", "immobilised"}

            async def moved() -> bool:
                now = await js("window.fleetgateMap.positions()")
                return await js("window.fleetgateMap.updates") > 0 and any(
                    now[ref] != first[ref] for ref in first)

            await eventually(moved, timeout=30, what="markers moving with live telemetry")
            ARTIFACTS.mkdir(exist_ok=True)
            await asyncio.to_thread(driver.save_screenshot, str(ARTIFACTS / "map.png"))
            stop.set()
            await driving
            await fleet.stop(flush=False)
    finally:
        stop.set()
        await asyncio.to_thread(driver.quit)
    assert (ARTIFACTS / "map.png").stat().st_size > 10_000
