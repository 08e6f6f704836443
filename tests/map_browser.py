"""The live map in Debian's headless Chromium (chromium + chromium-driver), driven from asyncio:
the browser, the page's own read-only view (window.fleetgateMap), real pointer and keyboard
input, and a simulated fleet reporting through the real gateway to the API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

from firmware_sim import Fleet, FleetOptions
from firmware_sim.tcu import CommandBehaviour
from tests import REPO
from tests.harness import eventually, gateway_config, register, running_gateway
from tests.zones import put_zones

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = REPO / "artifacts"
# A host name Chromium alone resolves (to 127.0.0.1): a page from it over plain HTTP is not a
# secure context, as the map is when an operator opens it by host name inside their network.
MAP_HOST = "fleet.example"
# The smallest screen the map is laid out for.
WINDOW = (1366, 768)


def browser():
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
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        f"--host-resolver-rules=MAP {MAP_HOST} 127.0.0.1",
        # WebGL in software (SwiftShader), for the vector style base map: there is no GPU here.
        "--enable-unsafe-swiftshader",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    # --window-size sets the window; the page gets what is left inside it.
    inner = driver.execute_script("return [innerWidth, innerHeight]")
    driver.set_window_size(2 * WINDOW[0] - inner[0], 2 * WINDOW[1] - inner[1])
    return driver


class MapPage:
    """The map page in a Chromium seen from asyncio: selenium blocks, so it runs in threads."""

    def __init__(self, driver) -> None:
        self.driver = driver

    def js(self, expr: str):
        return asyncio.to_thread(self.driver.execute_script, f"return {expr}")

    def run(self, script: str):
        return asyncio.to_thread(self.driver.execute_script, script)

    async def open_blank(self) -> None:
        await asyncio.to_thread(self.driver.get, "about:blank")

    async def open(self, url: str) -> None:
        # By way of a blank page, so that a URL differing only in its #key loads anew.
        await asyncio.to_thread(self.driver.get, "about:blank")
        await asyncio.to_thread(self.driver.get, url)
        await eventually(
            lambda: self.js("window.fleetgateMap && window.fleetgateMap.ready"),
            timeout=20,
            what="the page loaded vehicles and zones",
        )

    async def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / name
        await asyncio.to_thread(self.driver.save_screenshot, str(path))
        assert path.stat().st_size > 10_000, path
        return path

    async def errors(self) -> list[str]:
        """Errors the page logged (uncaught exceptions, failed scripts) since the last call."""
        logs = await asyncio.to_thread(self.driver.get_log, "browser")
        return [
            e["message"] for e in logs if e["level"] == "SEVERE" and "favicon" not in e["message"]
        ]

    async def lone_vehicle(self) -> str:
        """The drawn vehicle farthest from any other, well inside the map."""
        points = await self.js(
            "Object.fromEntries(window.fleetgateMap.shown()"
            ".map((r) => [r, window.fleetgateMap.pointOf(r)]).filter(([r, p]) => p))"
        )
        left, top, right, bottom = await self.js(
            "(() => { const b = document.getElementById('map').getBoundingClientRect();"
            " return [b.left, b.top, b.right, b.bottom]; })()"
        )
        inside = {
            r: p
            for r, p in points.items()
            if left + 60 < p[0] < right - 60 and top + 60 < p[1] < bottom - 40
        }
        assert inside, f"no vehicle drawn well inside the map: {points}"

        def room(ref: str) -> float:
            return min(
                (math.dist(inside[ref], p) for r, p in points.items() if r != ref), default=math.inf
            )

        return max(inside, key=room)

    async def pointer(self, x: float, y: float, click: bool = False) -> None:
        """A real pointer move (and click) at page coordinates."""
        from selenium.webdriver.common.action_chains import ActionChains

        def act() -> None:
            actions = ActionChains(self.driver)
            actions.w3c_actions.pointer_action.move_to_location(round(x), round(y))
            if click:
                actions.w3c_actions.pointer_action.click()
            actions.perform()

        await asyncio.to_thread(act)

    async def click_vehicle(self, ref: str, attempts: int = 3) -> None:
        """A real pointer click where the vehicle is drawn; its panel must open. A moving
        vehicle on a busy machine may have moved on between looking and clicking: looked up and
        clicked again, a few times."""
        opened = (
            f"document.getElementById('p-title').textContent === {json.dumps(ref)}"
            " && !document.getElementById('panel').hidden"
        )
        for attempt in range(attempts):
            x, y = await self.js(f"window.fleetgateMap.pointOf({json.dumps(ref)})")
            await self.pointer(x, y, click=True)
            try:
                await eventually(lambda: self.js(opened), timeout=3, what=f"the panel of {ref}")
                return
            except AssertionError:
                if attempt == attempts - 1:
                    raise

    async def click(self, css: str) -> None:
        """A real click on an element (selenium scrolls it into view first)."""
        from selenium.webdriver.common.by import By

        def act() -> None:
            self.driver.find_element(By.CSS_SELECTOR, css).click()

        await asyncio.to_thread(act)

    async def type_into(self, css: str, *keys: str) -> None:
        from selenium.webdriver.common.by import By

        def act() -> None:
            element = self.driver.find_element(By.CSS_SELECTOR, css)
            element.clear()
            element.send_keys(*keys)

        await asyncio.to_thread(act)

    async def keys(self, *keys: str) -> None:
        """Keys to whatever has the focus."""
        from selenium.webdriver.common.action_chains import ActionChains

        await asyncio.to_thread(lambda: ActionChains(self.driver).send_keys(*keys).perform())

    async def choose(self, css: str, value: str) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import Select

        def act() -> None:
            Select(self.driver.find_element(By.CSS_SELECTOR, css)).select_by_value(value)

        await asyncio.to_thread(act)

    async def set_view(self, lat: float, lon: float, zoom: int) -> None:
        await self.run(
            f"window.fleetgateMap.leaflet.setView([{lat}, {lon}], {zoom}, {{animate: false}})"
        )

    async def centre(self) -> tuple[float, float]:
        return tuple(
            await self.js(
                "(() => { const c = window.fleetgateMap.leaflet.getCenter();"
                " return [c.lat, c.lng]; })()"
            )
        )

    async def page_point(self, lat: float, lon: float) -> tuple[float, float]:
        """Where a place is on the page (CSS pixels from the viewport's top left)."""
        return tuple(
            await self.js(
                "(() => { const m = window.fleetgateMap.leaflet;"
                f" const p = m.latLngToContainerPoint([{lat}, {lon}]);"
                " const b = m.getContainer().getBoundingClientRect();"
                " return [b.left + p.x, b.top + p.y]; })()"
            )
        )

    async def text(self, css: str) -> str:
        return await self.js(f"document.querySelector({json.dumps(css)}).textContent")


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


async def vehicles_listed(api_server, **params) -> list[dict]:
    async with api_server.client("reader") as c:
        return (await c.get("/v1/vehicles", params={"limit": 100, **params})).json()["items"]


async def located(api_server) -> list[str]:
    return [v["vehicle_ref"] for v in await vehicles_listed(api_server) if v["lat"] is not None]
