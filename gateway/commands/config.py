"""The command service's settings: its MQTT connection (beside the gateway's), its database, the
default deadline, and the delivery and interlock policies of the core it runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from commands.interlocks import InterlockPolicy
from commands.scheduler import DeliveryPolicy
from gateway.commands.mqtt import command_client_id


@dataclass
class CommandConfig:
    database_url: str | None = None  # unless the service is given a CommandStore
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    mqtt_client_id: str = "fleetgate-gw-1-cmd"
    mqtt_topic_root: str = "fg/v1"
    mqtt_protocol: int = 5
    mqtt_keepalive_s: int = 30
    mqtt_session_expiry_s: int = 7 * 86400
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    default_ttl_s: float = 60.0
    delivery: DeliveryPolicy = field(default_factory=DeliveryPolicy)
    interlocks: InterlockPolicy = field(default_factory=InterlockPolicy)
    recheck_s: float = 1.0  # held-back commands are judged again at least this often
    speed_cap_ttl_s: float = 300.0
    db_pool_max: int = 4

    @classmethod
    def from_gateway(cls, gw: Any, **overrides: Any) -> CommandConfig:
        """The commands' config next to a gateway.service.GatewayConfig (same broker, topic
        root, credentials and database; client id derived from the gateway's)."""
        return cls(
            **{
                "database_url": gw.database_url,
                "mqtt_host": gw.mqtt_host,
                "mqtt_port": gw.mqtt_port,
                "mqtt_client_id": command_client_id(gw.mqtt_client_id),
                "mqtt_topic_root": gw.mqtt_topic_root,
                "mqtt_protocol": gw.mqtt_protocol,
                "mqtt_keepalive_s": gw.mqtt_keepalive_s,
                "mqtt_session_expiry_s": gw.mqtt_session_expiry_s,
                "mqtt_username": gw.mqtt_username,
                "mqtt_password": gw.mqtt_password,
                **overrides,
            }
        )
