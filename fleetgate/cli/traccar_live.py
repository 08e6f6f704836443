"""The options of `fleetgate migrate ... --source traccar --url URL` and the pull they run: the
same TraccarExport as a saved folder, read live from a Traccar server's REST API
(migration/traccar_pull.py), with its progress on standard error.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

import typer

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        metavar="URL",
        help="pull live from a Traccar server (http://traccar:8082) instead of reading PATH",
        rich_help_panel="Live pull (--source traccar)",
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="TRACCAR_TOKEN",
        help="Traccar API token (sent as Authorization: Bearer)",
        rich_help_panel="Live pull (--source traccar)",
    ),
]
UserOption = Annotated[
    str | None,
    typer.Option(
        "--user",
        envvar="TRACCAR_USER",
        help="Traccar user (email) to log in with, instead of a token",
        rich_help_panel="Live pull (--source traccar)",
    ),
]
PasswordOption = Annotated[
    str | None,
    typer.Option(
        "--password",
        envvar="TRACCAR_PASSWORD",
        help="that user's password (better from TRACCAR_PASSWORD than on the command line)",
        rich_help_panel="Live pull (--source traccar)",
    ),
]
SinceOption = Annotated[
    str | None,
    typer.Option(
        "--since",
        metavar="TIME",
        help="oldest fix to pull, ISO 8601 (2026-11-01 or 2026-11-01T06:00:00Z); default: "
        "the retention (FLEETGATE_RETENTION_DAYS) back from now",
        rich_help_panel="Live pull (--source traccar)",
    ),
]
UntilOption = Annotated[
    str | None,
    typer.Option(
        "--until",
        metavar="TIME",
        help="pull fixes before this time, ISO 8601; default: a day from now (fixes stamped "
        "ahead of the clock come along, and analyse reports them)",
        rich_help_panel="Live pull (--source traccar)",
    ),
]


class LiveOptionError(ValueError):
    """The live pull's options do not fit together (exit 2)."""


@dataclass(frozen=True)
class LivePull:
    """Where and how to pull from: the command line's --url, credentials and time range."""

    url: str
    token: str | None = None
    user: str | None = None
    password: str | None = None
    since: str | None = None
    until: str | None = None

    @classmethod
    def from_options(
        cls,
        source: str,
        path: str | None,
        url: str | None,
        token: str | None = None,
        user: str | None = None,
        password: str | None = None,
        since: str | None = None,
        until: str | None = None,
    ) -> LivePull | None:
        """The pull the options ask for; None to read PATH. LiveOptionError when they clash."""
        if url is None:
            if since or until:
                raise LiveOptionError("--since and --until go with --url (a live Traccar pull)")
            if path is None:
                raise LiveOptionError("give the export's PATH (or --url to pull from Traccar)")
            return None
        if source != "traccar":
            raise LiveOptionError("--url pulls from a live Traccar server: use --source traccar")
        if path is not None:
            raise LiveOptionError("give either PATH or --url, not both")
        if not url.startswith(("http://", "https://")):
            raise LiveOptionError(f"--url {url!r}: expected http://host:port or https://...")
        return cls(url, token, user, password, since, until)


def parse_time_ms(text: str, option: str) -> int:
    """ms since the epoch of an ISO 8601 date or time; one without a zone is UTC."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise LiveOptionError(
            f"{option} {text!r}: expected ISO 8601, e.g. 2026-11-01 or 2026-11-01T06:00:00Z"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return round(moment.timestamp() * 1000)


def pull_export(live: LivePull, retention_days: int):
    """The TraccarExport pulled from live.url; raises LiveOptionError, or TraccarPullError
    (an UnreadableInput: the server could not be read, or refused the credentials)."""
    from migration.traccar_pull import PullOptions, TraccarLogin, pull_traccar

    options = PullOptions.last_days(retention_days)
    since = options.since_ms if live.since is None else parse_time_ms(live.since, "--since")
    until = options.until_ms if live.until is None else parse_time_ms(live.until, "--until")
    if until <= since:
        raise LiveOptionError("--until must be later than --since")
    options = PullOptions(since_ms=since, until_ms=until)

    def progress(done: int, devices: int, positions: int) -> None:
        if done == devices or done % 50 == 0:
            typer.echo(
                f"pulled {done} of {devices} devices' positions ({positions:,} positions)",
                err=True,
            )

    login = TraccarLogin(token=live.token, user=live.user, password=live.password)
    pulled = asyncio.run(pull_traccar(live.url, login, options, progress=progress))
    return pulled.export
