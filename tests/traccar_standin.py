"""A stand-in for a Traccar server's REST API, for the live pull's tests: Traccar (a Java server
with its own database) cannot run here, so this real HTTP server on a free loopback port serves
recorded Traccar responses the way Traccar does.

The recording (examples/traccar-export) is a folder in the layout of a Traccar file export
(devices.json, geofences.json, groups.json, positions/*.json as Traccar's API returns them), so
the same folder is also "the equivalent export" a pull is compared with. What it mimics, after
Traccar's API documentation and its PositionResource/SessionResource:

- `POST /api/session` (form email, password) answers the user and sets a JSESSIONID cookie;
  wrong credentials get 401. Every other call needs that cookie or `Authorization: Bearer
  <token>`, else 401.
- `GET /api/devices`, `/api/geofences`, `/api/groups`: arrays of the recorded objects.
- `GET /api/positions?deviceId=&from=&to=`: that device's positions with from <= fixTime <= to
  (both included), by fixTime; without from/to the latest position only; an unparsable time is
  400.

And it misbehaves on demand: `delay_s` slows every answer, `faults` makes the next position
requests fail one each ("500", "drop": the connection closes half-way through the body, "stall":
the answer comes after `stall_s`, "garbage": half the body as a complete answer). Every request
is logged in `requests`.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import sys
import threading
import time
from collections import deque
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

# The recorded responses are the sample export operators walk through (docs/migration.md).
RECORDED = Path(__file__).parent.parent / "examples" / "traccar-export"


def recent_copy(dest: Path) -> Path:
    """The recorded export copied to dest with its times moved close to now, as the migration
    tests' fixtures are (the store refuses samples beyond its retention)."""
    from tests.migration_exports import copy_export

    return copy_export(str(RECORDED), dest)  # an absolute name: EXPORTS / name is the name


# The user Traccar answers a login with (its User model, as /api/session returns it).
RECORDED_USER = {
    "id": 1,
    "attributes": {},
    "name": "fleet-export",
    "login": None,
    "email": "export@operator.example",
    "phone": None,
    "readonly": True,
    "administrator": False,
    "map": None,
    "latitude": 0.0,
    "longitude": 0.0,
    "zoom": 0,
    "coordinateFormat": None,
    "disabled": False,
    "expirationTime": None,
    "deviceLimit": -1,
    "userLimit": 0,
    "deviceReadonly": False,
    "limitCommands": False,
    "disableReports": False,
    "fixedEmail": False,
    "poiLayer": None,
    "totpKey": None,
    "temporary": False,
}


def _fix_ms(position: dict) -> int:
    return round(datetime.fromisoformat(position["fixTime"]).timestamp() * 1000)


class TraccarStandIn:
    """The stand-in server; `with TraccarStandIn(folder) as traccar: traccar.url ...`."""

    def __init__(
        self,
        folder: Path = RECORDED,
        *,
        token: str = "recorded-token",
        users: dict[str, str] | None = None,
    ) -> None:
        self.token = token
        self.users = users if users is not None else {"export@operator.example": "s3cret"}
        self.devices = json.loads((folder / "devices.json").read_text())
        self.geofences = json.loads((folder / "geofences.json").read_text())
        groups = folder / "groups.json"
        self.groups = json.loads(groups.read_text()) if groups.exists() else []
        self.positions: dict[int, list[tuple[int, dict]]] = {}
        for path in sorted((folder / "positions").glob("*.json")):
            for position in json.loads(path.read_text()):
                self.positions.setdefault(position["deviceId"], []).append(
                    (_fix_ms(position), position)
                )
        for rows in self.positions.values():
            rows.sort(key=lambda row: row[0])
        self.delay_s = 0.0
        self.stall_s = 5.0
        self.faults: deque[str] = deque()
        self.requests: list[tuple[str, str, dict[str, list[str]]]] = []
        self.sessions: set[str] = set()
        self._lock = threading.Lock()
        handler = type("Handler", (_TraccarHandler,), {"standin": self})
        self._server = _QuietServer(("127.0.0.1", 0), handler)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> TraccarStandIn:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)

    def positions_asked(self) -> list[dict[str, str]]:
        """The queries of every GET /api/positions so far, one value per parameter."""
        return [
            {k: v[0] for k, v in query.items()}
            for method, path, query in self.requests
            if method == "GET" and path == "/api/positions"
        ]

    def next_fault(self) -> str | None:
        with self._lock:
            return self.faults.popleft() if self.faults else None


