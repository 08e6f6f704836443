"""The live map under a fleet at 1 Hz: frame time, update delay and tab memory in headless
Chromium, today's page beside the page before issue 22, in the same run.

For each fleet size: a private Mosquitto, a fresh database, the simulator (one MQTT connection
per vehicle, paced on the wall clock) in a child process, the gateway and the API with its live
stream in this one, and Debian's headless Chromium (chromium + chromium-driver) opening the map
with a read-only key. Each page is measured for --duration seconds in its own browser, one after
the other while the same fleet keeps publishing:

- frame time: the interval between requestAnimationFrame callbacks (a script added before the
  page's own), p50/p95/max; a frame longer than 50 ms is a stutter a dispatcher sees;
- update delay, sample → drawn: from a sample's time (the simulator's clock, corrected by its
  wall-clock offset) to the start of the first animation frame after the stream message carrying
  it was parsed, i.e. when the page can have drawn it; the same hook on JSON.parse for both pages.
  Most of it is the gateway's and the stream's (and the simulator's own lag on a loaded
  machine); the page's part is received → drawn: from the start of parsing a stream message to
  that frame;
- tab memory: the JS heap after a forced garbage collection (DevTools' Performance metrics) and
  the renderer processes' resident memory, after loading and at the end.

The page before issue 22 (one Leaflet circle marker per vehicle) is kept only here, in
benchmarks/map_before/, served by this benchmark beside the shipped page: it is not shipped.

Usage: .venv/bin/python -m benchmarks.map [--vehicles 1000,5000,10000] [--duration 60]
       [--pages new,before]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from benchmarks._runner import REPO, bench_parser, progress, run_benchmark
from benchmarks._services import BenchServices, running_gateway
from benchmarks.ingest import SimProcess, Workload, registrations
from fleetgate.embedded import free_port

BEFORE = Path(__file__).resolve().parent / "map_before"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
WINDOW = (1366, 768)

# Before any of the page's scripts: a frame-interval recorder, and a hook on JSON.parse that
# notes when a list of positions was parsed and the newest sample time in it; the first
# animation frame after that is when the page can have drawn them.
PROBE = """
(() => {
  const probe = window.__probe = {
    frames: [], delays: [], pageDelays: [], parsed: [], parsedAt: [], recording: false };
  let last = 0;
  const tick = (t) => {
    if (probe.recording && last) probe.frames.push(t - last);
    last = t;
    if (probe.parsed.length) {
      const now = Date.now();
      for (const sampleMs of probe.parsed) probe.delays.push(now - sampleMs);
      const ran = performance.now();  // not t: a frame's timestamp may precede the parse
      for (const at of probe.parsedAt) probe.pageDelays.push(ran - at);
      probe.parsed.length = 0;
      probe.parsedAt.length = 0;
    }
    requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
  const parse = JSON.parse;
  JSON.parse = function (text, reviver) {
    const started = performance.now();
    const out = parse.call(this, text, reviver);
    if (probe.recording && Array.isArray(out) && out.length && out[0] && out[0].vehicle_ref) {
      probe.parsedAt.push(started);
      for (let i = 0; i < out.length; i += Math.max(1, Math.floor(out.length / 20))) {
        if (out[i].time) probe.parsed.push(Date.parse(out[i].time));
      }
    }
    return out;
  };
})();
"""


# --- serving the API, with the page from before beside it ---------------------------------------


@contextlib.asynccontextmanager
async def serving_api(store, hub):
    """The API (uvicorn) and its live hub in this process, plus the page from before issue 22
    at /map-before/; yields the API's base URL."""
    import uvicorn
    from fastapi.responses import FileResponse, HTMLResponse

    from api import ApiContext, KeyCache, create_app

    app = create_app(ApiContext(store=store, live=hub, key_cache=KeyCache(60)))
    leaflet = REPO / "api" / "static" / "vendor" / "leaflet"

    async def before_page() -> HTMLResponse:
        html = (BEFORE / "map.html").read_text().replace("__CONFIG__", "{}")
        return HTMLResponse(html)

    async def before_file(name: str) -> FileResponse:
        return FileResponse(BEFORE / name if name in ("map.js", "map.css") else leaflet / name)

    app.add_api_route("/map-before/", before_page)
    app.add_api_route("/map-before/{name}", before_file)
    app.add_api_route(
        "/map-before/vendor/leaflet/{name}", lambda name: FileResponse(leaflet / name)
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_config=None, lifespan="off", access_log=False
        )
    )
    server.install_signal_handlers = lambda: None
    stop = asyncio.Event()
    tasks = [asyncio.create_task(server.serve()), asyncio.create_task(hub.run(stop))]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop.set()
        server.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)


