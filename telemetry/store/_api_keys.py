"""API keys of the HTTP API: created and revoked from the CLI, checked on every request.

A key reads `fgk_<id>_<secret>`: the id finds the row, the secret is compared by its SHA-256 hash
in constant time. The plaintext exists only in the creator's output.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from psycopg import AsyncCursor

SCOPES = (
    "fleet:read",
    "commands:write",
    "zones:write",
    "devices:write",
    "webhooks:write",
    "broker:auth",
    "migration:write",
    "mds:read",
    "admin",
)
_KEY = re.compile(r"^fgk_([a-z0-9]{8,32})_([A-Za-z0-9_-]{20,100})$")


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    scopes: tuple[str, ...]
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


class InvalidApiKey(ValueError):
    """A key that does not exist, is revoked, or does not match."""


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _check_scopes(scopes: list[str]) -> None:
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise ValueError(f"scopes must be some of {', '.join(SCOPES)}; got {unknown or 'none'}")


async def create(cur: AsyncCursor, name: str, scopes: list[str]) -> tuple[ApiKey, str]:
    """A new key; returns it and its plaintext (shown once)."""
    _check_scopes(scopes)
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    await cur.execute(
        "INSERT INTO api_keys (id, name, scopes, secret_sha256) VALUES (%s, %s, %s, %s) "
        "RETURNING id, name, scopes, created_at, revoked_at, last_used_at",
        (key_id, name, sorted(set(scopes)), _hash(secret)),
    )
    return _row(await cur.fetchone()), f"fgk_{key_id}_{secret}"


async def verify(cur: AsyncCursor, key: str) -> ApiKey:
    """The key's record if the key is valid and not revoked; else InvalidApiKey."""
    m = _KEY.match(key or "")
    if not m:
        raise InvalidApiKey("malformed API key")
    await cur.execute(
        "SELECT id, name, scopes, created_at, revoked_at, last_used_at, "
        "secret_sha256 FROM api_keys WHERE id = %s",
        (m.group(1),),
    )
    row = await cur.fetchone()
    # Compare against a dummy when the id is unknown, so timing does not reveal which ids exist.
    stored = row[6] if row else b"\0" * 32
    if not hmac.compare_digest(stored, _hash(m.group(2))) or row is None or row[4] is not None:
        raise InvalidApiKey("unknown or revoked API key")
    return _row(row[:6])


async def touch(cur: AsyncCursor, key_id: str) -> None:
    await cur.execute(
        "UPDATE api_keys SET last_used_at = now() WHERE id = %s "
        "AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
        (key_id,),
    )


async def list_all(cur: AsyncCursor) -> list[ApiKey]:
    await cur.execute(
        "SELECT id, name, scopes, created_at, revoked_at, last_used_at "
        "FROM api_keys ORDER BY created_at"
    )
    return [_row(r) for r in await cur.fetchall()]


async def revoke(cur: AsyncCursor, name_or_id: str) -> bool:
    await cur.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE (name = %s OR id = %s) "
        "AND revoked_at IS NULL",
        (name_or_id, name_or_id),
    )
    return cur.rowcount > 0


def _row(r) -> ApiKey:
    return ApiKey(r[0], r[1], tuple(r[2]), r[3], r[4], r[5])
