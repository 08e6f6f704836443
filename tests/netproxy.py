"""A TCP forwarder in front of PostgreSQL, for tests that need the database to go away and
come back: cut() drops every connection and refuses new ones at once, restore() accepts again.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from psycopg.conninfo import conninfo_to_dict, make_conninfo


def _upstream(dsn: str) -> tuple[str | None, str, int]:
    """(unix socket path or None, host, port) the DSN points at (first host if several)."""
    params = conninfo_to_dict(dsn)
    host = (params.get("host") or params.get("hostaddr") or "/var/run/postgresql").split(",")[0]
    port = int(str(params.get("port") or 5432).split(",")[0])
    if host.startswith("/"):
        return f"{host}/.s.PGSQL.{port}", host, port
    return None, host, port


class TcpProxy:
    """Forwards 127.0.0.1:<port> to the database of a DSN; see `start_for`."""

    def __init__(self, dsn: str) -> None:
        self._unix_path, self._host, self._port = _upstream(dsn)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.WriteTransport] = set()
        self._tasks: set[asyncio.Task] = set()
        self._flowing = asyncio.Event()  # cleared: frozen, see freeze
        self._flowing.set()

    @classmethod
    async def start_for(cls, dsn: str) -> TcpProxy:
        proxy = cls(dsn)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            proxy.port = s.getsockname()[1]
        await proxy.restore()
        return proxy

    def dsn(self, dsn: str) -> str:
        """The DSN rewritten to connect through this proxy (URI or key=value form)."""
        params = conninfo_to_dict(dsn)
        params.pop("hostaddr", None)
        params.update(host="127.0.0.1", port=str(self.port))
        return make_conninfo(**params)

    async def restore(self) -> None:
        """Accept connections (again) on the same port."""
        if self._server is None:
            self._server = await asyncio.start_server(
                self._serve, "127.0.0.1", self.port, reuse_address=True
            )

    async def cut(self) -> None:
        """Stop listening (new connections are refused) and reset every open connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for transport in list(self._transports):
            transport.abort()  # RST, so that the client notices at once instead of hanging
        self._transports.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def freeze(self) -> None:
        """A server that hangs: connections stay open and new ones are accepted, but no byte
        moves either way until thaw. The client's kernel sees every segment acknowledged (by
        this proxy's), so neither TCP keepalives nor a TCP user timeout notice anything: only
        the client's own deadlines do, as with a database stopped by SIGSTOP, stuck in I/O or
        behind a lock."""
        self._flowing.clear()

    def thaw(self) -> None:
        """What was held back moves on, in order, as when a frozen server resumes."""
        self._flowing.set()

    async def close(self) -> None:
        await self.cut()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._transports.add(writer.transport)
        await self._flowing.wait()
        if writer.transport.is_closing():  # cut while frozen
            self._transports.discard(writer.transport)
            return
        try:
            if self._unix_path:
                up_reader, up_writer = await asyncio.open_unix_connection(self._unix_path)
            else:
                up_reader, up_writer = await asyncio.open_connection(self._host, self._port)
        except OSError:
            writer.transport.abort()
            self._transports.discard(writer.transport)
            return
        self._transports.add(up_writer.transport)
        pumps = [
            asyncio.create_task(_pump(reader, up_writer, self._flowing)),
            asyncio.create_task(_pump(up_reader, writer, self._flowing)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
                self._tasks.discard(task)
            for w in (writer, up_writer):
                self._transports.discard(w.transport)
                w.transport.abort()


async def _pump(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, flowing: asyncio.Event
) -> None:
    with contextlib.suppress(ConnectionError, OSError, asyncio.CancelledError):
        while data := await reader.read(65536):
            await flowing.wait()
            writer.write(data)
            await writer.drain()
