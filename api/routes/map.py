"""The live map page for fleet operations. The page and its scripts are static files with no
fleet data (served without a key); every data call they make needs an API key."""

from __future__ import annotations

from pathlib import Path

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse

from api.context import context
from api.problems import Problem

router = APIRouter(include_in_schema=False)
STATIC = Path(__file__).resolve().parent.parent / "static"
# Leaflet at the version api/web/package.json pins, committed so that the wheel carries it.
LEAFLET = STATIC / "vendor" / "leaflet"


@router.get("/map")
async def map_root() -> RedirectResponse:
    return RedirectResponse("/map/")


@router.get("/map/", response_class=HTMLResponse)
async def map_page(request: Request) -> HTMLResponse:
    ctx = context(request)
    config = {"tiles_url": ctx.map_tiles_url, "attribution": ctx.map_attribution}
    html = (STATIC / "map.html").read_text().replace("__CONFIG__", orjson.dumps(config).decode())
    return HTMLResponse(html, headers={"Cache-Control": "no-cache"})


@router.get("/map/{name}")
async def map_asset(name: str) -> FileResponse:
    if name not in ("map.js", "map.css"):
        raise Problem(404, "not-found", f"no file {name!r}")
    return FileResponse(STATIC / name)


@router.get("/map/vendor/leaflet/{path:path}")
async def leaflet(path: str) -> FileResponse:
    target = (LEAFLET / path).resolve()
    if not (target.is_file() and LEAFLET.resolve() in target.parents):
        raise Problem(404, "not-found", f"no file leaflet/{path}")
    return FileResponse(target)
