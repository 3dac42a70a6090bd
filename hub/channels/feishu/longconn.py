"""The long connection (`mode = "websocket"`): lark-oapi's ws client, off Hub's event loop.

The SDK's client keeps its event loop in a module global and calls its event handler
synchronously, so it runs on one loop of its own in a daemon thread (one per process). Every
HTTP call it would make goes through the channel's session instead: the endpoint discovery
is done on Hub's loop and handed over. An event frame is acked only after Hub's loop stored
the event in the inbox (`run_coroutine_threadsafe(...).result()` inside the handler); when
storing fails the frame is answered 500 and Feishu delivers it again. Only the holder of the
`leader_lock` connects; a lost connection is retried with a capped, jittered backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import lark_oapi as lark
import lark_oapi.ws.client as lark_ws_client
from lark_oapi.ws.model import ClientConfig

from hub.backoff import BackoffConfig
from hub.storage.db import Database
from hub.storage.leader import LeaderLoop

log = logging.getLogger("hub.feishu")

# A lost connection is tried again after about 1 s, doubling up to a minute.
BACKOFF = BackoffConfig(base=1.0, cap=60.0, low=0.9)
STORE_TIMEOUT_S = 20.0

_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def lark_loop() -> asyncio.AbstractEventLoop:
    """The one loop (and thread) the SDK's ws clients of this process run on."""
    global _loop
    with _loop_lock:
        if _loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="feishu-ws", daemon=True).start()
            # The SDK schedules its receive and handler tasks on this module global.
            lark_ws_client.loop = loop
            _loop = loop
        return _loop


class _Events:
    """The SDK's event handler (duck-typed): stores each event on Hub's loop before the ack."""

    def __init__(
        self, deliver: Callable[[bytes], Coroutine[Any, Any, None]], hub: asyncio.AbstractEventLoop, timeout_s: float
    ):
        self._deliver = deliver
        self._hub = hub
        self._timeout = timeout_s

    def _do_without_validation(self, payload: bytes) -> None:
        # Blocks only the SDK's own loop; an exception here makes the SDK answer 500 (redelivered).
        try:
            asyncio.run_coroutine_threadsafe(self._deliver(payload), self._hub).result(timeout=self._timeout)
        except Exception as exc:
            log.warning("event=feishu_ws_store_failed error=%s", _why(exc))
            raise


class _Socket(lark.ws.Client):
    """One connection of the SDK's client: no reconnecting of its own, no HTTP of its own."""

    def __init__(self, app_id: str, domain: str, endpoint: Callable[[], tuple[str, dict[str, Any]]], events: _Events):
        # The SDK's own log lines name the connection URL (with its ticket) and call every
        # normal close an error: this module logs what matters instead.
        super().__init__(
            app_id, "-", event_handler=events, domain=domain, auto_reconnect=False, log_level=lark.LogLevel.CRITICAL
        )
        self._endpoint = endpoint
        self.closed = asyncio.Event()

    def _get_conn_url(self) -> str:
        url, conf = self._endpoint()
        keys = ("ReconnectCount", "ReconnectInterval", "ReconnectNonce", "PingInterval")
        if all(isinstance(conf.get(k), int) for k in keys):
            self._configure(ClientConfig(conf))
        return url

    async def _receive_message_loop(self) -> None:
        try:
            await super()._receive_message_loop()
        except Exception as exc:  # the connection ended: the supervisor reconnects
            log.info("event=feishu_ws_closed error=%s", type(exc).__name__)
        finally:
            self.closed.set()


class LongConnection(LeaderLoop):
    def __init__(
        self,
        *,
        app_id: str,
        api_base: str,
        endpoint: Callable[[], Coroutine[Any, Any, tuple[str, dict[str, Any]]]],
        deliver: Callable[[bytes], Coroutine[Any, Any, None]],
        db: Database,
    ) -> None:
        super().__init__(db, f"feishu-ws:{app_id}", BACKOFF)
        self._app_id = app_id
        self._api_base = api_base
        self._endpoint = endpoint
        self._deliver = deliver
        # "standby" while another process holds the long connection, "leader" while this one
        # does; `state` says how the connection is while leading.
        self.lead_state = "standby"
        self.connections = 0
        self._client: _Socket | None = None
        self._closing = False

    def standby(self) -> None:
        self.lead_state = "standby"

    def failed(self, exc: Exception) -> None:
        log.warning("event=feishu_ws_failed error=%r", exc)

    async def lead(self) -> None:
        # Cancelled by leader_lock when the lock's connection goes: the socket closes then.
        self.lead_state = "leader"
        try:
            while True:
                await self._connect_once()
        finally:
            self.lead_state = "standby"

    async def _connect_once(self) -> None:
        """One connection, until it ends; then the backoff before the next."""
        hub = asyncio.get_running_loop()
        loop = lark_loop()

        def endpoint() -> tuple[str, dict[str, Any]]:  # called on the SDK's thread
            return asyncio.run_coroutine_threadsafe(self._endpoint(), hub).result(timeout=60)

        events = _Events(self._deliver, hub, STORE_TIMEOUT_S)
        self._closing = False
        started = time.monotonic()
        done: asyncio.Future[Any] = asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(self._serve(endpoint, events), loop)
        )
        try:
            # Not `await done`: a cancelled caller must close the socket below, not cancel it.
            await asyncio.wait({done})
            done.result()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.state = "failing"
            log.warning("event=feishu_ws_connect_failed error=%s", _why(exc))
        finally:
            if not done.done():
                loop.call_soon_threadsafe(self._close_current)
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(done), timeout=5.0)
        if time.monotonic() - started > 60:
            self._backoff.reset()
        if self.state == "running":
            self.state = "connecting"
        await self._backoff.asleep()

    def _close_current(self) -> None:
        self._closing = True
        if self._client is not None:
            self._client.closed.set()

    async def _serve(self, endpoint: Callable[[], tuple[str, dict[str, Any]]], events: _Events) -> None:
        """On the SDK's loop: connect, ping, and wait until the connection ends or is closed."""
        # Built here: the SDK's client starts a task on the loop current at construction.
        client = self._client = _Socket(self._app_id, self._api_base, endpoint, events)
        try:
            await client._connect()
            if self._closing:  # closed while connecting
                client.closed.set()
            self.connections += 1
            self.state = "running"
            self._backoff.reset()
            log.info("event=feishu_ws_connected connections=%d", self.connections)
            ping = asyncio.create_task(client._ping_loop())
            try:
                await client.closed.wait()
            finally:
                ping.cancel()
        finally:
            with contextlib.suppress(Exception):
                await client._disconnect()
            self._client = None


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