# --- the browser ------------------------------------------------------------------------------


def open_browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        raise SystemExit(
            "needs Debian's chromium and chromium-driver (FLEETGATE_TEST=1 scripts/setup)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-renderer-backgrounding",
        "--disable-background-timer-throttling",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": PROBE})
    driver.execute_cdp_cmd("Performance.enable", {})
    return driver


def renderer_rss_mb(driver) -> float | None:
    """Resident memory of the browser's renderer processes (the tabs), MB."""
    try:
        import psutil
    except ImportError:
        return None
    root = psutil.Process(driver.service.process.pid)
    total = 0
    for child in root.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "--type=renderer" in " ".join(child.cmdline()):
                total += child.memory_info().rss
    return round(total / 2**20, 1)


def tab_memory(driver) -> dict:
    driver.execute_cdp_cmd("HeapProfiler.enable", {})
    driver.execute_cdp_cmd("HeapProfiler.collectGarbage", {})
    metrics = {
        m["name"]: m["value"]
        for m in driver.execute_cdp_cmd("Performance.getMetrics", {})["metrics"]
    }
    return {
        "js_heap_mb": round(metrics["JSHeapUsedSize"] / 2**20, 1),
        "dom_nodes": int(metrics["Nodes"]),
        "renderer_rss_mb": renderer_rss_mb(driver),
    }


def measure_page(url: str, duration: float) -> dict:
    """Open the page, wait for its vehicles, record for `duration` s; the figures."""
    driver = open_browser()
    try:
        started = time.monotonic()
        driver.get(url)
        deadline = time.monotonic() + 120
        while not driver.execute_script(
            "return !!(window.fleetgateMap && window.fleetgateMap.ready)"
        ):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url}: the page did not load its vehicles in 120 s")
            time.sleep(0.2)
        loaded_s = time.monotonic() - started
        time.sleep(3)  # the first stream messages
        memory_start = tab_memory(driver)
        updates_before = driver.execute_script(
            "window.__probe.recording = true; return window.fleetgateMap.updates"
        )
        memory_series = []
        end = time.monotonic() + duration
        step = max(10.0, duration / 10)
        while time.monotonic() < end:
            time.sleep(min(step, max(0.0, end - time.monotonic())))
            memory_series.append(
                {
                    "at_s": round(duration - (end - time.monotonic())),
                    "updates": driver.execute_script("return window.fleetgateMap.updates"),
                    **tab_memory(driver),
                }
            )
        probe = driver.execute_script(
            "const p = window.__probe; p.recording = false;"
            " return {frames: p.frames, delays: p.delays, pageDelays: p.pageDelays,"
            " updates: window.fleetgateMap.updates, drawn: window.fleetgateMap.stats"
            " ? window.fleetgateMap.stats() : null}"
        )
        memory_end = memory_series[-1] if memory_series else tab_memory(driver)
    finally:
        driver.quit()
    frames = np.asarray(probe["frames"])
    # Corrected by the simulator's wall-clock offset once it is known (one_fleet).
    delays = np.asarray(probe["delays"], dtype=float)
    return {
        "loaded_s": round(loaded_s, 1),
        "frames": len(frames),
        "frame_ms": _pct(frames, (50, 95, 99))
        | {"max": _round(frames.max() if len(frames) else None)},
        "frames_over_50ms_pct": _round(100 * float((frames > 50).mean()) if len(frames) else None),
        "update_delay_sample_to_drawn_ms": _pct(delays, (50, 95)),
        # The page's own part: from parsing a stream message to the next animation frame.
        "update_delay_received_to_drawn_ms": _pct(np.asarray(probe["pageDelays"]), (50, 95, 99)),
        "stream_messages": len(probe["pageDelays"]),
        "updates_per_s": round((probe["updates"] - updates_before) / duration),
        "memory_start": memory_start,
        "memory_end": memory_end,
        "memory_series": memory_series,
        "page_stats": probe["drawn"],
    }


def _round(x):
    return None if x is None else round(float(x), 1)


def _pct(a: np.ndarray, qs) -> dict:
    return {f"p{q}": _round(np.percentile(a, q)) if len(a) else None for q in qs}


# --- the run -------------------------------------------------------------------------------------