class _QuietServer(ThreadingHTTPServer):
    """Clients that hang up early (a timed-out pull) are expected here: no traceback for them."""

    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _TraccarHandler(BaseHTTPRequestHandler):
    """Answers one connection's requests as Traccar would; `standin` is set per server."""

    standin: TraccarStandIn
    protocol_version = "HTTP/1.1"  # keep-alive, as Traccar's Jetty

    def log_message(self, format: str, *args: object) -> None:  # quiet in test output
        pass

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        self.standin.requests.append(("POST", url.path, {}))
        length = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(length).decode())
        if url.path != "/api/session":
            self._send(404, b"")
            return
        email, password = form.get("email", [""])[0], form.get("password", [""])[0]
        if self.standin.users.get(email) != password or not password:
            self._send(401, b"")
            return
        session = secrets.token_hex(8)
        self.standin.sessions.add(session)
        body = json.dumps(RECORDED_USER).encode()
        self._send(200, body, cookie=f"JSESSIONID={session}; Path=/")

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        self.standin.requests.append(("GET", url.path, query))
        if self.standin.delay_s:
            time.sleep(self.standin.delay_s)
        if not self._authorised():
            self._send(401, b"")
            return
        routes = {
            "/api/devices": lambda: self.standin.devices,
            "/api/geofences": lambda: self.standin.geofences,
            "/api/groups": lambda: self.standin.groups,
        }
        if url.path in routes:
            self._send_json(routes[url.path]())
        elif url.path == "/api/positions":
            self._positions(query)
        else:
            self._send(404, b"")

    def _authorised(self) -> bool:
        auth = self.headers.get("Authorization", "")
        if auth == f"Bearer {self.standin.token}":
            return True
        cookies = self.headers.get("Cookie", "")
        return any(
            part.strip().removeprefix("JSESSIONID=") in self.standin.sessions
            for part in cookies.split(";")
            if part.strip().startswith("JSESSIONID=")
        )

    def _positions(self, query: dict[str, list[str]]) -> None:
        rows = self.standin.positions.get(int(query.get("deviceId", ["0"])[0]), [])
        try:
            since = _query_ms(query, "from")
            until = _query_ms(query, "to")
        except ValueError as exc:
            self._send(400, f"WebApplicationException: {exc}".encode())
            return
        if since is None or until is None:
            answer = [rows[-1][1]] if rows else []
        else:
            answer = [p for t, p in rows if since <= t <= until]
        body = json.dumps(answer).encode()
        fault = self.standin.next_fault()
        if fault == "500":
            self._send(500, b"Internal Server Error: java.sql.SQLTransientConnectionException")
        elif fault == "drop":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(2)
        elif fault == "garbage":  # a complete answer that is not JSON (a proxy's page, a bug)
            self._send(200, body[: len(body) // 2])
        else:
            if fault == "stall":
                time.sleep(self.standin.stall_s)
            self._send(200, body)

    def _send_json(self, value: object) -> None:
        self._send(200, json.dumps(value).encode())

    def _send(self, status: int, body: bytes, cookie: str | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if cookie:
            self.send_header("Set-Cookie", cookie)
        self.end_headers()
        self.wfile.write(body)


def _query_ms(query: dict[str, list[str]], name: str) -> int | None:
    if name not in query:
        return None
    text = query[name][0]
    if len(text) < len("2025-01-01T00:00:00Z"):
        raise ValueError(f'Invalid format: "{text}" is too short')
    return round(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
