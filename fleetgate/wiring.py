"""The settings wired into each room, and the hand-overs between the rooms of one process.

The rooms never see the Settings object: here the roof turns it into each one's configuration
(GatewayConfig, ApiContext, the broker hooks' access rules) and connects a gateway to the API
served beside it. The CLI's run, api, drain and demo commands build their processes from these.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys

import uvicorn
from starlette.applications import Starlette

from api import ApiContext, KeyCache, LiveHub
from api.feed_service import FeedService, RateLimiter
from api.ops_http import ops_app
from commands import DeliveryPolicy, InterlockPolicy
from fleetgate.settings import Settings, dialect_specs
from gateway.broker_auth import BrokerAccess, gateway_accounts
from gateway.coap import TokenVerifier
from gateway.commands import CommandReads, CommandStore
from gateway.pipeline import PipelineLimits
from gateway.service import Gateway, GatewayConfig
from gateway.webhooks import WebhookConfig
from outbound import RetryPolicy
from telemetry.decoder import TimeLimits
from telemetry.dialect import load_dialects
from telemetry.store import DeviceCredentials, TelemetryStore


def mqtt_password(s: Settings) -> str | None:
    """The gateway's broker password (FLEETGATE_MQTT_PASSWORD), where one is set."""
    return s.mqtt_password.get_secret_value() if s.mqtt_password else None


def gateway_config(s: Settings, database_url: str, mqtt_host: str, mqtt_port: int) -> GatewayConfig:
    """The gateway's configuration: the settings, on the database and broker given (configured
    ones, or embedded ones the roof started)."""
    return GatewayConfig(
        database_url=database_url,
        mqtt_host=mqtt_host,
        mqtt_port=mqtt_port,
        mqtt_client_id=s.mqtt_client_id,
        mqtt_topic_root=s.mqtt_topic_root,
        mqtt_shared_group=s.mqtt_shared_group,
        mqtt_dialects=load_dialects(dialect_specs(s.mqtt_dialects)),
        mqtt_protocol=s.mqtt_protocol,
        mqtt_keepalive_s=s.mqtt_keepalive_s,
        mqtt_session_expiry_s=s.mqtt_session_expiry_s,
        mqtt_receive_maximum=s.mqtt_receive_maximum,
        mqtt_read_gather_s=s.mqtt_read_gather_ms / 1000.0,
        mqtt_username=s.mqtt_username,
        mqtt_password=mqtt_password(s),
        limits=PipelineLimits(
            s.batch_max_messages, s.batch_max_bytes, s.batch_max_age_ms, s.pipeline_max_pending
        ),
        time_limits=TimeLimits(int(s.max_future_s * 1000), s.retention_days * 86_400_000),
        max_speed_kmh=plausibility_overrides(s),
        presence_timeout_s=s.presence_timeout_s,
        comms_lost_s=s.comms_lost_s,
        db_pool_max=s.db_pool_max,
        zones_refresh_s=s.zones_refresh_s,
        geofence_margin_m=s.geofence_margin_m,
        geofence_fixes=s.geofence_fixes,
        coap_enabled=s.coap_enabled,
        coap_host=s.coap_host,
        coap_port=s.coap_port,
        coap_response_timeout_s=s.coap_response_timeout_s,
        coap_retry_after_s=s.coap_retry_after_s,
        commands_enabled=s.commands_enabled,
        fleet_gauges_s=s.fleet_gauges_s,
        speed_caps_enabled=s.speed_caps_enabled,
        command_overrides=command_overrides(s),
        webhooks_enabled=s.webhooks_enabled,
        webhooks=webhook_config(s),
        webhooks_command=(
            [sys.executable, "-m", "fleetgate.cli", "webhooks", "worker", "--supervised"]
            if s.webhook_process
            else None
        ),
    )


