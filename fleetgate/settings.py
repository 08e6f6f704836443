"""The one settings object: environment variables (FLEETGATE_*), an optional env file
(FLEETGATE_ENV_FILE) and an optional TOML config file (FLEETGATE_CONFIG), in that order of
precedence over the defaults.

Validated once at start (Settings.load: every problem named with its key and where the value came
from); the cores never see it, the IO shells take plain values from it.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit

from dotenv import dotenv_values
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from feeds import FeedSystem, InvalidFeedSystem
from telemetry.dialect import load_dialects

PREFIX = "FLEETGATE_"
CONFIG_FILE_VAR = "FLEETGATE_CONFIG"
ENV_FILE_VAR = "FLEETGATE_ENV_FILE"


class SettingsError(ValueError):
    """Settings that cannot be used; the message names every key, its source and the problem."""


class FeedSettings(BaseModel):
    """The public feeds' system (docs/feeds.md): `[feeds]` in the TOML config file, or
    FLEETGATE_FEEDS as JSON. Unset: /gbfs and /mds answer 404."""

    model_config = ConfigDict(extra="forbid")

    system_id: str = Field(description="GBFS system_id, also in the feed URLs")
    name: str
    operator: str
    languages: list[str] = Field(["en"], min_length=1)
    timezone: str = Field(description="IANA time zone, e.g. Europe/Berlin")
    feed_contact_email: str
    base_url: str = Field(description="public URL the API is reached at, for the feeds' links")
    opening_hours: str = "24/7"
    url: str | None = None
    email: str | None = None
    ttl_s: int = Field(30, ge=0, le=3600, description="GBFS ttl of vehicle and station status")
    pricing_plans: list[dict[str, Any]] = Field(default_factory=list)
    alerts: list[dict[str, Any]] = Field(default_factory=list)
    mds_provider_id: str | None = Field(None, description="MDS provider_id (UUID); unset: no MDS")
    id_secret: SecretStr | None = Field(
        None,
        description="keys the public vehicle ids (>= 16 characters); unset: a random one per "
        "process, so the ids also change when the API restarts",
    )
    rate_limit_per_s: float = Field(10.0, ge=0, description="GBFS requests/s per address; 0: off")
    rate_limit_burst: int = Field(30, ge=1)

    @model_validator(mode="after")
    def _publishable(self) -> FeedSettings:
        try:
            self.system(b"checked only: a secret long enough")
        except InvalidFeedSystem as exc:
            raise ValueError(str(exc)) from None
        if self.id_secret is not None and len(self.id_secret.get_secret_value()) < 16:
            raise ValueError("id_secret must be at least 16 characters")
        return self

    def system(self, generated_secret: bytes) -> FeedSystem:
        """The feeds core's system; `generated_secret` keys the ids where id_secret is unset."""
        secret = self.id_secret.get_secret_value().encode() if self.id_secret else None
        return FeedSystem(
            system_id=self.system_id,
            name=self.name,
            operator=self.operator,
            languages=tuple(self.languages),
            timezone=self.timezone,
            feed_contact_email=self.feed_contact_email,
            base_url=self.base_url,
            opening_hours=self.opening_hours,
            url=self.url,
            email=self.email,
            ttl_s=self.ttl_s,
            pricing_plans=tuple(self.pricing_plans),
            alerts=tuple(self.alerts),
            provider_id=self.mds_provider_id,
            id_secret=secret or generated_secret,
        )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="forbid", validate_default=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The files are named at call time (not import time), so a test or a wrapper can set them.
        sources = [init_settings, env_settings]
        if env_file := os.environ.get(ENV_FILE_VAR):
            sources.append(DotEnvSettingsSource(settings_cls, env_file=env_file))
        if config := os.environ.get(CONFIG_FILE_VAR):
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config))
        return tuple(sources)

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """The effective settings, or SettingsError saying what is wrong, in which key, from
        which source (overrides are command-line options; None means not given)."""
        overrides = {k: v for k, v in overrides.items() if v is not None}
        for var in (ENV_FILE_VAR, CONFIG_FILE_VAR):
            path = os.environ.get(var)
            if path and not Path(path).is_file():
                raise SettingsError(f"{var}={path}: no such file")
        try:
            return cls(**overrides)
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{os.environ[CONFIG_FILE_VAR]} is not valid TOML: {exc}") from exc
        except ValidationError as exc:
            origin = sources(overrides)
            lines = []
            for err in exc.errors():
                key = str(err["loc"][0]) if err["loc"] else "?"
                name = key.lower().removeprefix(PREFIX.lower())
                where = origin.get(name) or origin.get(key) or "default"
                if err["type"] == "extra_forbidden":
                    lines.append(f"  {name} ({where}): unknown setting")
                    continue
                value = "" if name in SECRETS else f" = {_shown(name, err.get('input'))!r}"
                lines.append(f"  {name}{value} ({where}): {err['msg']}")
            raise SettingsError("invalid settings:\n" + "\n".join(lines)) from exc

    # Where things are. Unset database_url / mqtt_url: `fleetgate run` and `demo` start embedded
    # PostgreSQL / Mosquitto in data_dir.
    database_url: SecretStr | None = Field(None, description="postgresql://user:pass@host:port/db")
    mqtt_url: str | None = Field(None, description="mqtt://host:port")
    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None
    data_dir: Path = Path(".fleetgate")

    # MQTT ingress.
    mqtt_client_id: str = Field(
        "fleetgate-gw-1",
        pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
        description="unique per gateway process; keeps its session",
    )
    mqtt_topic_root: str = "fg/v1"
    mqtt_shared_group: str = Field(
        "",
        description="empty (default): plain subscriptions, for one "
        "gateway process per broker; a group name: several processes "
        "share the telemetry, on a broker that keeps shared "
        "subscriptions across its restarts (not Mosquitto 2.0; "
        "docs/deployment.md)",
    )
    mqtt_dialects: str = Field(
        "",
        description="payload dialects of legacy devices the gateway also "
        "reads (docs/dialects.md): comma-separated TOML files or shipped "
        "names (fleetgate, traccar-osmand, flat-json); empty: none",
    )
    mqtt_protocol: Literal[4, 5] = 5
    mqtt_keepalive_s: int = Field(30, ge=5, le=600)
    mqtt_session_expiry_s: int = Field(7 * 86400, ge=60)
    mqtt_receive_maximum: int = Field(65535, ge=10, le=65535)
    mqtt_read_gather_ms: int = Field(
        0,
        ge=0,
        le=50,
        description="after a socket read that found little, leave the broker's socket unread "
        "this long so that one read takes what arrives meanwhile: less CPU a sample at steady "
        "rates, up to this much more latency, less peak throughput (docs/deployment.md); 0: off",
    )

    # Batch pipeline.
    batch_max_messages: int = Field(5000, ge=1)
    batch_max_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    batch_max_age_ms: int = Field(
        50,
        ge=1,
        le=60_000,
        description="a batch is cut at the latest this long after its first message arrived",
    )
    pipeline_max_pending: int = Field(
        65535,
        ge=100,
        description="unacknowledged messages held before the gateway stops reading from the broker",
    )

    # Storage.
    storage: Literal["auto", "timescaledb", "native"] = "auto"
    retention_days: int = Field(30, ge=1)
    db_pool_max: int = Field(4, ge=1)

    # Validation and presence.
    max_future_s: float = Field(300, gt=0)
    # Unset, every vehicle type's plausibility limit follows its form factor (80 km/h for
    # bicycles, 300 for cars, docs/api.md#vehicle-types); set, these override it for two types.
    ebike_max_speed_kmh: float = Field(
        80,
        gt=0,
        description="plausibility limit of vehicle type ebike (default: its form factor's)",
    )
    car_max_speed_kmh: float = Field(
        300, gt=0, description="plausibility limit of vehicle type car (default: its form factor's)"
    )
    presence_timeout_s: float = Field(300, gt=0)
    # Silence after which an offline vehicle is announced as vehicle.comms_lost (once).
    comms_lost_s: float = Field(3600, gt=0)

    # Geofence.
    zones_refresh_s: float = Field(
        2.0,
        gt=0,
        description="how often the gateway checks for "
        "edited zones (a change takes effect without a restart)",
    )
    geofence_margin_m: float = Field(
        10.0,
        ge=0,
        description="a fix must be this far inside "
        "(outside) a zone to count towards entering (leaving) it",
    )
    geofence_fixes: int = Field(2, ge=1, description="consecutive such fixes that confirm it")

    # CoAP ingress for sleeping NB-IoT devices (docs/coap.md).
    coap_enabled: bool = True
    coap_host: str = Field("127.0.0.1", description="UDP address; :: for every interface")
    coap_port: int = Field(5683, ge=0, le=65535)
    coap_response_timeout_s: float = Field(
        5.0,
        gt=0,
        le=60,
        description="an uplink not committed within this gets 5.03 (the device retries)",
    )
    coap_retry_after_s: int = Field(
        30, ge=1, le=3600, description="Max-Age of a 5.03 while the database is unavailable"
    )

    # Remote commands (docs/commands.md).
    commands_enabled: bool = Field(
        True,
        description="run the command dispatcher when this "
        "process holds the dispatcher lease (one process of all that "
        "share a database does; the others stand by)",
    )
    command_ttl_s: float = Field(
        60.0, gt=0, description="deadline of a command whose caller gives none"
    )
    command_result_timeout_s: float = Field(
        5.0, gt=0, description="wait for a device's result before retrying with the same id"
    )
    command_max_attempts: int = Field(5, ge=1)
    command_fresh_state_s: float = Field(
        60.0, gt=0, description="vehicle state older than this counts as unknown for the interlocks"
    )
    command_moving_kmh: float = Field(
        3.0,
        ge=0,
        description="faster than this, a vehicle is moving: immobilise waits or is refused",
    )
    speed_caps_enabled: bool = Field(
        False,
        description="send set_speed_limit when a vehicle "
        "enters or leaves a zone with maximum_speed_kph",
    )

    # Webhooks (docs/webhooks.md): one delivery worker per deployment, under a lease.
    webhooks_enabled: bool = Field(
        True, description="run the webhook delivery worker (in one process of the deployment)"
    )
    webhook_process: bool = Field(
        True,
        description="run the webhook delivery worker in a child process of `fleetgate run` "
        "(false: in the gateway process itself)",
    )
    webhook_nice: int = Field(
        5,
        ge=0,
        le=19,
        description="niceness of the webhook worker's child process: when the CPU is short, "
        "ingestion goes first and deliveries wait (0: the same priority as the gateway)",
    )
    webhook_retention_s: float = Field(
        7 * 86400.0,
        ge=0,
        description="keep delivered webhook records and delivered outbox rows this long "
        "(dead letters and retries are kept until settled); 0: keep everything",
    )
    webhook_concurrency: int = Field(
        64, ge=1, le=1024, description="webhook requests in flight, all receivers together"
    )
    webhook_timeout_s: float = Field(
        10.0, gt=0, le=300, description="how long one webhook attempt may take, answer included"
    )
    webhook_retry_first_s: float = Field(
        5.0, gt=0, description="the first retry's wait (doubling, with jitter, up to an hour)"
    )
    webhook_give_up_s: float = Field(
        86400.0, ge=0, description="retry a delivery this long, then dead-letter it"
    )

    # HTTP API and live map (served by `fleetgate run` beside the gateway, or `fleetgate api`).
    api_host: str = Field("127.0.0.1", description="address the HTTP API listens on")
    api_port: int = Field(8080, ge=0, le=65535, description="0: no HTTP API in `fleetgate run`")
    api_db_deadline_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="how long one API request's database work may take; past it the request "
        "answers 503 (a database that hangs with its connections open would otherwise hold "
        "it for ever)",
    )
    api_key_cache_s: float = Field(
        30.0,
        ge=0,
        description="how long a verified API key is "
        "trusted before it is checked again (a revoked key stops "
        "working within this time)",
    )
    map_tiles_url: str | None = Field(
        None,
        description="tile URL template for the live map, "
        "e.g. https://tiles.example/{z}/{x}/{y}.png; unset: no "
        "background tiles (the map works offline)",
    )
    map_attribution: str = ""
    feeds: FeedSettings | None = Field(
        None, description="the GBFS / MDS system ([feeds] table, docs/feeds.md); unset: none"
    )
    map_style_url: str | None = Field(
        None,
        description="MapLibre style URL (vector tiles, e.g. self-hosted) offered as the live "
        "map's background besides raster tiles and the plain offline one",
    )

    # Operations.
    metrics_host: str = Field(
        "127.0.0.1",
        description="address of the operator's port: "
        "/metrics, /healthz, /readyz (no API keys: keep it internal)",
    )
    metrics_port: int = Field(9108, ge=0, le=65535, description="the operator's port; 0: none")
    fleet_gauges_s: float = Field(
        15.0,
        gt=0,
        description="how often the online vehicles are counted (fleetgate_devices_online)",
    )
    shutdown_grace_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="how long a stop "
        "(SIGTERM/SIGINT) may take: open live streams end at once, "
        "API requests in flight get half of it, and when it runs out "
        "the process exits anyway (status 1), as does a second signal",
    )
    migration_ready_urls: str = Field(
        "",
        description="comma-separated readiness URLs (http://host:9108/readyz) of every gateway "
        "and API process: the go-live gate asks each (`fleetgate migrate gate`, "
        "GET /v1/migration/gate)",
    )
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
        if parts.username is not None or parts.password is not None:
            # Not used from here, and it would be shown and logged in clear.
            raise ValueError(
                "no credentials in the URL: set mqtt_username and mqtt_password "
                "(the password is kept secret)"
            )
        return v

    @field_validator("mqtt_dialects")
    @classmethod
    def _dialects(cls, v: str) -> str:
        # Loaded here so that a bad file stops the process at start, naming the file and key.
        load_dialects(dialect_specs(v))
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
            out["database_url"] = _mask_dsn(self.database_url.get_secret_value())
        return out


