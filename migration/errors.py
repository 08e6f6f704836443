"""The one error of unreadable input: which file, and for JSON at which byte, so an operator can
open the file at the place (exit 2 of `fleetgate migrate`)."""

from __future__ import annotations


class UnreadableInput(Exception):
    """The input cannot be read at all (missing file, truncated or invalid JSON, CSV without its
    header, ...). `offset` is the byte offset into `file` for JSON, else None."""

    def __init__(self, file: str, reason: str, offset: int | None = None) -> None:
        self.file = file
        self.reason = reason
        self.offset = offset
        where = f"{file} at byte {offset}" if offset is not None else file
        super().__init__(f"{where}: {reason}")

    def __reduce__(self):
        # raised in a worker process that maps position files, re-raised in the importer
        return (UnreadableInput, (self.file, self.reason, self.offset))


def json_error_offset(data: bytes, char_pos: int) -> int:
    """orjson reports the position in characters of the decoded text; an editor and `dd` want
    bytes, which differ as soon as a name has an accent."""
    return len(data.decode("utf-8", errors="replace")[:char_pos].encode("utf-8"))
