"""The live pull from Traccar (migration/traccar_pull.py) over real HTTP.

Traccar itself (a Java server with its own database) cannot run here: these tests pull from
tests/traccar_standin.py, a real HTTP server on a free port that serves recorded Traccar
responses (examples/traccar-export, written after Traccar's API documentation and its
PositionResource/SessionResource) and misbehaves on demand.
"""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from migration.traccar_pager import DAY_MS, MINUTE_MS, PagingLimits
from migration.traccar_pull import (
    PullOptions,
    TraccarAuthError,
    TraccarLogin,
    TraccarPullError,
    pull_traccar,
)
from tests.traccar_standin import RECORDED, TraccarStandIn

pytestmark = pytest.mark.integration

SINCE = 1_795_132_800_000  # 2026-11-19T00:00:00Z
UNTIL = SINCE + 4 * DAY_MS
TOKEN = TraccarLogin(token="recorded-token")


def options(**overrides) -> PullOptions:
    fields = {
        "since_ms": SINCE,
        "until_ms": UNTIL,
        "timeout_s": 5.0,
        "attempts": 3,
        "backoff_s": 0.01,
        "limits": PagingLimits(first_window_ms=DAY_MS, max_positions=40),
    }
    return PullOptions(**{**fields, **overrides})


def recorded(name: str):
    return json.loads((RECORDED / name).read_text())


def pulled_positions(pull) -> list[dict]:
    return [p for chunk in pull.export.positions for p in chunk]


def recorded_positions() -> list[dict]:
    """The folder's positions in the pull's order: by device as devices.json lists them, then
    by fixTime."""
    by_device = {
        d["id"]: json.loads((RECORDED / "positions" / f"{d['id']}.json").read_text())
        for d in recorded("devices.json")
    }
    return [p for d in recorded("devices.json") for p in by_device[d["id"]]]


async def test_a_pull_brings_everything_the_export_folder_holds():
    with TraccarStandIn() as traccar:
        pulled = await pull_traccar(traccar.url, TOKEN, options())
        asked = traccar.positions_asked()
    export = pulled.export
    assert export.devices == recorded("devices.json")
    assert export.geofences == recorded("geofences.json")
    assert export.groups == recorded("groups.json")
    assert pulled_positions(pulled) == recorded_positions()
    assert export.origin == traccar.url
    first = next(iter(export.positions))
    assert re.fullmatch(
        re.escape(f"{traccar.url}/api/positions?deviceId=11&from=2026-11-20T")
        + r"\d\d%3A\d\d%3A\d\d.\d{3}Z&to=2026-11-20T\d\d%3A\d\d%3A\d\d.\d{3}Z",
        first.source,
    )
    # 120 positions of the car in a day's window are more than 40: split, and asked again.
    assert pulled.windows_split >= 1
    assert all(q["from"].endswith(".000Z") or q["from"][-5] == "." for q in asked)
    assert all(q["to"].endswith("Z") and len(q["to"]) == 24 for q in asked)


async def test_user_and_password_log_in_once_and_use_the_session_cookie():
    with TraccarStandIn() as traccar:
        login = TraccarLogin(user="export@operator.example", password="s3cret")
        pulled = await pull_traccar(traccar.url, login, options())
        logins = [r for r in traccar.requests if r[0] == "POST"]
    assert pulled_positions(pulled) == recorded_positions()
    assert len(logins) == 1


async def test_an_expired_session_logs_in_again_and_goes_on():
    with TraccarStandIn() as traccar:
        login = TraccarLogin(user="export@operator.example", password="s3cret")
        progress_seen = []

        def forget_sessions(done: int, devices: int, positions: int) -> None:
            progress_seen.append(done)
            traccar.sessions.clear()  # the server restarted: every session is gone

        pulled = await pull_traccar(
            traccar.url, login, options(concurrency=1), progress=forget_sessions
        )
        logins = [r for r in traccar.requests if r[0] == "POST"]
    assert pulled_positions(pulled) == recorded_positions()
    assert progress_seen == [1, 2, 3, 4]
    assert len(logins) == 4  # the first, and one after each of the three forgettings


