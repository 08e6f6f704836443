"""Cut-over and roll-back of a migration batch, the IO around migration.cutover: the authority
move in the database (telemetry.store.CommandAuthority), the `set_config` re-point published
on a broker the devices are connected to, their answers, and the roll-back's backfill file.
docs/migration.md, "Cut-over and roll-back".

The re-point travels where the device is: at cut-over the devices are still on the legacy
broker (the bridge into fleetgate's broker is read-only, it carries no command), so `cutover`
publishes there (--legacy-broker) or writes the messages for the legacy platform to send
(--export); at roll-back they are on fleetgate's broker, which `rollback` publishes on.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import orjson

from migration.cutover import backfill_line, command_topic, set_config_command


@dataclass(frozen=True, slots=True)
class BrokerLogin:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False  # mqtts://: TLS, the server checked against the system's CAs

    @classmethod
    def from_url(cls, url: str, username: str | None = None, password: str | None = None):
        parts = urlsplit(url)
        tls = parts.scheme == "mqtts"
        port = parts.port or (8883 if tls else 1883)
        return cls(parts.hostname or "127.0.0.1", port, username, password, tls)

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class BrokerUnreachable(Exception):
    """The broker refused or could not be reached; the message says which and why."""


@dataclass
class Repoint:
    """What became of the set_config sent to each device: its answer (status, device t) and
    whether it said offline on that broker afterwards (it has left)."""

    command_ids: dict[str, str] = field(default_factory=dict)  # device_id -> command id
    answers: dict[str, tuple[str, int | None, str | None]] = field(default_factory=dict)
    left: set[str] = field(default_factory=set)

    def succeeded(self) -> dict[str, int]:
        """device_id -> the device time of the execution (ms), for the ones that did it."""
        return {d: t for d, (status, t, _) in self.answers.items() if status == "succeeded" and t}

    def refused(self) -> dict[str, str]:
        return {
            d: reason or "failed"
            for d, (status, _, reason) in self.answers.items()
            if status == "failed"
        }


class _Session:
    """A short paho session on one broker: subscribe to the devices' results and status, publish
    the set_config downlinks, collect what comes back. paho's own network thread."""

    def __init__(self, login: BrokerLogin, root: str, on_message: Callable) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self._paho = paho
        self._root = root
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._error: str | None = None
        client = self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"fleetgate-cutover-{uuid.uuid4().hex[:12]}",
            protocol=paho.MQTTv311,
            clean_session=True,
        )
        if login.username is not None:
            client.username_pw_set(login.username, login.password)
        if login.tls:
            client.tls_set()
        client.on_connect = self._on_connect
        client.on_subscribe = lambda *a: self._subscribed.set()
        client.on_message = lambda c, u, m: on_message(m.topic, m.payload)
        self._login = login

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._error = str(reason_code)
        else:
            client.subscribe([(f"{self._root}/+/cmd/result", 1), (f"{self._root}/+/status", 1)])
        self._connected.set()

    def open(self, timeout: float = 10.0) -> None:
        try:
            self._client.connect(self._login.host, self._login.port, keepalive=30)
        except OSError as exc:
            raise BrokerUnreachable(f"cannot reach the broker {self._login}: {exc}") from None
        self._client.loop_start()
        if not self._connected.wait(timeout) or self._error:
            self.close()
            why = self._error or f"no answer within {timeout:.0f} s"
            raise BrokerUnreachable(f"the broker {self._login} refused the connection: {why}")
        if not self._subscribed.wait(timeout):
            self.close()
            raise BrokerUnreachable(f"the broker {self._login} did not take the subscription")

    def publish(self, topic: str, payload: bytes) -> None:
        info = self._client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout=10.0)
        if not info.is_published():
            raise BrokerUnreachable(f"the broker {self._login} did not acknowledge {topic}")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.disconnect()
        with contextlib.suppress(Exception):
            self._client.loop_stop()


