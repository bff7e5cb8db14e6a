"""The network side of `MqttClient`: paho's client set up for this system, and its own loop.

`PahoClient` is paho's client with this system's settings applied once (MQTT version,
reconnect back-off, the bound on queued outgoing messages, credentials, TLS, last will).
An unthreaded client (`threaded=False`) runs the network in its owner's thread, inside
`MqttClient.get()` (and every other call that waits) through `PahoClient.pump`, as the
services run it: fewer thread switches and system calls per message, and a hung loop stops
answering the keepalive. paho's private socket calls are what `PahoClient` overrides: a paho
that renamed them would only be slower.

Design: docs/design/mqtt-client.md (the two ways to run the network, and what each costs).
"""

from __future__ import annotations

import contextlib
import queue
import select
import socket
import ssl
import struct
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from ddnn.core.errors import ConfigError
from ddnn.live.mqtt.settings import BrokerSettings
from ddnn.live.transport import Will

_PAHO_PROTOCOLS = {"5": paho.MQTTv5, "3.1.1": paho.MQTTv311}
MAX_QUEUED = 10_000  # outgoing QoS 1 messages kept while disconnected; more are dropped
RECONNECT_DELAY = (0.1, 2.0)  # seconds: the first retry, and the most the back-off grows to
READ_CHUNK = 65536  # bytes an unthreaded client reads from its socket at once
FLUSH_AFTER = 0.002  # seconds an unthreaded client's gathered writes wait at most (busy)
FLUSH_BYTES = 4096  # bytes of gathered writes that are sent at once
# Linux only: elsewhere `BrokerSettings.quick_ack` does nothing
QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)
# (topic, payload, mid, qos, connection): the last three to acknowledge it once done
Incoming = tuple[str, bytes, int, int, int]


