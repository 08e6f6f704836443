"""MQTT 3.1.1/5 for fleetgate: a sans-IO packet codec and a lean asyncio client with manual
acknowledgement (the gateway acks a message only after its rows are committed)."""

from fleetgate.mqtt._client import ConnectionLost, MqttClient, MqttError
from fleetgate.mqtt._packets import MalformedPacket, Message, Will

__all__ = ["ConnectionLost", "MalformedPacket", "Message", "MqttClient", "MqttError", "Will"]
