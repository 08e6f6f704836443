"""A webhook URL checked where it is given (the API, the CLI): http(s), a host that resolves,
and not this gateway itself (outbound.urls judges; resolving is IO, so it is here). The check is
made when a URL is set; a name that later resolves elsewhere is the receiver's operator's call."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterable

from outbound import InvalidWebhookUrl, is_gateway_itself
from outbound.urls import parse

RESOLVE_TIMEOUT_S = 5.0


async def check_url(url: str, own_ports: Iterable[int], own_addresses: Iterable[str] = ()) -> None:
    """Raise InvalidWebhookUrl with the reason unless webhooks may post to url."""
    host, port = parse(url)
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT_S
        )
    except (OSError, TimeoutError) as exc:
        raise InvalidWebhookUrl(
            f"the URL's host {host!r} does not resolve: {exc or 'timeout'}"
        ) from None
    own = {*own_addresses, *await _local_addresses(loop)} - {""}
    if is_gateway_itself([i[4][0] for i in infos], port, own_ports, own):
        raise InvalidWebhookUrl(f"the URL points at this gateway itself ({host}:{port})")


async def _local_addresses(loop: asyncio.AbstractEventLoop) -> set[str]:
    """The addresses this machine's name resolves to (its own, besides the loopback)."""
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(socket.gethostname(), None), RESOLVE_TIMEOUT_S
        )
    except (OSError, TimeoutError):
        return set()
    return {i[4][0] for i in infos}
