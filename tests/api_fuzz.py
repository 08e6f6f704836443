"""schemathesis against a live `fleetgate run` (gateway, dispatcher and API in one child process,
real broker and database): what the CI test (tests/api/test_schemathesis.py) and the longer run
(scripts/fuzz-api) share. Every generated request must get a 2xx or 4xx, as the spec says.

Usage: scripts/fuzz-api [--duration 300] [--workers 2] [--seed N] [--keep-report DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import orjson

from fleetgate.embedded import Mosquitto, free_port
from telemetry.store import TelemetryStore, migrate
from tests.api_client import fleet
from tests.fixtures_db import DEFAULT_DSN, Server
from tests.harness import GatewayProcess, eventually

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
)
# An endless response (Server-Sent Events) cannot be fuzzed by request and answer; its
# parameters and its end are tested in tests/api/test_routes.py and
# tests/fleetgate/test_shutdown.py.
EXCLUDED_PATHS = ("/v1/stream",)


def schemathesis_binary() -> str | None:
    return shutil.which("schemathesis", path=str(Path(sys.executable).parent))


async def prepare(dsn: str, vehicles: int = 5) -> str:
    """A few vehicles with a sample each (so that the routes find something), and a key with
    every scope; returns the key."""
    store = await TelemetryStore.open(dsn)
    try:
        await fleet(store, vehicles)
        return (await store.create_api_key(f"fuzz-{uuid.uuid4().hex[:6]}", ["admin"]))[1]
    finally:
        await store.close()


def start_server(dsn: str, broker, log_path: Path, **env) -> tuple[GatewayProcess, str]:
    """`fleetgate run` with its API on a free port; returns the process and the API's URL."""
    api_port = free_port()
    gw = GatewayProcess(
        dsn,
        broker,
        f"fuzz{uuid.uuid4().hex[:6]}/v1",
        f"fuzz-{uuid.uuid4().hex[:6]}",
        log_path,
        FLEETGATE_API_PORT=api_port,
        **env,
    )
    return gw.start(), f"http://127.0.0.1:{api_port}"


async def wait_ready(gw: GatewayProcess, url: str, timeout: float = 60.0) -> None:
    """Subscribed, and the API ready with the dispatcher attached (commands answer 503 before)."""
    await gw.wait_subscribed(timeout)

    async def ready() -> bool:
        if gw.proc.poll() is not None:
            raise AssertionError(f"fleetgate run exited with {gw.proc.returncode}")
        async with httpx.AsyncClient(timeout=5.0) as client:
            with contextlib.suppress(httpx.TransportError):
                return (await client.get(f"{url}/readyz")).status_code == 200
        return False

    await eventually(ready, timeout, what="the API ready")


async def run_schemathesis(
    url: str,
    key: str,
    workdir: Path,
    *,
    seed: int,
    workers: int = 1,
    max_examples: int | None = None,
    max_time: float | None = None,
    timeout: float = 600.0,
) -> tuple[str, int]:
    """schemathesis's CLI against the served spec; returns its output and exit status."""
    binary = schemathesis_binary()
    if binary is None:
        raise RuntimeError("schemathesis is not installed (pip install -e '.[test]')")
    args = [
        binary,
        "run",
        f"{url}/openapi.json",
        "--checks",
        ",".join(CHECKS),
        "--seed",
        str(seed),
        "--workers",
        str(workers),
        "--request-timeout",
        "30",
        "-H",
        f"Authorization: Bearer {key}",
        "--suppress-health-check",
        "all",
        "--warnings",
        "off",
        "--report",
        "ndjson",
        "--report-dir",
        str(workdir / "report"),
    ]
    for path in EXCLUDED_PATHS:
        args += ["--exclude-path", path]
    if max_examples is not None:
        args += ["--max-examples", str(max_examples)]
    if max_time is not None:
        args += ["--max-time", str(int(max_time))]
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=workdir,
        env={**os.environ, "NO_COLOR": "1"},
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return out.decode(errors="replace"), proc.returncode


def server_errors(gw: GatewayProcess) -> list[dict]:
    """The `api_error` lines (an unexpected exception answered 500) of the server's log."""
    return [e for e in gw.events() if e.get("event") == "api_error"]


async def _long_run(args: argparse.Namespace) -> int:
    server = Server(os.environ.get("FLEETGATE_TEST_PG_DSN", DEFAULT_DSN))
    workdir = Path(args.keep_report or tempfile.mkdtemp(prefix="fuzz-api-"))
    workdir.mkdir(parents=True, exist_ok=True)
    broker = Mosquitto(datadir=workdir / "mosquitto").start()
    gw = None
    try:
        with server.database("fuzzapi") as dsn:
            await migrate(dsn, storage="native")
            key = await prepare(dsn)
            gw, url = start_server(dsn, broker, workdir / "fleetgate.log")
            await wait_ready(gw, url)
            started = time.monotonic()
            out, status = await run_schemathesis(
                url,
                key,
                workdir,
                seed=args.seed,
                workers=args.workers,
                max_time=args.duration,
                timeout=args.duration + 600,
            )
            print(out)
            errors = server_errors(gw)
            for e in errors[:20]:
                cause = (e.get("exc") or "").strip().splitlines()[-1:] or ["?"]
                print(f"server log: api_error {e.get('path')!r}: {cause[0][:300]}", file=sys.stderr)
            print(
                orjson.dumps(
                    {
                        "duration_s": round(time.monotonic() - started, 1),
                        "seed": args.seed,
                        "workers": args.workers,
                        "schemathesis_exit_status": status,
                        "server_errors_logged": len(errors),
                        "process_alive": gw.proc.poll() is None,
                        "report": str(workdir),
                    }
                ).decode()
            )
            return 0 if status == 0 and not errors else 1
    finally:
        if gw is not None:
            gw.stop()
        broker.stop()
        if not args.keep_report:
            shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="scripts/fuzz-api",
        description="schemathesis against a live `fleetgate run` "
        "(its own Mosquitto and database); exit status 1 when a request got a 5xx or an answer "
        "the spec does not allow, or the server logged an unexpected error",
    )
    parser.add_argument(
        "--duration", type=float, default=300.0, help="seconds of fuzzing (schemathesis --max-time)"
    )
    parser.add_argument("--workers", type=int, default=1, help="concurrent schemathesis workers")
    parser.add_argument(
        "--seed",
        type=int,
        default=int(time.time()) % 100_000,
        help="the same seed generates the same requests (default: from the clock)",
    )
    parser.add_argument(
        "--keep-report", metavar="DIR", help="keep schemathesis's report and the server log in DIR"
    )
    sys.exit(asyncio.run(_long_run(parser.parse_args())))


if __name__ == "__main__":
    main()
