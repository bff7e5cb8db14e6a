"""The embedded broker: amqtt, a pure-Python MQTT 3.1.1 broker, run in a process of its own.

`start_broker` falls back on it when no mosquitto binary is installed, so that `ddnn demo`,
`ddnn broker` and the tests need nothing installed by hand. It is about four times slower
than mosquitto, speaks MQTT 3.1.1 only and keeps nothing across restarts (the services
announce themselves again on reconnect, and the aggregator counts a device silent for three
status intervals as offline). Given a deployment's access files it enforces them through
ddnn/live/embedded_access.py.

A process, not a thread: amqtt is the bottleneck of a deployment on it (every message goes
through its event loop), and in a thread it shared one interpreter lock with whatever the
starting process does meanwhile, such as `ddnn demo`'s driver decoding every decision. It
is spawned (a fresh interpreter that imports only this module and amqtt), ignores Ctrl-C
(the process that started it stops it, after the services have said goodbye through it),
and stops by itself when that process is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import signal
from multiprocessing.connection import Connection
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
    """amqtt's broker in a spawned process (module doc)."""

    def __init__(self, host: str, port: int, access: Path | None) -> None:
        super().__init__("embedded", host, port, "3.1.1", access)
        context = mp.get_context("spawn")
        self._report, child_end = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_serve,
            args=(self._config(), os.getpid(), child_end),
            name=f"amqtt-{port}",
            daemon=True,
        )
        self._process.start()
        child_end.close()  # the child's copy stays open: EOF here means it is gone

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

    def wait_ready(self, timeout: float) -> str | None:
        """None once the broker listens (amqtt's start() returns once its socket is bound:
        no TCP probe, which amqtt would log as an error), else why it does not."""
        if not self._report.poll(timeout):
            return f"the embedded broker did not start within {timeout:g} s"
        try:
            failure = self._report.recv()
        except EOFError:
            return f"the embedded broker exited while starting ({self._process.exitcode})"
        return None if failure is None else f"the embedded broker failed to start: {failure}"

    @property
    def pid(self) -> int:
        return self._process.pid

    def _alive(self) -> bool:
        return self._process.is_alive()

    def _stop(self) -> None:
        self._process.terminate()  # SIGTERM: amqtt shuts down, closing every connection
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._report.close()


PARENT_CHECK_S = 1.0  # how often the broker process checks that its starter still runs


def _serve(config: dict[str, Any], parent: int, report: Connection) -> None:
    """The broker process: serve `config` until SIGTERM or until process `parent` is gone;
    send None on `report` once listening, or why it could not start."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the starter (module doc)
    try:
        asyncio.run(_main(config, parent, report))
    except BaseException as e:  # noqa: BLE001 - reported to the starter, which names it
        with contextlib.suppress(OSError):
            report.send(f"{type(e).__name__}: {e}")


async def _main(config: dict[str, Any], parent: int, report: Connection) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    broker = _amqtt_broker_class()(config)
    await broker.start()
    report.send(None)
    try:
        while not stop.is_set() and os.getppid() == parent:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PARENT_CHECK_S)
    finally:
        await broker.shutdown()
