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
# The page's own scripts and styles, and under vendor/ the npm packages that api/web/package.json
# pins, committed so that the wheel carries them (never loaded from a CDN).
_SERVED_SUFFIXES = {".js", ".css", ".png", ".svg", ".map"}


@router.get("/map")
async def map_root() -> RedirectResponse:
    return RedirectResponse("/map/")


@router.get("/map/", response_class=HTMLResponse)
async def map_page(request: Request) -> HTMLResponse:
    ctx = context(request)
    config = {
        "tiles_url": ctx.map_tiles_url,
        "attribution": ctx.map_attribution,
        "style_url": ctx.map_style_url,
    }
    html = (STATIC / "map.html").read_text().replace("__CONFIG__", orjson.dumps(config).decode())
    return HTMLResponse(html, headers={"Cache-Control": "no-cache"})


@router.get("/map/{path:path}")
async def map_asset(path: str) -> FileResponse:
    target = (STATIC / path).resolve()
    if not (
        target.is_file()
        and target.suffix in _SERVED_SUFFIXES
        and STATIC.resolve() in target.parents
    ):
        raise Problem(404, "not-found", f"no file {path!r}")
    return FileResponse(target, headers={"Cache-Control": "no-cache"})
