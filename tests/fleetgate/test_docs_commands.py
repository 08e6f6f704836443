"""The documentation stays true: every command in README.md and docs/*.md runs as written, in
order, on a fresh machine, and every relative link and #anchor in them leads somewhere.

A "fresh machine" is a copy of the checkout as the working directory, a HOME of its own, and
FLEETGATE_* pointing at the test server (an empty database for README.md, whose commands start
with `fleetgate db migrate`; a migrated one for each page of docs/), at the test session's
private Mosquitto under a topic root of its own, and at free ports instead of 8080, 9108 and
5683. `fleetgate ...` runs in this process (typer's CliRunner: a child process per command would
cost a second each), anything else with bash. Every command is classified in COMMANDS below;
one added to the docs without a classification fails the test, so whoever adds it decides how
it is proven.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from fleetgate.embedded import free_port
from tests import REPO
from tests.cli_runner import run_fleetgate

pytestmark = pytest.mark.integration

DOCUMENTS = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]
SHELL_LANGUAGES = {"sh", "bash", "shell", "console"}
# A block without a language whose lines start like this is a command block in disguise.
COMMAND_WORDS = {
    "fleetgate",
    "scripts/demo",
    "scripts/test",
    "scripts/setup",
    "pip",
    "export",
    "curl",
    "systemctl",
    "sudo",
    "apt-get",
    "psql",
    "mosquitto_pub",
    "mosquitto_sub",
    "coap-client",
    "coap-client-notls",
    "aiocoap-client",
    "python",
    "docker",
}


# --- how each documented command is proven -----------------------------------------------------


@dataclass(frozen=True)
class Run:
    """Run as written; it must exit with `exit` (0), and its output must match `expect` (a
    regex) if given."""

    expect: str | None = None
    exit: int = 0


@dataclass(frozen=True)
class Background:
    """A command that runs until stopped: started as a child process, waited for until
    `ready(machine)` holds, kept running while the document's later commands run, then stopped
    with SIGTERM: it must exit 0."""

    ready: Callable[[Machine], bool]
    what: str


@dataclass(frozen=True)
class GivenByTest:
    """Points the shell at a service: the test's environment points it at the test's own."""

    variable: str


@dataclass(frozen=True)
class Skip:
    """Cannot run in a test; the reason says why, and where its behaviour is tested instead."""

    reason: str


Action = Run | Background | GivenByTest | Skip


def ready_at(path: str) -> Callable[[Machine], bool]:
    def ready(machine: Machine) -> bool:
        url = f"http://127.0.0.1:{machine.env['FLEETGATE_METRICS_PORT']}{path}"
        try:
            return httpx.get(url, timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    return ready


def logged(text: str) -> Callable[[Machine], bool]:
    """Ready once the latest background command's output holds text."""

    def ready(machine: Machine) -> bool:
        return text in machine.background[-1][2].read_text()

    return ready


