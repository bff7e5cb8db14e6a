"""The embedded brokers: an MQTT broker that `pip install` brings, run in a process of its own.

`start_broker` falls back on one when no mosquitto binary is installed, so that `ddnn demo`,
`ddnn broker` and the tests need nothing installed by hand. Two engines, both speaking MQTT
3.1.1 here and keeping nothing across restarts: rumqttd (Rust, about as fast as mosquitto,
no topic grants), picked where nothing relies on grants, and amqtt (pure Python, about four
times slower, enforces accounts and grants through ddnn/live/broker/embedded_access.py), picked
where something does. A process, not a thread, so that the starter's interpreter lock does
not slow it; started as root, it drops to `broker_user` once it has read what it needs.

Design: docs/design/brokers.md (the two engines, the process, dropping root).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing as mp
import os
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal, NoReturn

from ddnn.core.errors import DDNNError
from ddnn.live.access import PASSWORDS, read_credentials, read_passwords
from ddnn.live.broker.running import RunningBroker, broker_user
from ddnn.live.rates import TopicRates
from ddnn.live.wire import MAX_PACKET

Engine = Literal["rumqttd", "amqtt"]
ENGINES: tuple[Engine, ...] = ("rumqttd", "amqtt")
PARENT_CHECK_S = 1.0  # how often the broker process checks that its starter still runs
# rumqttd keeps what each topic filter carried in a log of segments of about SEGMENT_BYTES
# of payload, the oldest dropped past SEGMENTS: that bounds its memory. With its defaults
# (100 MiB x 10 per filter) a demo at ~400 samples/s grew it by 1.3 MB a second with no end
# in sight; with these it levels off near 100 MB. A bigger packet still goes (its own
# segment), and a reader would have to lag by thousands of samples to miss a message.
SEGMENT_BYTES = 256 * 1024
SEGMENTS = 2


PUBLISH = 3  # the MQTT packet type
QOS_BITS = 0x06  # of a PUBLISH's first byte


class PacketGate:
    """A client's packets as amqtt reads them (its reader adapter), each read whole from the
    socket before amqtt decodes a byte of it, so that two kinds never reach amqtt's decoding:

    - a packet whose fixed header announces more than `limit` bytes: the connection is
      aborted before its body is read (amqtt 0.12 has no setting for it, and would read and
      hold up to 256 MiB), and the read fails the way a lost connection's does;
    - a QoS 0 PUBLISH over its topic's rate (`rates`, this connection's token buckets; None:
      no limit): dropped, counted in `dropped` (docs/design/fairness.md, "The broker")."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        limit: int,
        rates: TopicRates | None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.limit = limit
        self.rates = rates
        self.dropped = 0
        self._ready = bytearray()  # whole packets amqtt has yet to read

    async def read(self, n: int = -1) -> bytes:
        """`n` bytes (-1: what is at hand, at least one packet), as amqtt's own adapter."""
        while not self._ready or len(self._ready) < n:
            self._ready += await self._next_packet()
        if n < 0:
            n = len(self._ready)
        out = bytes(self._ready[:n])
        del self._ready[:n]
        return out

    def feed_eof(self) -> None:
        self._reader.feed_eof()

    async def _next_packet(self) -> bytes:
        """The next packet the client sent that passes the gate (EOF: IncompleteReadError)."""
        while True:
            header = bytearray(await self._reader.readexactly(1))
            length = 0
            for shift in range(0, 28, 7):  # at most four bytes of remaining length
                byte = (await self._reader.readexactly(1))[0]
                header.append(byte)
                length |= (byte & 0x7F) << shift
                if not byte & 0x80:
                    break
            else:
                self._cut_off("a remaining length over four bytes")
            if len(header) + length > self.limit:
                self._cut_off(f"a packet over {self.limit} bytes")
            body = await self._reader.readexactly(length)
            if self._admitted(header[0], body):
                return bytes(header) + body
            self.dropped += 1

    def _admitted(self, first: int, body: bytes) -> bool:
        if self.rates is None or first >> 4 != PUBLISH or first & QOS_BITS:
            return True
        topic = body[2 : 2 + int.from_bytes(body[:2], "big")]
        return self.rates.admit(topic.decode("utf-8", "replace"))

    def _cut_off(self, why: str) -> NoReturn:
        self._writer.transport.abort()
        raise ConnectionResetError(why)


