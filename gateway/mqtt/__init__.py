"""MQTT 3.1.1/5 for fleetgate: a sans-IO packet codec and a lean asyncio client with manual
acknowledgement (the gateway acks a message only after its rows are committed), and the persistent
session both the gateway and the command dispatcher keep on the broker."""

from gateway.mqtt._client import ConnectionLost, MqttClient, MqttError
from gateway.mqtt._options import ConnectOptions
from gateway.mqtt._packets import (
    MalformedPacket,
    Message,
    PacketTooLarge,
    ProtocolViolation,
    Will,
)
from gateway.mqtt._session import PersistentSession

__all__ = [
    "ConnectOptions",
    "ConnectionLost",
    "MalformedPacket",
    "Message",
    "MqttClient",
    "MqttError",
    "PacketTooLarge",
    "PersistentSession",
    "ProtocolViolation",
    "Will",
]
