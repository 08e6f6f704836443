"""The live map in headless Chromium (Debian's chromium + chromium-driver) against the real API:
vehicles on one canvas with clusters, filters, search and a shareable view; zones by kind with
their rules on hover; alarms and events from the stream; track replay; base maps; the vehicle
panel with commands through the real gateway to a simulated fleet, from a page that is not a
secure context. One browser for the module; each test writes screenshots under artifacts/."""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import zlib
from urllib.parse import parse_qs, urlsplit

import pytest
from selenium.webdriver.common.keys import Keys

from firmware_sim.specs import Area
from geofence import Zone
from telemetry.batch import FLAG_IMPLAUSIBLE_JUMP, DeviceEvent
from tests.api_client import LAT0, LON0, fleet
from tests.batches import make_batch, now_ms
from tests.harness import eventually
from tests.map_browser import MAP_HOST, MapPage, browser, live_fleet, located, vehicles_listed
from tests.zones import put_zones

pytestmark = pytest.mark.integration

RULE = {"ride_start_allowed": True, "ride_end_allowed": True, "ride_through_allowed": True}


def box(zone_id: str, south: float, west: float, north: float, east: float, **kw) -> dict:
    """A rectangular zone, in degrees from the test fleet's first vehicle (LAT0, LON0)."""
    ring = [(west, south), (east, south), (east, north), (west, north), (west, south)]
    geometry = {"type": "Polygon", "coordinates": [[[LON0 + x, LAT0 + y] for x, y in ring]]}
    return Zone.from_row({"id": zone_id, "geometry": geometry, **kw}).to_row()


# The fleet of tests.api_client lies on a diagonal from (LAT0, LON0), 0.001° a vehicle.
ZONES = [
    box("city", -0.02, -0.05, 0.05, 0.05, kind="operating_area", name="City", rules=[RULE]),
    box(
        "park",
        -0.005,
        -0.04,
        0.005,
        -0.02,
        kind="no_ride",
        name="Park",
        rules=[{**RULE, "ride_through_allowed": False, "ride_end_allowed": False}],
    ),
    box(
        "old-town",
        -0.0005,
        -0.0005,
        0.0045,
        0.0045,
        kind="slow",
        name="Old town",
        rules=[{**RULE, "maximum_speed_kph": 10}],
    ),
    box(
        "hub",
        0.0095,
        0.0095,
        0.0105,
        0.0105,
        kind="station",
        name="Hub",
        rules=[{**RULE, "station_parking": True}],
    ),
    box(
        "market",
        0.015,
        0.0,
        0.02,
        0.005,
        kind="no_parking",
        name="Market",
        rules=[{**RULE, "ride_end_allowed": False}],
    ),
]


@pytest.fixture(scope="module")
def chromium():
    driver = browser()
    try:
        yield MapPage(driver)
    finally:
        driver.quit()


@pytest.fixture
async def page(chromium, api_server):
    """The module's browser for one test, which must leave no error in the page's console; it
    leaves the page before the test's API stops (a stream cut there is no error of the page)."""
    await chromium.errors()  # what an earlier test left
    yield chromium
    errors = await chromium.errors()
    await chromium.open_blank()
    assert errors == []


def map_url(api_server, key: str | None = None, **view) -> str:
    query = "&".join(f"{k}={v}" for k, v in view.items())
    return (
        f"{api_server.url}/map/"
        + (f"?{query}" if query else "")
        + (f"#key={api_server.keys[key]}" if key else "")
    )


async def shown(page) -> set[str]:
    return set(await page.js("window.fleetgateMap.shown()"))


async def listed(api_server, **params) -> set[str]:
    return {v["vehicle_ref"] for v in await vehicles_listed(api_server, **params) if v["lat"]}