def dialect_specs(value: str) -> list[str]:
    """The entries of FLEETGATE_MQTT_DIALECTS."""
    return [part.strip() for part in value.split(",") if part.strip()]


SECRETS = frozenset({"database_url", "mqtt_password"})


def _shown(name: str, value: Any) -> Any:
    """A rejected value as an error message may show it: URLs without their passwords."""
    return _mask_dsn(value) if name == "mqtt_url" and isinstance(value, str) else value


def _mask_dsn(dsn: str) -> str:
    """A URL DSN with its password (user:password@ or ?password=) shown as ***; a key=value
    DSN entirely masked but for its host."""
    parts = urlsplit(dsn)
    if not parts.scheme:
        return "***"
    netloc = parts.netloc
    if parts.password:
        netloc = netloc.replace(f":{parts.password}@", ":***@")
    query = urlencode(
        [
            (k, "***" if k == "password" else v)
            for k, v in parse_qsl(parts.query, keep_blank_values=True)
        ],
        safe="*",
    )
    return parts._replace(netloc=netloc, query=query).geturl()


def sources(overrides: dict[str, Any] | None = None) -> dict[str, str]:
    """Where each setting given anywhere comes from: "command line", "environment
    FLEETGATE_X", "env file PATH", "config file PATH" (the first that has it wins); keys not
    listed have their default. Unknown keys are listed too, under the name they were given."""
    out: dict[str, str] = {}
    for key in overrides or {}:
        out.setdefault(key, "command line")
    for var in os.environ:
        if var.upper().startswith(PREFIX) and var.upper() not in (ENV_FILE_VAR, CONFIG_FILE_VAR):
            out.setdefault(var[len(PREFIX) :].lower(), f"environment {var}")
    if env_file := os.environ.get(ENV_FILE_VAR):
        for var in dotenv_values(env_file):
            if var.upper().startswith(PREFIX):
                out.setdefault(var[len(PREFIX) :].lower(), f"env file {env_file}")
    if config := os.environ.get(CONFIG_FILE_VAR):
        try:
            with open(config, "rb") as f:
                keys = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError):
            keys = {}
        for key in keys:
            out.setdefault(key, f"config file {config}")
    return out