async def test_a_wrong_token_is_refused_with_a_clear_error():
    with TraccarStandIn() as traccar:
        with pytest.raises(TraccarAuthError, match=r"refused GET /api/devices with 401: the token"):
            await pull_traccar(traccar.url, TraccarLogin(token="stale"), options())


async def test_a_wrong_password_is_refused_with_a_clear_error():
    with TraccarStandIn() as traccar:
        login = TraccarLogin(user="export@operator.example", password="wrong")
        with pytest.raises(TraccarAuthError, match="refused the login of 'export@operator.exa"):
            await pull_traccar(traccar.url, login, options())
        assert not [r for r in traccar.requests if r[0] == "GET"], "nothing asked after a refusal"


@pytest.mark.parametrize(
    ("login", "problem"),
    [
        (TraccarLogin(), "needs --token, or --user and --password"),
        (TraccarLogin(user="a@b"), "--user and --password go together"),
        (TraccarLogin(token="t", user="a@b", password="p"), "either --token or --user"),
    ],
)
async def test_incomplete_credentials_are_refused_before_anything_is_asked(login, problem):
    with pytest.raises(TraccarPullError, match=problem):
        await pull_traccar("http://127.0.0.1:9", login, options())


async def test_a_slow_server_that_drops_connections_and_fails_now_and_then_loses_nothing():
    """Dropped mid-body, a 500, an answer slower than the timeout: each window is asked again
    and every position arrives exactly once."""
    with TraccarStandIn() as traccar:
        traccar.delay_s = 0.05
        traccar.stall_s = 1.0
        traccar.faults.extend(["drop", "500", "stall", "drop", "drop"])
        pulled = await pull_traccar(traccar.url, TOKEN, options(timeout_s=0.5, attempts=4))
        assert not traccar.faults, "every fault was served"
    ids = Counter(p["id"] for p in pulled_positions(pulled))
    assert ids.most_common(1)[0][1] == 1
    assert pulled_positions(pulled) == recorded_positions()


async def test_a_server_that_keeps_failing_is_given_up_on_naming_the_request():
    with TraccarStandIn() as traccar:
        traccar.faults.extend(["500"] * 3)
        with pytest.raises(
            TraccarPullError,
            match=r"GET /api/positions\?deviceId=11&from=2026-11-\d\dT00%3A00%3A00.000Z&to=.*: "
            r"server error 500, 3 times; giving up",
        ):
            await pull_traccar(traccar.url, TOKEN, options(concurrency=1))


async def test_an_unreachable_server_is_named():
    with pytest.raises(TraccarPullError, match=r"^http://127.0.0.1:9 GET /api/devices: Connect"):
        await pull_traccar("http://127.0.0.1:9", TOKEN, options(attempts=2))


async def test_an_answer_over_the_byte_limit_is_asked_for_in_smaller_windows():
    with TraccarStandIn() as traccar:
        pulled = await pull_traccar(
            traccar.url,
            TOKEN,
            options(
                max_body_bytes=20_000,
                limits=PagingLimits(first_window_ms=DAY_MS, min_window_ms=MINUTE_MS),
            ),
        )
    assert pulled.windows_split >= 2
    assert pulled_positions(pulled) == recorded_positions()


async def test_an_answer_that_is_not_json_stops_the_pull_naming_the_request_and_byte():
    """Not a transfer error (the body arrived whole): trying again would not help."""
    with TraccarStandIn() as traccar:
        traccar.faults.append("garbage")
        with pytest.raises(TraccarPullError) as raised:
            await pull_traccar(traccar.url, TOKEN, options(concurrency=1))
    assert raised.value.file.startswith(f"{traccar.url} GET /api/positions?deviceId=11&from=")
    assert re.fullmatch(r"the answer is not JSON \(.+ at byte \d+\)", raised.value.reason)


async def test_a_server_that_never_answers_in_time_is_given_up_on():
    with TraccarStandIn() as traccar:
        traccar.stall_s = 1.0
        traccar.faults.extend(["stall"] * 2)
        with pytest.raises(TraccarPullError, match=r"deviceId=11.*: timed out, 2 times; giving up"):
            await pull_traccar(
                traccar.url, TOKEN, options(concurrency=1, timeout_s=0.3, attempts=2)
            )
