"""Reading an export from where it lies (the IO edge of the room): a Traccar folder, GBFS files
or URLs, a CSV file. What is read is handed to the mappers as plain data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from migration.errors import UnreadableInput
from migration.sources import SOURCES


class UnknownSource(ValueError):
    """--source names no source this room reads."""

    def __init__(self, source: str) -> None:
        super().__init__(f"unknown source {source!r}; the sources are {', '.join(SOURCES)}")


def read_export(source: str, path: str) -> Any:
    """The export of `source` at `path` (a folder, file or URL). Raises UnknownSource or
    UnreadableInput (naming the file and, for JSON, the byte offset)."""
    if source == "traccar":
        from migration.traccar_export import read_traccar_folder

        return read_traccar_folder(path)
    if source == "gbfs":
        from migration.gbfs_feeds import read_gbfs

        return read_gbfs(path)
    if source == "csv":
        from migration.csv_source import CsvExport

        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise UnreadableInput(path, exc.strerror or str(exc)) from None
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise UnreadableInput(path, f"not UTF-8: {exc.reason}", exc.start) from None
        return CsvExport(text, str(Path(path).resolve()))
    raise UnknownSource(source)


def read_mapping_file(path: str | None):
    """The mapping of a TOML file, or the defaults without one. Raises UnreadableInput or
    migration.mapping.MappingError."""
    from migration.mapping import DEFAULT, parse_mapping

    if path is None:
        return DEFAULT
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UnreadableInput(path, str(exc)) from None
    return parse_mapping(text, path)
