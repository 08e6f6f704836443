"""How to reach the broker and what to ask for in CONNECT: one object that every connection of a
process shares (the ingress's session, the command link, throw-away probes), instead of the same
keyword list in each signature."""

from __future__ import annotations

import ssl as _ssl
from dataclasses import KW_ONLY, dataclass, field


@dataclass(frozen=True, slots=True)
class ConnectOptions:
    """The broker and the CONNECT parameters of one client.

    Args:
        host: the broker's host name or address.
        port: the broker's TCP port.
        client_id: the MQTT client identifier; a persistent session is the broker's per id.
        username: the broker account, or None where the broker wants none.
        password: its password (not shown in repr).
        protocol: 4 (MQTT 3.1.1) or 5.
        keepalive_s: the keepalive asked for (an MQTT 5 broker may set another).
        session_expiry_s: how long the broker keeps the session after a disconnect (MQTT 5;
            3.1.1 keeps a session that is not clean until it is replaced).
        receive_maximum: QoS 1 messages the broker may have unacknowledged with us (MQTT 5).
        ssl: a TLS context, or None for plain TCP.
    """

    host: str
    port: int
    client_id: str
    _: KW_ONLY
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    protocol: int = 5
    keepalive_s: int = 30
    session_expiry_s: int = 0
    receive_maximum: int = 65535
    ssl: _ssl.SSLContext | None = None

    def __post_init__(self) -> None:
        if self.protocol not in (4, 5):
            raise ValueError("protocol must be 4 (MQTT 3.1.1) or 5")

    @property
    def broker(self) -> str:
        """host:port, for messages and logs."""
        return f"{self.host}:{self.port}"