SECRET_LINE = r"(?m)^{}\t[A-Za-z0-9_-]{{32}}$"
BROKER_CONFIG = Skip(
    "writes into /etc/mosquitto and signals the machine's broker; "
    "tests/fleetgate/cli/test_device_identity.py runs broker-config and a Mosquitto that "
    "includes its files as docs/device-identity.md shows"
)
TRACCAR_SERVER = Skip(
    "traccar:8082 stands for the operator's Traccar server, which cannot run here; "
    "tests/fleetgate/cli/test_migrate_live.py and test_migrate_rehearse.py run these commands "
    "against tests/traccar_standin.py, a real HTTP server serving examples/traccar-export as "
    "Traccar's API returns it"
)
LEGACY_BROKER = Skip(
    "legacy.example stands for the operator's legacy broker with its devices connected; "
    "tests/fleetgate/cli/test_migrate_cutover.py runs cutover and rollback against a real legacy "
    "Mosquitto, fleetgate's bridged to it, and 50 simulated devices that carry out set_config"
)
COMMANDS: dict[str, dict[str, Action]] = {
    "README.md": {
        "scripts/demo": Skip(
            "runs scripts/setup (apt-get, pip, npm) and then a demo until Ctrl-C; "
            "`fleetgate demo`, which it runs, is started and stopped in "
            "tests/fleetgate/cli/test_demo.py"
        ),
        "scripts/test": Skip("the whole test suite, this test among them"),
        "pip install .": Skip(
            "installs into the Python environment; this test runs the "
            "checkout's own install (scripts/setup)"
        ),
        "export FLEETGATE_DATABASE_URL=postgresql://fleetgate:…@db:5432/fleetgate": GivenByTest(
            "FLEETGATE_DATABASE_URL"
        ),
        "export FLEETGATE_MQTT_URL=mqtt://broker:1883": GivenByTest("FLEETGATE_MQTT_URL"),
        "export FLEETGATE_MQTT_USERNAME=fleetgate-gw FLEETGATE_MQTT_PASSWORD=…": Run(),
        "fleetgate db migrate": Run(expect=r"schema version \d+ .*applied 0001_vehicles"),
        "fleetgate zones import examples/geofencing_zones.json --replace": Run(
            expect="4 zones replace the zone set"
        ),
        "fleetgate devices register bike-0001 tcu-0001 --type ebike": Run(
            expect="registered 1 vehicle: 1 new"
        ),
        "fleetgate devices register --file examples/fleet.csv": Run(
            expect="registered 4 vehicles: 3 new, 1 unchanged"
        ),
        "fleetgate devices provision --missing": Run(expect=SECRET_LINE.format("tcu-0101")),
        "fleetgate sim --vehicles 500 --register-only": Run(
            expect="500 simulated devices registered, 500 new secrets"
        ),
        "fleetgate broker-config --out /etc/mosquitto/fleetgate --reload-pidfile "
        "/run/mosquitto/mosquitto.pid": BROKER_CONFIG,
        "fleetgate api-keys create rental --scope commands:write --scope fleet:read": Run(
            expect=r"(?m)^fgk_\S+$"
        ),
        "fleetgate run": Background(ready_at("/readyz"), "the operator's port answers /readyz"),
        "fleetgate sim --vehicles 500 --rate 0.2": Background(
            logged("sim_fleet_connected"), "the simulated fleet is connected"
        ),
        "fleetgate config show --sources": Run(
            expect=r'"source": "environment FLEETGATE_DATABASE_URL"'
        ),
    },
    "docs/api.md": {
        "fleetgate api-keys create rental-service --scope commands:write --scope fleet:read": Run(
            expect="API key 'rental-service' with scopes"
        ),
        "fleetgate api-keys list": Run(expect="rental-service"),
        "fleetgate api-keys revoke rental-service": Run(expect="revoked rental-service"),
        "fleetgate vehicle-types list": Run(expect=r"(?m)^scooter\tscooter_standing\telectric"),
        "fleetgate vehicle-types add trike --form-factor other --propulsion electric_assist "
        '--name "Cargo trike" --max-speed-kmh 25 --battery-ah 20 --battery-v 48 '
        "--swappable": Run(expect="vehicle type trike: added"),
        "fleetgate devices register trike-0001 tcu-trike-0001 --type trike": Run(
            expect="registered 1 vehicle: 1 new"
        ),
    },
    "docs/feeds.md": {
        "fleetgate api-keys create city-agency --scope mds:read": Run(
            expect="API key 'city-agency' with scopes"
        ),
    },
    "docs/coap.md": {
        "fleetgate devices register bike-0001 lock-0001 --type ebike": Run(),
        "fleetgate devices provision lock-0001": Run(expect=SECRET_LINE.format("lock-0001")),
        'coap-client-notls -m post -t 50 -e \'{"t": 1764412800123, "soc_pct": 71.5}\' '
        '"coap://gw.example:5683/fg/v1/lock-0001/telemetry?t=<secret>"': Skip(
            "gw.example and <secret> stand for your gateway and the secret provision printed; "
            "tests/gateway/coap/test_ingress.py sends such uplinks with coap-client"
        ),
        "aiocoap-client -m POST --content-format application/senml+json --payload "
        '\'[{"n": "soc_pct", "u": "%EL", "v": 71.5}]\' '
        '"coap://gw.example/fg/v1/lock-0001/telemetry?t=<secret>"': Skip(
            "gw.example and <secret> stand for your gateway and the secret provision printed; "
            "tests/gateway/coap/test_ingress.py posts SenML with aiocoap's client"
        ),
    },
    "docs/dialects.md": {
        "export FLEETGATE_MQTT_DIALECTS=traccar-osmand": Run(),
        "fleetgate migrate bridge-config --legacy-url mqtt://legacy.example:1883 --dialect "
        "traccar-osmand --out bridge.conf": Run(expect="wrote bridge.conf: mirrors traccar-osmand"),
        "fleetgate api-keys create traccar-forwarder --scope migration:write": Run(
            expect="API key 'traccar-forwarder' with scopes"
        ),
    },
    "docs/webhooks.md": {
        "fleetgate webhooks types": Run(expect="command.finished"),
        "fleetgate webhooks create http://localhost:9000/fleetgate --type command.finished "
        "--type trip.ended --description billing": Run(
            expect=r"signing secret \(shown once\): whsec_"
        ),
        "fleetgate webhooks list": Run(expect="command.finished,trip.ended +http://localhost:9000"),
    },
    "docs/deployment.md": {
        "export FLEETGATE_MQTT_USERNAME=fleetgate-gw FLEETGATE_MQTT_PASSWORD=…": Run(),
        "fleetgate broker-config --out /etc/mosquitto/fleetgate --reload-pidfile "
        "/run/mosquitto/mosquitto.pid": BROKER_CONFIG,
        "systemctl stop fleetgate@gw-3": Skip(
            "needs a systemd unit fleetgate@gw-3; tests/gateway/test_scaleout.py stops a "
            "gateway process and drains its session"
        ),
        "fleetgate drain gw-3": Run(expect=r'"client_id":"gw-3".*"session_ended":true'),
        ".venv/bin/python -m benchmarks.faults --vehicles 50 --repeat 1 "
        "--scenarios gateway-kill,broker-kill": Skip(
            "a benchmark that starts its own broker, database and gateway for ~20 s per "
            "scenario; tests/gateway/test_faults.py counts the same under the same faults"
        ),
    },
    "docs/migration.md": {
        "fleetgate migrate analyse --source csv examples/fleet.csv": Run(
            expect=r"csv export \S+fleet.csv: 4 vehicles"
        ),
        "fleetgate migrate import --source csv examples/fleet.csv --batch wave-1 "
        "--report wave-1.json": Run(expect="imported: 4 vehicles, 4 devices, 0 zones, 0 positions"),
        "fleetgate migrate status --batch wave-1": Run(expect=r"batch wave-1  csv .*\n  imported"),
        "export TRACCAR_TOKEN=…": Run(),
        "fleetgate migrate analyse --source traccar --url http://traccar:8082 "
        "--report analysis.json": TRACCAR_SERVER,
        "fleetgate migrate analyse --source traccar examples/traccar-export "
        "--report analysis.json": Run(
            expect=r"traccar export \S+traccar-export: 4 devices, 3 geofences, 2 groups, "
            "294 positions"
        ),
        "fleetgate migrate rehearse --source traccar examples/traccar-export": Run(
            expect=r"(?m)^PASS  track: .*\nrehearsal PASSED$"
        ),
        "fleetgate migrate import --source traccar examples/traccar-export --batch berlin-1 "
        "--provision --report berlin-1.json": Run(expect=SECRET_LINE.format("862095051234037")),
        "fleetgate migrate status --batch berlin-1": Run(expect=r"batch berlin-1  traccar"),
        "fleetgate migrate import --source traccar examples/traccar-export --batch berlin-1 "
        "--since-last-run": Run(expect="already imported"),
        "fleetgate migrate rehearse --source traccar --url http://traccar:8082 "
        "--skip-invalid": TRACCAR_SERVER,
        "fleetgate migrate import --source traccar --url http://traccar:8082 --batch berlin-1 "
        "--skip-invalid": TRACCAR_SERVER,
        "fleetgate migrate import --source traccar --url http://traccar:8082 --batch berlin-1 "
        "--skip-invalid --since-last-run": TRACCAR_SERVER,
        "fleetgate migrate cutover --batch berlin-pilot --percent 10 --legacy-broker "
        "mqtt://legacy.example:1883 --broker-url mqtt://mqtt.fleetgate.example:1883": LEGACY_BROKER,
        "fleetgate migrate cutover --batch berlin-wave-2 --percent 25 --seed 7 --export "
        "repoint.jsonl": Run(expect="fleetgate holds 2 vehicles now.*\n.*wrote repoint.jsonl: 2"),
        "fleetgate migrate status --cutover --batch berlin-wave-2": Run(
            expect=r"cut-over batch berlin-wave-2: 0 live, 2 pending"
        ),
        "fleetgate migrate rollback --batch berlin-pilot --legacy-url mqtt://legacy.example:1883 "
        "--out berlin-pilot-backfill.jsonl": LEGACY_BROKER,
        # The csv and Traccar imports above registered 8 vehicles of 4 types: one of each type.
        "fleetgate migrate shadow start --batch berlin-1 --percent 10 --days 14 --seed 7": Run(
            expect=r"shadow batch berlin-1 started: 4 of 8 vehicles "
            r"\(10 %: 1 car, 1 ebike, 1 moped, 1 scooter\)"
        ),
        "fleetgate migrate shadow status": Run(expect=r"(?m)^berlin-1  running  4 vehicles"),
        # Nothing observed yet on either side: nothing to compare is yellow, exit 1 (the green
        # run of a real parallel run is tests/migration/test_parallel_run.py's).
        "fleetgate migrate validate --batch berlin-1": Run(
            expect=r"(?m)^shadow batch berlin-1: 4 vehicles \(10 %\)(.|\n)*^overall   yellow$",
            exit=1,
        ),
        "fleetgate migrate validate --batch berlin-1 --json --threshold coverage.green=0.999": Run(
            expect=r'"overall": "yellow"', exit=1
        ),
        "fleetgate migrate shadow stop --batch berlin-1": Run(
            expect="shadow batch berlin-1 stopped at"
        ),
        "fleetgate migrate validation-sample --source traccar examples/traccar-export "
        "--batch berlin-1 --seed 7 --out sample.csv": Run(
            expect=r"sample of batch berlin-1 \(seed 7\): 1 of 4 vehicles, 1 of 3 zones, "
            r"20 positions; 24 rows to check in sample\.csv"
        ),
        # Nobody filled in `check` here: the sign-off refuses, which the page says it does.
        # tests/fleetgate/cli/test_migrate_gate.py fills a sample in and signs it off.
        'fleetgate migrate signoff --file sample.csv --by "Ada Lovelace"': Run(
            expect=r"line 3 \(vehicle .*\): neither ok nor a comment in `check`(.|\n)*"
            r"not signed off: 24 reasons above; nothing recorded",
            exit=2,
        ),
        "export FLEETGATE_DRILL_API_KEY=fgk_…": Run(),
        'fleetgate migrate failover-drill --vehicle "Bike 001" --process http://gw1:9108 '
        "--process http://gw2:9108 --api http://gw1:8080 --api http://gw2:8080 --stop-command "
        '"ssh {host} sudo systemctl stop fleetgate"': Skip(
            "gw1 and gw2 stand for the deployment's gateway hosts, stopped over ssh; "
            "tests/fleetgate/cli/test_migrate_failover_drill.py runs the drill against two "
            "`fleetgate run` processes on the test broker and database, stopping one with "
            "--stop-command"
        ),
        "python -m benchmarks.ingest --vehicles 1000 --rate-hz 30 --duration 120 --skip-naive "
        "> ingest.json": Skip(
            "a benchmark of several minutes with a broker and database of its own; "
            "tests/fleetgate/cli/test_migrate_gate.py runs it small (seconds) and records "
            "its output with load-evidence"
        ),
        "fleetgate migrate load-evidence --expected-rate 20000 --benchmark ingest.json": Skip(
            "reads the benchmark's output above; tests/fleetgate/cli/test_migrate_gate.py "
            "records load evidence from a small run of the same benchmark"
        ),
        # The rehearsal above recorded its verdict: that criterion is met, the rest are not.
        "fleetgate migrate gate --batch berlin-1 --ready-url http://gw1:9108/readyz "
        "--ready-url http://gw2:9108/readyz": Run(
            expect=r"(?m)^MET      rehearsal: passed rehearsal .*\n(.|\n)*"
            r"^NOT MET  processes_ready: not ready: http://gw1:9108/readyz \(no answer(.|\n)*"
            r"^batch berlin-1: go-live gate CLOSED",
            exit=1,
        ),
    },
    "docs/device-identity.md": {
        "fleetgate devices register bike-0001 lock-0001 --type ebike": Run(),
        "fleetgate devices register bike-0002 lock-0002 --type ebike": Run(),
        "fleetgate devices provision lock-0001 lock-0002": Run(
            expect=SECRET_LINE.format("lock-0002")
        ),
        "fleetgate devices provision --missing --json": Run(expect=r"^\[\]$"),
        "fleetgate devices rotate lock-0001 --grace 24h": Run(
            expect="the previous secret works until"
        ),
        "fleetgate devices rotate lock-0001 --grace 0": Run(expect=SECRET_LINE.format("lock-0001")),
        "fleetgate devices list": Run(expect=r"lock-0001\s+bike-0001\s+1"),
        "export FLEETGATE_MQTT_USERNAME=fleetgate-gw FLEETGATE_MQTT_PASSWORD=…": Run(),
        "fleetgate broker-config --out /etc/mosquitto/fleetgate --reload-pidfile "
        "/run/mosquitto/mosquitto.pid": BROKER_CONFIG,
        "cc -shared -fPIC -O2 -o fleetgate_subscribe_acl.so fleetgate_subscribe_acl.c": Skip(
            "runs where the broker runs, beside a copy of deploy/fleetgate_subscribe_acl.c; "
            "broker-config builds the plugin the same way in tests/gateway/test_broker_auth.py "
            "and tests/fleetgate/cli/test_device_identity.py"
        ),
    },
}
# Documents whose commands start on an empty database (the others expect `fleetgate db migrate`
# of README's "Running it for real" to have run).
STARTS_EMPTY = {"README.md"}


