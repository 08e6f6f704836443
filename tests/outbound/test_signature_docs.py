"""The signature checks docs/webhooks.md shows (Python, and JavaScript run with Node.js) accept
what the worker signs and refuse a changed body, a wrong secret and an old timestamp."""

import re
import shutil
import subprocess
import time

import orjson
import pytest

from outbound import new_secret, render, sign
from tests import REPO

DOC = (REPO / "docs" / "webhooks.md").read_text()


def _block(language: str) -> str:
    [code] = re.findall(rf"```{language}\n(.*?)```", DOC, flags=re.S)
    return code


def _cases() -> list[tuple[str, dict, bytes, bool]]:
    secret = new_secret()
    body = render(4711, "trip.ended", 1764412800123, "bike-0042", {"distance_m": 1234.5})
    now = int(time.time())
    signed = {"Fleetgate-Timestamp": str(now), "Fleetgate-Signature": sign(secret, now, body)}
    old = now - 600
    return [
        (secret, signed, body, True),
        (secret, {**signed, "Fleetgate-Signature": "v1=00 " + sign(secret, now, body)}, body, True),
        (secret, signed, body.replace(b"1234.5", b"1.5"), False),
        (new_secret(), signed, body, False),
        (
            secret,
            {"Fleetgate-Timestamp": str(old), "Fleetgate-Signature": sign(secret, old, body)},
            body,
            False,
        ),
        (secret, {**signed, "Fleetgate-Timestamp": "soon"}, body, False),
    ]


def test_the_python_snippet():
    namespace: dict = {}
    exec(compile(_block("python"), "docs/webhooks.md", "exec"), namespace)
    verify = namespace["verify_fleetgate_signature"]
    for secret, headers, body, expected in _cases():
        assert verify(secret, headers, body) is expected


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
def test_the_javascript_snippet(tmp_path):
    module = tmp_path / "verify.js"
    module.write_text(_block("javascript"))
    cases = [
        {
            "secret": secret,
            "headers": {k.lower(): v for k, v in headers.items()},
            "body": body.decode(),
            "expected": expected,
        }
        for secret, headers, body, expected in _cases()
    ]
    driver = (
        f"const {{ verifyFleetgateSignature }} = require({str(module)!r});\n"
        "const cases = JSON.parse(require('fs').readFileSync(0, 'utf8'));\n"
        "process.stdout.write(JSON.stringify(cases.map((c) =>\n"
        "  verifyFleetgateSignature(c.secret, c.headers, Buffer.from(c.body)))));\n"
    )
    run = subprocess.run(
        ["node", "-e", driver],
        input=orjson.dumps(cases),
        capture_output=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr.decode()
    assert orjson.loads(run.stdout) == [c["expected"] for c in cases]
