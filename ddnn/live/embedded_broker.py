"""The embedded broker: amqtt, a pure-Python MQTT 3.1.1 broker, run in a thread of this
process.

`start_broker` falls back on it when no mosquitto binary is installed, so that `ddnn demo`,
`ddnn broker` and the tests need nothing installed by hand. It is about four times slower
than mosquitto, speaks MQTT 3.1.1 only and keeps nothing across restarts (the services
announce themselves again on reconnect, and the aggregator counts a device silent for three
status intervals as offline). Given a deployment's access files it enforces them through
ddnn/live/embedded_access.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path
from typing import Any

from ddnn.live.running_broker import RunningBroker


def _amqtt_broker_class() -> type:
    """amqtt's Broker, less one bug of 0.12.1: on every connect it sends the new client the
    retained messages of every topic filter that *any* client subscribes to. Here a client
    gets the retained messages of its own subscriptions only."""
    # Imported here, not at the top: only the embedded broker needs amqtt, and importing it
    # (with its dependencies) would slow every service, which only ever uses the client.
    from amqtt.broker import Broker

    class ScopedRetainBroker(Broker):
        async def _publish_retained_messages_for_subscription(
            self, subscription: tuple[str, int], session: Any
        ) -> None:
            holders = self._subscriptions.get(subscription[0], ())
            if any(held.client_id == session.client_id for held, _ in holders):
                await super()._publish_retained_messages_for_subscription(subscription, session)

    if not hasattr(Broker, "_publish_retained_messages_for_subscription"):
        return Broker  # a later amqtt; MqttClient drops unsolicited messages anyway
    return ScopedRetainBroker


class EmbeddedBroker(RunningBroker):
    """amqtt's broker on its own event loop in a daemon thread."""

    def __init__(self, host: str, port: int, access: Path | None) -> None:
        super().__init__("embedded", host, port, "3.1.1", access)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_request: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name=f"amqtt-{port}", daemon=True)
        self._thread.start()

    def _config(self) -> dict[str, Any]:
        bind = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        # No packet/event logging and no $SYS publisher: both cost time per message.
        plugins: dict[str, Any] = {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
        }
        if self.access is not None:
            checks = {"access": str(self.access.resolve())}
            plugins = {
                "ddnn.live.embedded_access.PasswordCheck": checks,
                "ddnn.live.embedded_access.TopicGrants": checks,
            }
        # amqtt's default listener binds 0.0.0.0: bind the one address asked for.
        return {"listeners": {"default": {"type": "tcp", "bind": bind}}, "plugins": plugins}

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as e:  # reported to start_broker through wait_ready
            self._error = e
        finally:
            self._ready.set()
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(self) -> None:
        self._stop_request = asyncio.Event()
        broker = _amqtt_broker_class()(self._config())
        await broker.start()
        self._ready.set()
        try:
            await self._stop_request.wait()
        finally:
            await broker.shutdown()

    def wait_ready(self, timeout: float) -> str | None:
        if not self._ready.wait(timeout):
            return f"the embedded broker did not start within {timeout:g} s"
        if self._error is not None:
            return f"the embedded broker failed to start: {self._error}"
        # Broker.start() returns once its listening socket is bound: no TCP probe needed (amqtt
        # would log a probe that sends nothing as an error).
        return None

    def _alive(self) -> bool:
        return self._thread.is_alive()

    def _stop(self) -> None:
        loop, request = self._loop, self._stop_request
        if loop is not None and request is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(request.set)
        self._thread.join(10)
