"""Which URLs a webhook may post to: http(s), with a host, and not the gateway itself (a
subscription to its own API or operator's port would have it call itself: a loop, or a way to
reach its internal port from the API). Resolving the host is the shell's job; this judges."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

MAX_URL_LENGTH = 2048


class InvalidWebhookUrl(ValueError):
    pass


def parse(url: str) -> tuple[str, int]:
    """(host, port) of a URL webhooks may use; InvalidWebhookUrl with the reason otherwise."""
    if len(url) > MAX_URL_LENGTH:
        raise InvalidWebhookUrl(f"the URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidWebhookUrl(f"not a URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidWebhookUrl(f"the URL must be http or https, not {parts.scheme or 'none'!r}")
    if not parts.hostname:
        raise InvalidWebhookUrl("the URL has no host")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def is_gateway_itself(
    addresses: Iterable[str], port: int, own_ports: Iterable[int], own_addresses: Iterable[str]
) -> bool:
    """Whether one of the addresses a URL's host resolves to, with its port, is one the gateway
    listens on: a port of its own on a loopback, unspecified or own address."""
    if port not in set(own_ports):
        return False
    own = {_normal(a) for a in own_addresses}
    for address in addresses:
        ip = ipaddress.ip_address(_normal(address))
        if ip.is_loopback or ip.is_unspecified or str(ip) in own:
            return True
        mapped = getattr(ip, "ipv4_mapped", None)
        if mapped is not None and (mapped.is_loopback or str(mapped) in own):
            return True
    return False


def _normal(address: str) -> str:
    return str(ipaddress.ip_address(address.split("%", 1)[0]))
