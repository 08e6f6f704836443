"""Reading a Traccar export saved from its REST API: the raw objects as Traccar wrote them, and
unreadable files named with the byte offset where the JSON breaks."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from migration.errors import UnreadableInput
from migration.traccar_export import read_traccar_folder

EXPORT = Path(__file__).parent / "exports" / "traccar"


def test_the_folder_gives_traccar_objects_unchanged():
    export = read_traccar_folder(EXPORT)
    assert [d["uniqueId"] for d in export.devices][:2] == ["358762090000011", "358762090000029"]
    assert export.groups[0]["name"] == "Berlin micromobility"
    assert export.geofences[1]["area"] == "CIRCLE (52.5219 13.4132, 150)"
    chunks = list(export.positions)
    assert chunks[0][1]["speed"] == 4.859611  # knots, as Traccar stores them
    assert chunks[0].source.endswith("device-1.json")
    assert export.origin == str(EXPORT.resolve())


def test_the_positions_can_be_read_twice():
    export = read_traccar_folder(EXPORT)
    assert [len(c) for c in export.positions] == [len(c) for c in export.positions]


def test_truncated_json_names_the_file_and_the_byte_offset(tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(EXPORT, folder)
    text = (folder / "devices.json").read_bytes()
    cut = text.index("Zoé".encode()) + 20  # after a two-byte character: bytes, not characters
    (folder / "devices.json").write_bytes(text[:cut])
    with pytest.raises(UnreadableInput) as raised:
        read_traccar_folder(folder)
    assert raised.value.file == str(folder / "devices.json")
    assert raised.value.offset == cut


def test_a_truncated_position_file_is_named_when_its_chunk_is_read(tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(EXPORT, folder)
    broken = folder / "positions" / "device-1.json"
    broken.write_bytes(broken.read_bytes()[:300])
    export = read_traccar_folder(folder)
    with pytest.raises(UnreadableInput) as raised:
        list(export.positions)
    assert raised.value.file == str(broken) and raised.value.offset == 300


def test_a_missing_folder_is_unreadable(tmp_path):
    with pytest.raises(UnreadableInput, match="not a folder"):
        read_traccar_folder(tmp_path / "nowhere")
