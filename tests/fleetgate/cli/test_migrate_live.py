"""`fleetgate migrate analyse|import --source traccar --url ...`: a live pull gives the same report
and the same import as the folder it was served from; refused credentials and clashing options
exit 2 and change nothing.

Traccar cannot run here: the server is tests/traccar_standin.py, a real HTTP server on a free
port serving recorded Traccar responses (examples/traccar-export, its times
moved close to now like the other fixtures)."""

from __future__ import annotations

import json
import re

import psycopg
import pytest

from tests.cli_runner import run_fleetgate
from tests.traccar_standin import TraccarStandIn, recent_copy

pytestmark = pytest.mark.integration

TOKEN = "recorded-token"


@pytest.fixture
def export(tmp_path):
    return recent_copy(tmp_path / "export")


@pytest.fixture
def traccar(export):
    with TraccarStandIn(export, token=TOKEN) as server:
        yield server


@pytest.fixture
def env(pg_dsn):
    return {"FLEETGATE_DATABASE_URL": pg_dsn}


def report_of(path) -> dict:
    return json.loads(path.read_text())


def without_where(report: dict, origin: str) -> dict:
    """The report without what names the export's location (a folder or the server's URL):
    the file column of problems and the origin."""
    report = json.loads(json.dumps(report).replace(origin, "<origin>"))
    for problem in report["problems"]:
        problem["file"] = re.sub(r"<origin>(/api/positions\?\S+|/positions/\S+)", "<positions>",
                                 problem["file"])  # fmt: skip
    return report


def test_a_pull_is_analysed_exactly_as_the_folder_it_came_from(env, export, traccar, tmp_path):
    from_folder = run_fleetgate(
        "migrate", "analyse", "--source", "traccar", str(export),
        "--report", str(tmp_path / "folder.json"), env=env,
    )  # fmt: skip
    pulled = run_fleetgate(
        "migrate", "analyse", "--source", "traccar", "--url", traccar.url, "--token", TOKEN,
        "--report", str(tmp_path / "pulled.json"), env=env,
    )  # fmt: skip
    assert pulled.exit_code == from_folder.exit_code, pulled.output
    assert "pulled 4 of 4 devices' positions (294 positions)" in pulled.output
    folder_report = without_where(report_of(tmp_path / "folder.json"), str(export.resolve()))
    pulled_report = without_where(report_of(tmp_path / "pulled.json"), traccar.url)
    assert pulled_report == folder_report
    assert pulled_report["counts"]["positions"] == 294


def positions_stored(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM positions").fetchone()[0]


def test_a_pull_imports_what_the_folder_imports(env, pg_dsn, export, traccar, tmp_path):
    """Logged in with a user whose password comes from TRACCAR_PASSWORD; importing the folder
    afterwards finds everything there already."""
    pulled = run_fleetgate(
        "migrate", "import", "--source", "traccar", "--url", traccar.url,
        "--user", "export@operator.example", "--batch", "live", "--skip-invalid",
        "--report", str(tmp_path / "pulled.json"), env={**env, "TRACCAR_PASSWORD": "s3cret"},
    )  # fmt: skip
    assert pulled.exit_code in (0, 1), pulled.output  # 1: skipped records were listed
    stored = positions_stored(pg_dsn)
    assert stored == report_of(tmp_path / "pulled.json")["imported"]["positions"] > 100
    assert traccar.requests[0][:2] == ("POST", "/api/session")
    from_folder = run_fleetgate(
        "migrate", "import", "--source", "traccar", str(export), "--batch", "live",
        "--skip-invalid", env=env,
    )  # fmt: skip
    assert "already imported" in from_folder.output.replace("_", " "), from_folder.output
    assert positions_stored(pg_dsn) == stored


@pytest.mark.parametrize(
    ("credentials", "refusal"),
    [
        (["--token", "expired"], r"Traccar refused GET /api/devices with 401: the token is not"),
        (
            ["--user", "export@operator.example", "--password", "wrong"],
            r"Traccar refused the login of 'export@operator.example' \(401\)",
        ),
    ],
)
def test_refused_credentials_exit_2_naming_the_server_and_import_nothing(
    env, pg_dsn, traccar, credentials, refusal
):
    result = run_fleetgate(
        "migrate", "import", "--source", "traccar", "--url", traccar.url, *credentials,
        "--batch", "live", env={**env, "TRACCAR_PASSWORD": ""},
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert re.search(rf"fleetgate: cannot read {re.escape(traccar.url)}: {refusal}", result.output)
    assert "nothing imported" in result.output


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--source", "gbfs", "--url", "http://traccar:8082"], "use --source traccar"),
        (["--source", "traccar", "some/folder", "--url", "http://traccar:8082"], "not both"),
        (["--source", "traccar"], "give the export's PATH"),
        (["--source", "traccar", "--url", "traccar:8082", "--token", "t"], "expected http://"),
        (["--source", "traccar", "some/folder", "--since", "2026-11-01"], "go with --url"),
        (["--source", "traccar", "--url", "http://127.0.0.1:9"], "needs --token, or --user"),
        (
            ["--source", "traccar", "--url", "http://127.0.0.1:9", "--token", "t", "--since", "x"],
            "--since 'x': expected ISO 8601",
        ),
    ],
)
def test_options_that_do_not_fit_together_exit_2(env, arguments, message):
    result = run_fleetgate(
        "migrate", "analyse", *arguments, env={**env, "TRACCAR_TOKEN": "", "TRACCAR_USER": ""}
    )
    assert result.exit_code == 2, result.output
    assert message in result.output
