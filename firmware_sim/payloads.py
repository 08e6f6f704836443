"""What simulated TCUs put on the wire: samples as JSON or CBOR, buffered batches, presence,
command results, and the malformed payloads misbehaving devices send.

Samples are encoded once, as single-sample objects; a buffered upload is those same bytes joined
into a JSON or CBOR array, so a sample costs the same whether the device was online or not.
"""

from __future__ import annotations

from collections.abc import Sequence

import cbor2
import numpy as np
import orjson

from firmware_sim.model import CAR, Samples

JSON, CBOR = 0, 1
ENCODINGS = ("json", "cbor")
CONTENT_TYPES = ("application/json", "application/cbor")

# Kinds of malformed message and the rejection reason docs/protocol.md gives for each, so that a
# test can compare what was sent with fleetgate_samples_rejected_total{reason}.
MALFORMED_KINDS: dict[str, str] = {
    "truncated_json": "malformed_json",
    "garbage_cbor": "malformed_cbor",
    "wrong_type": "wrong_type",
    "absurd_coordinates": "lat_out_of_range",
    "soc_over_100": "soc_out_of_range",
    "time_in_future": "time_in_future",
}

# Decimal places per field: what a TCU's firmware would print, and short payloads.
_DECIMALS = {
    "lat": 6,
    "lon": 6,
    "speed_kmh": 1,
    "heading_deg": 1,
    "soc_pct": 2,
    "pack_v": 2,
    "pack_a": 2,
    "aux_v": 2,
    "odometer_m": 1,
}
_DUMPS = (orjson.dumps, cbor2.dumps)

STATUS_OFFLINE_WILL = orjson.dumps({"online": False})


def encode_samples(samples: Samples, encoding: np.ndarray) -> list[bytes]:
    """One single-sample payload per vehicle; encoding[i] is JSON or CBOR for vehicle i.

    Fields a vehicle's kind does not report (12 V, ignition and immobiliser on e-bikes) and a
    missing fix are left out, as the protocol asks.
    """
    n = len(samples)
    out: list[bytes] = [b""] * n
    t = samples.t_ms
    col = {name: np.round(getattr(samples, name), d).tolist() for name, d in _DECIMALS.items()}
    locked = samples.locked.tolist()
    charging = samples.charging.tolist()
    ignition = samples.ignition.tolist()
    immobilised = samples.immobilised.tolist()
    enc = encoding.tolist()
    dumps = _DUMPS
    lat, lon = col["lat"], col["lon"]
    car = samples.kind == CAR
    fix = samples.has_fix()
    # The common case in one tight loop per kind; the rare rows without a fix after.
    for i in np.flatnonzero(~car & fix).tolist():
        out[i] = dumps[enc[i]](
            {
                "t": t,
                "lat": lat[i],
                "lon": lon[i],
                "speed_kmh": col["speed_kmh"][i],
                "heading_deg": col["heading_deg"][i],
                "soc_pct": col["soc_pct"][i],
                "pack_v": col["pack_v"][i],
                "pack_a": col["pack_a"][i],
                "odometer_m": col["odometer_m"][i],
                "locked": locked[i],
                "charging": charging[i],
            }
        )
    for i in np.flatnonzero(car & fix).tolist():
        out[i] = dumps[enc[i]](
            {
                "t": t,
                "lat": lat[i],
                "lon": lon[i],
                "speed_kmh": col["speed_kmh"][i],
                "heading_deg": col["heading_deg"][i],
                "soc_pct": col["soc_pct"][i],
                "pack_v": col["pack_v"][i],
                "pack_a": col["pack_a"][i],
                "aux_v": col["aux_v"][i],
                "odometer_m": col["odometer_m"][i],
                "locked": locked[i],
                "ignition": ignition[i],
                "immobilised": immobilised[i],
                "charging": charging[i],
            }
        )
    for i in np.flatnonzero(~fix).tolist():
        row = {
            "t": t,
            "speed_kmh": col["speed_kmh"][i],
            "heading_deg": col["heading_deg"][i],
            "soc_pct": col["soc_pct"][i],
            "pack_v": col["pack_v"][i],
            "pack_a": col["pack_a"][i],
        }
        if car[i]:
            row["aux_v"] = col["aux_v"][i]
        row["odometer_m"] = col["odometer_m"][i]
        row["locked"] = locked[i]
        if car[i]:
            row["ignition"] = ignition[i]
            row["immobilised"] = immobilised[i]
        row["charging"] = charging[i]
        out[i] = dumps[enc[i]](row)
    return out


