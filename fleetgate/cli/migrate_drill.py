"""`fleetgate migrate failover-drill`: the command dispatcher's fail-over, tried on this deployment.

Among the gateway processes of one database only the holder of the dispatcher lease runs the
commands (gateway/dispatcher_lease.py); the others stand by and take over when it goes. The drill:

1. reads every named process's /metrics (`fleetgate_commands_dispatcher_active`): exactly one
   must dispatch, and another must be ready to take over;
2. sends a `locate` to the operator's vehicle through the API: it must succeed (else the drill
   proves nothing and stops, exit 2);
3. stops the holder — by the operator's --stop-command, or by hand while the drill waits;
4. at once sends another `locate` through the API (retrying the processes that answer 503, the
   dispatcher not being theirs yet) and waits for it to succeed;
5. watches which process dispatches next.

The command is sent once the stopped process no longer dispatches (its /metrics says so or it no
longer answers), so only another process can run it; the time is counted from the stop.

It passes when another process took over and the command succeeded within --within seconds
(30) of the stop; either way the timings are recorded as evidence `failover_drill`.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from typing import Annotated
from urllib.parse import urlsplit

import typer

from fleetgate.cli.shared import database_url, fail, load_settings, with_store

DISPATCHER_METRIC = "fleetgate_commands_dispatcher_active"
API_KEY_VARIABLE = "FLEETGATE_DRILL_API_KEY"


class DrillError(Exception):
    """The drill could not be run (not a failed drill): nothing is recorded."""


async def dispatching(client, url: str) -> bool | None:
    """Whether the process at url (its operator's port) runs the dispatcher; None: no answer."""
    import httpx

    try:
        r = await client.get(url.rstrip("/") + "/metrics")
    except httpx.HTTPError:
        return None
    if r.status_code != 200:
        return None
    for line in r.text.splitlines():
        if line.startswith(DISPATCHER_METRIC + " ") or line.startswith(DISPATCHER_METRIC + "{"):
            return float(line.rsplit(" ", 1)[1]) == 1.0
    return False


async def ready(client, url: str) -> bool:
    import httpx

    try:
        return (await client.get(url.rstrip("/") + "/readyz")).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class Locate:
    """One `locate` through the API, tried on each API URL until one accepts it."""

    apis: list[str]
    key: str
    vehicle: str
    idempotency: str = field(default_factory=lambda: f"failover-drill-{uuid.uuid4().hex}")
    accepted_by: str | None = None
    command_id: str | None = None
    state: str | None = None

    async def run(self, client, deadline: float) -> None:
        """Until the command is terminal or the deadline (monotonic) passes."""
        import httpx

        headers = {"Authorization": f"Bearer {self.key}", "Idempotency-Key": self.idempotency}
        while time.monotonic() < deadline:
            for api in self.apis:
                wait = max(0.0, min(30.0, deadline - time.monotonic()))
                try:
                    if self.command_id is None:
                        r = await client.post(
                            f"{api.rstrip('/')}/v1/vehicles/{self.vehicle}/commands",
                            params={"wait": f"{wait:.1f}"},
                            json={"type": "locate"},
                            headers=headers,
                            timeout=wait + 10,
                        )
                    else:
                        r = await client.get(
                            f"{api.rstrip('/')}/v1/commands/{self.command_id}", headers=headers
                        )
                except httpx.HTTPError:
                    continue  # that process is away: the next one
                if r.status_code == 503:
                    continue  # not the dispatcher's process (yet)
                if r.status_code in (401, 403, 404, 422):
                    raise DrillError(f"{api}: {r.status_code}: {_problem(r)}")
                if r.status_code not in (200, 202):
                    continue
                body = r.json()
                self.command_id = body["id"]
                self.accepted_by = self.accepted_by or api
                self.state = body["state"]
                if self.state in ("succeeded", "failed", "timed_out", "expired", "cancelled"):
                    return
                break  # accepted, not finished: ask again
            await asyncio.sleep(0.2)


def _problem(r) -> str:
    try:
        return str(r.json().get("detail") or r.json().get("title") or r.text)[:200]
    except ValueError:
        return r.text[:200]


@dataclass
class DrillResult:
    passed: bool
    detail: dict


async def _roles(client, processes: list[str]) -> tuple[str, list[str], list[str]]:
    """(the dispatching process, the others, the others that are ready); DrillError unless
    exactly one dispatches and another is ready."""
    states = await asyncio.gather(*(dispatching(client, p) for p in processes))
    holders = [p for p, s in zip(processes, states) if s]
    silent = [p for p, s in zip(processes, states) if s is None]
    if silent:
        raise DrillError(f"no metrics from {', '.join(silent)} (its /metrics must answer)")
    if len(holders) != 1:
        raise DrillError(
            f"{len(holders)} of the named processes run the command dispatcher; exactly one "
            "must (name every gateway process with --process)"
        )
    holder = holders[0]
    others = [p for p in processes if p != holder]
    standby = [p for p in others if await ready(client, p)]
    if not standby:
        raise DrillError(
            f"no other ready process to take over from {holder} (start a second gateway "
            "process on the same database)"
        )
    return holder, others, standby


async def drill(
    processes: list[str],
    apis: list[str],
    key: str,
    vehicle: str,
    stop_command: str | None,
    within_s: float,
    stop_timeout_s: float,
    say,
) -> DrillResult:
    import httpx

    async with httpx.AsyncClient(timeout=5.0) as client:
        holder, others, standby = await _roles(client, processes)
        say(f"{holder} runs the command dispatcher; standing by: {', '.join(standby)}")

        before = Locate(apis, key, vehicle)
        started = time.monotonic()
        await before.run(client, started + within_s)
        if before.state != "succeeded":
            raise DrillError(
                f"a locate to {vehicle} before the stop ended {before.state or 'unanswered'} "
                f"within {within_s:g} s: pick a vehicle that is online and answers"
            )
        say(f"locate before the stop: succeeded in {time.monotonic() - started:.1f} s")

        stop_at = await _stop(client, holder, stop_command, stop_timeout_s, say)
        after = Locate(apis, key, vehicle)
        takeover: dict = {}
        command_s = float("inf")
        watching = asyncio.create_task(_watch_takeover(client, others, stop_at, takeover))
        try:
            await after.run(client, stop_at + within_s)
            command_s = time.monotonic() - stop_at
            if after.state == "succeeded" and not takeover:
                await asyncio.wait_for(asyncio.shield(watching), 5.0)
        except TimeoutError:
            pass
        finally:
            watching.cancel()
        succeeded = after.state == "succeeded"
        detail = {
            "vehicle": vehicle,
            "stopped": holder,
            "stop": "command" if stop_command else "by hand",
            "took_over": takeover.get("process"),
            "takeover_s": takeover.get("after_s"),
            "command_id": after.command_id,
            "command_state": after.state,
            "command_accepted_by": after.accepted_by,
            "command_s": round(command_s, 2) if succeeded else None,
            "within_s": within_s,
            "processes": processes,
        }
        reasons = []
        if not succeeded:
            reasons.append(
                f"the locate after the stop ended {after.state or 'unanswered'} within "
                f"{within_s:g} s"
                + (
                    ""
                    if after.accepted_by
                    else " (no --api accepted it: is another process's API among them?)"
                )
            )
        elif command_s > within_s:
            reasons.append(f"the locate after the stop took {command_s:.1f} s")
        if not takeover:
            reasons.append("no other named process was seen dispatching after the stop")
        if reasons:
            detail["reason"] = "; ".join(reasons)
        return DrillResult(not reasons, detail)


async def _stop(client, holder: str, stop_command: str | None, timeout_s: float, say) -> float:
    """Stop the holder; the monotonic time of the stop."""
    if stop_command:
        parts = urlsplit(holder)
        # Only these three are replaced: the rest of the command (awk '{print $1}') stays.
        command = (
            stop_command.replace("{url}", holder)
            .replace("{host}", parts.hostname or "")
            .replace("{port}", str(parts.port or ""))
        )
        say(f"stopping {holder}: {command}")
        stop_at = time.monotonic()
        done = await asyncio.to_thread(
            subprocess.run, command, shell=True, capture_output=True, text=True, timeout=timeout_s
        )
        if done.returncode != 0:
            raise DrillError(
                f"the stop command exited {done.returncode}: {(done.stderr or done.stdout)[:300]}"
            )
        # A stop may return before the process has let go (a graceful stop drains first): the
        # command is sent once it no longer dispatches, so only another process can run it.
        await _until_stopped(client, holder, stop_at + timeout_s)
        return stop_at
    say(f"stop the process at {holder} now (the drill waits up to {timeout_s:g} s)")
    await _until_stopped(client, holder, time.monotonic() + timeout_s)
    return time.monotonic()


async def _until_stopped(client, holder: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        if not await dispatching(client, holder):
            return
        await asyncio.sleep(0.1)
    raise DrillError(f"{holder} still dispatches: it was not stopped")


async def _watch_takeover(client, others: list[str], stop_at: float, found: dict) -> None:
    while True:
        for p in others:
            if await dispatching(client, p):
                found.update(process=p, after_s=round(time.monotonic() - stop_at, 2))
                return
        await asyncio.sleep(0.2)


def failover_drill(
    vehicle: Annotated[
        str, typer.Option(help="the vehicle_ref to send `locate` (online, answering)")
    ],
    process: Annotated[
        list[str],
        typer.Option(
            metavar="URL",
            help="a gateway process's operator's port (http://host:9108); repeat for each",
        ),
    ],
    api: Annotated[
        list[str],
        typer.Option(
            metavar="URL",
            help="an API to send the commands through (each process's, or a load balancer)",
        ),
    ],
    stop_command: Annotated[
        str | None,
        typer.Option(
            metavar="CMD",
            help="shell command that stops the dispatching process; {url}, {host}, {port} are "
            "its operator's port (without it: stop it by hand when told)",
        ),
    ] = None,
    within: Annotated[
        float, typer.Option(min=1.0, help="seconds from the stop the command must succeed in")
    ] = 30.0,
    stop_timeout: Annotated[
        float, typer.Option(min=1.0, help="seconds to wait for the stop")
    ] = 300.0,
) -> None:
    """Stop the process running the command dispatcher; another must take over and a `locate`
    succeed within 30 s. Records the timings as evidence. The API key (scopes commands:write
    and fleet:read) comes from FLEETGATE_DRILL_API_KEY."""
    key = os.environ.get(API_KEY_VARIABLE, "").strip()
    if not key:
        fail(f"{API_KEY_VARIABLE} must hold an API key with the scopes commands:write, fleet:read")
    if len(set(process)) < 2:
        fail("name at least two gateway processes (--process), one to stop, one to take over")
    s = load_settings()
    dsn = database_url(s)
    try:
        result = asyncio.run(
            drill(
                list(dict.fromkeys(process)),
                list(api),
                key,
                vehicle,
                stop_command,
                within,
                stop_timeout,
                typer.echo,
            )
        )
    except DrillError as exc:
        fail(f"the drill could not run: {exc}; nothing recorded")
    d = result.detail
    evidence = asyncio.run(
        with_store(
            dsn,
            lambda store: store.record_migration_evidence(
                "failover_drill", batch=None, passed=result.passed, detail=d
            ),
        )
    )
    took = (
        f"{d['took_over']} took over after {d['takeover_s']} s"
        if d["took_over"]
        else "no takeover seen"
    )
    command = (
        f"locate succeeded {d['command_s']} s after the stop"
        if d["command_s"] is not None
        else f"locate {d['command_state'] or 'unanswered'}"
    )
    typer.echo(
        f"{'PASS' if result.passed else 'FAIL'}  failover drill: {d['stopped']} stopped; {took}; "
        f"{command} (evidence {evidence})"
    )
    if not result.passed:
        typer.echo(f"  {d['reason']}")
    raise typer.Exit(0 if result.passed else 1)
