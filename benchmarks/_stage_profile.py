"""Where the gateway's CPU goes, stage by stage: the CPU time of this thread (time.thread_time)
spent in each synchronous step of the ingest path, summed over a run and divided by the samples.

The gateway runs in this process on one thread (the event loop), so a synchronous function's
thread time is its own CPU time and nothing else's. The steps are wrapped for the duration of a
`with StageProfile() as prof:` block and unwrapped after it; each wrapped call costs about
0.3 µs, made per socket read or per batch, not per sample. What is not in any step (the event
loop, the socket reads and writes of asyncio, psycopg sending the COPY and waiting for the
commit, the hand-over check, this benchmark's own recorder) is the process's CPU time less the
steps': reported as `rest`. The cyclic garbage collector's passes are timed apart (`gc`).
"""

from __future__ import annotations

import functools
import gc
import importlib
import time
from typing import Any

# (label, module, attribute path): synchronous functions of the ingest path, in path order. A
# step's time is its own: what nested steps (decode > decode.parse) and garbage collections
# within it took is theirs.
STEPS: list[tuple[str, str, str]] = [
    ("mqtt_receive", "gateway.mqtt._client", "MqttClient._on_data"),
    ("mqtt_parse", "gateway.mqtt._packets", "PacketStream.feed"),
    ("ingress_submit", "gateway.mqtt_ingress", "MqttIngress._on_messages"),
    ("decode", "gateway.pipeline", "IngestPipeline._decode_telemetry"),
    ("decode.native", "telemetry.decoder", "_parse_native_json"),
    ("decode.parse", "telemetry.decoder", "_parse_messages"),
    ("decode.validate", "telemetry.decoder", "_columns"),
    ("plausibility", "gateway.pipeline", "IngestPipeline._flag_implausible"),
    ("geofence", "gateway.stages", "GeofenceStage.process"),
    ("battery", "gateway.stages", "BatteryStage.process"),
    ("alarms", "gateway.stages", "AlarmStage.process"),
    ("trips", "gateway.stages", "TripStage.process"),
    ("copy_build", "telemetry.store._store", "_PreparedWrite.build"),
    ("copy_build.state", "telemetry.store._store", "_state_fields"),
    ("accounting", "gateway.pipeline", "IngestPipeline._account"),
    ("listeners", "gateway.pipeline", "IngestPipeline._tell_listeners"),
    ("acks", "gateway.pipeline", "IngestPipeline._acknowledge_all"),
]


class StageProfile:
    def __init__(self) -> None:
        self.ns: dict[str, int] = dict.fromkeys([label for label, _, _ in STEPS] + ["gc"], 0)
        self.calls: dict[str, int] = dict.fromkeys(self.ns, 0)
        self._undo: list[tuple[Any, str, Any]] = []
        # One frame per step running now: the time its nested steps took (to take out of its).
        self._nested: list[int] = []
        self._gc_started = 0
        self.longest_gc_ns = 0  # the longest single collection: a pause of the event loop

    def __enter__(self) -> StageProfile:
        for label, module, path in STEPS:
            owner: Any = importlib.import_module(module)
            *outer, name = path.split(".")
            for part in outer:
                owner = getattr(owner, part)
            original = owner.__dict__[name]
            if isinstance(original, classmethod):
                wrapped: Any = classmethod(self._wrap(label, original.__func__))
            else:
                wrapped = self._wrap(label, original)
            setattr(owner, name, wrapped)
            self._undo.append((owner, name, original))
        gc.callbacks.append(self._on_gc)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._on_gc)
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)
        self._undo.clear()

    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_started = time.thread_time_ns()
            return
        took = time.thread_time_ns() - self._gc_started
        self.ns["gc"] += took
        self.longest_gc_ns = max(self.longest_gc_ns, took)
        self.calls["gc"] += 1
        if self._nested:
            self._nested[-1] += took

    def _wrap(self, label: str, func):
        ns, calls, nested, clock = self.ns, self.calls, self._nested, time.thread_time_ns

        @functools.wraps(func)
        def timed(*args, **kwargs):
            nested.append(0)
            t0 = clock()
            try:
                return func(*args, **kwargs)
            finally:
                took = clock() - t0
                ns[label] += took - nested.pop()
                calls[label] += 1
                if nested:
                    nested[-1] += took

        return timed

    def report(self, samples: int, total_cpu_s: float) -> dict[str, float]:
        """µs of CPU per sample by step (each its own time), `gc`, `rest`, and the samples per
        socket read and per batch."""
        per = max(samples, 1)
        out = {label: round(v / 1e3 / per, 2) for label, v in self.ns.items()}
        out["rest"] = round(total_cpu_s * 1e6 / per - sum(self.ns.values()) / 1e3 / per, 2)
        out["total"] = round(total_cpu_s * 1e6 / per, 2)
        # How many samples the per-read and per-batch costs were spread over.
        out["samples_per_read"] = round(per / max(self.calls["mqtt_receive"], 1), 1)
        out["samples_per_batch"] = round(per / max(self.calls["decode"], 1), 1)
        out["longest_gc_ms"] = round(self.longest_gc_ns / 1e6, 2)
        return out
