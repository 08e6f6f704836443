"""Device credentials: per-device secrets, stored only as hashes, provisioned and rotated.

A secret is 192 random bits, shown once when it is issued. The store keeps its SHA-256 (what CoAP
tokens and HTTP-auth passwords are checked against: a fast hash is enough for a secret nobody can
guess) and its PBKDF2-SHA512 form in Mosquitto's `$7$` format, from which the broker's password
file is generated (docs/device-identity.md).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

from telemetry.store._store import TelemetryStore

# mosquitto_passwd (Mosquitto 2.0) writes $7$<iterations>$<base64 salt>$<base64 hash>:
# PBKDF2-HMAC-SHA512, 101 iterations, a 12-byte salt, a 64-byte hash.
MOSQUITTO_ITERATIONS = 101
_SALT_BYTES = 12
SECRET_BYTES = 24  # 192 bits; token_urlsafe makes 32 characters of [A-Za-z0-9_-]
# Credentials that expired this long ago are deleted by the next rotation of their device.
_KEEP_EXPIRED = "30 days"

_VALID = "(c.expires_at IS NULL OR c.expires_at > now())"


class UnknownDevice(LookupError):
    """The device id is not in the registry (register its vehicle first)."""


class AlreadyProvisioned(Exception):
    """The device already has a valid credential; rotate it instead."""


def new_secret() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


def secret_digest(secret: str) -> bytes:
    """The SHA-256 the store keeps of a secret."""
    return hashlib.sha256(secret.encode()).digest()


def mosquitto_hash(
    secret: str, *, salt: bytes | None = None, iterations: int = MOSQUITTO_ITERATIONS
) -> str:
    """A secret as one password-file hash, exactly as `mosquitto_passwd` (2.0) writes it."""
    salt = secrets.token_bytes(_SALT_BYTES) if salt is None else salt
    derived = hashlib.pbkdf2_hmac("sha512", secret.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(derived).decode()}"


def check_mosquitto_hash(secret: str, hashed: str) -> bool:
    """Whether secret matches a `$7$` hash (as the broker checks it)."""
    try:
        _, kind, iterations, salt, derived = hashed.split("$")
        if kind != "7":
            return False
        expected = base64.b64decode(derived, validate=True)
        got = hashlib.pbkdf2_hmac(
            "sha512", secret.encode(), base64.b64decode(salt, validate=True), int(iterations)
        )
    except ValueError:
        return False
    return hmac.compare_digest(got, expected)


@dataclass(frozen=True)
class IssuedSecret:
    """A secret just issued: show it once, it is not stored anywhere in clear."""

    device_id: str
    secret: str
    created_at: datetime
    previous_valid_until: datetime | None = None  # rotation: when the replaced secret stops


@dataclass(frozen=True)
class CredentialInfo:
    """A registered device and where its credentials stand (no secrets, no hashes)."""

    device_id: str
    vehicle_ref: str
    valid: int  # credentials that authenticate now (2 during a rotation's grace period)
    issued_at: datetime | None  # the newest valid credential's creation
    grace_until: datetime | None  # when the older valid credential(s) stop working


class DeviceCredentials:
    """Per-device secrets in the `device_credentials` table, through a TelemetryStore's pool."""

    def __init__(self, store: TelemetryStore) -> None:
        self._store = store

    async def provision(self, device_id: str) -> IssuedSecret:
        """A first secret for a registered device; AlreadyProvisioned if it has a valid one."""
        return (await self.provision_many([device_id]))[0]

    async def provision_many(
        self, device_ids: list[str], *, skip_provisioned: bool = False
    ) -> list[IssuedSecret]:
        """First secrets for many devices in one transaction. A device that already has a valid
        credential is an AlreadyProvisioned error, or left out with skip_provisioned."""
        issued: list[IssuedSecret] = []
        async with self._store.transaction() as cur:
            await _lock_devices(cur, device_ids)
            await cur.execute(
                f"SELECT DISTINCT c.device_id FROM device_credentials c "
                f"WHERE c.device_id = ANY(%s) AND {_VALID}",
                (device_ids,),
            )
            have = {d for (d,) in await cur.fetchall()}
            if have and not skip_provisioned:
                raise AlreadyProvisioned(
                    f"already provisioned: {', '.join(sorted(have))} (use rotate)"
                )
            for device_id in dict.fromkeys(device_ids):
                if device_id not in have:
                    issued.append(await _insert(cur, device_id))
        return issued

    async def rotate(self, device_id: str, *, grace_s: float = 86_400.0) -> IssuedSecret:
        """A new secret, valid at once. The device's other valid secrets keep working for
        grace_s seconds (0: revoked now). Works for a device never provisioned, too."""
        if grace_s < 0:
            raise ValueError("grace_s must not be negative")
        async with self._store.transaction() as cur:
            await _lock_devices(cur, [device_id])
            await cur.execute(
                f"UPDATE device_credentials c SET expires_at = "
                f"  least(coalesce(c.expires_at, 'infinity'), now() + make_interval(secs => %s)) "
                f"WHERE c.device_id = %s AND {_VALID} "
                f"RETURNING c.expires_at",
                (grace_s, device_id),
            )
            ends = [e for (e,) in await cur.fetchall()]
            await cur.execute(
                "DELETE FROM device_credentials WHERE device_id = %s "
                f"AND expires_at < now() - interval '{_KEEP_EXPIRED}'",
                (device_id,),
            )
            issued = await _insert(cur, device_id)
        return IssuedSecret(
            device_id, issued.secret, issued.created_at, max(ends) if ends else None
        )

    async def verify(self, device_id: str, secret: str) -> bool:
        """Whether secret is a valid credential of device_id, a registered device."""
        async with self._store.connection() as conn:
            cur = await conn.execute(
                f"SELECT EXISTS (SELECT 1 FROM device_credentials c "
                f"JOIN vehicles v ON v.device_id = c.device_id "
                f"WHERE c.secret_sha256 = %s AND c.device_id = %s AND {_VALID})",
                (secret_digest(secret), device_id),
            )
            return bool((await cur.fetchone())[0])

    async def list(self) -> list[CredentialInfo]:
        """Every registered device, provisioned or not, by device id."""
        async with self._store.connection() as conn:
            cur = await conn.execute(
                f"SELECT v.device_id, v.vehicle_ref, count(c.id), max(c.created_at), "
                f"  max(c.expires_at) "
                f"FROM vehicles v LEFT JOIN device_credentials c "
                f"  ON c.device_id = v.device_id AND {_VALID} "
                f"GROUP BY v.device_id, v.vehicle_ref ORDER BY v.device_id"
            )
            return [CredentialInfo(*row) for row in await cur.fetchall()]

    async def broker_users(self) -> list[tuple[str, str]]:
        """(device_id, `$7$` hash) of the newest valid credential of every registered device:
        the device lines of Mosquitto's password file (it takes one hash per user)."""
        async with self._store.connection() as conn:
            cur = await conn.execute(
                f"SELECT DISTINCT ON (c.device_id) c.device_id, c.mosquitto_hash "
                f"FROM device_credentials c JOIN vehicles v ON v.device_id = c.device_id "
                f"WHERE {_VALID} ORDER BY c.device_id, c.created_at DESC, c.id DESC"
            )
            return [(d, h) for d, h in await cur.fetchall()]


async def _lock_devices(cur, device_ids: list[str]) -> None:
    """Lock the devices' registry rows (two rotations of one device take turns); UnknownDevice
    for an id not in the registry."""
    await cur.execute(
        "SELECT device_id FROM vehicles WHERE device_id = ANY(%s) ORDER BY device_id FOR UPDATE",
        (device_ids,),
    )
    found = {d for (d,) in await cur.fetchall()}
    missing = sorted(set(device_ids) - found)
    if missing:
        raise UnknownDevice(
            f"not in the registry: {', '.join(missing[:10])}"
            + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        )


async def _insert(cur, device_id: str) -> IssuedSecret:
    secret = new_secret()
    await cur.execute(
        "INSERT INTO device_credentials (device_id, secret_sha256, mosquitto_hash) "
        "VALUES (%s, %s, %s) RETURNING created_at",
        (device_id, secret_digest(secret), mosquitto_hash(secret)),
    )
    (created_at,) = await cur.fetchone()
    return IssuedSecret(device_id, secret, created_at)