async def test_vehicles_on_one_canvas_clusters_filters_search_and_a_shareable_view(
    page, api_server, pg_dsn
):
    await fleet(api_server.store, 25)
    await put_zones(pg_dsn, ZONES)
    centre = {"lat": LAT0 + 0.006, "lon": LON0 + 0.006}
    await page.open(map_url(api_server, "reader", **centre, z=15))
    # One canvas draws every vehicle; nothing on the map takes clicks but the page's own test.
    assert await page.js("document.querySelectorAll('canvas.fg-vehicles').length") == 1
    assert await page.js("document.querySelectorAll('#map .leaflet-interactive').length") == 0
    assert await page.js("window.fleetgateMap.zones()") == len(ZONES)
    assert (await page.text("#counts")).startswith("25 vehicles · ")
    chips = await page.js(
        "[...document.querySelectorAll('#status-counts button')]"
        ".map((b) => [b.dataset.status, Number(b.querySelector('.n').textContent)])"
    )
    per_status = {s: len(await listed(api_server, status=s)) for s, _ in chips}
    assert dict(chips) == per_status and sum(per_status.values()) == 25
    assert await page.js("window.fleetgateMap.stats().drawnVehicles") > 5
    await page.screenshot("map.png")

    # Zoomed out, the fleet is drawn as clusters that count every vehicle.
    await page.run("window.fleetgateMap.leaflet.setZoom(12, {animate: false})")

    async def clustered() -> bool:
        clusters = await page.js("window.fleetgateMap.clusters()")
        alone = await page.js("window.fleetgateMap.stats().drawnVehicles")
        return bool(clusters) and sum(c["n"] for c in clusters) + alone == 25

    await eventually(clustered, timeout=5, what="clusters counting the whole fleet")
    await page.screenshot("map-clusters.png")
    cluster = (await page.js("window.fleetgateMap.clusters()"))[0]
    box = await page.js("document.getElementById('map').getBoundingClientRect().toJSON()")
    await page.pointer(box["left"] + cluster["x"], box["top"] + cluster["y"], click=True)
    await eventually(
        lambda: page.js("window.fleetgateMap.leaflet.getZoom() > 12"),
        timeout=5,
        what="a click on a cluster zooming in",
    )
    await page.set_view(centre["lat"], centre["lon"], 15)

    # The type filter lists the registry's types (GBFS vehicle_types), not only the fleet's.
    async with api_server.client("reader") as c:
        registry = [t["id"] for t in (await c.get("/v1/vehicle-types")).json()]
    assert {"ebike", "car", "scooter", "moped", "cargo_ebike"} <= set(registry)
    assert await page.js(
        "[...document.querySelectorAll('#f-type option')].map((o) => o.value)"
    ) == ["", *registry]
    # Each filter shows exactly what the API lists with the same filter.
    await page.choose("#f-type", "car")
    assert await shown(page) == await listed(api_server, type="car")
    await page.click("#f-clear")
    status = max(per_status, key=lambda s: (0 < per_status[s] < 25, -per_status[s]))
    await page.click(f'#status-counts button[data-status="{status}"]')
    assert await shown(page) == await listed(api_server, status=status)
    await page.click("#f-clear")
    await page.type_into("#f-soc", "50")
    low = {v["vehicle_ref"] for v in await vehicles_listed(api_server) if v["soc_pct"] < 50}
    assert await shown(page) == low and 0 < len(low) < 25
    await page.click("#f-clear")
    assert await page.js(
        "[...document.querySelectorAll('#f-zone option')].map((o) => o.value).sort()"
    ) == [
        "",
        *sorted(z["id"] for z in ZONES),
    ]
    await page.choose("#f-online", "false")
    assert await shown(page) == await listed(api_server, online="false")
    await page.click("#f-clear")
    assert len(await shown(page)) == 25

    # Search by device id with the keyboard alone: the map flies to the vehicle, its panel opens.
    await page.click("#q")
    await page.keys("tcu-017", Keys.ENTER)
    await eventually(
        lambda: page.js("document.getElementById('p-title').textContent === 'veh-017'"),
        timeout=5,
        what="the panel of the vehicle searched for",
    )

    async def centred_on_it() -> bool:
        lat, lon = await page.centre()
        return abs(lat - (LAT0 + 0.017)) < 2e-4 and abs(lon - (LON0 + 0.017)) < 2e-4

    await eventually(centred_on_it, timeout=5, what="the map centred on the vehicle")
    # Readable at 1366×768 with the panel open: nothing spills out of the bar, the map keeps room.
    assert await page.js("[innerWidth, innerHeight]") == [1366, 768]
    bar = await page.js(
        "(() => { const b = document.getElementById('bar');"
        " return [b.scrollWidth, b.clientWidth]; })()"
    )
    assert bar[0] <= bar[1], bar
    assert await page.js("document.getElementById('map').clientWidth") >= 700
    await page.screenshot("map-search.png")
    await page.click("#q")
    await page.keys("nothing-like-it", Keys.ENTER)
    assert "no single vehicle matches" in await page.text("#search-msg")

    # The view is in the URL: filters, selection and position come back from a shared link.
    await page.choose("#f-type", "ebike")
    await page.type_into("#f-soc", "90")
    await eventually(
        lambda: page.js("location.search.includes('soc_below=90')"), timeout=3, what="the URL"
    )
    shared = await page.js("location.href")
    query = parse_qs(urlsplit(shared).query)
    assert query["type"] == ["ebike"] and query["vehicle"] == ["veh-017"], query
    assert "key" not in shared
    before = await shown(page)
    await page.open(shared)  # the key stays in the tab's sessionStorage, not in the link
    assert await page.js("document.getElementById('f-type').value") == "ebike"
    assert await page.js("document.getElementById('f-soc').value") == "90"
    assert await page.text("#p-title") == "veh-017"
    assert await shown(page) == before
    # Escape closes the panel (keyboard), and the URL forgets the selection.
    await page.keys(Keys.ESCAPE)
    assert await page.js("document.getElementById('panel').hidden")

    # Every control is reached with Tab, the map itself too (arrow keys pan it, +/- zoom).
    await page.run(
        "window.__focused = []; document.activeElement.blur();"
        " document.addEventListener('focusin', (e) => window.__focused.push("
        "e.target.id || e.target.dataset.status || e.target.className));"
    )
    await page.keys(*[Keys.TAB] * 30)
    reached = await page.js("window.__focused")
    assert {"q", "f-type", "f-soc", "f-zone", "f-online", "f-clear", "available"} <= set(reached), (
        reached
    )
    assert "map" in reached, reached
    await page.run("document.getElementById('map').focus()")
    before_keys = await page.centre()
    await page.keys(Keys.ARROW_RIGHT, Keys.ARROW_RIGHT)
    await eventually(
        lambda: _moved_east(page, before_keys), timeout=3, what="the map panned by the keyboard"
    )