async def one_fleet(args: argparse.Namespace, vehicles: int) -> dict:
    from api import LiveHub
    from firmware_sim.specs import Area
    from telemetry.store import TelemetryStore, VehicleRegistration, migrate

    pages = [p for p in args.pages.split(",") if p]
    with BenchServices("fgbench_map") as services:
        await migrate(services.dsn, storage="native")
        store = await TelemetryStore.open(services.dsn)
        await store.register_vehicles(
            [VehicleRegistration(r, d, t) for d, r, t in registrations(vehicles, args.seed)]
        )
        _, key = await store.create_api_key("bench", ["fleet:read"])
        root = "bench-map/v1"
        hub = LiveHub(store)
        warmup = 15.0
        publish_s = warmup + len(pages) * (args.duration + 30.0)
        lat, lon = Area().centre
        try:
            async with (
                running_gateway(services.dsn, services.broker, root, "bench-map-gateway") as gw,
                serving_api(store, hub) as url,
            ):
                gw.change_listeners.append(hub.notify)
                sim = SimProcess(
                    services.broker,
                    root,
                    Workload(
                        vehicles=vehicles,
                        samples=int(publish_s * args.rate_hz),
                        rate_hz=args.rate_hz,
                        fast=False,
                        seed=args.seed,
                    ),
                )
                sim_run = asyncio.create_task(sim.run())
                while sim.started_at is None:
                    if sim_run.done():
                        sim_run.result()
                    await asyncio.sleep(0.5)
                await asyncio.sleep(warmup)
                results = {}
                for page in pages:
                    path = "/map/" if page == "new" else "/map-before/"
                    page_url = f"{url}{path}?lat={lat}&lon={lon}&z=13#key={key}"
                    progress(f"map: {vehicles} vehicles, page {page}, {args.duration:.0f} s")
                    results[page] = await asyncio.to_thread(measure_page, page_url, args.duration)
                    # At once on stderr: a long run's figures survive a hang of what follows.
                    progress(f"map: {vehicles} vehicles, page {page}: " + json.dumps(results[page]))
                # The simulator reports its wall-clock offset (a sample with time t was
                # published at t + offset) only at the end: the delays are corrected now. On an
                # overloaded machine the broker may drop a device and the simulator stop early;
                # the pages' frame times and memory still stand, their delays do not.
                simulator = "completed"
                try:
                    await sim_run
                    offset = sim.done["wall_offset_ms"]
                except (RuntimeError, TypeError) as exc:
                    simulator, offset = f"failed: {str(exc)[-300:]}", None
                for page in results.values():
                    delays = page["update_delay_sample_to_drawn_ms"]
                    for q, v in delays.items():
                        delays[q] = None if v is None or offset is None else round(v - offset, 1)
        finally:
            await store.close()
        return {
            "vehicles": vehicles,
            "machine": services.machine(),
            "simulator": simulator,
            "pages": results,
        }


async def bench(args: argparse.Namespace) -> dict:
    runs = [await one_fleet(args, int(n)) for n in args.vehicles.split(",")]
    return {
        "benchmark": "map",
        "date": time.strftime("%Y-%m-%d"),
        "machine": runs[0]["machine"],
        "loadavg_at_end": os.getloadavg(),
        "rate_hz_per_vehicle": args.rate_hz,
        "duration_s_per_page": args.duration,
        "runs": [
            {"vehicles": r["vehicles"], "simulator": r["simulator"], **r["pages"]} for r in runs
        ],
        "pages": {
            "new": "api/static (one canvas, updates per animation frame, clusters below z15)",
            "before": "benchmarks/map_before (one Leaflet circle marker per vehicle)",
        },
        "note": "frame_ms: requestAnimationFrame intervals; update delay: sample time (the "
        "simulator's clock) to the first animation frame after its stream message was parsed",
    }


def build_parser() -> argparse.ArgumentParser:
    p = bench_parser(__spec__.name, __doc__)
    p.add_argument("--vehicles", default="1000,5000,10000", help="fleet sizes, one run each")
    p.add_argument("--rate-hz", type=float, default=1.0, help="positions per vehicle per second")
    p.add_argument("--duration", type=float, default=60.0, help="s of measuring per page")
    p.add_argument("--pages", default="new,before", help="which pages: new, before")
    p.add_argument("--seed", type=int, default=1, help="the simulated fleet's seed")
    return p


def main(argv: list[str] | None = None) -> None:
    run_benchmark(bench, build_parser(), argv)


if __name__ == "__main__":
    main()
