"""The one settings object: environment variables (FLEETGATE_*) and an optional config file.

Validated once at start; the cores never see it, the IO shells take plain values from it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLEETGATE_", extra="forbid",
                                      env_file=os.environ.get("FLEETGATE_ENV_FILE"),
                                      validate_default=True)

    # Where things are. Unset database_url / mqtt_url: `fleetgate run` and `demo` start embedded
    # PostgreSQL / Mosquitto in data_dir.
    database_url: SecretStr | None = Field(None, description="postgresql://user:pass@host:port/db")
    mqtt_url: str | None = Field(None, description="mqtt://host:port")
    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None
    data_dir: Path = Path(".fleetgate")

    # MQTT ingress.
    mqtt_client_id: str = Field("fleetgate-gw-1", pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
                                description="unique per gateway process; keeps its session")
    mqtt_topic_root: str = "fg/v1"
    mqtt_shared_group: str = Field("fleetgate", description="empty: plain subscriptions "
                                   "(brokers without shared subscriptions; one gateway only)")
    mqtt_protocol: Literal[4, 5] = 5
    mqtt_keepalive_s: int = Field(30, ge=5, le=600)
    mqtt_session_expiry_s: int = Field(7 * 86400, ge=60)
    mqtt_receive_maximum: int = Field(65535, ge=10, le=65535)

    # Batch pipeline.
    batch_max_messages: int = Field(5000, ge=1)
    batch_max_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    batch_max_age_ms: int = Field(50, ge=1, le=60_000, description="a batch is cut at the latest "
                                  "this long after its first message arrived")
    pipeline_max_pending: int = Field(65535, ge=100, description="unacknowledged messages held "
                                      "before the gateway stops reading from the broker")

    # Storage.
    storage: Literal["auto", "timescaledb", "native"] = "auto"
    retention_days: int = Field(30, ge=1)
    db_pool_max: int = Field(4, ge=1)

    # Validation and presence.
    max_future_s: float = Field(300, gt=0)
    ebike_max_speed_kmh: float = Field(80, gt=0)
    car_max_speed_kmh: float = Field(300, gt=0)
    presence_timeout_s: float = Field(300, gt=0)

    # Geofence.
    zones_refresh_s: float = Field(2.0, gt=0, description="how often the gateway checks for "
                                   "edited zones (a change takes effect without a restart)")
    geofence_margin_m: float = Field(10.0, ge=0, description="a fix must be this far inside "
                                     "(outside) a zone to count towards entering (leaving) it")
    geofence_fixes: int = Field(2, ge=1, description="consecutive such fixes that confirm it")

    # CoAP ingress for sleeping NB-IoT devices (docs/coap.md).
    coap_enabled: bool = True
    coap_host: str = Field("127.0.0.1", description="UDP address; :: for every interface")
    coap_port: int = Field(5683, ge=0, le=65535)
    coap_response_timeout_s: float = Field(5.0, gt=0, le=60, description="an uplink not "
                                           "committed within this gets 5.03 (the device retries)")
    coap_retry_after_s: int = Field(30, ge=1, le=3600, description="Max-Age of a 5.03 while the "
                                    "database is unavailable")

    # Remote commands (docs/commands.md).
    commands_enabled: bool = True
    command_ttl_s: float = Field(60.0, gt=0, description="deadline of a command whose caller "
                                 "gives none")
    command_result_timeout_s: float = Field(5.0, gt=0, description="wait for a device's result "
                                            "before retrying with the same id")
    command_max_attempts: int = Field(5, ge=1)
    command_fresh_state_s: float = Field(60.0, gt=0, description="vehicle state older than this "
                                         "counts as unknown for the interlocks")
    command_moving_kmh: float = Field(3.0, ge=0, description="faster than this, a vehicle is "
                                      "moving: immobilise waits or is refused")
    speed_caps_enabled: bool = Field(False, description="send set_speed_limit when a vehicle "
                                     "enters or leaves a zone with maximum_speed_kph")

    # HTTP API and live map (served by `fleetgate run` beside the gateway, or `fleetgate api`).
    api_host: str = Field("127.0.0.1", description="address the HTTP API listens on")
    api_port: int = Field(8080, ge=0, le=65535, description="0: no HTTP API in `fleetgate run`")
    api_key_cache_s: float = Field(30.0, ge=0, description="how long a verified API key is "
                                   "trusted before it is checked again (a revoked key stops "
                                   "working within this time)")
    map_tiles_url: str | None = Field(None, description="tile URL template for the live map, "
                                      "e.g. https://tiles.example/{z}/{x}/{y}.png; unset: no "
                                      "background tiles (the map works offline)")
    map_attribution: str = ""

    # Operations.
    metrics_port: int = Field(9108, ge=0, le=65535, description="0 disables the /metrics listener")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"

    @field_validator("mqtt_url")
    @classmethod
    def _mqtt_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = urlsplit(v)
        if parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
            raise ValueError("must look like mqtt://host:port")
        return v

    @field_validator("mqtt_topic_root")
    @classmethod
    def _topic_root(cls, v: str) -> str:
        if not v or v.startswith("/") or v.endswith("/") or any(c in v for c in "+#"):
            raise ValueError("a topic prefix such as fg/v1, without wildcards or outer slashes")
        return v

    @property
    def mqtt_host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.mqtt_url or "mqtt://127.0.0.1:1883")
        return parts.hostname or "127.0.0.1", parts.port or 1883

    def masked(self) -> dict:
        """The effective settings with secrets masked, for `fleetgate config show` and logs."""
        out = self.model_dump(mode="json")
        if self.database_url is not None:
            parts = urlsplit(self.database_url.get_secret_value())
            if parts.password:
                netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
                out["database_url"] = parts._replace(netloc=netloc).geturl()
            else:
                out["database_url"] = parts.geturl()
        return out