def _recent_traccar_export(checkout: Path) -> None:
    """examples/traccar-export with its times moved close to now, as the migration tests move
    their fixtures: the sample's fixed dates would age beyond the store's retention."""
    from tests.traccar_standin import recent_copy

    shutil.rmtree(checkout / "examples" / "traccar-export")
    recent_copy(checkout / "examples" / "traccar-export")


# What a document's fresh machine needs besides a copy of the checkout.
PREPARE: dict[str, Callable[[Path], None]] = {"docs/migration.md": _recent_traccar_export}


# --- reading the documents ---------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    document: str
    line: int
    text: str  # as written, continuation lines joined, without its trailing comment

    @property
    def key(self) -> str:
        return " ".join(self.text.split())


@dataclass(frozen=True)
class Block:
    document: str
    line: int  # of the opening fence
    language: str
    lines: list[str]


_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)")


def fenced_blocks(document: str, text: str) -> list[Block]:
    blocks: list[Block] = []
    opened: tuple[str, int, str] | None = None
    body: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        fence = _FENCE.match(line)
        if opened is None:
            if fence:
                opened, body = (fence.group(1), number, fence.group(2).lower()), []
        elif (
            fence
            and fence.group(1)[0] == opened[0][0]
            and len(fence.group(1)) >= len(opened[0])
            and not fence.group(2)
        ):
            blocks.append(Block(document, opened[1], opened[2], body))
            opened = None
        else:
            body.append(line)
    return blocks


