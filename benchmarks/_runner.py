"""What every benchmark does the same way: its command line, the child processes it starts of
itself, the machine it ran on, timing beside its baseline, and the one JSON document it prints.

A benchmark is benchmarks/<name>.py, run from the repository root as `python -m
benchmarks.<name>`. The whole of one, with a broker and database if it needs them:

    def build_parser() -> argparse.ArgumentParser:
        p = bench_parser(__spec__.name, __doc__)  # __spec__.name: also right under -m
        p.add_argument("--things", type=int, default=1000, help="how many things")
        return p

    async def bench(args: argparse.Namespace) -> dict:  # or a plain function
        with BenchServices("fgbench_things") as services:  # benchmarks._services
            ...
            return {"benchmark": "things", "machine": services.machine(), ...}

    def main(argv: list[str] | None = None) -> None:  # tests call it with their argv
        run_benchmark(bench, build_parser(), argv)

    if __name__ == "__main__":
        main()

A benchmark that starts a copy of itself as a helper process (a simulator, readers) gives the
helper's entry in run_benchmark(children={"sim": ...}) and starts it with start_child.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import logging
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

REPO = Path(__file__).resolve().parent.parent

Report = dict[str, Any]


# --- the command line --------------------------------------------------------------------------


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and the default of every option that has one."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if not action.help or action.default in (None, False, argparse.SUPPRESS):
            return action.help  # nothing worth showing
        if "%(default)" in action.help:
            return action.help
        return f"{action.help} (default: %(default)s)"


def bench_parser(module: str, doc: str | None) -> argparse.ArgumentParser:
    """A benchmark's parser: the first paragraph of its module docstring as the description, the
    rest below the options, and the hidden --role that its own child processes run with (see
    start_child)."""
    summary, _, details = (doc or "").strip().partition("\n\n")
    parser = argparse.ArgumentParser(
        prog=f"python -m {module}",
        description=summary,
        epilog=details or None,
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--role", default="bench", help=argparse.SUPPRESS)
    return parser


def run_benchmark(
    bench: Callable[[argparse.Namespace], Report | Awaitable[Report]],
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None = None,
    *,
    children: dict[str, Callable[[argparse.Namespace], object]] | None = None,
    log_level: int = logging.WARNING,
    check: Callable[[argparse.Namespace], str | None] | None = None,
    passed: Callable[[Report], bool] | None = None,
) -> None:
    """Parse the command line and run the benchmark, printing its report; or, started with
    --role R, run children[R] instead. `check` refuses a command line the options cannot refuse
    one by one (it returns the reason); the exit code is 1 when `passed` says the report is a
    failure."""
    args = parser.parse_args(argv)
    reason = check(args) if check is not None else None
    if reason:
        parser.error(reason)
    if args.role != "bench":
        child = (children or {}).get(args.role)
        if child is None:
            parser.error(f"no child process role {args.role!r}")
        _call(child, args)
        return
    logging.basicConfig(level=log_level)
    report = _call(bench, args)
    print_report(report)
    if passed is not None and not passed(report):
        sys.exit(1)


def _call(fn: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> Any:
    result = fn(args)
    return asyncio.run(result) if inspect.iscoroutine(result) else result


def print_report(report: Report) -> None:
    """The one JSON document a benchmark prints (progress goes to stderr)."""
    text = orjson.dumps(
        report,
        option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY,
    )
    sys.stdout.write(text.decode() + "\n")
    sys.stdout.flush()


def progress(text: str) -> None:
    """A line on stderr while a long benchmark runs."""
    print(f"# {text}", file=sys.stderr, flush=True)


# --- child processes -------------------------------------------------------------------------


def child_argv(module: str, role: str, **options: object) -> list[str]:
    """The command line that runs `module` with --role `role` and these options: a keyword
    becomes --its-name, True a bare flag; False and None leave the option out."""
    argv = [sys.executable, "-m", module, "--role", role]
    for name, value in options.items():
        if value is None or value is False:
            continue
        argv.append("--" + name.replace("_", "-"))
        if value is not True:
            argv.append(str(value))
    return argv


async def start_child(
    module: str,
    role: str,
    *,
    stdin: int | None = subprocess.DEVNULL,
    stderr: int | None = subprocess.PIPE,
    **options: object,
) -> asyncio.subprocess.Process:
    """`module` in a child process with --role `role`; its stdout is a pipe to this process. It
    runs in the repository root, where `python -m benchmarks.<name>` finds the package."""
    return await asyncio.create_subprocess_exec(
        *child_argv(module, role, **options),
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=stderr,
        cwd=REPO,
    )


def emit(event: dict) -> None:
    """One line of a child's report to its parent (stdout, one JSON object a line)."""
    print(orjson.dumps(event).decode(), flush=True)


# --- the machine -------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what the platform module says."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def machine(**extra: object) -> dict[str, object]:
    """The machine a report was measured on: CPU model and count, Python, and what the benchmark
    adds (library versions, load averages, the services' versions)."""
    return {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        **extra,
    }


def loadavg() -> list[float]:
    """The 1-, 5- and 15-minute load averages, rounded."""
    return [round(x, 2) for x in os.getloadavg()]


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds so far of this process, or of child process `pid`."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- timing beside a baseline ----------------------------------------------------------------


def best_in_turn(fns: Sequence[Callable[[], object]], repeat: int) -> tuple[list[float], list]:
    """The best wall-clock seconds of `repeat` runs of each function, and what each returned
    last. They run in turn, so that a change in the machine's load falls on all alike: a
    benchmark and its baseline measured in the same run."""
    best = [float("inf")] * len(fns)
    results: list = [None] * len(fns)
    for _ in range(repeat):
        for k, fn in enumerate(fns):
            t0 = time.perf_counter()
            results[k] = fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best, results


def best_of(fn: Callable[[], object], repeat: int) -> tuple[float, Any]:
    """The best wall-clock seconds of `repeat` runs of fn, and what it returned last."""
    (best,), (result,) = best_in_turn([fn], repeat)
    return best, result


def percentiles(
    values_ms: Sequence[float] | np.ndarray, quantiles: Sequence[int] = (50, 99), digits: int = 1
) -> dict[str, float]:
    """{"p50": ..., "p99": ..., "max": ...} of delays in ms, rounded; {} when there are none."""
    ms = np.asarray(values_ms, dtype=np.float64)
    if not len(ms):
        return {}
    out = {f"p{q}": round(float(np.percentile(ms, q)), digits) for q in quantiles}
    out["max"] = round(float(ms.max()), digits)
    return out


async def until(
    check: Callable[[], object], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Poll check() (a function, or a coroutine function) every `interval` s until it is true;
    TimeoutError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)
