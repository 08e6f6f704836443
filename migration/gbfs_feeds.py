"""Reading a GBFS system (the IO edge): a folder holding its feeds as files, or the URL (or
file) of its gbfs.json, whose feed URLs are fetched. v2.3 and v3.0 alike; free_bike_status
(2.3) is filed as vehicle_status. Feeds the migration does not use are not read."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from migration.errors import UnreadableInput, json_error_offset
from migration.gbfs import FEEDS, GbfsFeeds

TIMEOUT_S = 30.0
_FILE_NAMES = {
    "vehicle_types": ("vehicle_types.json",),
    "vehicle_status": ("vehicle_status.json", "free_bike_status.json"),
    "station_information": ("station_information.json",),
    "geofencing_zones": ("geofencing_zones.json",),
}
_FEED_NAMES = {"free_bike_status": "vehicle_status", **{f: f for f in FEEDS}}


def read_gbfs(location: str) -> GbfsFeeds:
    """The feeds at `location`: a folder, a gbfs.json file, or an http(s) URL of gbfs.json.
    Raises UnreadableInput naming the file or URL (and, for JSON, the byte offset)."""
    if location.startswith(("http://", "https://")):
        return _discovered(_fetch_json(location), location)
    path = Path(location)
    if path.is_dir():
        documents, files = {}, {}
        for feed, names in _FILE_NAMES.items():
            for name in names:
                if (path / name).is_file():
                    documents[feed] = _parse(_read(path / name), str(path / name))
                    files[feed] = str(path / name)
                    break
        if not documents:
            raise UnreadableInput(str(path), "holds none of " + ", ".join(_file_list()))
        return GbfsFeeds(documents, files, str(path.resolve()))
    return _discovered(_parse(_read(path), str(path)), str(path.resolve()))


def _file_list() -> list[str]:
    return [name for names in _FILE_NAMES.values() for name in names]


def _discovered(gbfs: Any, origin: str) -> GbfsFeeds:
    """The feeds a gbfs.json lists (3.0: data.feeds; 2.3: data.<language>.feeds, the first)."""
    data = gbfs.get("data") if isinstance(gbfs, dict) else None
    if not isinstance(data, dict):
        raise UnreadableInput(origin, "not a gbfs.json (no data object)")
    feeds = data.get("feeds")
    if feeds is None:
        languages = [v for v in data.values() if isinstance(v, dict) and "feeds" in v]
        feeds = languages[0]["feeds"] if languages else None
    if not isinstance(feeds, list):
        raise UnreadableInput(origin, "not a gbfs.json (no feeds list)")
    documents, files = {}, {}
    for feed in feeds:
        name = _FEED_NAMES.get(feed.get("name")) if isinstance(feed, dict) else None
        if name is not None and name not in documents and isinstance(feed.get("url"), str):
            documents[name] = _fetch_json(feed["url"])
            files[name] = feed["url"]
    return GbfsFeeds(documents, files, origin)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UnreadableInput(str(path), exc.strerror or str(exc)) from None


def _parse(data: bytes, where: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        offset = json_error_offset(data, exc.pos)
        raise UnreadableInput(where, f"invalid JSON: {exc.msg}", offset) from None


def _fetch_json(url: str) -> Any:
    if not url.startswith(("http://", "https://")):
        raise UnreadableInput(url, "a feed URL must be http(s)")
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            data = response.read()
    except urllib.error.HTTPError as exc:
        raise UnreadableInput(url, f"HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise UnreadableInput(url, str(getattr(exc, "reason", exc))) from None
    return _parse(data, url)