def strip_comment(line: str) -> str:
    """The line without a trailing shell comment (a # that starts a word, outside quotes)."""
    quote, escaped = None, False
    for i, char in enumerate(line):
        if escaped:
            escaped = False
        elif char == "\\" and quote != "'":
            escaped = True
        elif quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def commands_of(block: Block) -> list[Command]:
    """The commands of a shell block: every line that is not blank or a comment (in a console
    block, every line after a `$ ` prompt), with its continuation lines."""
    commands: list[Command] = []
    pending: tuple[int, str] | None = None
    for offset, raw in enumerate(block.lines, 1):
        if pending is None:
            if block.language == "console":
                if not raw.startswith("$ "):
                    continue
                raw = raw[2:]
            line = strip_comment(raw)
            if not line:
                continue
            pending = (block.line + offset, "")
        else:
            line = strip_comment(raw)
        if line.endswith("\\"):
            pending = (pending[0], pending[1] + line[:-1].rstrip() + " ")
            continue
        commands.append(Command(block.document, pending[0], (pending[1] + line.strip()).strip()))
        pending = None
    return commands


def documented_commands(document: str, text: str | None = None) -> list[Command]:
    text = (REPO / document).read_text() if text is None else text
    return [
        c
        for b in fenced_blocks(document, text)
        if b.language in SHELL_LANGUAGES
        for c in commands_of(b)
    ]