async def _moved_east(page, before: tuple[float, float]) -> bool:
    return (await page.centre())[1] > before[1]


async def test_zones_by_kind_rules_on_hover_and_alarms_from_the_stream(page, api_server, pg_dsn):
    ids = await fleet(api_server.store, 12)
    await put_zones(pg_dsn, ZONES)
    await page.open(map_url(api_server, "reader", lat=LAT0, lon=LON0 - 0.01, z=14))
    kinds = await page.js(
        "[...document.querySelectorAll('#zone-kinds input')].map((i) => [i.value, i.checked])"
    )
    assert sorted(kinds) == sorted(
        [[k, True] for k in ("operating_area", "no_ride", "slow", "station", "no_parking")]
    )
    # Hover inside the no-ride park, where no vehicle is: its name, kind and rules show.
    park = await page.page_point(LAT0, LON0 - 0.03)
    await page.pointer(*park)
    await eventually(
        lambda: page.js("!document.getElementById('zone-tip').hidden"),
        timeout=5,
        what="the zone's rules on hover",
    )
    tip = await page.text("#zone-tip")
    assert "Park" in tip and "no ride" in tip and "no riding through" in tip, tip
    assert "City" in tip and "operating area" in tip, tip  # the area it lies in, too
    await page.screenshot("map-zones.png")
    # The no-ride layer toggled off: gone from the map and from the hover.
    paths = "document.querySelectorAll('.leaflet-zones-pane path').length"
    drawn = await page.js(paths)
    await page.click('#zone-kinds input[value="no_ride"]')
    assert await page.js(paths) == drawn - 1
    await page.pointer(park[0] + 3, park[1] + 3)
    await eventually(
        lambda: page.js("!document.getElementById('zone-tip').textContent.includes('Park')"),
        timeout=5,
        what="the hidden kind gone from the hover",
    )
    await eventually(
        lambda: page.js("location.search.includes('hide_zones=no_ride')"),
        timeout=3,
        what="the hidden kind in the URL",
    )

    # A vehicle inside the slow zone (drawn later than the vehicles or not) takes the click.
    await page.set_view(LAT0 + 0.003, LON0 + 0.003, 16)
    for ref in ("veh-001", "veh-002", "veh-003"):
        assert await page.js(f"window.fleetgateMap.pointOf({json.dumps(ref)}) !== null")
        await page.click_vehicle(ref)

    # Alarms: any event type from the stream, routine ones only on request; a click focuses.
    t = now_ms()
    await api_server.store.write(
        make_batch([]),
        [
            DeviceEvent(ids["veh-009"], t, "alarm.theft", {"reason": "moved while locked"}),
            DeviceEvent(ids["veh-004"], t + 1, "vehicle.offline", {}, source="gateway"),
            DeviceEvent(ids["veh-002"], t + 2, "zone_enter", {"zone": "old-town"}, "geofence"),
            DeviceEvent(ids["veh-006"], t + 3, "battery_low", {"soc_pct": 9.0}, "battery"),
        ],
    )

    async def listed_types() -> list[str]:
        return await page.js(
            "[...document.querySelectorAll('#alarm-list li')].map((li) => li.dataset.type)"
        )

    async def alarms_listed() -> bool:
        return {"alarm.theft", "vehicle.offline", "battery_low"} <= set(await listed_types())

    await eventually(
        alarms_listed,
        timeout=10,
        what="the alarms in the list",
    )
    assert "zone_enter" not in await listed_types()
    assert (
        await page.js(
            "document.querySelector('#alarm-list li[data-type=\"alarm.theft\"]').className"
        )
        == "alarm"
    )
    await page.click("#all-events")
    assert "zone_enter" in await listed_types()
    await page.click('#alarm-list li[data-type="alarm.theft"] button')
    await eventually(
        lambda: page.js("document.getElementById('p-title').textContent === 'veh-009'"),
        timeout=5,
        what="the alarm's vehicle focused",
    )
    await eventually(
        lambda: page.js("document.getElementById('p-events').textContent.includes('alarm.theft')"),
        timeout=5,
        what="the alarm among the vehicle's last events",
    )
    await page.screenshot("map-alarms.png")

    # A type with markup in it is shown as text, never run.
    t = now_ms()
    markup = 'alarm.<img src=x onerror="window.owned=1">'
    await api_server.store.write(make_batch([]), [DeviceEvent(ids["veh-001"], t, markup, {})])
    await eventually(
        lambda: page.js(
            "document.querySelector('#alarm-list li').textContent.includes('alarm.<img src=x')"
        ),
        timeout=10,
        what="the event with markup in its type listed as text",
    )
    assert await page.js("document.querySelectorAll('#alarm-list img').length") == 0
    assert await page.js("window.owned") is None

    # A flood of events keeps the list bounded: a tab open all day must not grow.
    await api_server.store.write(
        make_batch([]),
        [
            DeviceEvent(ids["veh-002"], t + 1 + k, "battery_low", {"soc_pct": 5}, "battery")
            for k in range(400)
        ],
    )

    async def flood_arrived() -> bool:
        kept = await page.js("window.fleetgateMap.events().map((e) => e.type)")
        return kept.count("battery_low") >= 250

    await eventually(flood_arrived, timeout=15, what="the flood of events")
    assert await page.js("window.fleetgateMap.events().length") <= 300
    assert await page.js("document.querySelectorAll('#alarm-list li').length") <= 100


