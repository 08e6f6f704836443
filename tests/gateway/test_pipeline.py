"""How the pipeline cuts its queue into batches (no broker, no database: the cut is synchronous)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from gateway.metrics import GatewayMetrics
from gateway.pipeline import Inbound, IngestPipeline, PipelineLimits


def pipeline(limits: PipelineLimits) -> IngestPipeline:
    return IngestPipeline(
        None, None, None, {}, limits=limits, metrics=GatewayMetrics(CollectorRegistry())
    )


def messages(first: int, count: int, size: int = 10) -> list[Inbound]:
    return [
        Inbound("telemetry", f"d{i}", b"x" * size, 0, (1, i % 65535 + 1, 1))
        for i in range(first, first + count)
    ]


def test_a_backlog_is_taken_in_larger_batches_in_arrival_order():
    p = pipeline(PipelineLimits(max_messages=5, backlog_messages=20, max_pending=1000))
    p.submit_many(messages(0, 26))
    sizes, taken = [], []
    while p.unacknowledged:
        batch = p._take()
        sizes.append(len(batch))
        taken += batch
        p._in_write = 0  # committed
    # 26 queued: a backlog, 20 at once; then 6 and 5 are short queues, max_messages apart.
    assert sizes == [20, 5, 1]
    assert [m.device_id for m in taken] == [f"d{i}" for i in range(26)]


def test_a_batch_never_takes_more_than_max_bytes():
    p = pipeline(PipelineLimits(max_messages=5, max_bytes=250, backlog_messages=20))
    p.submit_many(messages(0, 30, size=100))
    assert len(p._take()) == 3  # 300 bytes reach the limit (the message that crosses it goes)
    assert p.unacknowledged == 30 and len(p._pending) == 27
    assert p._pending[0].device_id == "d3"


def test_what_is_queued_after_a_cut_stays_queued_and_counted():
    p = pipeline(PipelineLimits(max_messages=4, backlog_messages=100))
    p.submit_many(messages(0, 10))
    assert [m.device_id for m in p._take()] == ["d0", "d1", "d2", "d3"]
    p._in_write = 0
    p.submit_many(messages(10, 2))
    assert [m.device_id for m in p._pending] == [f"d{i}" for i in range(4, 12)]
    assert p._pending_bytes == 8 * 10