def disguised_command_blocks(document: str, text: str) -> list[Block]:
    """Blocks without a language that hold shell commands (they would escape the runner)."""
    return [
        b
        for b in fenced_blocks(document, text)
        if not b.language
        and any(
            strip_comment(line).split()[:1] and strip_comment(line).split()[0] in COMMAND_WORDS
            for line in b.lines
        )
    ]


def unclassified(document: str, text: str) -> list[str]:
    known = COMMANDS.get(document, {})
    problems = [
        f"{c.document}:{c.line}: `{c.key}` is not classified in COMMANDS"
        for c in documented_commands(document, text)
        if c.key not in known
    ]
    problems += [
        f"{b.document}:{b.line}: a block without a language holds shell commands: "
        "label it sh (and classify its commands) or text"
        for b in disguised_command_blocks(document, text)
    ]
    return problems


# --- the fresh machine -------------------------------------------------------------------------


@dataclass
class Machine:
    """A shell on a fresh machine: a copy of the checkout to work in, a HOME of its own, and
    FLEETGATE_* pointing at the test's database and broker and at free ports."""

    root: Path
    env: dict[str, str]
    background: list[tuple[str, subprocess.Popen, Path]] = field(default_factory=list)

    @property
    def checkout(self) -> Path:
        return self.root / "checkout"

    @classmethod
    def fresh(cls, root: Path, dsn: str, broker, topic_root: str) -> Machine:
        checkout = root / "checkout"
        files = (
            subprocess.run(
                ["git", "ls-files", "-co", "--exclude-standard", "-z"],
                cwd=REPO,
                capture_output=True,
                check=True,
            )
            .stdout.decode()
            .split("\0")
        )
        for name in filter(None, files):
            source = REPO / name
            if source.is_file():
                (checkout / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, checkout / name)
        (root / "home").mkdir()
        env = {
            # `fleetgate` as installed beside the Python that runs the tests.
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(root / "home"),
            "LANG": "C.UTF-8",
            "FLEETGATE_DATABASE_URL": dsn,
            "FLEETGATE_MQTT_URL": f"mqtt://{broker.host}:{broker.port}",
            "FLEETGATE_MQTT_TOPIC_ROOT": topic_root,
            "FLEETGATE_MQTT_CLIENT_ID": f"docs-{uuid.uuid4().hex[:8]}",
            "FLEETGATE_API_PORT": str(free_port()),
            "FLEETGATE_METRICS_PORT": str(free_port()),
            "FLEETGATE_COAP_PORT": str(free_port()),
        }
        return cls(root, env)

    def run(self, command: Command, monkeypatch) -> tuple[int, str]:
        """Run a command to its end: (exit code, output)."""
        lexer = shlex.shlex(command.text, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True  # words as the shell splits them; operators apart
        tokens = list(lexer)
        plain = not any(set(t) <= set("|&;<>()") for t in tokens)
        assignments = {}
        while plain and tokens and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", tokens[0]):
            name, _, value = tokens.pop(0).partition("=")
            assignments[name] = value
        if plain and tokens[:1] == ["export"]:
            self.env.update(t.partition("=")[::2] for t in tokens[1:])
            return 0, ""
        if plain and tokens[:1] == ["fleetgate"]:
            monkeypatch.chdir(self.checkout)
            env = {
                **{k: None for k in os.environ if k.startswith("FLEETGATE_")},
                **self.env,
                **assignments,
            }
            result = run_fleetgate(*tokens[1:], env=env)
            return result.exit_code, result.output
        proc = subprocess.run(
            ["bash", "-c", command.text],
            cwd=self.checkout,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return proc.returncode, proc.stdout + proc.stderr

    def start(self, command: Command, action: Background) -> None:
        log = self.root / f"background-{len(self.background)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                ["bash", "-c", f"exec {command.text}"],
                cwd=self.checkout,
                env=self.env,
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.background.append((command.text, proc, log))
        deadline = time.monotonic() + 60
        while not action.ready(self):
            if proc.poll() is not None or time.monotonic() > deadline:
                state = (
                    f"exited with {proc.returncode}"
                    if proc.poll() is not None
                    else "still not ready after 60 s"
                )
                pytest.fail(
                    f"{command.document}:{command.line}: `{command.text}` {state} "
                    f"(waited for: {action.what}):\n{log.read_text()[-3000:]}"
                )
            time.sleep(0.2)

    def stop_background(self) -> list[str]:
        """Stop what runs in the background (SIGTERM); what did not stop cleanly."""
        problems = []
        for text, proc, log in reversed(self.background):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait(10)
            if code != 0:
                problems.append(
                    f"`{text}` exited with {code} on SIGTERM:\n{log.read_text()[-3000:]}"
                )
        self.background.clear()
        return problems


# --- the tests -----------------------------------------------------------------------------------


def test_every_documented_command_is_classified():
    problems = [p for doc in DOCUMENTS for p in unclassified(doc, (REPO / doc).read_text())]
    found = {(c.document, c.key) for doc in DOCUMENTS for c in documented_commands(doc)}
    problems += [
        f"{doc}: `{key}` is classified in COMMANDS but no longer documented"
        for doc, known in COMMANDS.items()
        for key in known
        if (doc, key) not in found
    ]
    assert not problems, "\n".join(problems)


def test_a_new_command_block_without_a_classification_is_reported():
    page = (
        "Intro.\n\n```sh\nfleetgate db migrate   # known\n"
        "fleetgate zones import new.json \\\n    --replace\n```\n\n"
        "```\nfleetgate devices list\n```\n\n```console\n$ fleetgate nothing-new\nout\n```\n"
    )
    assert unclassified("README.md", page) == [
        "README.md:5: `fleetgate zones import new.json --replace` is not classified in COMMANDS",
        "README.md:14: `fleetgate nothing-new` is not classified in COMMANDS",
        (
            "README.md:9: a block without a language holds shell commands: label it sh (and "
            "classify its commands) or text"
        ),
    ]


RUNNABLE = [
    doc
    for doc, known in COMMANDS.items()
    if any(isinstance(a, (Run, Background)) for a in known.values())
]


@pytest.mark.parametrize("document", RUNNABLE)
def test_the_documented_commands_run_as_written_in_order(
    document, request, mosquitto, topic_root, tmp_path, monkeypatch
):
    dsn = request.getfixturevalue("empty_pg_dsn" if document in STARTS_EMPTY else "pg_dsn")
    machine = Machine.fresh(tmp_path, dsn, mosquitto, topic_root)
    if document in PREPARE:
        PREPARE[document](machine.checkout)
    known = COMMANDS[document]
    ran = []
    try:
        for command in documented_commands(document):
            action = known.get(command.key)
            where = f"{document}:{command.line}: `{command.text}`"
            if action is None:
                pytest.fail(f"{where} is not classified in COMMANDS")
            if isinstance(action, GivenByTest):
                assert action.variable in machine.env, where
            elif isinstance(action, Background):
                machine.start(command, action)
                ran.append(command.key)
            elif isinstance(action, Run):
                code, output = machine.run(command, monkeypatch)
                assert code == action.exit, f"{where} exited with {code}:\n{output}"
                if action.expect:
                    assert re.search(action.expect, output), (
                        f"{where} printed nothing matching {action.expect!r}:\n{output}"
                    )
                ran.append(command.key)
    finally:
        stopped = machine.stop_background()
    assert not stopped, "\n".join(stopped)
    assert ran


# --- links -------------------------------------------------------------------------------------

_LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def outside_code(text: str, *, inline: bool = False) -> list[str]:
    """The lines of text with fenced blocks blanked (line numbers stay); inline=True blanks
    inline code too (links there are examples)."""
    lines, inside = [], None
    for line in text.splitlines():
        fence = _FENCE.match(line)
        if fence and (inside is None or fence.group(1)[0] == inside):
            inside = fence.group(1)[0] if inside is None else None
            lines.append("")
        elif inside:
            lines.append("")
        else:
            lines.append(re.sub(r"`[^`]*`", "", line) if inline else line)
    return lines


def anchors(text: str) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens, -1, -2 for
    repeats."""
    counts: dict[str, int] = {}
    ids = set()
    for line in outside_code(text):
        if m := _HEADING.match(line):
            title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group(2)).replace("`", "")
            slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
            repeat = counts.get(slug, 0)
            ids.add(slug if repeat == 0 else f"{slug}-{repeat}")
            counts[slug] = repeat + 1
    return ids


def broken_links(document: str, text: str) -> list[str]:
    problems = []
    base = (REPO / document).parent
    for number, line in enumerate(outside_code(text, inline=True), 1):
        for target in _LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
                continue  # http:, https:, mailto:
            path, _, anchor = target.partition("#")
            resolved = (base / path).resolve() if path else REPO / document
            if not resolved.exists():
                problems.append(f"{document}:{number}: {target}: no file {path}")
            elif (
                anchor
                and resolved.suffix == ".md"
                and anchor not in anchors(resolved.read_text() if path else text)
            ):
                problems.append(
                    f"{document}:{number}: {target}: no heading #{anchor} in "
                    f"{resolved.relative_to(REPO)}"
                )
    return problems


def test_every_relative_link_and_anchor_in_the_docs_resolves():
    problems = [p for doc in DOCUMENTS for p in broken_links(doc, (REPO / doc).read_text())]
    assert not problems, "\n".join(problems)


def test_a_link_to_a_missing_heading_is_reported():
    page = (
        "# Page\n\n## Commands, reserved\n\n[ok](#commands-reserved) [gone](#commands) "
        "[file](docs/api.md#keys-and-scopes) [no file](docs/nope.md) `[code](#x)`\n"
    )
    assert broken_links("README.md", page) == [
        "README.md:5: #commands: no heading #commands in README.md",
        "README.md:5: docs/nope.md: no file docs/nope.md",
    ]
