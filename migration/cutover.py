"""Cut-over and roll-back of a migration batch (docs/migration.md): which vehicles a selection
names, the `set_config` that re-points a device to another broker (docs/protocol.md), and the
backfill file a roll-back writes for the legacy platform. No IO here but reading a vehicles file
and writing the backfill; the database and the brokers are the roof's (fleetgate/cutover.py).
"""

from __future__ import annotations

import hashlib
import math
import re
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

_BATCH = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
REPOINT_TTL_S = 3600.0  # a device asleep longer than this must be re-pointed again


class CutoverInputError(ValueError):
    """Input a cut-over or roll-back cannot take; the message says why. Nothing was changed."""


def check_batch(name: str) -> str:
    if not _BATCH.fullmatch(name or ""):
        raise CutoverInputError(
            f"--batch {name!r}: 1 to 64 of A-Z a-z 0-9 _ . : - (a name for the batch)"
        )
    return name


def check_mqtt_url(url: str, option: str) -> str:
    """An mqtt://host:port URL as devices reach the broker (no credentials, no path)."""
    parts = urlsplit(url or "")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (
        parts.scheme not in ("mqtt", "mqtts")
        or not parts.hostname
        or parts.username
        or parts.path not in ("", "/")
        or port == -1
    ):
        raise CutoverInputError(f"{option} {url!r}: must look like mqtt://host:port")
    return url


def read_vehicle_list(path: str) -> list[str]:
    """vehicle_refs from a file, one a line (blank lines and # comments skipped; a CSV's first
    column, with a header `vehicle_ref` skipped)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CutoverInputError(f"cannot read --vehicles {path}: {exc}") from None
    refs = []
    for line in text.splitlines():
        ref = line.split("#", 1)[0].split(",", 1)[0].strip()
        if ref and ref != "vehicle_ref":
            refs.append(ref)
    if not refs:
        raise CutoverInputError(f"--vehicles {path}: no vehicle_ref in it")
    return refs


def by_refs(candidates: Sequence[Any], refs: Iterable[str]) -> list[Any]:
    """The named vehicles; CutoverInputError naming the ones the registry does not have."""
    known = {c.vehicle_ref: c for c in candidates}
    refs = list(dict.fromkeys(refs))
    unknown = [r for r in refs if r not in known]
    if unknown:
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        raise CutoverInputError(f"unknown vehicles: {', '.join(unknown[:10])}{more}")
    return [known[r] for r in refs]


def by_percent(
    candidates: Sequence[Any], percent: float, seed: int, held_by: str = "fleetgate"
) -> list[Any]:
    """percent of the vehicles a legacy platform still holds (at least one), the same ones for
    the same seed and fleet: ordered by a hash of (seed, vehicle_ref)."""
    pool = [c for c in candidates if c.holder != held_by]
    if not pool:
        return []
    n = max(1, math.ceil(len(pool) * percent / 100.0))

    def rank(c: Any) -> bytes:
        return hashlib.sha256(f"{seed}:{c.vehicle_ref}".encode()).digest()

    return sorted(sorted(pool, key=rank)[:n], key=lambda c: c.vehicle_ref)


def set_config_command(
    mqtt_url: str, *, ttl_s: float = REPOINT_TTL_S, now_ms: int | None = None
) -> dict[str, Any]:
    """The downlink that moves a device to the broker at mqtt_url (docs/protocol.md,
    set_config): a new id per device, a deadline ttl_s from now."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    return {
        "id": str(uuid.uuid4()),
        "type": "set_config",
        "params": {"mqtt_url": mqtt_url},
        "deadline": now + int(ttl_s * 1000),
    }


def command_topic(root: str, device_id: str) -> str:
    return f"{root}/{device_id}/cmd"


def _json_default(value: Any) -> Any:
    raise TypeError(f"not JSON: {type(value).__name__}")


def backfill_line(row: dict[str, Any]) -> bytes:
    """One line of the backfill file (JSON Lines; times RFC 3339 in UTC)."""
    return orjson.dumps(
        {k: v for k, v in row.items() if v is not None},
        option=orjson.OPT_UTC_Z | orjson.OPT_APPEND_NEWLINE,
        default=_json_default,
    )