class SnapshotDict(dict):
    """A dict whose loops run over a copy of it, the lists it holds copied too: amqtt 0.12
    awaits inside its loops over its subscriptions, and a client that subscribed meanwhile
    ended the loop with "dictionary changed size during iteration", and the message with it,
    for every subscriber not yet served (seen under the kill storm)."""

    def __iter__(self) -> Iterator[Any]:
        return iter(list(super().__iter__()))

    def items(self) -> list[tuple[Any, Any]]:  # type: ignore[override]
        return [(key, list(value)) for key, value in super().items()]


def _amqtt_broker_class() -> type:
    """amqtt's Broker behind a packet gate, and less three bugs of 0.12.1:

    - A client that sends a packet bigger than MAX_PACKET is cut off as soon as its fixed
      header says so, before its body is read (mosquitto's `max_packet_size`, rumqttd's
      `max_payload_size`), and its QoS 0 messages over their topic's rate are dropped before
      amqtt decodes them: each client's reads go through a `PacketGate`.
    - On every connect it sent the new client the retained messages of every topic filter
      that *any* client subscribes to. Here a client gets those of its own subscriptions.
    - A client subscribing while a message was handed out lost it for others: its
      subscriptions are a `SnapshotDict` here.
    - It acknowledges a QoS 1 PUBLISH when it reads it, hands it out later, and dropped what
      it had not yet handed out when the sender disconnected (of 900 messages published and
      acknowledged in a burst, 469 arrived). Here what the sender's session still holds is
      handed out first, before its will."""
    # Imported here, not at the top: only the broker's own process needs its engine, and
    # importing amqtt (with its dependencies) would slow every service.
    from amqtt.adapters import StreamWriterAdapter
    from amqtt.broker import Broker

    class DdnnBroker(Broker):
        def __init__(self, *args: Any, frame_rate: float, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            if isinstance(getattr(self, "_subscriptions", None), dict):  # else a later amqtt
                self._subscriptions = SnapshotDict(self._subscriptions)
            self.frame_rate = frame_rate
            self.gates: set[PacketGate] = set()  # of the connected clients
            self.dropped_before = 0  # by the gates of clients gone

        def rate_dropped(self) -> int:
            """QoS 0 messages its gates dropped over their topic's rate, since it started."""
            return self.dropped_before + sum(gate.dropped for gate in self.gates)

        if hasattr(Broker, "_client_connected"):  # else a later amqtt: unbounded

            async def stream_connected(
                self,
                reader: asyncio.StreamReader,
                writer: asyncio.StreamWriter,
                listener_name: str,
            ) -> None:
                rates = TopicRates.for_frame_rate(self.frame_rate)
                gate = PacketGate(reader, writer, MAX_PACKET, rates)
                self.gates.add(gate)
                try:
                    await self._client_connected(listener_name, gate, StreamWriterAdapter(writer))
                finally:
                    self.gates.discard(gate)
                    self.dropped_before += gate.dropped

        if hasattr(Broker, "_handle_disconnect") and hasattr(Broker, "_handle_message_delivery"):

            async def _handle_disconnect(self, session: Any, handler: Any, waiter: Any) -> None:
                held = session.delivered_message_queue
                while not held.empty():
                    taken = asyncio.get_running_loop().create_future()
                    taken.set_result(held.get_nowait())
                    if not await self._handle_message_delivery(session, handler, taken):
                        break  # a message that breaks the protocol: amqtt drops the rest
                await super()._handle_disconnect(session, handler, waiter)

        # else a later amqtt; MqttClient drops unsolicited messages anyway
        if hasattr(Broker, "_publish_retained_messages_for_subscription"):

            async def _publish_retained_messages_for_subscription(
                self, subscription: tuple[str, int], session: Any
            ) -> None:
                holders = self._subscriptions.get(subscription[0], ())
                if any(held.client_id == session.client_id for held, _ in holders):
                    await super()._publish_retained_messages_for_subscription(subscription, session)

    return DdnnBroker


def clear_passwords(access: Path) -> dict[str, str]:
    """user -> password of every account of the password file in `access`, from the account
    files beside it: what rumqttd checks logins against (it takes no hashes)."""
    users = read_passwords(access / PASSWORDS)
    clear = {}
    for path in sorted(access.glob("*.json")):
        creds = read_credentials(path)
        if creds.username in users:
            clear[creds.username] = creds.password
    missing = sorted(set(users) - set(clear))
    if missing:
        raise DDNNError(
            f"{access}: rumqttd needs each account's password in clear, and {missing[0]!r} "
            "has no account file there (a merged folder holds only hashes: use mosquitto "
            "or amqtt)"
        )
    return clear


def rumqttd_config(bind: str, passwords: dict[str, str] | None) -> str:
    """rumqttd's TOML: one MQTT 3.1.1 listener; logins checked against `passwords` (None:
    anonymous clients)."""
    lines = [
        "id = 0",
        "[router]",
        "id = 0",
        "max_connections = 10010",
        "max_outgoing_packet_count = 200",
        f"max_segment_size = {SEGMENT_BYTES}",
        f"max_segment_count = {SEGMENTS}",
        "[v4.1]",
        'name = "v4-1"',
        f"listen = {json.dumps(bind)}",
        "next_connection_delay_ms = 1",
        "[v4.1.connections]",
        "connection_timeout_ms = 60000",
        f"max_payload_size = {MAX_PACKET}",
        "max_inflight_count = 100",
        "dynamic_filters = true",
    ]
    if passwords is not None:  # TOML's basic strings are JSON's
        pairs = ", ".join(f"{json.dumps(u)} = {json.dumps(p)}" for u, p in passwords.items())
        lines.append(f"auth = {{ {pairs} }}")
    return "\n".join(lines) + "\n"


def amqtt_config(bind: str, access: Path | None) -> dict[str, Any]:
    # No packet/event logging and no $SYS publisher: both cost time per message.
    plugins: dict[str, Any] = {
        "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
    }
    if access is not None:
        checks = {"access": str(access.resolve())}
        plugins = {
            "ddnn.live.broker.embedded_access.PasswordCheck": checks,
            "ddnn.live.broker.embedded_access.TopicGrants": checks,
        }
    # amqtt's default listener binds 0.0.0.0: bind the one address asked for.
    return {"listeners": {"default": {"type": "tcp", "bind": bind}}, "plugins": plugins}


class EmbeddedBroker(RunningBroker):
    """An embedded broker (module doc) in a spawned process; `kind` is its engine. amqtt
    drops each client's QoS 0 messages over the rates of `frame_rate` (`PacketGate`; 0: no
    limit): rumqttd, like mosquitto, relays a flood at compiled speed and leaves fairness to
    the services' own buckets."""

    def __init__(
        self, engine: Engine, host: str, port: int, access: Path | None, frame_rate: float
    ) -> None:
        super().__init__(engine, host, port, "3.1.1", access)
        self.frame_rate = frame_rate if engine == "amqtt" else None
        self._rate_dropped = 0
        self.enforces_grants = engine == "amqtt" and access is not None
        self.quick_ack = engine == "rumqttd"  # it leaves Nagle's algorithm on (BrokerSettings)
        bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._files: tempfile.TemporaryDirectory[str] | None = None
        config: Any
        if engine == "rumqttd":
            passwords = None if access is None else clear_passwords(Path(access))
            self._files = tempfile.TemporaryDirectory(prefix="ddnn-rumqttd-")  # ours alone
            config = Path(self._files.name) / "rumqttd.toml"
            config.write_text(rumqttd_config(bind, passwords))
            config = str(config)
        else:
            config = amqtt_config(bind, None if access is None else Path(access))
        user = broker_user()
        drop_to = None if user is None else (user.pw_uid, user.pw_gid)
        context = mp.get_context("spawn")
        self._report, child_end = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_serve,
            args=(engine, config, frame_rate, os.getpid(), child_end, drop_to),
            name=f"{engine}-{port}",
            daemon=True,
        )
        self._process.start()
        child_end.close()  # the child's copy stays open: EOF here means it is gone

    def wait_ready(self, timeout: float) -> str | None:
        """None once the broker listens, else why it does not. amqtt reports once its socket
        is bound (no TCP probe, which it would log as an error); rumqttd binds inside a call
        that never returns, so it is probed once it has started."""
        deadline = time.monotonic() + timeout
        if not self._report.poll(timeout):
            return f"the embedded broker did not start within {timeout:g} s"
        try:
            failure = self._report.recv()
        except EOFError:
            return f"the embedded broker exited while starting ({self._process.exitcode})"
        if failure is not None:
            return f"the embedded broker failed to start: {failure}"
        while self.kind == "rumqttd" and not self.accepts():
            if not self._process.is_alive():
                return f"the embedded broker exited while starting ({self._process.exitcode})"
            if time.monotonic() > deadline:
                return f"the embedded broker did not listen within {timeout:g} s"
            time.sleep(0.02)
        return None

    def rate_dropped(self) -> int | None:
        """What amqtt's gates dropped so far, as it last said (once a second)."""
        if not self.limits_rate:
            return None
        while not self._report.closed and self._report.poll():
            try:
                said = self._report.recv()
            except EOFError:
                break
            if isinstance(said, int):  # else why it failed: `_serve`
                self._rate_dropped = said
        return self._rate_dropped

    @property
    def pid(self) -> int:
        return self._process.pid

    def _alive(self) -> bool:
        return self._process.is_alive()

    def _stop(self) -> None:
        self._process.terminate()  # SIGTERM: amqtt closes every connection; rumqttd exits
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._report.close()
        if self._files is not None:
            self._files.cleanup()


