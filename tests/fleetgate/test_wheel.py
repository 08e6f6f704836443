"""The wheel `pip install .` builds from a fresh clone carries what the installed product reads:
built from the tracked files only, installed into a new virtualenv, run from outside the
checkout, it migrates a database and serves the live map with its Leaflet."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import httpx
import pytest

from fleetgate.embedded import EmbeddedServiceError, free_port, wait_for_port
from tests import REPO
from tests.fixtures_db import Server

pytestmark = pytest.mark.integration

# Tracked but not shipped: the npm manifest that pins the vendored Leaflet.
NOT_SHIPPED = ("api/web/",)


def tracked_files() -> list[str]:
    """What a fresh clone holds (the worktree's version of each tracked file)."""
    if not (REPO / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout: no way to tell what a fresh clone would hold")
    out = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z"], check=True, capture_output=True
    ).stdout.decode()
    return [name for name in out.split("\0") if name and (REPO / name).is_file()]


def build_wheel(tmp: Path) -> Path:
    """`pip wheel .` of a copy of the tracked files, with pip's usual isolated build."""
    source = tmp / "clone"
    for name in tracked_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(tmp / "dist"),
            str(source),
        ],
        check=True,
        capture_output=True,
        cwd=tmp,
    )
    return next((tmp / "dist").glob("fleetgate-*.whl"))


def install(wheel: Path, venv: Path) -> None:
    """The wheel into a new virtualenv; its dependencies are borrowed from this test's own
    environment through a .pth line (installing them from an index would take minutes), added
    only after the install so that pip does not see the checkout's editable fleetgate."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    site = venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    (site / "borrowed-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")


def test_the_wheel_serves_the_map_and_migrates_from_an_installed_copy(
    tmp_path: Path, pg_server: Server
):
    wheel = build_wheel(tmp_path)
    shipped = set(zipfile.ZipFile(wheel).namelist())
    packages = {
        name.split("/")[0]
        for name in shipped
        if "/" in name and not name.split("/")[0].endswith(".dist-info")
    }
    # Every tracked file of a package directory is something the product may read at run time.
    missing = [
        name
        for name in tracked_files()
        if name.split("/")[0] in packages
        and name not in shipped
        and not name.startswith(NOT_SHIPPED)
    ]
    assert not missing, f"tracked but not in the wheel: {missing}"

    venv = tmp_path / "venv"
    install(wheel, venv)
    elsewhere = tmp_path / "run"
    elsewhere.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FLEETGATE_", "PYTHON", "VIRTUAL_ENV"))
    }
    imported = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import api, fleetgate, telemetry; print(api.__file__, telemetry.__file__)",
        ],
        cwd=elsewhere,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert all(Path(f).is_relative_to(venv) for f in imported), imported

    port = free_port()
    with pg_server.database("fgwheel") as dsn:
        env |= {"FLEETGATE_DATABASE_URL": dsn, "FLEETGATE_API_PORT": str(port)}
        fleetgate = str(venv / "bin" / "fleetgate")
        # The migrations' SQL files come out of the wheel too.
        subprocess.run(
            [fleetgate, "db", "migrate", "--storage", "native"],
            cwd=elsewhere,
            env=env,
            check=True,
            capture_output=True,
            timeout=60,
        )
        log = tmp_path / "api.log"
        serving = subprocess.Popen(
            [fleetgate, "api"],
            cwd=elsewhere,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log.open("wb"),
        )
        try:
            try:
                wait_for_port("127.0.0.1", port, 30, serving)
            except EmbeddedServiceError as exc:
                raise AssertionError(f"{exc}: {log.read_text()[-2000:]}") from exc
            base = f"http://127.0.0.1:{port}"
            expected = {
                "/map/": ("text/html", None),
                "/map/map.js": ("javascript", REPO / "api/static/map.js"),
                "/map/map.css": ("text/css", REPO / "api/static/map.css"),
                "/map/vendor/leaflet/leaflet.js": (
                    "javascript",
                    REPO / "api/static/vendor/leaflet/leaflet.js",
                ),
                "/map/vendor/leaflet/leaflet.css": (
                    "text/css",
                    REPO / "api/static/vendor/leaflet/leaflet.css",
                ),
                "/map/vendor/leaflet/images/layers.png": (
                    "image/png",
                    REPO / "api/static/vendor/leaflet/images/layers.png",
                ),
            }
            for path, (content_type, source) in expected.items():
                res = httpx.get(base + path)
                assert res.status_code == 200, (path, res.status_code, res.text[:300])
                assert content_type in res.headers["content-type"], (path, res.headers)
                if source is not None:
                    assert res.content == source.read_bytes(), path
            page = httpx.get(f"{base}/map/").text
            assert 'src="vendor/leaflet/leaflet.js"' in page and "__CONFIG__" not in page
        finally:
            serving.terminate()
            serving.wait(timeout=30)
