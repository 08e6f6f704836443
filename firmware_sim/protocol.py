"""What a TCU's firmware knows of the device protocol (docs/protocol.md, docs/coap.md): the topic
layout, the device-id rule, the message limits and the CoAP content formats.

Written from the documents as a device maker would, not imported from the gateway: a misreading
of the protocol on either side then shows up in the tests instead of cancelling out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TOPIC_ROOT = "fg/v1"  # {root}; the major protocol version is part of it

# "A device id matches [A-Za-z0-9_.:-]{1,64}": no '/', '+', '#', and so never a leading '$'.
_DEVICE_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")

MAX_MESSAGE_BYTES = 256 * 1024  # one message, MQTT or CoAP
MAX_SAMPLES_PER_BATCH = 1000  # samples in one batch (an array), oldest first

# CoAP Content-Format numbers of the uplink encodings (docs/coap.md, "Resources").
COAP_FORMATS = {"json": 50, "cbor": 60, "senml+json": 110, "senml+cbor": 112}


def check_device_id(device_id: str) -> str:
    """device_id, or ValueError if the protocol does not allow it (the gateway would refuse
    every message of such a device as bad_topic)."""
    if not isinstance(device_id, str) or not _DEVICE_ID.fullmatch(device_id):
        raise ValueError(
            f"device id {device_id!r} is not allowed by the protocol: 1 to 64 of "
            "A-Z a-z 0-9 _ . : -"
        )
    return device_id


@dataclass(frozen=True, slots=True)
class DeviceTopics:
    """A device's topics under {root}/{device_id}/ (docs/protocol.md, "Topics")."""

    telemetry: str  # samples, up
    event: str  # device events, up
    status: str  # presence and the will, up, retained
    cmd: str  # commands, down
    result: str  # command results, up

    @classmethod
    def of(cls, root: str, device_id: str) -> DeviceTopics:
        base = f"{root}/{check_device_id(device_id)}"
        return cls(
            telemetry=f"{base}/telemetry",
            event=f"{base}/event",
            status=f"{base}/status",
            cmd=f"{base}/cmd",
            result=f"{base}/cmd/result",
        )


def coap_path(root: str, device_id: str, resource: str) -> tuple[str, ...]:
    """The Uri-Path segments of a device's CoAP resource ("telemetry", "event", "cmd/result")."""
    return (*root.split("/"), check_device_id(device_id), *resource.split("/"))
