"""The benchmarks stay runnable one way: each is a module of the benchmarks package, run as
`python -m benchmarks.<name>` without patching sys.path, and prints one JSON document with the
keys the README's figures are read from. Their speed is measured by running them, not here."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from benchmarks import _runner, battery, decoder, dialects, ingest, mqtt_parser, zone_index
from tests import REPO

BENCHMARKS = sorted(
    p.stem
    for p in (REPO / "benchmarks").glob("*.py")
    if not p.stem.startswith("_") and 'if __name__ == "__main__":' in p.read_text()
)


def test_no_benchmark_module_patches_sys_path():
    patched = [p.name for p in (REPO / "benchmarks").glob("*.py") if "sys.path" in p.read_text()]
    assert patched == []


def test_every_benchmark_answers_help_when_run_as_a_module():
    """One interpreter runs each as `python -m` does (runpy), so the imports are paid once."""
    driver = (
        "import runpy, sys\n"
        "for name in sys.argv[1:]:\n"
        "    sys.argv = [name, '--help']\n"
        "    try:\n"
        "        runpy.run_module(f'benchmarks.{name}', run_name='__main__', alter_sys=True)\n"
        "    except SystemExit as exit:\n"
        "        print(f'<<{name} exited {exit.code}>>')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", driver, *BENCHMARKS],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    for name in BENCHMARKS:
        assert f"<<{name} exited 0>>" in done.stdout, done.stdout + done.stderr
        assert f"usage: python -m benchmarks.{name}" in done.stdout
    assert "zone_index" in BENCHMARKS and "geofence" not in BENCHMARKS


def run_main(main, argv: list[str], capsys) -> dict:
    main(argv)
    out = capsys.readouterr().out
    return json.loads(out)  # one document, nothing else on stdout


def test_the_zone_index_benchmark_reports_its_figures(capsys):
    report = run_main(
        zone_index.main,
        ["--points", "5000", "--zones", "40", "--repeat", "1", "--shapely-repeat", "1"],
        capsys,
    )
    assert report["answers_equal"] is True
    assert {"fleetgate_locate_s", "shapely_s", "shapely_best", "ratio", "build_s"} <= set(report)
    assert {"cpu", "cpus", "python", "shapely", "loadavg_before"} <= set(report["machine"])


def test_the_battery_benchmark_reports_the_same_estimates_as_its_baseline(capsys):
    pytest.importorskip("pandas")
    report = run_main(
        battery.main,
        ["--vehicles", "40", "--samples", "400", "--warmup-hours", "1", "--repeats", "1"],
        capsys,
    )
    assert report["same_estimates"] is True and report["same_events"] is True
    assert {"core_us_per_sample", "baseline_us_per_sample", "ratio", "compare"} <= set(report)
    assert {"cpu", "pandas", "loadavg_1_5_15"} <= set(report["machine"])


def test_the_decoder_and_parser_benchmarks_report_their_figures(capsys):
    report = run_main(decoder.main, ["--messages", "600", "--repeat", "1"], capsys)
    assert {"decode_telemetry_us_per_message", "parse_joined_us_per_message"} <= set(report["json"])
    assert "decode_telemetry_us_per_message" in report["cbor"]
    report = run_main(
        mqtt_parser.main,
        ["--messages", "1000", "--repeats", "1", "--huge-mib", "1", "--skip-unlimited"],
        capsys,
    )
    assert report["small_publishes"]["messages"] == 1000
    assert report["huge_publish_default_limit"]["outcome"].startswith("rejected")
    assert report["huge_publish_no_limit"] is None


def test_the_dialects_benchmark_reads_back_the_native_samples_in_each_dialect(capsys):
    report = run_main(dialects.main, ["--messages", "400", "--repeat", "1"], capsys)
    for name in ("native", "fleetgate", "traccar-osmand", "flat-json"):
        assert report[name]["rejected"] == {} and report[name]["same_times_and_fixes"] is True
        assert report[name]["us_per_message"] > 0


def test_a_child_process_command_line_parses_back_to_its_options():
    argv = _runner.child_argv(
        "benchmarks.ingest",
        "sim",
        host="127.0.0.1",
        port=18830,
        topic_root="bench-fg/v1",
        vehicles=30,
        samples=10,
        rate_hz=2.5,
        fast=True,
        seed=None,
    )
    assert argv[:5] == [sys.executable, "-m", "benchmarks.ingest", "--role", "sim"]
    args = ingest.build_parser().parse_args(argv[3:])
    assert (args.role, args.host, args.port, args.topic_root) == (
        "sim",
        "127.0.0.1",
        18830,
        "bench-fg/v1",
    )
    assert (args.vehicles, args.samples, args.rate_hz, args.fast, args.seed) == (
        30,
        10,
        2.5,
        True,
        1,  # None left the option out: the default
    )


def test_a_report_that_did_not_pass_is_printed_and_exits_1(capsys):
    parser = _runner.bench_parser("benchmarks.example", "An example.\n\nWhat it measures.")

    def bench(args: argparse.Namespace) -> dict:
        return {"lost": 3}

    with pytest.raises(SystemExit) as exit:
        _runner.run_benchmark(bench, parser, [], passed=lambda r: r["lost"] == 0)
    assert exit.value.code == 1
    assert json.loads(capsys.readouterr().out) == {"lost": 3}


def test_an_unknown_child_role_is_refused(capsys):
    parser = _runner.bench_parser("benchmarks.example", "An example.")
    with pytest.raises(SystemExit) as exit:
        _runner.run_benchmark(dict, parser, ["--role", "nobody"], children={"sim": print})
    assert exit.value.code == 2
    assert "no child process role 'nobody'" in capsys.readouterr().err
