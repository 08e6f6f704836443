"""The manual check's sample file (sans-IO): the seeded choice, the spread of positions, and a
filled file read back — signed only with `ok` or a comment on every row, refused when it was
altered or not written by validation-sample."""

from __future__ import annotations

import csv
import io

import pytest

from migration.sample import (
    HEADER,
    Row,
    SampleMeta,
    SampleRefused,
    choose,
    read_filled,
    spread,
    write_sample,
)


def test_the_choice_is_reproducible_and_covers_at_least_the_percent():
    keys = [f"bike-{i:03}" for i in range(95)]
    first = choose(keys, 10.0, seed=7)
    assert first == choose(list(reversed(keys)), 10.0, seed=7), "the order given does not count"
    assert len(first) == 10, "10 % of 95 rounded up"
    assert first == sorted(first) and set(first) <= set(keys)
    assert choose(keys, 10.0, seed=8) != first
    assert len(choose(keys, 100.0, seed=1)) == 95
    assert choose(keys[:3], 1.0, seed=1) and len(choose(keys[:3], 1.0, seed=1)) == 1
    assert choose([], 10.0, seed=1) == []
    assert len(choose(keys[:20], 10.0, seed=1)) == 2, "exactly 10 % needs no extra"


def test_twenty_positions_are_spread_over_the_track_first_and_last_included():
    picks = spread(1000)
    assert len(picks) == 20 and picks[0] == 0 and picks[-1] == 999
    assert picks == sorted(set(picks))
    assert spread(7) == list(range(7))
    assert spread(0) == []


def meta() -> SampleMeta:
    return SampleMeta(
        batch="berlin-1",
        seed=7,
        percent=10.0,
        vehicles=(2, 20),
        zones=(1, 3),
        positions=2,
        rows=0,
        created="2026-12-06T12:00:00+00:00",
    )


ROWS = [
    Row("vehicle", "bike-1", "device_id", "862095051234037", "862095051234037"),
    Row("vehicle", "bike-1", "vehicle_type", "ebike", "ebike"),
    Row("zone", "traccar-3", "name", "Mitte", "Mitte"),
    Row(
        "position", "bike-1 2026-12-05T10:00:00.000+00:00", "lat,lon", "52.5,13.4", "", "not stored"
    ),
]


def filled(text: str, checks: list[str]) -> str:
    rows = list(csv.reader(io.StringIO(text)))
    for row, check in zip(rows[2:], checks):
        row[7] = check
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)  # as a spreadsheet saves it
    return out.getvalue()


def test_a_file_with_ok_or_a_comment_on_every_row_is_signed_with_its_comments():
    text = write_sample(meta(), ROWS)
    assert text.splitlines()[0] == ",".join(HEADER)
    signed = read_filled(filled(text, ["ok", " OK ", "ok", "missing in fleetgate: re-import"]))
    assert signed.rows == 4 and signed.ok == 3
    assert signed.comments == [
        {
            "line": "6",
            "kind": "position",
            "key": "bike-1 2026-12-05T10:00:00.000+00:00",
            "field": "lat,lon",
            "comment": "missing in fleetgate: re-import",
        }
    ]
    assert signed.meta.batch == "berlin-1" and signed.meta.seed == 7
    assert signed.meta.covered_percent == 10.0, "vehicles 10 %, zones 33 %: the lower"
    no_zones = SampleMeta.from_json({**signed.meta.to_json(), "zones": [0, 0]})
    assert no_zones.covered_percent == 10.0, "an export without zones: the vehicles' share"
    assert SampleMeta.from_json({**signed.meta.to_json(), "zones": [1, 20]}).covered_percent == 5.0


def test_a_row_without_ok_or_a_comment_is_refused_with_its_line():
    text = write_sample(meta(), ROWS)
    with pytest.raises(SampleRefused) as refused:
        read_filled(filled(text, ["ok", "", "ok", "  "]))
    assert refused.value.reasons == [
        "line 4 (vehicle bike-1 vehicle_type): neither ok nor a comment in `check`",
        "line 6 (position bike-1 2026-12-05T10:00:00.000+00:00 lat,lon): neither ok nor a "
        "comment in `check`",
    ]


def test_an_altered_cell_a_dropped_or_moved_row_is_refused():
    text = filled(write_sample(meta(), ROWS), ["ok"] * 4)
    altered = text.replace("52.5,13.4", "52.5,13.5")
    with pytest.raises(SampleRefused, match=r"line 6 \(position .*\): altered since"):
        read_filled(altered)
    lines = text.splitlines(keepends=True)
    with pytest.raises(SampleRefused, match="the sample had 4 rows to check, the file has 3"):
        read_filled("".join(lines[:3] + lines[4:]))
    with pytest.raises(SampleRefused, match="added, dropped or moved"):
        read_filled("".join(lines[:2] + [lines[3], lines[2]] + lines[4:]))
    sample_row = lines[1].replace('""percent"":10.0', '""percent"":50.0')
    assert sample_row != lines[1]
    with pytest.raises(SampleRefused, match="altered since"):
        read_filled("".join([lines[0], sample_row, *lines[2:]]))


def test_a_file_not_written_by_validation_sample_is_refused():
    with pytest.raises(SampleRefused, match="its header is not kind,key,field"):
        read_filled("vehicle,ok\nbike-1,ok\n")
    with pytest.raises(SampleRefused, match="its header is not"):
        read_filled("")
    header = ",".join(HEADER) + "\n"
    with pytest.raises(SampleRefused, match="its first row does not describe the sample"):
        read_filled(header + "vehicle,bike-1,device_id,a,a,,abc,ok\n")
    with pytest.raises(SampleRefused, match="its sample row is not readable"):
        read_filled(header + "sample,b,the sample,{not json,,,abc,\n")