class _Collector:
    """The devices' answers to the set_config ids sent, and their offline status after it."""

    def __init__(self, root: str, devices: list[str], wait_left: bool) -> None:
        self.out = Repoint()
        self._root = root
        self._devices = devices
        self._wait_left = wait_left
        self._by_id: dict[str, str] = {}
        self._lock = threading.Lock()
        self.done = threading.Event()

    def sent(self, device: str, command_id: str) -> None:
        with self._lock:
            self._by_id[command_id] = device
            self.out.command_ids[device] = command_id

    def message(self, topic: str, payload: bytes) -> None:
        try:
            msg = orjson.loads(payload) if payload else None
        except orjson.JSONDecodeError:
            return
        if not isinstance(msg, dict):
            return
        with self._lock:
            if topic.endswith("/cmd/result"):
                self._result(msg)
            elif topic.endswith("/status") and msg.get("online") is False:
                # After its answer (one connection, delivered in order): it has left. A
                # retained offline status of earlier comes at the subscription, before.
                device = topic[len(self._root) + 1 : -len("/status")]
                if device in self.out.answers:
                    self.out.left.add(device)
            if self._finished():
                self.done.set()

    def _result(self, msg: dict) -> None:
        device = self._by_id.get(str(msg.get("id")))
        if device is None or msg.get("status") not in ("succeeded", "failed"):
            return
        t = msg.get("t")
        self.out.answers[device] = (
            msg["status"],
            int(t) if isinstance(t, int | float) else None,
            msg.get("reason"),
        )

    def _finished(self) -> bool:
        if len(self.out.answers) < len(self._devices):
            return False
        return not self._wait_left or set(self.out.succeeded()) <= self.out.left


def repoint(
    login: BrokerLogin,
    root: str,
    device_ids: Iterable[str],
    mqtt_url: str,
    *,
    wait_s: float,
    wait_left: bool = False,
    say: Callable[[str], None] = lambda line: None,
) -> Repoint:
    """Publish set_config {"mqtt_url"} to each device on the broker at login (QoS 1, on its
    command topic) and wait up to wait_s for every answer (with wait_left, also for each
    device's offline status on that broker after its answer: it has delivered everything and
    left). Raises BrokerUnreachable before anything is published if the broker cannot be
    used; with no devices it only checks that."""
    devices = list(device_ids)
    collect = _Collector(root, devices, wait_left)
    session = _Session(login, root, collect.message)
    session.open()
    try:
        for device in devices:
            cmd = set_config_command(mqtt_url)
            collect.sent(device, cmd["id"])
            session.publish(command_topic(root, device), orjson.dumps(cmd))
        if devices:
            say(f"set_config sent to {len(devices)} devices on {login}; waiting for answers")
            collect.done.wait(wait_s)
    finally:
        session.close()
    return collect.out


def export_repoint(path: Path, root: str, device_ids: Iterable[str], mqtt_url: str) -> int:
    """The set_config messages for the legacy platform to send, as JSON Lines {device_id,
    topic, payload} (payload the JSON text to publish, QoS 1); how many."""
    n = 0
    with path.open("wb") as f:
        for device in device_ids:
            cmd = set_config_command(mqtt_url)
            f.write(
                orjson.dumps(
                    {
                        "device_id": device,
                        "topic": command_topic(root, device),
                        "payload": orjson.dumps(cmd).decode(),
                    },
                    option=orjson.OPT_APPEND_NEWLINE,
                )
            )
            n += 1
    return n


def device_times(repointed: Repoint, vehicle_of: dict[str, int]) -> dict[int, datetime]:
    """vehicle id -> the device's boundary (its set_config execution time) for the devices
    that carried it out."""
    return {
        vehicle_of[d]: datetime.fromtimestamp(t / 1000.0, UTC)
        for d, t in repointed.succeeded().items()
        if d in vehicle_of
    }


async def write_backfill(authority, batch: str, vehicle_ids: list[int], path: Path) -> dict:
    """The backfill file: every sample and event fleetgate stored for the vehicles while the
    batch held them, JSON Lines (docs/migration.md); counts by kind."""
    counts = {"samples": 0, "events": 0}
    tmp = path.with_name(path.name + ".part")
    with tmp.open("wb") as f:
        async for row in authority.stored_since_cutover(batch, vehicle_ids):
            f.write(backfill_line(row))
            counts["samples" if row["kind"] == "sample" else "events"] += 1
    tmp.replace(path)
    return counts