def png(rgb: tuple[int, int, int], size: int = 256) -> bytes:
    """A plain-coloured PNG tile."""
    raw = b"".join(b"\x00" + bytes(rgb) * size for _ in range(size))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


# A vector style of a background alone: MapLibre draws it without any tiles (a self-hosted style
# names its vector tile sources; the wiring is the same).
STYLE = json.dumps(
    {
        "version": 8,
        "sources": {},
        "layers": [{"id": "land", "type": "background", "paint": {"background-color": "#d8e8c8"}}],
    }
).encode()


@contextlib.asynccontextmanager
async def tile_server():
    """Raster tiles and a vector style from a local server (what FLEETGATE_MAP_TILES_URL and
    FLEETGATE_MAP_STYLE_URL point at); yields the server's base URL and the paths asked for."""
    asked: list[str] = []
    tile = png((170, 211, 223))

    async def answer(reader, writer) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        path = request.split(b" ")[1].decode()
        asked.append(path)
        body, kind = (STYLE, "application/json") if path == "/style.json" else (tile, "image/png")
        writer.write(
            f"HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nAccess-Control-Allow-Origin: *\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", asked
    finally:
        server.close()


async def test_track_replay_marks_implausible_fixes_and_base_maps_switch(page, api_server):
    ids = await fleet(api_server.store, 2)
    t0 = (now_ms() // 60_000) * 60_000 - 20 * 60_000
    rows = [
        {
            "vehicle": ids["veh-001"],
            "t": t0 + k * 10_000,
            "lat": LAT0 + (1.0 if k == 4 else k * 2e-4),
            "lon": LON0 + k * 1e-4,
            "speed_kmh": 15.0,
            "flags": FLAG_IMPLAUSIBLE_JUMP if k == 4 else 0,
        }
        for k in range(10)
    ]
    await api_server.store.write(make_batch(rows), [])
    async with tile_server() as (base_url, asked):
        api_server.context.map_tiles_url = base_url + "/{z}/{x}/{y}.png"
        await page.open(map_url(api_server, "reader", vehicle="veh-001", z=15))
        assert await page.text("#p-title") == "veh-001"  # selected from the URL
        await page.click("#track-form button")
        await eventually(
            lambda: page.js("document.getElementById('t-slider').max === '10'"),
            timeout=5,
            what="the track's eleven fixes on the slider (ten, and the fleet's first)",
        )
        assert await page.js("document.querySelectorAll('path.implausible').length") == 1
        assert "1 marked implausible" in await page.text("#t-at")
        # The slider with the keyboard: to the implausible fix, which says so.
        await page.click("#t-slider")
        await page.run(
            "document.getElementById('t-slider').value = '0';"
            " document.getElementById('t-slider').focus()"
        )
        await page.keys(*[Keys.ARROW_RIGHT] * 4)
        assert "point 5 of 11" in await page.text("#t-at")
        assert "implausible fix" in await page.text("#t-at")
        await page.screenshot("map-track.png")
        await page.click("#t-play")
        await eventually(
            lambda: page.js("document.getElementById('t-slider').value === '10'"),
            timeout=10,
            what="the replay played to the end",
        )
        # Buckets: one point a minute, each saying how many implausible fixes it hid.
        await page.choose("#t-bucket", "1m")
        await page.click("#track-form button")
        await eventually(
            lambda: page.js("Number(document.getElementById('t-slider').max) < 10"),
            timeout=5,
            what="the bucketed track",
        )
        assert await page.js("document.querySelectorAll('path.implausible').length") == 1

        # Base maps: plain (offline) by default; raster tiles once chosen, kept in the URL.
        assert await page.js("document.querySelectorAll('img.leaflet-tile').length") == 0
        assert await page.js(
            "document.querySelector('#basemaps input[value=vector]').disabled"
        )  # no style configured
        await page.click('#basemaps input[value="tiles"]')
        await eventually(
            lambda: page.js(
                "[...document.querySelectorAll('img.leaflet-tile')]"
                ".some((i) => i.complete && i.naturalWidth === 256)"
            ),
            timeout=10,
            what="raster tiles drawn",
        )
        assert asked and all(a.endswith(".png") for a in asked)
        await eventually(
            lambda: page.js("location.search.includes('base=tiles')"), timeout=3, what="the URL"
        )
        await page.screenshot("map-tiles.png")
        await page.click('#basemaps input[value="plain"]')
        assert await page.js("document.querySelectorAll('img.leaflet-tile').length") == 0

        # A vector style (MapLibre GL, loaded only now), where the operator configured one.
        api_server.context.map_style_url = base_url + "/style.json"
        await page.open(map_url(api_server, z=15, base="vector"))
        await eventually(
            lambda: page.js(
                "(() => { const b = window.fleetgateMap.baseLayer();"
                " const m = b && b.getMaplibreMap && b.getMaplibreMap();"
                " return !!m && m.loaded() && m.getStyle().layers[0].id === 'land'; })()"
            ),
            timeout=20,
            what="the vector style drawn by MapLibre",
        )
        assert "/style.json" in asked
        assert await page.js("document.querySelector('#basemaps input[value=vector]').checked")
        await page.screenshot("map-vector.png")


async def test_live_moves_and_the_vehicle_panel_commands_from_a_plain_http_host_name(
    page, mosquitto, pg_dsn, topic_root, api_server
):
    origin = f"http://{MAP_HOST}:{urlsplit(api_server.url).port}"
    silent = [("car-silent-1", "veh-silent-1", "car")]
    area = Area()
    west = {
        "id": "west",
        "kind": "slow",
        "geometry": {
            "type": "Polygon",
            "coordinates": [
                [
                    [area.west, area.south],
                    [(area.west + area.east) / 2, area.south],
                    [(area.west + area.east) / 2, area.north],
                    [area.west, area.north],
                    [area.west, area.south],
                ]
            ],
        },
        "rules": [{**RULE, "maximum_speed_kph": 15}],
    }
    async with live_fleet(
        mosquitto,
        pg_dsn,
        topic_root,
        api_server,
        vehicles=8,
        speedup=5.0,  # moving, slowly enough to be clicked
        silent=silent,
        zones=[Zone.from_row(west).to_row()],
    ):
        await page.open(f"{origin}/map/?z=13#key={api_server.keys['reader']}")
        assert await page.js("[location.host, window.isSecureContext]") == [
            urlsplit(origin).netloc,
            False,
        ]

        # The whole fleet counted, the silent car among those said to have no position (a
        # simulated vehicle may not have its first fix yet on a busy machine).
        async def header_counts_the_whole_fleet() -> bool:
            listed_all = await vehicles_listed(api_server)
            unplaced = sum(v["lat"] is None for v in listed_all)
            return unplaced >= 1 and (await page.text("#counts")).startswith(
                f"{len(listed_all)} vehicles · {unplaced} without a position yet · "
            )

        await eventually(
            header_counts_the_whole_fleet,
            timeout=10,
            what="the header counting every vehicle, with or without a position",
        )
        first = await page.js("window.fleetgateMap.positions()")
        assert set(await located(api_server)) <= set(first)

        async def moved() -> bool:
            now = await page.js("window.fleetgateMap.positions()")
            return await page.js("window.fleetgateMap.updates") > 0 and any(
                now[ref] != first[ref] for ref in first
            )

        await eventually(moved, timeout=30, what="vehicles moving with live telemetry")
        delays = await page.js("window.fleetgateMap.delays.receivedToDrawnMs")
        # Applied in the next animation frame, not queued (the median: a busy machine may hold
        # back a frame now and then).
        assert delays and sorted(delays)[len(delays) // 2] < 1_000, delays

        # The zone filter: what the gateway says is in the zone, checked in one go in the page
        # (the vehicles move on meanwhile).
        await page.choose("#f-zone", "west")
        assert await page.js(
            "(() => { const shown = new Set(window.fleetgateMap.shown());"
            " return Object.keys(window.fleetgateMap.positions()).every((ref) =>"
            " shown.has(ref) === window.fleetgateMap.vehicle(ref).zones.includes('west')); })()"
        )
        await page.click("#f-clear")

        # A key without commands:write is offered no command.
        await page.set_view(*area.centre, 14)
        ref = await page.lone_vehicle()
        await page.click_vehicle(ref)
        assert "lacks the scope commands:write" in await page.text("#p-commands")
        state = await page.text("#p-state")
        for row in ("charge (SoC)", "range", "state of health", "12 V battery", "presence"):
            assert row in state, state

        await page.open(
            f"{origin}/map/?lat={area.centre[0]}&lon={area.centre[1]}&z=14"
            f"#key={api_server.keys['rental']}"
        )
        ref = await page.lone_vehicle()
        await page.click_vehicle(ref)
        buttons = await page.js(
            "[...document.querySelectorAll('#p-commands button')].map((b) => b.dataset.cmd)"
        )
        assert buttons == ["unlock", "lock", "locate", "immobilise", "mobilise"]
        await page.click('#p-commands button[data-cmd="unlock"]')
        # The POST answers at once (queued); the outcome comes over the stream.
        await eventually(
            lambda: page.js(
                "document.getElementById('p-result').textContent === 'unlock: succeeded'"
            ),
            timeout=30,
            what="the unlock's outcome from the stream",
        )
        assert "unlock: succeeded" in await page.text("#p-recent")

        # Immobilise asks first, naming the vehicle; cancelling sends nothing.
        await page.click('#p-commands button[data-cmd="immobilise"]')
        assert await page.js("document.getElementById('confirm').open")
        assert ref in await page.text("#confirm-text")
        assert await page.text("#confirm-ok") == f"Immobilise {ref}"
        await page.screenshot("map-confirm.png")
        await page.keys(Keys.ESCAPE)  # the dialog's cancel
        assert not await page.js("document.getElementById('confirm').open")
        await page.click('#p-commands button[data-cmd="immobilise"]')
        await page.click("#confirm-ok")

        async def commands_sent() -> list[dict]:
            async with api_server.client("reader") as c:
                return (await c.get("/v1/commands", params={"vehicle": ref})).json()["items"]

        async def page_shows_the_state_the_api_has() -> bool:
            sent = await commands_sent()
            if sent[0]["type"] != "immobilise" or sent[0]["state"] == "queued":
                return False
            shown = f"immobilise: {sent[0]['state']}" + (
                f" ({sent[0]['reason']})" if sent[0]["reason"] else ""
            )
            return await page.text("#p-result") == shown and shown in await page.text("#p-recent")

        # Whatever the vehicle makes of it (a moving one waits for a safe state), the page shows
        # the command's state as the API has it, learnt from the stream.
        await eventually(
            page_shows_the_state_the_api_has, timeout=30, what="the immobilise's state on the page"
        )
        assert [(c["type"], c["requested_by"]) for c in await commands_sent()] == [
            ("immobilise", "rental"),
            ("unlock", "rental"),
        ], "the cancelled confirmation sent nothing"
        await page.screenshot("map-panel.png")


async def test_a_commands_progress_that_arrives_before_its_post_has_answered_is_still_shown(
    page, mosquitto, pg_dsn, topic_root, api_server
):
    """On a busy server the stream can bring a command's progress before the POST that created
    it answers; the panel must end at the newest state, not at the POST's `queued`."""
    async with live_fleet(mosquitto, pg_dsn, topic_root, api_server, vehicles=2):
        # Where the fleet drives: a page without a view in its URL opens where the last one was.
        area = Area()
        await page.open(
            f"{api_server.url}/map/?lat={area.centre[0]}&lon={area.centre[1]}&z=14"
            f"#key={api_server.keys['rental']}"
        )
        await eventually(
            lambda: page.js("window.fleetgateMap.shown().length === 2"),
            timeout=20,
            what="both vehicles drawn",
        )
        ref = await page.lone_vehicle()
        await page.click_vehicle(ref)
        # Hold the answer of the page's command POST until the test lets it through.
        await page.run(
            "window.releasePost = false; const realFetch = window.fetch;"
            "window.fetch = async (url, opts) => { const res = await realFetch(url, opts);"
            " if (opts && opts.method === 'POST' && String(url).includes('/commands')) {"
            "  while (!window.releasePost) await new Promise((r) => setTimeout(r, 50)); }"
            " return res; };"
        )
        await page.click('#p-commands button[data-cmd="locate"]')

        async def succeeded_in_the_api() -> bool:
            async with api_server.client("reader") as c:
                items = (await c.get("/v1/commands", params={"vehicle": ref})).json()["items"]
            return bool(items) and items[0]["state"] == "succeeded"

        await eventually(succeeded_in_the_api, timeout=30, what="the locate succeeding")
        assert await page.text("#p-result") == "locate…"  # the answer is still held back
        await page.run("window.releasePost = true;")
        await eventually(
            lambda: page.js(
                "document.getElementById('p-result').textContent === 'locate: succeeded'"
            ),
            timeout=10,
            what="the page showing the state the stream brought before the answer",
        )
        assert "locate: succeeded" in await page.text("#p-recent")


async def test_the_calling_key_tells_its_scopes(api_server):
    async with api_server.client("rental") as c:
        assert (await c.get("/v1/key")).json() == {
            "name": "rental",
            "scopes": ["commands:write", "fleet:read"],
        }
    async with api_server.client(None) as c:
        assert (await c.get("/v1/key")).status_code == 401


async def test_the_map_serves_its_files_and_nothing_else(api_server):
    async with api_server.client(None) as c:
        for path in ("map.js", "vehicle-layer.js", "map.css", "vendor/leaflet/leaflet.js"):
            assert (await c.get(f"/map/{path}")).status_code == 200, path
        for path in ("../routes/map.py", "map.html", "vendor/../../app.py", "nope.js"):
            assert (await c.get(f"/map/{path}")).status_code == 404, path


async def test_without_a_key_the_page_asks_for_one_and_says_when_it_is_refused(page, api_server):
    await fleet(api_server.store, 3)
    # A fresh origin (this test's server): no key in the tab's session storage.
    await asyncio.to_thread(page.driver.get, map_url(api_server))
    await eventually(
        lambda: page.js("!document.getElementById('keyform').hidden"),
        timeout=10,
        what="the key form",
    )
    assert await page.text("#conn") == "API key needed"
    await page.type_into("#key", "fgk_nope_nope", Keys.ENTER)
    await eventually(
        lambda: page.js("document.getElementById('conn').textContent === 'the key was refused'"),
        timeout=10,
        what="the refusal",
    )
    await page.errors()  # the browser logs the refused call (401) itself: expected here
    await page.type_into("#key", api_server.keys["reader"], Keys.ENTER)
    await eventually(
        lambda: page.js("window.fleetgateMap.ready && window.fleetgateMap.shown().length === 3"),
        timeout=10,
        what="the fleet with the right key",
    )
    assert await page.js("document.getElementById('keyform').hidden")
    assert await page.js("sessionStorage.getItem('fleetgate-key')") == api_server.keys["reader"]


@contextlib.asynccontextmanager
async def cuttable_proxy(upstream_port: int):
    """A TCP forwarder to the API whose open connections the test can cut (as a restarting
    proxy or a dropped network would); yields (port, cut)."""
    connections: set[asyncio.StreamWriter] = set()

    async def pump(reader, writer) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def forward(reader, writer) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        connections.update((writer, up_writer))
        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    def cut() -> None:
        for writer in list(connections):
            writer.transport.abort()
        connections.clear()

    server = await asyncio.start_server(forward, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], cut
    finally:
        server.close()
        cut()


async def test_a_cut_stream_reconnects_and_catches_up_with_what_it_missed(page, api_server):
    ids = await fleet(api_server.store, 3)
    async with cuttable_proxy(urlsplit(api_server.url).port) as (port, cut):
        await page.open(f"http://127.0.0.1:{port}/map/#key={api_server.keys['reader']}")
        # The page is ready once vehicles and zones are in; its stream may open a moment later.
        await eventually(
            lambda: page.js("document.getElementById('conn').textContent === 'live'"),
            timeout=10,
            what="the page's stream open",
        )
        cut()
        await eventually(
            lambda: page.js("document.getElementById('conn').textContent === 'reconnecting…'"),
            timeout=10,
            what="the page noticing the cut stream",
        )
        # A move while the page is cut off: it comes with the reload after reconnecting (or
        # on the new stream), never lost.
        await api_server.store.write(
            make_batch(
                [{"vehicle": ids["veh-001"], "t": now_ms(), "lat": LAT0 + 0.05, "lon": LON0 + 0.05}]
            ),
            [],
        )
        await eventually(
            lambda: page.js(
                "document.getElementById('conn').textContent === 'live'"
                f" && window.fleetgateMap.positions()['veh-001'][0] > {LAT0 + 0.04}"
            ),
            timeout=15,
            what="the page live again with the move it missed",
        )
        # Leave before the proxy goes: the browser logs the cut connections itself (expected).
        await page.open_blank()
        await page.errors()
