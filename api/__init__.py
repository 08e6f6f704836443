"""HTTP API (FastAPI): vehicles, tracks, commands, zones, events and their live stream, devices,
usage; API keys with scopes; errors as RFC 9457 problem details; the live map page."""

from api.app import create_app
from api.context import ApiContext
from api.key_cache import KeyCache
from api.live import LiveHub

__all__ = ["ApiContext", "KeyCache", "LiveHub", "create_app"]