def sample_row(samples: Samples, i: int) -> dict:
    """Vehicle i's sample as the protocol object its payload carries (rounded as encoded)."""
    row = samples.row(i)
    for name, d in _DECIMALS.items():
        if name in row:
            row[name] = round(row[name], d)
    return row


def encode_row(row: dict, encoding: int) -> bytes:
    """One protocol object (a sample, built by hand) as JSON or CBOR."""
    return _DUMPS[encoding](row)


def encode_batch(fragments: Sequence[bytes], encoding: int) -> bytes:
    """A batch payload (an array, oldest first as given) from single-sample payloads."""
    if encoding == JSON:
        return b"[" + b",".join(fragments) + b"]"
    return _cbor_array_head(len(fragments)) + b"".join(fragments)


def _cbor_array_head(n: int) -> bytes:
    if n < 24:
        return bytes((0x80 + n,))
    if n < 0x100:
        return bytes((0x98, n))
    if n < 0x10000:
        return b"\x99" + n.to_bytes(2, "big")
    return b"\x9a" + n.to_bytes(4, "big")


def status_payload(online: bool, t_ms: int, fw: str | None = None) -> bytes:
    """Presence (docs/protocol.md, "Presence")."""
    body: dict = {"online": online, "t": t_ms}
    if fw is not None:
        body["fw"] = fw
    return orjson.dumps(body)


def result_payload(command_id: str, succeeded: bool, t_ms: int, reason: str | None) -> bytes:
    return orjson.dumps(
        {
            "id": command_id,
            "status": "succeeded" if succeeded else "failed",
            "t": t_ms,
            "reason": reason,
        }
    )


def received_payload(command_id: str, t_ms: int) -> bytes:
    """The optional acknowledgement on receipt (docs/protocol.md, Commands)."""
    return orjson.dumps({"id": command_id, "status": "received", "t": t_ms})


def parse_command(payload: bytes) -> dict:
    """A downlink command as a dict; raises ValueError if it is not an object with an id."""
    try:
        is_json = payload.lstrip()[:1] in (b"{", b"[")
        body = orjson.loads(payload) if is_json else cbor2.loads(payload)
    except cbor2.CBORError as exc:  # not a ValueError, unlike orjson's
        raise ValueError(f"command payload is neither JSON nor CBOR: {exc}") from exc
    if not isinstance(body, dict) or not isinstance(body.get("id"), str) or not body["id"]:
        raise ValueError("a command is an object with a string id")
    return body


def malformed_payload(
    kind: str, row: dict, encoding: int, wall_ms: int, rng: np.random.Generator
) -> bytes:
    """A message of the given malformed kind, derived from a genuine sample row.

    Every kind fails the gateway's checks with MALFORMED_KINDS[kind] as the reason; the sample
    time is moved off the genuine sample's time so it can never be mistaken for it.
    """
    row = dict(row)
    row["t"] = row["t"] + 1
    if kind == "truncated_json":
        full = orjson.dumps(row)
        return full[: int(len(full) * rng.uniform(0.2, 0.9))]
    if kind == "garbage_cbor":
        # A map head followed by a cut-off body, as when a modem drops the end of a frame.
        full = cbor2.dumps(row)
        return full[: max(2, int(len(full) * rng.uniform(0.2, 0.9)))]
    if kind == "wrong_type":
        # Firmware bugs seen in the field: numbers as strings, booleans as 0/1.
        row["soc_pct"] = str(row.get("soc_pct", 50.0))
        row["locked"] = int(row.get("locked", True))
    elif kind == "absurd_coordinates":
        row["lat"] = float(rng.choice([-1, 1]) * rng.uniform(91.0, 500.0))
        row["lon"] = float(rng.uniform(-180.0, 180.0))
    elif kind == "soc_over_100":
        row["soc_pct"] = round(float(rng.uniform(100.5, 255.0)), 2)
    elif kind == "time_in_future":
        # Ahead of the gateway's clock (the wall clock), whatever the simulated clock says.
        row["t"] = max(row["t"], wall_ms) + int(rng.uniform(1, 30) * 86_400_000)
    else:
        raise ValueError(f"unknown malformed kind {kind!r}; one of {sorted(MALFORMED_KINDS)}")
    return _DUMPS[encoding](row)
