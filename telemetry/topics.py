"""The topic layout of docs/protocol.md, written once: a device's topics below the topic root
(`{root}/{device_id}/{kind}`), the CoAP paths that mirror them, the gateway processes' own `$`
topics, and the rule a device id follows (it is one topic level and one path segment)."""

from __future__ import annotations

import re

# No '/', '+' or '#' (a device id is one topic level) and no '$' in front (the `$` levels
# belong to the gateway processes).
DEVICE_ID_RULE = "[A-Za-z0-9_.:-]{1,64}"
DEVICE_ID_PATTERN = f"^{DEVICE_ID_RULE}$"
_DEVICE_ID = re.compile(DEVICE_ID_RULE)

# The kinds of message below {root}/{device_id}/.
TELEMETRY = "telemetry"
EVENT = "event"
STATUS = "status"
COMMAND = "cmd"
COMMAND_RESULT = "cmd/result"
DEVICE_PUBLISHES = (TELEMETRY, EVENT, STATUS, COMMAND_RESULT)
DEVICE_SUBSCRIBES = (COMMAND,)
# What a device posts to /{root}/{device_id}/{kind} over CoAP: no status, its uplinks are its
# presence, and commands ride on the answers.
COAP_UPLINKS = (TELEMETRY, EVENT, COMMAND_RESULT)


def is_device_id(text: str) -> bool:
    """Whether the whole of text is a device id (a trailing newline is no part of one)."""
    return _DEVICE_ID.fullmatch(text) is not None


def device_topic(root: str, device_id: str, kind: str) -> str:
    """`{root}/{device_id}/{kind}`. The device id "+" makes it the filter for every device's
    `kind`, and "%u" Mosquitto's ACL pattern for the connected user's."""
    return f"{root}/{device_id}/{kind}"


def every_device(root: str, kind: str) -> str:
    """The topic filter for `kind` of every device."""
    return device_topic(root, "+", kind)


def parse_device_topic(root: str, topic: str) -> tuple[str, str] | None:
    """(device id, kind) of a topic below root, None for a topic that is not. Neither is checked:
    an invalid device id or an unknown kind is the caller's to refuse."""
    prefix = root + "/"
    if not topic.startswith(prefix):
        return None
    device_id, _, kind = topic[len(prefix) :].partition("/")
    return device_id, kind


def gateway_presence_topic(root: str, client_id: str) -> str:
    """Where a gateway process keeps its retained presence (online / offline)."""
    return f"{root}/$gateway/{client_id}/presence"


def drain_marker_topic(root: str, client_id: str) -> str:
    """The topic only a draining session subscribes to (`fleetgate drain`)."""
    return f"{root}/$drain/{client_id}/marker"
