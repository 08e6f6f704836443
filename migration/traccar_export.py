"""A Traccar export: the raw JSON objects exactly as Traccar's REST API returns them
(`GET /api/devices`, `/api/geofences`, `/api/groups`, `/api/positions?deviceId=&from=&to=`),
whether saved to a folder (read here) or pulled live from a server (elsewhere). The mappers
(migration/traccar.py) turn it into fleetgate's records; nothing here interprets a field.

A folder holds `devices.json`, `geofences.json`, optional `groups.json` and `positions/*.json`
(each an array of Position objects, one file per device or time window).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from migration.errors import UnreadableInput, json_error_offset


class PositionChunk(list):
    """One chunk of raw Position objects (a list of dicts) that knows where it came from
    (`source`: a file path or a request), so problems can name the file. A plain list works too:
    the export's `origin` is named then."""

    def __init__(self, positions: Iterable[dict[str, Any]], source: str) -> None:
        super().__init__(positions)
        self.source = source


@dataclass
class TraccarExport:
    """Everything of one Traccar installation to migrate, as Traccar's JSON.

    `positions` yields one list of Position dicts per chunk (a file, or one page of one device's
    time window). It must be re-iterable (iterating it again starts again): an import without
    --skip-invalid checks every record before it writes any, then reads the chunks again to
    write them. `origin` names the export (a folder path or the server's URL) in reports and as
    the migration source of the watermarks."""

    devices: list[dict[str, Any]]
    geofences: list[dict[str, Any]]
    groups: list[dict[str, Any]]
    positions: Iterable[list[dict[str, Any]]]
    origin: str


class _FolderPositions:
    """The position files of a folder, read one at a time on each iteration (an export of
    millions of positions never sits in memory whole)."""

    def __init__(self, files: list[Path], read: Callable[[Path], Any]) -> None:
        self._files = files
        self._read = read

    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        for file in self._files:
            yield PositionChunk(_array_of_objects(self._read(file), file), str(file))

    def __len__(self) -> int:
        return len(self._files)

    @property
    def files(self) -> list[str]:
        """The position files, for mapping them in worker processes (read_and_map_file)."""
        return [str(f) for f in self._files]


def read_json_file(path: Path) -> Any:
    """The parsed JSON of a file, or UnreadableInput naming the file and the byte offset."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UnreadableInput(str(path), error.strerror or str(error)) from None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as error:
        offset = json_error_offset(data, error.pos)
        raise UnreadableInput(str(path), f"invalid JSON: {error.msg}", offset) from None


def _array_of_objects(value: Any, path: Path) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise UnreadableInput(str(path), "expected a JSON array of objects")
    return value


def read_traccar_folder(path: str | Path) -> TraccarExport:
    """The export saved in `path`. devices.json and geofences.json are read (and checked) now;
    the position files are read when the chunks are iterated. Raises UnreadableInput."""
    folder = Path(path)
    if not folder.is_dir():
        raise UnreadableInput(str(folder), "not a folder with a Traccar export")
    devices = _array_of_objects(read_json_file(folder / "devices.json"), folder / "devices.json")
    geofences_file = folder / "geofences.json"
    geofences = (
        _array_of_objects(read_json_file(geofences_file), geofences_file)
        if geofences_file.exists()
        else []
    )
    groups_file = folder / "groups.json"
    groups = (
        _array_of_objects(read_json_file(groups_file), groups_file) if groups_file.exists() else []
    )
    files = sorted((folder / "positions").glob("*.json"))
    return TraccarExport(
        devices=devices,
        geofences=geofences,
        groups=groups,
        positions=_FolderPositions(files, read_json_file),
        origin=str(folder.resolve()),
    )


def read_and_map_file(path: str, devices, rejected, mapping, window):
    """One position file read and mapped (migration.traccar.map_positions): what a worker
    process of the importer does, so that big exports are parsed on every core."""
    import gc

    from migration.traccar import map_positions

    gc.disable()  # a worker only parses and maps: no cycles (see importer._collector_paused)
    chunk = PositionChunk(_array_of_objects(read_json_file(Path(path)), Path(path)), path)
    return map_positions(chunk, devices, rejected, mapping, window, path)
