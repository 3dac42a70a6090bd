"""Reverse WebSocket connections, one per bot account (self_id), and actions over them.

An action's waiter is registered under its `echo` BEFORE the frame goes out, so an answer
that comes back at once is never missed; it is removed whatever happens (answer, timeout,
socket gone). A new connection of a self_id takes over from the old one, which is closed;
the old one's waiters fail at once, so their sends are retried through the outbox.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from typing import Any

from aiohttp import web

from hub import jsoncodec
from hub.errors import SendError

log = logging.getLogger("hub.onebot")


class NotConnected(SendError):
    def __init__(self, self_id: str) -> None:
        super().__init__(f"OneBot account {self_id} is not connected", retryable=True)


class Connection:
    def __init__(self, self_id: str, ws: web.WebSocketResponse) -> None:
        self.self_id = self_id
        self.ws = ws
        self._waiters: dict[str, asyncio.Future[Any]] = {}
        self._lock = asyncio.Lock()
        self._seq = itertools.count(1)
        self._prefix = secrets.token_hex(4)  # echoes of an earlier socket never match this one's
        self.closed = False

    async def call(self, action: str, params: dict[str, Any], wait_s: float) -> Any:
        if self.closed:
            raise NotConnected(self.self_id)
        echo = f"{self._prefix}:{next(self._seq)}"
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters[echo] = fut
        try:
            frame = jsoncodec.dumps({"action": action, "params": params, "echo": echo})
            async with self._lock:
                await self.ws.send_str(frame)
            return await asyncio.wait_for(fut, wait_s)
        except TimeoutError:
            raise SendError(f"{action}: no answer within {wait_s:.0f} s", retryable=True) from None
        except (ConnectionError, RuntimeError) as exc:  # the socket closed under us
            raise SendError(f"{action}: connection lost ({type(exc).__name__})", retryable=True) from None
        finally:
            self._waiters.pop(echo, None)

    def answer(self, frame: dict[str, Any]) -> bool:
        """Hand an action's answer to its waiter; False when nobody waits for that echo."""
        echo = frame.get("echo")
        fut = self._waiters.get(echo) if isinstance(echo, str) else None
        if fut is None or fut.done():
            return False
        fut.set_result(frame)
        return True

    def fail_all(self) -> None:
        self.closed = True
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(ConnectionError("socket closed"))
        self._waiters.clear()


class Registry:
    """The live connection of each self_id."""

    def __init__(self) -> None:
        self._conns: dict[str, Connection] = {}
        self._closing: set[asyncio.Task[bool]] = set()

    def __contains__(self, self_id: str) -> bool:
        conn = self._conns.get(self_id)
        return conn is not None and not conn.closed

    def get(self, self_id: str) -> Connection | None:
        conn = self._conns.get(self_id)
        return conn if conn is not None and not conn.closed else None

    @property
    def accounts(self) -> list[str]:
        return sorted(self._conns)

    def attach(self, conn: Connection) -> None:
        """Make `conn` the account's connection; an older one is closed (taken over).

        The close runs on its own: a dead peer would hold it for the close handshake's timeout.
        """
        old = self._conns.get(conn.self_id)
        self._conns[conn.self_id] = conn
        if old is not None and old is not conn:
            log.info("event=onebot_takeover self_id=%s", conn.self_id)
            old.fail_all()
            task = asyncio.create_task(old.ws.close(code=4000, message=b"replaced by a new connection"))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def detach(self, conn: Connection) -> None:
        conn.fail_all()
        if self._conns.get(conn.self_id) is conn:
            del self._conns[conn.self_id]

    async def close_all(self) -> None:
        conns = list(self._conns.values())
        self._conns.clear()
        for conn in conns:
            conn.fail_all()
        await asyncio.gather(*(c.ws.close(code=1001, message=b"hub shutting down") for c in conns))
