"""The column helpers: ISO 8601 times of any zone to the millisecond, numbers and tri-states
with what is not one marked, as the gateway's decoder marks them."""

from __future__ import annotations

import numpy as np

from migration.columns import iso_times_ms, numbers, tristates

T0 = 1_795_161_601_000  # 2026-11-20T08:00:01Z


def test_utc_times_in_every_spelling_are_the_same_millisecond():
    ms, bad = iso_times_ms(
        ["2026-11-20T08:00:01.000+00:00", "2026-11-20T08:00:01Z", "2026-11-20T08:00:01+00:00"]
    )
    assert ms.tolist() == [T0] * 3 and not bad.any()


def test_offsets_are_honoured_and_a_time_without_zone_is_refused():
    ms, bad = iso_times_ms(
        ["2026-11-20T10:00:01.250+02:00", "2026-11-20T08:00:01", None, 17, "yesterday"]
    )
    assert ms[0] == T0 + 250
    assert bad.tolist() == [False, True, True, True, True]


def test_numbers_refuse_booleans_and_numeric_texts():
    values, wrong = numbers([1, 2.5, None, True, "3", 2**70])
    assert values[:3].tolist()[:2] == [1.0, 2.5] and np.isnan(values[2])
    assert wrong.tolist() == [False, False, False, True, True, False]
    assert values[5] == float(2**70)


def test_tristates_are_minus_one_for_missing_and_refuse_anything_but_booleans():
    values, wrong = tristates([True, False, None, 1, "true"])
    assert values.tolist() == [1, 0, -1, -1, -1]
    assert wrong.tolist() == [False, False, False, True, True]
