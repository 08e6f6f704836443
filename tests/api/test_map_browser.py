"""The live map in headless Chromium (Debian's chromium + chromium-driver) against the real API,
gateway, broker and simulated fleet: the fleet, zones and live moves, clicks on vehicles inside
zones, and commands from a page that is not a secure context; writes artifacts/map.png."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from firmware_sim import Fleet, FleetOptions
from firmware_sim.model import Area
from firmware_sim.tcu import CommandBehaviour
from geofence import Zone
from tests import REPO
from tests.harness import eventually, gateway_config, register, running_gateway
from tests.zones import put_zones, square

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = REPO / "artifacts"
# A host name Chromium alone resolves (to 127.0.0.1): a page from it over plain HTTP is not a
# secure context, as the map is when an operator opens it by host name inside their network.
MAP_HOST = "fleet.example"
SILENT = [("ebike-silent-1", "veh-silent-1", "ebike"), ("car-silent-2", "veh-silent-2", "car")]


def browser(*flags: str):
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip(
            "Debian's chromium and chromium-driver are not installed (scripts/setup "
            "installs them for the tests)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,800",
        *flags,
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


class MapPage:
    """The map page in a Chromium seen from asyncio: selenium blocks, so it runs in threads."""

    def __init__(self, driver) -> None:
        self.driver = driver

    def js(self, expr: str):
        return asyncio.to_thread(self.driver.execute_script, f"return {expr}")

    async def open(self, url: str) -> None:
        # By way of a blank page, so that a URL differing only in its #key loads anew.
        await asyncio.to_thread(self.driver.get, "about:blank")
        await asyncio.to_thread(self.driver.get, url)
        await eventually(
            lambda: self.js("window.fleetgateMap && window.fleetgateMap.ready"),
            timeout=20,
            what="the page loaded vehicles and zones",
        )

    async def lone_vehicle(self) -> str:
        """The vehicle whose marker is farthest from any other, well inside the page."""
        points = await self.js(
            "Object.fromEntries(Object.keys(window.fleetgateMap.positions())"
            ".map((r) => [r, window.fleetgateMap.pointOf(r)]))"
        )
        width, height = await self.js("[innerWidth, innerHeight]")
        inside = {
            r: p for r, p in points.items() if 80 < p[0] < width - 80 and 80 < p[1] < height - 40
        }

        def room(ref: str) -> float:
            return min(
                (math.dist(inside[ref], p) for r, p in points.items() if r != ref), default=math.inf
            )

        return max(inside, key=room)

    async def click_vehicle(self, ref: str) -> None:
        """A real pointer click where the marker is drawn; its popup must open."""
        from selenium.webdriver.common.action_chains import ActionChains

        x, y = await self.js(f"window.fleetgateMap.pointOf({json.dumps(ref)})")

        def click() -> None:
            actions = ActionChains(self.driver)
            actions.w3c_actions.pointer_action.move_to_location(round(x), round(y))
            actions.w3c_actions.pointer_action.click()
            actions.perform()

        await asyncio.to_thread(click)

        async def popup_of_ref() -> bool:
            return await self.js("document.querySelector('.vehicle-popup')?.dataset.ref") == ref

        await eventually(popup_of_ref, timeout=5, what=f"the popup of {ref}")

    async def command(self, name: str) -> str:
        """Click the popup's button for `name`; the outcome it shows once it is no longer
        busy (`unlock…`)."""
        await self.js(f"document.querySelector('.vehicle-popup button[data-cmd={name}]').click()")
        result = "document.querySelector('.vehicle-popup .result').textContent"

        async def answered() -> bool:
            text = await self.js(result)
            return bool(text) and not text.endswith("…")

        await eventually(answered, timeout=15, what=f"the popup's answer to {name}")
        return await self.js(result)


@contextlib.asynccontextmanager
async def chromium(*flags: str):
    driver = await asyncio.to_thread(browser, *flags)
    try:
        yield MapPage(driver)
    finally:
        await asyncio.to_thread(driver.quit)


@contextlib.asynccontextmanager
async def live_fleet(
    mosquitto,
    pg_dsn,
    topic_root,
    api_server,
    *,
    vehicles: int,
    speedup: float = 1.0,
    zones: Sequence[dict] = (),
    silent: Sequence[tuple[str, str, str]] = (),
):
    """A simulated fleet reporting through the gateway to the API (commands included), with
    `silent` vehicles registered that never report; yields once most of the fleet has a fix."""
    fleet = Fleet(
        FleetOptions(
            vehicles=vehicles,
            rate_hz=2.0,
            seed=3,
            topic_root=topic_root,
            host=mosquitto.host,
            port=mosquitto.port,
            speedup=speedup,
            commands=CommandBehaviour(delay_ms=(20.0, 60.0)),
        )
    )
    await register(pg_dsn, fleet.registrations() + list(silent))
    if zones:
        await put_zones(pg_dsn, list(zones))
    async with running_gateway(gateway_config(pg_dsn, mosquitto, topic_root)) as (gw, _registry):
        gw.change_listeners.append(api_server.context.live.notify)
        api_server.context.commands = gw.commands
        await fleet.start()
        stop = asyncio.Event()
        driving = asyncio.create_task(fleet.run(stop))
        try:

            async def most_located() -> bool:
                return len(await located(api_server)) >= vehicles - 2

            await eventually(most_located, timeout=20, what="positions from the fleet")
            yield fleet
        finally:
            stop.set()
            await driving
            await fleet.stop(flush=False)


async def vehicles_listed(api_server) -> list[dict]:
    async with api_server.client("reader") as c:
        return (await c.get("/v1/vehicles", params={"limit": 100})).json()["items"]


async def located(api_server) -> list[str]:
    return [v["vehicle_ref"] for v in await vehicles_listed(api_server) if v["lat"] is not None]


@contextlib.asynccontextmanager
async def zones_answered_late(upstream_port: int, delay_s: float):
    """A TCP forwarder to the API that holds each `GET /v1/zones` request back for delay_s, so
    that the zones answer after the vehicles (a fake: the real API answers in the order the
    database does, which a test cannot choose). Yields the port to load the page from."""
    connections: set[asyncio.StreamWriter] = set()

    async def pump(reader, writer, hold: bool) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                if hold and data.startswith(b"GET /v1/zones"):
                    await asyncio.sleep(delay_s)
                writer.write(data)
                await writer.drain()
        writer.close()

    async def forward(reader, writer) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        connections.update((writer, up_writer))
        await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))

    server = await asyncio.start_server(forward, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in connections:
            writer.transport.abort()


def zone_over(area: Area, zone_id: str) -> dict:
    """A slow zone covering the whole area the simulated vehicles roam in."""
    ring = [
        [area.west, area.south],
        [area.east, area.south],
        [area.east, area.north],
        [area.west, area.north],
        [area.west, area.south],
    ]
    return Zone.from_row(
        {"id": zone_id, "kind": "slow", "geometry": {"type": "Polygon", "coordinates": [ring]}}
    ).to_row()


async def test_the_map_shows_the_fleet_and_markers_move_live(
    mosquitto, pg_dsn, topic_root, api_server
):
    async with (
        live_fleet(
            mosquitto,
            pg_dsn,
            topic_root,
            api_server,
            vehicles=12,
            speedup=20.0,
            zones=[square("old-town", -2000, 2000, kind="slow")],
            silent=SILENT,
        ),
        chromium() as page,
    ):
        await page.open(f"{api_server.url}/map/#key={api_server.keys['reader']}")
        first = await page.js("window.fleetgateMap.positions()")
        # A marker for every vehicle with a position (a car in a garage has none yet).
        with_fix = await located(api_server)
        assert len(with_fix) >= 10 and set(with_fix) <= set(first), (with_fix, first)
        assert await page.js("window.fleetgateMap.zones()") == 1
        statuses = set((await page.js("window.fleetgateMap.statuses()")).values())
        assert statuses <= {"available", "on_trip", "low_battery", "offline", "immobilised"}

        async def header_counts_the_whole_fleet() -> bool:
            listed = await vehicles_listed(api_server)
            unplaced = sum(v["lat"] is None for v in listed)
            header = await page.js("document.getElementById('counts').textContent")
            return header.startswith(
                f"{len(listed)} vehicles · {unplaced} without a position yet · "
            )

        # The silent vehicles are part of the fleet: counted, and said to have no position.
        await eventually(
            header_counts_the_whole_fleet,
            timeout=10,
            what="the header counting every vehicle, with or without a position",
        )

        async def moved() -> bool:
            now = await page.js("window.fleetgateMap.positions()")
            return await page.js("window.fleetgateMap.updates") > 0 and any(
                now[ref] != first[ref] for ref in first
            )

        await eventually(moved, timeout=30, what="markers moving with live telemetry")
        ARTIFACTS.mkdir(exist_ok=True)
        await asyncio.to_thread(page.driver.save_screenshot, str(ARTIFACTS / "map.png"))
    assert (ARTIFACTS / "map.png").stat().st_size > 10_000


async def test_a_vehicle_inside_a_zone_that_answered_last_opens_its_popup(
    mosquitto, pg_dsn, topic_root, api_server
):
    area = Area()
    async with (
        live_fleet(
            mosquitto,
            pg_dsn,
            topic_root,
            api_server,
            vehicles=6,
            zones=[zone_over(area, "whole-area")],
        ),
        zones_answered_late(urlsplit(api_server.url).port, delay_s=1.5) as port,
        chromium() as page,
    ):
        await page.open(f"http://127.0.0.1:{port}/map/#key={api_server.keys['reader']}")
        assert await page.js("window.fleetgateMap.zones()") == 1
        ref = await page.lone_vehicle()
        lat, lon = (await page.js("window.fleetgateMap.positions()"))[ref]
        assert area.south < lat < area.north and area.west < lon < area.east
        await page.click_vehicle(ref)
        await eventually(
            lambda: page.js(
                "getComputedStyle(document.querySelector('.leaflet-popup')).opacity === '1'"
            ),
            timeout=5,
            what="the popup faded in",
        )
        ARTIFACTS.mkdir(exist_ok=True)
        await asyncio.to_thread(page.driver.save_screenshot, str(ARTIFACTS / "map-popup.png"))


async def test_unlock_from_a_plain_http_host_name_reaches_the_vehicle(
    mosquitto, pg_dsn, topic_root, api_server
):
    origin = f"http://{MAP_HOST}:{urlsplit(api_server.url).port}"
    async with (
        live_fleet(mosquitto, pg_dsn, topic_root, api_server, vehicles=6),
        chromium(f"--host-resolver-rules=MAP {MAP_HOST} 127.0.0.1") as page,
    ):
        # A key without commands:write first: the refusal shows instead of a stuck "unlock…".
        await page.open(f"{origin}/map/#key={api_server.keys['reader']}")
        assert await page.js("[location.host, window.isSecureContext]") == [
            urlsplit(origin).netloc,
            False,
        ]
        ref = await page.lone_vehicle()
        await page.click_vehicle(ref)
        refused = await page.command("unlock")
        assert refused.startswith("unlock refused: ") and "commands:write" in refused, refused

        await page.open(f"{origin}/map/#key={api_server.keys['rental']}")
        ref = await page.lone_vehicle()
        await page.click_vehicle(ref)
        assert await page.command("unlock") == "unlock: succeeded"
        async with api_server.client("reader") as c:
            sent = (await c.get("/v1/commands", params={"vehicle": ref})).json()["items"]
        assert [(c["type"], c["state"], c["requested_by"]) for c in sent] == [
            ("unlock", "succeeded", "rental")
        ]
