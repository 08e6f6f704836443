"""MQTT parser benchmark: what `PacketStream.feed` costs per message on the gateway's hot path,
and how a huge PUBLISH is handled (rejected at its length header, or parsed in linear time).

No broker: the bytes are what Mosquitto sends a subscriber, cut into reads of asyncio's size
(256 KiB), fed the way the client feeds them. Times are CPU time of this thread (the machine is
shared; wall time beside it). Prints one JSON object.
Run: .venv/bin/python -m benchmarks.mqtt_parser [--messages 200000] [--huge-mib 128]
"""

from __future__ import annotations

import argparse
import statistics
import time

from benchmarks._runner import bench_parser, loadavg, machine, run_benchmark
from gateway.mqtt._packets import PacketStream, _varint, encode_publish

READ_SIZE = 256 * 1024  # what asyncio's selector transport reads at most per data_received
NO_LIMIT = 268_435_460  # the largest packet MQTT can express
CONNACK = b"\x20\x03\x00\x00\x00"  # MQTT 5, no properties: what a stream starts with


def small_publishes(n: int, devices: int = 300) -> bytes:
    """n QoS 1 PUBLISH packets of the size the simulator's telemetry has (~150-byte JSON)."""
    payload = (
        b'{"t": 1764412800123, "lat": 52.52003, "lon": 13.40495, "speed_kmh": 17.4, '
        b'"heading_deg": 84.0, "soc_pct": 71.5, "pack_v": 38.9, "locked": false}'
    )
    topics = [f"fg/v1/tcu-{d:05d}/telemetry".encode() for d in range(devices)]
    return b"".join(
        encode_publish(
            topics[i % devices],
            payload,
            qos=1,
            mid=i % 65535 + 1,
            retain=False,
            dup=False,
            protocol=5,
        )
        for i in range(n)
    )


def reads(wire: bytes, size: int = READ_SIZE) -> list[bytes]:
    return [wire[i : i + size] for i in range(0, len(wire), size)]


def parse_all(chunks: list[bytes], max_packet: int = NO_LIMIT) -> tuple[float, int]:
    """CPU seconds to parse every read, and the messages parsed."""
    stream = PacketStream(5, max_packet)
    stream.feed(CONNACK)
    count = 0
    t0 = time.thread_time()
    for chunk in chunks:
        count += len(stream.feed(chunk)[0])
    return time.thread_time() - t0, count


def huge_publish_header(size: int) -> tuple[bytes, int]:
    """The first bytes of a PUBLISH of `size` bytes in all, and how many payload bytes follow."""
    body = encode_publish(
        b"fg/v1/tcu-00001/telemetry", b"", qos=1, mid=1, retain=False, dup=False, protocol=5
    )[2:]  # its variable header
    for n in (1, 2, 3, 4):  # the remaining length's own length decides what is left for it
        remaining = size - 1 - n
        if len(_varint(remaining)) == n:
            return bytes((0x32,)) + _varint(remaining) + body, remaining - len(body)
    raise ValueError(f"MQTT cannot express a packet of {size} bytes")


def huge(size: int, max_packet: int) -> dict:
    """Feed a PUBLISH of `size` bytes in asyncio-sized reads: time until rejected or parsed."""
    head, payload = huge_publish_header(size)
    filler = b"x" * READ_SIZE
    stream = PacketStream(5, max_packet)
    stream.feed(CONNACK)
    fed = 0
    t0, cpu0 = time.perf_counter(), time.thread_time()
    try:
        fed = len(head)
        got = stream.feed(head)[0]
        remaining = payload
        while remaining:
            chunk = filler if remaining >= READ_SIZE else filler[:remaining]
            fed += len(chunk)
            got = stream.feed(chunk)[0]
            remaining -= len(chunk)
        outcome = f"parsed ({len(got[0].payload):,} payload bytes)"
    except ValueError as exc:  # MalformedPacket, PacketTooLarge
        outcome = f"rejected: {exc}"
    return {
        "packet_bytes": size,
        "limit": max_packet,
        "bytes_fed": fed,
        "seconds": round(time.perf_counter() - t0, 6),
        "cpu_seconds": round(time.thread_time() - cpu0, 6),
        "outcome": outcome,
    }


def bench(args: argparse.Namespace) -> dict:
    wire = small_publishes(args.messages)
    chunks = reads(wire)
    times = []
    for _ in range(args.repeats):
        seconds, count = parse_all(chunks)
        assert count == args.messages
        times.append(seconds)
    size = args.huge_mib * 1024 * 1024
    try:
        default_limit = PacketStream(5).max_packet_size
    except AttributeError:  # before the limit had its own name
        default_limit = PacketStream(5).max_packet
    return {
        "small_publishes": {
            "messages": args.messages,
            "bytes": len(wire),
            "reads": len(chunks),
            "cpu_us_per_message_best": round(min(times) / args.messages * 1e6, 3),
            "cpu_us_per_message_median": round(statistics.median(times) / args.messages * 1e6, 3),
        },
        "huge_publish_default_limit": huge(size, default_limit),
        "huge_publish_no_limit": None if args.skip_unlimited else huge(size, NO_LIMIT),
        "machine": machine(loadavg_1_5_15=loadavg()),
    }


def build_parser() -> argparse.ArgumentParser:
    p = bench_parser(__spec__.name, __doc__)
    p.add_argument("--messages", type=int, default=200_000, help="small PUBLISH packets")
    p.add_argument("--repeats", type=int, default=7, help="passes over them (best is reported)")
    p.add_argument("--huge-mib", type=int, default=128, help="size of the huge PUBLISH, MiB")
    p.add_argument(
        "--skip-unlimited",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="skip parsing the huge packet with the limit raised",
    )
    return p


def main(argv: list[str] | None = None) -> None:
    run_benchmark(bench, build_parser(), argv)


if __name__ == "__main__":
    main()
