"""/v1/events?after= pages in commit order: an event whose transaction commits after a later id
was read is not skipped (issue 20's leftover). Event ids are taken at insert, not at commit."""

from __future__ import annotations

import psycopg
import pytest

from api import queries
from tests.api_client import fleet
from tests.harness import eventually

pytestmark = pytest.mark.integration

_INSERT = (
    "INSERT INTO events (time, vehicle, source, type, detail) "
    "VALUES (now() - %s * interval '1 s', %s, 'device', 'tamper', '{}') RETURNING id"
)


async def _pages(c, after: int | None = None) -> list[int]:
    """Every id the API hands out from `after` on, following its next links."""
    seen, url = [], "/v1/events?limit=1" + (f"&after={after}" if after is not None else "")
    while url:
        page = (await c.get(url)).json()
        seen += [e["id"] for e in page["items"]]
        url = page["next"]
    return seen


async def test_an_event_committing_after_a_later_id_was_read_is_not_skipped(api_server, pg_dsn):
    vehicle = (await fleet(api_server.store, 1))["veh-000"]
    async with (
        await psycopg.AsyncConnection.connect(pg_dsn) as slow,
        await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as fast,
        api_server.client("reader") as c,
    ):
        # The slow transaction takes the smaller id and commits last.
        early = (await (await slow.execute(_INSERT, (2, vehicle))).fetchone())[0]
        late = (await (await fast.execute(_INSERT, (1, vehicle))).fetchone())[0]
        assert early < late

        # By id (what the live feed reads, with its own overlap), the later id is listed while
        # the earlier one is invisible: a reader that goes on "after" it never sees the other.
        by_id = await queries.events(api_server.store, after=0)
        assert [r["id"] for r in by_id] == [late]
        cursor = late

        # The API holds the later one back while a transaction that began before it runs.
        seen = await _pages(c)
        assert seen == []
        await slow.commit()
        assert [r["id"] for r in await queries.events(api_server.store, after=cursor)] == []

        # Once it committed, both come, in commit order, and paging from either misses nothing
        # (eventually: the horizon is the whole server's, and other sessions run).
        async def both() -> bool:
            return await _pages(c) == [early, late]

        await eventually(both, timeout=60, what="both events listed")
        assert await _pages(c, after=early) == [late]
        assert await _pages(c, after=late) == []
        # An id that is no stored event's lists everything numbered since 0030: nothing skipped.
        assert await _pages(c, after=late + 1000) == [early, late]