def webhook_config(s: Settings) -> WebhookConfig:
    """The delivery worker's settings (the gateway's, and `fleetgate webhooks worker`'s)."""
    return WebhookConfig(
        concurrency=s.webhook_concurrency,
        per_subscription=max(1, s.webhook_concurrency // 2),
        timeout_s=s.webhook_timeout_s,
        retention_s=s.webhook_retention_s,
        retry=RetryPolicy(
            first_delay_s=s.webhook_retry_first_s,
            max_delay_s=max(3600.0, s.webhook_retry_first_s),
            give_up_after_s=s.webhook_give_up_s,
        ),
    )


def command_overrides(s: Settings) -> dict:
    """The command dispatcher's settings, as CommandConfig fields."""
    return {
        "default_ttl_s": s.command_ttl_s,
        "interlocks": InterlockPolicy(
            fresh_s=s.command_fresh_state_s, moving_kmh=s.command_moving_kmh
        ),
        "delivery": DeliveryPolicy(
            result_timeout_s=s.command_result_timeout_s, max_attempts=s.command_max_attempts
        ),
    }


# --- the HTTP API ---------------------------------------------------------------------------


def api_context(
    s: Settings, store: TelemetryStore, live: LiveHub, stop: asyncio.Event
) -> ApiContext:
    """What the API's routes need, on an open store; the commands routes and readiness follow
    from where it runs (beside_gateway, or alone)."""
    return ApiContext(
        store=store,
        live=live,
        key_cache=KeyCache(s.api_key_cache_s),
        stopping=stop,
        map_tiles_url=s.map_tiles_url,
        map_attribution=s.map_attribution,
        map_style_url=s.map_style_url,
        broker_access=broker_access(s, store),
        command_reads=command_reads(store),
        feeds=feed_service(s),
        own_ports=frozenset(p for p in (s.api_port, s.metrics_port) if p),
        migration_gate=migration_gate(s),
    )


def migration_gate(s: Settings):
    """GET /v1/migration/gate: the verdict as `fleetgate migrate gate --json` prints it, the
    processes' readiness from FLEETGATE_MIGRATION_READY_URLS."""
    from fleetgate.go_live import gate_verdict, ready_urls_setting

    urls = ready_urls_setting(s.migration_ready_urls)

    async def verdict(store: TelemetryStore, batch: str) -> dict | None:
        found = await gate_verdict(store, batch, urls)
        return None if found is None else found.to_json()

    return verdict


def feed_service(s: Settings) -> FeedService:
    """The public feeds' system from the settings ([feeds]); none configured: 404 there."""
    f = s.feeds
    if f is None:
        return FeedService(None)
    # Unset id_secret: a random key per process (ids then also change when the API restarts).
    system = f.system(secrets.token_bytes(32))
    return FeedService(system, limiter=RateLimiter(f.rate_limit_per_s, f.rate_limit_burst))


def broker_access(s: Settings, store: TelemetryStore) -> BrokerAccess:
    """EMQX's HTTP hooks decide as the generated Mosquitto files do; they let the gateway's own
    account in (FLEETGATE_MQTT_USERNAME / _PASSWORD)."""
    gateways = gateway_accounts(s.mqtt_username, mqtt_password(s))
    verify = TokenVerifier(DeviceCredentials(store).verify).verify
    return BrokerAccess(s.mqtt_topic_root, verify, gateways)


def command_reads(store: TelemetryStore) -> CommandReads:
    """Reading commands needs only the database, so the API alone answers it too."""
    return CommandReads(CommandStore(store.pool))


def api_alone(ctx: ApiContext) -> None:
    """An API without a gateway in its process: ready while the database takes writes; the
    commands routes that send answer 503."""
    ctx.readiness = {"database": ctx.store.check_writable}


def api_beside_gateway(ctx: ApiContext, gateway: Gateway) -> asyncio.Task:
    """An API in the gateway's process: its live feed follows every commit, its readiness is the
    gateway's, and its commands routes use the dispatcher while this process runs it. The task
    returned hands the dispatcher over once the gateway is ready; cancel it when the API stops."""
    gateway.change_listeners.append(ctx.live.notify)
    ctx.readiness = gateway.readiness
    return hand_over_commands(ctx, gateway)


def hand_over_commands(ctx: ApiContext, gateway: Gateway) -> asyncio.Task:
    """ctx.commands follows the gateway's command dispatcher (until then the commands routes
    answer 503)."""

    async def attach_commands() -> None:
        await gateway.ready.wait()
        ctx.commands = gateway.commands

    attach = asyncio.create_task(attach_commands())
    # The dispatcher runs in one gateway process at a time; it may move here or away.
    gateway.commands_listeners.append(lambda service: setattr(ctx, "commands", service))
    return attach


# --- the operator's port and the servers ----------------------------------------------------


def operator_app(gateway: Gateway) -> Starlette:
    """The operator's port of a gateway: its metrics and its readiness checks."""
    return ops_app(gateway.readiness, gateway.metrics.registry)


def http_server(app, host: str, port: int, grace_s: float) -> uvicorn.Server:
    """uvicorn for one of our apps. Requests in flight when it stops get half the grace period
    (live streams and command waits end at once, see serve_api), then they are cancelled.

    It leaves the signals alone: while serving, uvicorn's own handlers would stand beside the
    process's (StopSignals), and it raises a caught signal again when it has stopped, which would
    count as a second signal.
    """
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            lifespan="off",
            access_log=False,
            timeout_graceful_shutdown=grace_s / 2,
        )
    )
    server.capture_signals = contextlib.nullcontext
    return server


def plausibility_overrides(s: Settings) -> dict[str, float]:
    """The plausibility limits the operator set for the ebike and car types; unset, each vehicle
    type's own limit applies (from its form factor, VehicleType.plausible_speed_kmh)."""
    settings = {"ebike": "ebike_max_speed_kmh", "car": "car_max_speed_kmh"}
    return {
        vehicle_type: getattr(s, name)
        for vehicle_type, name in settings.items()
        if name in s.model_fields_set
    }