def _serve(
    engine: Engine,
    config: Any,
    frame_rate: float,
    parent: int,
    report: Connection,
    drop_to: tuple[int, int] | None,
) -> None:
    """The broker process: serve `config` until SIGTERM or until process `parent` is gone,
    as user and group `drop_to` once started (None: as it is); send None on `report` once
    started, or why it could not start (amqtt then sends what its gates dropped)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the starter (module doc)
    try:
        if engine == "rumqttd":
            _serve_rumqttd(config, parent, report, drop_to)
        else:
            asyncio.run(_serve_amqtt(config, frame_rate, parent, report, drop_to))
    except BaseException as e:  # noqa: BLE001 - reported to the starter, which names it
        with contextlib.suppress(OSError):
            report.send(f"{type(e).__name__}: {e}")


def _drop_privileges(drop_to: tuple[int, int] | None) -> None:
    """Become user and group `drop_to` for good, supplementary groups included."""
    if drop_to is None:
        return
    uid, gid = drop_to
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)


def _serve_rumqttd(
    config_path: str, parent: int, report: Connection, drop_to: tuple[int, int] | None
) -> None:
    # Imported here: see _amqtt_broker_class.
    from iotcore import IotCoreBroker

    # rumqttd logs through Python's logging, an ERROR record for every refused login and
    # many per packet when verbose: the starter's own log says what failed, not this one
    logging.getLogger("rumqttd").setLevel(logging.CRITICAL)
    broker = IotCoreBroker(config_path=config_path)
    broker.check_ports()  # a port in use is reported, not found out by the probe
    # rumqttd binds inside run_forever: ports from 1024 up need no privileges to bind
    _drop_privileges(drop_to)
    threading.Thread(target=_exit_without, args=(parent,), daemon=True).start()
    report.send(None)
    broker.run_forever()  # SIGTERM's default action ends the process: rumqttd has no stop


def _exit_without(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_S)
    os._exit(0)


async def _serve_amqtt(
    config: dict[str, Any],
    frame_rate: float,
    parent: int,
    report: Connection,
    drop_to: tuple[int, int] | None,
) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    # its plugins read the access files here
    broker = _amqtt_broker_class()(config, frame_rate=frame_rate)
    await broker.start()
    _drop_privileges(drop_to)
    report.send(None)
    said = 0
    try:
        while not stop.is_set() and os.getppid() == parent:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PARENT_CHECK_S)
            if (dropped := broker.rate_dropped()) != said:
                report.send(dropped)
                said = dropped
    finally:
        await broker.shutdown()