class Inbox:
    """The inbox of an unthreaded client: one thread puts and takes, so a deque without a
    `queue.Queue`'s locks."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: deque[Incoming] = deque()

    def put_nowait(self, item: Incoming) -> None:
        if len(self._items) >= self.limit:
            raise queue.Full
        self._items.append(item)

    def pop(self) -> Incoming | None:
        return self._items.popleft() if self._items else None


class PahoClient(paho.Client):
    """paho's client for `settings`, with the system calls of an owner loop (unthreaded
    clients, `owned`) gathered: a system call costs 5-30 us on a virtual machine, more than
    handling the packet it carries, and the wake-up of the process at the other end of the
    socket is paid per write.

    - Reads: paho reads every packet with two or three `recv` calls (its type byte, each
      byte of its length, the rest); here the socket is read a chunk at a time and paho
      parses the packets out of the chunk. Bytes in the chunk are invisible to `select`, so
      the owner must read on while `buffered()` (`pump` does).
    - Writes: paho writes every packet (an acknowledgement included) with its own `send`;
      here they are gathered and `flush()` writes them in one, before the owner waits for
      the network, or once `FLUSH_AFTER` seconds or `FLUSH_BYTES` have gathered.
    """

    def __init__(
        self, settings: BrokerSettings, client_id: str, *, will: Will | None, owned: bool
    ) -> None:
        super().__init__(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=_PAHO_PROTOCOLS[settings.protocol],
            reconnect_on_failure=True,
            # Acknowledged once processed over MQTT 5 only: a 3.1.1 session here is clean and
            # has no flow control, so nothing would send the message again, and amqtt drops
            # a QoS 1 message still unacknowledged when its publisher disconnects.
            manual_ack=settings.protocol == "5",
        )
        self.owned = owned
        self.quick_ack = settings.quick_ack and QUICKACK is not None
        self._chunk = b""
        self._at = 0
        self._chunk_of: object = None  # the socket the chunk came from: a new one drops it
        self._out = bytearray()
        self.out_since = 0.0  # monotonic time the oldest gathered byte was written
        self.retry_at = 0.0  # unthreaded: when to try connecting next (monotonic)
        self.retry_delay = RECONNECT_DELAY[0]  # unthreaded: the back-off after that
        self.admit: Callable[[str], bool] | None = None  # `_handle_publish`: MqttClient.admit

        self.suppress_exceptions = True
        self.reconnect_delay_set(*RECONNECT_DELAY)  # type: ignore[arg-type]
        self.max_queued_messages_set(MAX_QUEUED)
        if settings.username is not None:
            self.username_pw_set(settings.username, settings.password)
        self._configure_tls(settings)
        if will is not None:
            self.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)

    def _configure_tls(self, s: BrokerSettings) -> None:
        files = {"tls_ca": s.tls_ca, "tls_cert": s.tls_cert, "tls_key": s.tls_key}
        if not s.address.tls:
            given = [name for name, path in files.items() if path is not None]
            if given or s.tls_insecure:
                raise ConfigError(
                    f"broker URL {s.url!r} is plain mqtt:// but TLS settings are given "
                    f"({', '.join(given) or 'tls_insecure'}): use mqtts://"
                )
            return
        for name, path in files.items():
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"{name} file {path} does not exist")
        try:
            self.tls_set(
                ca_certs=str(s.tls_ca) if s.tls_ca else None,
                certfile=str(s.tls_cert) if s.tls_cert else None,
                keyfile=str(s.tls_key) if s.tls_key else None,
            )
        except (OSError, ssl.SSLError, ValueError) as e:
            raise ConfigError(f"TLS settings for {s.url}: {e}") from None
        if s.tls_insecure:
            self.tls_insecure_set(True)

    def set_nodelay(self) -> None:
        """Send small packets at once: Nagle's algorithm adds ~40 ms to them."""
        try:
            sock = self.socket()
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # the socket already closed; the reconnect sets it again

    # ------------------------------------------------------------- gathered system calls

    def _recv(self, bufsize: int) -> bytes:
        """paho's read, then with `quick_ack` the acknowledgement of what was read sent at
        once (BrokerSettings.quick_ack)."""
        data = super()._sock_recv(bufsize)
        if self.quick_ack:  # Linux resets it after a while: set again on every read
            with contextlib.suppress(OSError):
                self._sock.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)
        return data

    def _sock_recv(self, bufsize: int) -> bytes:
        if not self.owned:
            return self._recv(bufsize)
        if self._chunk_of is not self._sock or self._at >= len(self._chunk):
            self._chunk, self._at, self._chunk_of = b"", 0, self._sock
            self._chunk = self._recv(READ_CHUNK)  # BlockingIOError when none
            if not self._chunk:
                return b""  # closed by the broker
        out = self._chunk[self._at : self._at + bufsize]
        self._at += len(out)
        return out

    def buffered(self) -> bool:
        """Bytes read from the socket and not yet parsed."""
        return self._chunk_of is self._sock and self._at < len(self._chunk)

    def _sock_send(self, buf: bytes | bytearray) -> int:
        if not self.owned:
            return super()._sock_send(buf)
        if self._sock is None:
            raise ConnectionError("self._sock is None")
        if not self._out:
            self.out_since = time.monotonic()
        self._out += buf
        return len(buf)

    def gathered(self) -> int:
        """Bytes written by paho and not yet sent."""
        return len(self._out)

    def flush(self) -> bool:
        """Send what was gathered, as much as the socket takes now; True once all is sent.
        A broken connection drops it: the next read finds the connection lost."""
        if not self._out:
            return True
        if self._sock is None:
            self._out.clear()
            return True
        try:
            sent = self._sock.send(self._out)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return False
        except OSError:
            self._out.clear()
            return True
        del self._out[:sent]
        return not self._out

    def flush_if_due(self) -> None:
        """Send what was gathered once `FLUSH_BYTES` or `FLUSH_AFTER` seconds of it wait:
        a busy owner's inbox may not run dry for a while."""
        gathered = self.gathered()
        if gathered >= FLUSH_BYTES or (
            gathered and time.monotonic() - self.out_since >= FLUSH_AFTER
        ):
            self.flush()

    def _sock_close(self) -> None:
        # what paho wrote last (a DISCONNECT, say) goes out before the socket closes
        if self.owned:
            self.flush()
            self._out.clear()
        super()._sock_close()

    def _handle_publish(self) -> MQTTErrorCode:
        """Drop a QoS 0 message on a topic over its rate (`admit`, ddnn/live/rates.py)
        before paho decodes its properties and builds a message of it: a flood then costs
        ~7 us a message in this process, not ~25 (measured at 5,000 a second). Those of
        QoS 1 and 2, which must be acknowledged, go the whole way (`MqttClient._on_message`
        asks `admit` for them); so does one without a topic name, which no broker sends a
        client that allowed no topic aliases (this one's CONNECT allows none)."""
        admit = self.admit
        if admit is not None and self._in_packet["command"] & 0x06 == 0:
            packet = self._in_packet["packet"]
            length = struct.unpack_from("!H", packet)[0] if len(packet) >= 2 else 0
            if length and not admit(packet[2 : 2 + length].decode("utf-8", "replace")):
                return MQTTErrorCode.MQTT_ERR_SUCCESS
        return super()._handle_publish()

    # ------------------------------------------------------------------- the owner loop

    def pump(self, timeout: float, reconnect: bool = True) -> str | None:
        """Unthreaded: do the network's work (connect, read, write, keepalive) in this
        thread for up to `timeout` seconds, returning early once something was read; when
        not connected, try again once the back-off allows (never if not `reconnect`).
        Returns why connecting failed, when it tried and failed at once.

        This is paho's loop for callers with their own (`loop_read`, `loop_write`,
        `loop_misc`), not `loop()`, which wakes itself through a socket pair on every
        publish: two more system calls per message."""
        sock = self.socket()
        if sock is None:  # not connected: try again once the back-off allows
            now = time.monotonic()
            if not reconnect or now < self.retry_at:
                time.sleep(max(0.0, min(timeout, self.retry_at - now)))
                return None
            self.retry_at = now + self.retry_delay
            self.retry_delay = min(2 * self.retry_delay, RECONNECT_DELAY[1])
            try:
                self.reconnect()
            except OSError as e:
                return f"connecting failed: {e.strerror or e}"
            return None
        if self.want_write():
            self.loop_write()  # into the gathered writes
        flushed = self.flush()
        readable = self.buffered() or bool(getattr(sock, "pending", lambda: 0)())
        if not readable:
            writers = [] if flushed else [sock]
            try:
                ready, writable, _ = select.select([sock], writers, [], timeout)
            except (OSError, ValueError):  # closed under us: the next call reconnects
                ready, writable = [], []
            readable = bool(ready)
            if writable:
                self.flush()
        rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        while readable and rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            rc = self.loop_read()
            readable = self.buffered()
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self.want_write():
            rc = self.loop_write()
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            rc = self.loop_misc()
        self.flush()
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self.retry_at = time.monotonic() + self.retry_delay  # lost: back off first
        return None
