"""The MQTT client every live service uses: a thin, thread-safe wrapper around paho-mqtt 2.x.

Why a wrapper: paho's defaults are wrong for this system in ways that only show under load or
faults (see `shared/notes/mqtt.md`). This module fixes them once:

- The client reconnects by itself (0.1 to 2 s back-off), so a service started before its
  broker, or one whose broker restarts, carries on. Every subscription is made again on each
  (re)connect.
- Two ways to run the network: in paho's own thread (`loop_start`, the default: publish and
  subscribe from any thread), or `threaded=False`, in the thread of the one caller that
  owns the client, inside `get()` (and every other call that waits). The services run that
  way: what they publish goes out when they next wait, every packet since in one `send`, and
  what arrives is read a chunk at a time (`_Paho`), where a threaded client wakes its
  network thread for every outgoing packet (an acknowledgement included) and the caller for
  every incoming one, thread switches and system calls that cost more than the message on a
  virtual machine; and a service whose loop hangs stops answering the broker's keepalive,
  so its last will says it is gone, as it should. paho's private socket calls are what
  `_Paho` overrides: a paho that renamed them would only be slower.
- Callbacks do no work: an incoming message is put on the inbox as `(topic, payload)` and the
  caller's main loop drains it with `get(timeout)`. An exception in a callback cannot kill
  the network thread (`suppress_exceptions`).
- TCP_NODELAY is set on the socket (Nagle adds ~40 ms to small messages), the keepalive is
  short (5 s) so that a dead device's last will fires within seconds, and the queue of
  outgoing QoS 1 messages kept while disconnected is bounded.
- The inbox is bounded too (`MAX_INBOX`), with back-pressure over MQTT 5: a QoS 1 message
  is acknowledged only once the caller has processed it (paho's manual acks; "processed" is
  "asked for the next one"), and the client tells the broker to have at most
  `RECEIVE_MAXIMUM` (half the inbox) unacknowledged ones in flight to it, so a flood waits
  in the broker's bounded queue for this client instead of in this process, and QoS 0
  messages (the services' class scores and feature maps) always find room beside it. What
  still finds the inbox full (a flood of QoS 0, or any message from a 3.1.1 broker, which
  has no such limit and whose messages are acknowledged on arrival) is dropped and counted
  in `dropped`.
- Over MQTT 5 the session outlives a lost connection by `SESSION_EXPIRY` seconds: the
  broker keeps the QoS 1 messages for this client while it reconnects and sends them after,
  with the ones it sent but never saw acknowledged (a duplicate, which receivers drop).
  Not for a member of a shared subscription (`keep_session=False`): mosquitto goes on
  handing a kept session its share of the group's messages while nobody reads them, so a
  dead replica would swallow half of them for a minute; its session ends with its connection.

Protocol version. The client speaks MQTT 5 by default (`BrokerSettings.protocol`); MQTT 3.1.1
is the other choice, made per broker, because the embedded Python broker (amqtt) speaks only
3.1.1. Callers choose it explicitly, there is no guessing: `ddnn.live.broker.start_broker` returns a
`RunningBroker` whose `.protocol` says which version its clients must use and whose
`.settings()` carries it; for an external broker it is part of the broker settings
(`protocol: "3.1.1"`). A broker that rejects the version shows up as a failed connection
whose message (from `MqttClient.connect`) says so.

Last will. The broker publishes a client's will only when the connection is lost uncleanly
(a killed process, a dead network, a missed keepalive). `MqttClient.close()` disconnects
cleanly, which does *not* fire the will: a service that stops on purpose publishes its own
"offline" status (same topic, retained) before it calls `close()`.
"""

from __future__ import annotations

import ipaddress
import logging
import queue
import select
import socket
import ssl
import threading
import time
from collections import deque
from pathlib import Path
from typing import Literal, NamedTuple, cast
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.matcher import MQTTMatcher
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ddnn.core.errors import ConfigError, DDNNError, problems
from ddnn.live.transport import Received, Will, take
from ddnn.live.wire import MAX_PAYLOAD

log = logging.getLogger(__name__)

Protocol = Literal["5", "3.1.1"]
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
_PAHO_PROTOCOLS = {"5": paho.MQTTv5, "3.1.1": paho.MQTTv311}
MAX_QUEUED = 10_000  # outgoing QoS 1 messages kept while disconnected; more are dropped
MAX_INBOX = 1000  # incoming messages waiting for the caller
RECEIVE_MAXIMUM = MAX_INBOX // 2  # QoS 1 ones in flight to us: the rest of the inbox is QoS 0's
SESSION_EXPIRY = 60  # seconds an MQTT 5 broker keeps our session after a lost connection
RECONNECT_DELAY = (0.1, 2.0)  # seconds: the first retry, and the most the back-off grows to
READ_CHUNK = 65536  # bytes an unthreaded client reads from its socket at once
FLUSH_AFTER = 0.002  # seconds an unthreaded client's gathered writes wait at most (busy)
FLUSH_BYTES = 4096  # bytes of gathered writes that are sent at once
MATCH_CACHE = 4096  # topics remembered as matching a filter or not
# (topic, payload, mid, qos, connection): the last three to acknowledge it once done
Incoming = tuple[str, bytes, int, int, int]


class _Inbox:
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


class _Paho(paho.Client):
    """paho's client, with the system calls of an owner loop (unthreaded clients, `owned`)
    gathered: a system call costs 5-30 us on a virtual machine, more than handling the
    packet it carries, and the wake-up of the process at the other end of the socket is
    paid per write.

    - Reads: paho reads every packet with two or three `recv` calls (its type byte, each
      byte of its length, the rest); here the socket is read a chunk at a time and paho
      parses the packets out of the chunk. Bytes in the chunk are invisible to `select`, so
      the owner must read on while `buffered()` (`MqttClient._pump` does).
    - Writes: paho writes every packet (an acknowledgement included) with its own `send`;
      here they are gathered and `flush()` writes them in one, before the owner waits for
      the network, or once `FLUSH_AFTER` seconds or `FLUSH_BYTES` have gathered.
    """

    def __init__(self, *args: object, owned: bool = False, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.owned = owned
        self._chunk = b""
        self._at = 0
        self._chunk_of: object = None  # the socket the chunk came from: a new one drops it
        self._out = bytearray()
        self.out_since = 0.0  # monotonic time the oldest gathered byte was written

    def _sock_recv(self, bufsize: int) -> bytes:
        if not self.owned:
            return super()._sock_recv(bufsize)
        if self._chunk_of is not self._sock or self._at >= len(self._chunk):
            self._chunk, self._at, self._chunk_of = b"", 0, self._sock
            self._chunk = super()._sock_recv(READ_CHUNK)  # BlockingIOError when none
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

    def _sock_close(self) -> None:
        # what paho wrote last (a DISCONNECT, say) goes out before the socket closes
        if self.owned:
            self.flush()
            self._out.clear()
        super()._sock_close()


class BrokerAddress(NamedTuple):
    host: str
    port: int
    tls: bool


def parse_broker_url(url: str) -> BrokerAddress:
    """`mqtt://host[:port]` (plain TCP, port 1883 by default) or `mqtts://host[:port]` (TLS,
    8883). Anything else is a `ConfigError` that names the URL."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ConfigError(f"broker URL {url!r} is not valid: {e}") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ConfigError(
            f"broker URL {url!r} must start with mqtt:// or mqtts:// (got scheme {parts.scheme!r})"
        )
    if not parts.hostname:
        raise ConfigError(f"broker URL {url!r} has no host (expected {scheme}://HOST[:PORT])")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"broker URL {url!r} must be {scheme}://HOST[:PORT], nothing after it")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            f"broker URL {url!r}: give credentials as username/password settings, not in the URL"
        )
    if port == 0:
        raise ConfigError(f"broker URL {url!r}: port 0 is not a port a broker listens on")
    return BrokerAddress(parts.hostname, port or DEFAULT_PORTS[scheme], scheme == "mqtts")


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (localhost, 127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def format_broker_url(host: str, port: int, tls: bool = False) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"{'mqtts' if tls else 'mqtt'}://{shown}:{port}"


class BrokerSettings(BaseModel):
    """Where the broker is and how to talk to it. TLS is on exactly when the URL is mqtts://;
    the tls_* files are then the CA bundle to trust (system CAs when unset) and an optional
    client certificate and key."""

    model_config = ConfigDict(extra="forbid")

    url: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password: str | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_insecure: bool = Field(
        False, description="skip the server host name check (self-signed test brokers only)"
    )
    keepalive: int = Field(
        5, ge=1, le=65535, description="seconds; a lost client's will fires after 1.5x this"
    )
    protocol: Protocol = Field("5", description="MQTT version: 5, or 3.1.1 for brokers without 5")

    @field_validator("url")
    @classmethod
    def _valid_url(cls, url: str) -> str:
        try:
            parse_broker_url(url)
        except ConfigError as e:
            raise ValueError(str(e)) from None  # pydantic turns ValueError into its own error
        return url

    @classmethod
    def from_url(cls, url: str, **fields: object) -> BrokerSettings:
        """Settings for a URL; a bad URL, or a bad value of another field, is a one-line
        `ConfigError` naming it."""
        parse_broker_url(url)
        try:
            return cls(url=url, **fields)
        except ValidationError as e:
            got = e.errors()[0].get("input")
            raise ConfigError(f"broker setting {problems(e, 1)} (got {got!r})") from None

    @property
    def address(self) -> BrokerAddress:
        return parse_broker_url(self.url)

    @property
    def host(self) -> str:
        return self.address.host

    @property
    def port(self) -> int:
        return self.address.port

    @property
    def tls(self) -> bool:
        return self.address.tls


def as_settings(settings_or_url: BrokerSettings | str) -> BrokerSettings:
    if isinstance(settings_or_url, BrokerSettings):
        return settings_or_url
    return BrokerSettings.from_url(settings_or_url)


_TRANSIENT_REFUSALS = {
    "Server unavailable",
    "Server busy",
    "Quota exceeded",
    "Connection rate exceeded",
    "Use another server",
    "Server moved",
}


class MqttClient:
    """One MQTT connection. Thread-safe: publish and subscribe from any thread; incoming
    messages wait in a queue for `get()`.

    `publish` never blocks. QoS 0 while disconnected is dropped and QoS 1 is queued (at most
    `MAX_QUEUED` messages, then dropped); either way `publish` returns False, so that callers
    can report it instead of losing it silently.
    QoS 1 is at-least-once: receivers must tolerate duplicates. A message on a topic that
    none of this client's filters matches is dropped and counted in `unsolicited` (amqtt 0.12
    sends such messages). One thread reads (`get`): taking a message acknowledges the one it
    took before.

    `threaded=False`: the network runs in the caller's thread, in `get()` and the other calls
    that wait (module doc); then one thread only may use the client, and it must call `get()`
    at least every `keepalive` seconds. `keep_session=False`: the broker drops the session
    with the connection (module doc: for the members of a shared subscription).
    """

    def __init__(
        self,
        settings: BrokerSettings | str,
        client_id: str,
        *,
        will: Will | None = None,
        threaded: bool = True,
        keep_session: bool = True,
    ) -> None:
        self.settings = as_settings(settings)
        self.threaded = threaded
        self.keep_session = keep_session
        self._retry_at = 0.0  # unthreaded: when to try connecting next (monotonic)
        self._delay = RECONNECT_DELAY[0]
        self.client_id = client_id
        self.protocol: Protocol = self.settings.protocol
        self._address = self.settings.address
        self.last_error: str | None = None
        self.refused_for_good = False  # a refusal that retrying will not change
        self._inbox: queue.Queue[Incoming] | _Inbox = (
            queue.Queue(MAX_INBOX) if threaded else _Inbox(MAX_INBOX)
        )
        self._taken: tuple[int, int, int] | None = None  # (mid, qos, connection) to ack
        self.dropped = 0  # messages that found the inbox full
        self._lock = threading.Lock()
        self._filters: dict[str, int] = {}
        # The filters again, for matching topics: only added to (under the lock), read by
        # the network thread without it.
        self._matcher = MQTTMatcher()
        self._solicited: dict[str, bool] = {}  # topic -> matched by a filter (a cache)
        self.unsolicited = 0
        self._unacked: deque[paho.MQTTMessageInfo] = deque()  # QoS 1 sent, no PUBACK yet
        self._connected = threading.Event()
        # What the broker refused: publishes (MQTT 5 PUBACK reason codes; a 3.1.1 broker
        # drops them without a word) and subscriptions (SUBACK), filter -> reason.
        self.denied = 0
        self.refused_filters: dict[str, str] = {}
        self._subscribing: dict[int, list[str]] = {}  # SUBSCRIBE mid -> its filters
        self.connections = 0  # successful (re)connects: a broker restart loses retained state
        self._started = False
        self._closed = False

        client = _Paho(
            CallbackAPIVersion.VERSION2,
            owned=not threaded,
            client_id=client_id,
            protocol=_PAHO_PROTOCOLS[self.protocol],
            reconnect_on_failure=True,
            # Acknowledged once processed over MQTT 5 only: a 3.1.1 session here is clean and
            # has no flow control, so nothing would send the message again, and amqtt drops
            # a QoS 1 message still unacknowledged when its publisher disconnects.
            manual_ack=self.protocol == "5",
        )
        client.suppress_exceptions = True
        client.reconnect_delay_set(*RECONNECT_DELAY)  # type: ignore[arg-type]
        client.max_queued_messages_set(MAX_QUEUED)
        if self.settings.username is not None:
            client.username_pw_set(self.settings.username, self.settings.password)
        if self.settings.password and not self._address.tls and not is_loopback(self._address.host):
            log.warning(
                "the password for %s travels in clear text over mqtt:// to another machine: "
                "use mqtts://",
                self.settings.url,
            )
        self._configure_tls(client)
        if will is not None:
            client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        self._unsubscribe_acks: set[int] = set()
        self._client = client

    def _configure_tls(self, client: paho.Client) -> None:
        s = self.settings
        files = {"tls_ca": s.tls_ca, "tls_cert": s.tls_cert, "tls_key": s.tls_key}
        if not self._address.tls:
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
            client.tls_set(
                ca_certs=str(s.tls_ca) if s.tls_ca else None,
                certfile=str(s.tls_cert) if s.tls_cert else None,
                keyfile=str(s.tls_key) if s.tls_key else None,
            )
        except (OSError, ssl.SSLError, ValueError) as e:
            raise ConfigError(f"TLS settings for {s.url}: {e}") from None
        if s.tls_insecure:
            client.tls_insecure_set(True)

    # ------------------------------------------------------------------ paho callbacks
    # These run in paho's network thread: they only record state and hand messages on.

    def _on_connect(self, client, userdata, flags, reason_code: ReasonCode, properties) -> None:
        if reason_code.is_failure:
            self.last_error = f"the broker refused the connection: {reason_code}"
            self.refused_for_good = str(reason_code) not in _TRANSIENT_REFUSALS
            log.warning("MQTT %s: %s", self.settings.url, self.last_error)
            return
        try:
            sock = client.socket()
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # the socket already closed; the reconnect sets it again
        # The subscriptions go out before anyone learns of the connection: a message the
        # caller publishes once connected then follows them, so the broker has sent the
        # retained messages of those subscriptions before it delivers that one.
        with self._lock:
            filters = list(self._filters.items())
            if filters:
                self._subscribed(client.subscribe(filters), [f for f, _ in filters])
            self.last_error = None
            self.connections += 1
            self._delay = RECONNECT_DELAY[0]
            self._connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._lock:
            self._connected.clear()
        if self._closed:
            return
        if self.last_error is None or not self.last_error.startswith("the broker refused"):
            if self.connections > 0:
                self.last_error = f"connection lost: {reason_code}"
            else:
                self.last_error = (
                    f"the connection closed before the broker answered ({reason_code})"
                )
        log.info("MQTT %s: disconnected (%s); reconnecting", self.settings.url, reason_code)

    def _subscribed(self, result: tuple[MQTTErrorCode, int | None], filters: list[str]) -> None:
        rc, mid = result
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
            self._subscribing[mid] = filters

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        filters = self._subscribing.pop(mid, [])
        for topic_filter, code in zip(filters, reason_codes, strict=False):
            if code.is_failure:
                self.refused_filters[topic_filter] = str(code)
                log.error(
                    "MQTT %s: the broker refused the subscription to %s: %s",
                    self.settings.url,
                    topic_filter,
                    code,
                )

    def _on_publish(self, client, userdata, mid, reason_code: ReasonCode, properties) -> None:
        if reason_code.is_failure:
            self.denied += 1
            if self.denied <= 5:
                log.warning(
                    "MQTT %s: the broker refused a publish: %s", self.settings.url, reason_code
                )

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        self._unsubscribe_acks.add(mid)

    def _on_message(self, client, userdata, message: paho.MQTTMessage) -> None:
        topic = message.topic
        # Only what this client subscribed to: some brokers (amqtt 0.12) also send a new
        # client retained messages of other clients' subscriptions.
        solicited = self._solicited.get(topic)
        if solicited is None:
            if len(self._solicited) >= MATCH_CACHE:
                self._solicited.clear()
            solicited = next(self._matcher.iter_match(topic), None) is not None
            self._solicited[topic] = solicited
        if not solicited:
            self.unsolicited += 1
            client.ack(message.mid, message.qos)
            return
        try:
            self._inbox.put_nowait(
                (topic, bytes(message.payload), message.mid, message.qos, self.connections)
            )
        except queue.Full:
            self.dropped += 1
            client.ack(message.mid, message.qos)  # dropped on purpose: counted, not redelivered

    # ------------------------------------------------------------------------- API

    @property
    def url(self) -> str:
        return self.settings.url

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> MqttClient:
        """Begin connecting in the background (retrying until `close()`); returns at once."""
        if self._closed:
            raise DDNNError(f"MQTT client {self.client_id!r} is closed")
        if not self._started:
            self._started = True
            host, port, _ = self._address
            properties = None
            if self.protocol == "5":
                properties = Properties(PacketTypes.CONNECT)
                properties.ReceiveMaximum = RECEIVE_MAXIMUM
                properties.SessionExpiryInterval = SESSION_EXPIRY if self.keep_session else 0
            self._client.connect_async(
                host,
                port,
                keepalive=self.settings.keepalive,
                # never clean over MQTT 5: every process has a client id of its own, and
                # mosquitto saves in its state only sessions that did not start clean
                clean_start=self.protocol != "5",
                properties=properties,
            )
            if self.threaded:
                self._client.loop_start()
        return self

    def _pump(self, timeout: float) -> None:
        """Unthreaded: do the network's work (connect, read, write, keepalive) in this
        thread for up to `timeout` seconds, returning early once something was read. This
        is paho's loop for callers with their own (`loop_read`, `loop_write`, `loop_misc`),
        not `loop()`, which wakes itself through a socket pair on every publish: two more
        system calls per message."""
        client = self._client
        sock = client.socket()
        if sock is None:  # not connected: try again once the back-off allows
            now = time.monotonic()
            if self._closed or now < self._retry_at:
                time.sleep(max(0.0, min(timeout, self._retry_at - now)))
                return
            self._retry_at = now + self._delay
            self._delay = min(2 * self._delay, RECONNECT_DELAY[1])
            try:
                client.reconnect()
            except OSError as e:
                self.last_error = f"connecting failed: {e.strerror or e}"
            return
        if client.want_write():
            client.loop_write()  # into the gathered writes
        flushed = client.flush()
        readable = client.buffered() or bool(getattr(sock, "pending", lambda: 0)())
        if not readable:
            writers = [] if flushed else [sock]
            try:
                ready, writable, _ = select.select([sock], writers, [], timeout)
            except (OSError, ValueError):  # closed under us: the next call reconnects
                ready, writable = [], []
            readable = bool(ready)
            if writable:
                client.flush()
        rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        while readable and rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            rc = client.loop_read()
            readable = client.buffered()
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and client.want_write():
            rc = client.loop_write()
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            rc = client.loop_misc()
        client.flush()
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._retry_at = time.monotonic() + self._delay  # lost: back off before retrying

    def _idle(self, seconds: float) -> None:
        """Wait `seconds`, keeping the network going when it runs in this thread."""
        if self.threaded:
            time.sleep(seconds)
        else:
            self._pump(seconds)

    def connect(self, timeout: float = 10.0) -> MqttClient:
        """Start and wait until connected; on timeout close and raise a `DDNNError` that
        names the broker URL and what went wrong. A refusal that retrying cannot change (a
        wrong protocol version, bad credentials) fails at once."""
        self.start()
        deadline = time.monotonic() + timeout
        while not self.wait_connected(min(0.05, max(0.0, deadline - time.monotonic()))):
            if self.refused_for_good or time.monotonic() >= deadline:
                break
        else:
            self._check_subscriptions(deadline)
            return self
        reason = self.last_error
        self.close()
        if reason is None:
            reason = _diagnose(self.settings)
        hint = ""
        if self.protocol == "5" and "protocol version" in reason.lower():
            hint = " (this broker speaks only MQTT 3.1.1, as the embedded one does: "
            hint += "set protocol 3.1.1)"
        elif self.protocol == "5" and "no MQTT session" in reason:
            # amqtt neither answers nor hangs up on an MQTT 5 CONNECT with properties
            hint = " (a broker that speaks only MQTT 3.1.1, as the embedded one does, never "
            hint += "answers an MQTT 5 client: then set protocol 3.1.1)"
        elif not self.settings.tls and "before the broker answered" in reason:
            hint = " (a TLS port? then use mqtts://)"
        raise DDNNError(
            f"cannot connect to MQTT broker {self.url} within {timeout:g} s: {reason}{hint}"
        )

    def _check_subscriptions(self, deadline: float) -> None:
        """Wait (until `deadline`) for the broker's answer to the subscriptions made on
        connecting, and raise if it refused one: a service that cannot hear its inputs must
        not say it is online."""
        while self._subscribing and time.monotonic() < deadline:
            self._idle(0.005)
        if self.refused_filters:
            topic_filter, reason = next(iter(self.refused_filters.items()))
            self.close()
            who = f"user {self.settings.username!r}" if self.settings.username else "anonymous"
            raise DDNNError(
                f"the broker at {self.url} refused the subscription to {topic_filter} ({reason}) "
                f"for {who}: are these the credentials of this role, for this deployment?"
            )

    def wait_connected(self, timeout: float) -> bool:
        if self.threaded:
            return self._connected.wait(timeout)
        deadline = time.monotonic() + timeout
        while not self._connected.is_set() and (left := deadline - time.monotonic()) > 0:
            self._pump(left)
        return self._connected.is_set()

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """Subscribe now if connected, and again after every reconnect. A shared
        subscription's messages come on the topics of its filter after `$share/<group>/`."""
        matched = topic_filter
        if topic_filter.startswith("$share/"):
            matched = topic_filter.split("/", 2)[2] if topic_filter.count("/") >= 2 else ""
        with self._lock:
            self._filters[topic_filter] = qos
            self._matcher[matched] = True
            self._solicited.clear()
            now = self._connected.is_set()
        if now:
            self._subscribed(self._client.subscribe(topic_filter, qos), [topic_filter])
            if not self.threaded:
                self._client.flush()  # now, not when the owner next waits

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> bool:
        """Send (QoS 0) or queue (QoS 1) a message; False when it was dropped."""
        if qos not in (0, 1):
            raise ValueError(f"qos must be 0 or 1, got {qos}")
        if len(payload) > MAX_PAYLOAD:
            # The broker would cut the connection off, and paho would resend a QoS 1 one
            # after every reconnect, for ever: it is refused here, like any dropped message.
            return False
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return False
        if qos == 1:
            with self._lock:
                self._unacked.append(info)
            self._all_acknowledged()  # forget the acknowledged ones: the deque stays short
        return True

    def wait_published(self, timeout: float) -> bool:
        """Wait until the broker has acknowledged every QoS 1 message published so far;
        False when some were still unacknowledged after `timeout` seconds. A publisher that
        sends much paces itself with it, rather than overflow its queue (`MAX_QUEUED`)."""
        deadline = time.monotonic() + timeout
        while not self._all_acknowledged():
            if time.monotonic() >= deadline:
                return False
            self._idle(0.002)
        return True

    def _all_acknowledged(self) -> bool:
        with self._lock:
            while self._unacked and self._unacked[0].is_published():
                self._unacked.popleft()
            return not self._unacked

    def get(self, timeout: float | None = None) -> Received | None:
        """The next `(topic, payload)`, waiting up to `timeout` seconds (forever if None);
        None when nothing came. The message taken before is acknowledged first: the caller
        has processed it."""
        self._ack_taken()
        if self.threaded:
            item = take(cast("queue.Queue[Incoming]", self._inbox), timeout)
        else:
            client = self._client
            gathered = client.gathered()
            if gathered >= FLUSH_BYTES or (
                gathered and time.monotonic() - client.out_since >= FLUSH_AFTER
            ):
                client.flush()  # busy: the inbox may not run dry for a while
            deadline = None if timeout is None else time.monotonic() + timeout
            inbox = cast(_Inbox, self._inbox)
            pumped = False
            while (item := inbox.pop()) is None:
                left = 1.0 if deadline is None else deadline - time.monotonic()
                if left <= 0 and pumped:
                    break
                self._pump(max(0.0, min(left, 1.0)))  # once at least, even for get(0)
                pumped = True
        if item is None:
            return None
        topic, payload, mid, qos, connection = item
        if qos > 0:
            self._taken = (mid, qos, connection)
        return topic, payload

    def _ack_taken(self) -> None:
        """Acknowledge the message taken last, if it came on the current connection (a
        packet id means nothing on another; the broker sends such a message again)."""
        if self._taken is not None:
            mid, qos, connection = self._taken
            self._taken = None
            if connection == self.connections and self._connected.is_set():
                self._client.ack(mid, qos)

    def close(self, timeout: float = 2.0) -> None:
        """Disconnect cleanly and stop the network thread. Idempotent.

        A clean disconnect does not fire the last will: publish your own offline status
        first. Before the DISCONNECT, and within `timeout` seconds in all, the client
        unsubscribes everything and waits for the broker's acknowledgements of it and of the
        QoS 1 messages already published: paho closes the socket right after writing the
        DISCONNECT, a socket closed with unread data in it is reset, and a broker that sees
        the reset before the DISCONNECT fires the will after all (mosquitto did, for more
        than half of the clean closes right after a QoS 1 publish, without this).
        """
        if self._closed:
            return
        self._closed = True
        if not self._started:
            return
        deadline = time.monotonic() + timeout
        self._ack_taken()
        if self._connected.is_set():
            self._quiesce(deadline)
            while self._connected.is_set() and time.monotonic() < deadline:
                if self._all_acknowledged():
                    break
                self._idle(0.005)
            self._client.disconnect(properties=self._session_end())
            while self._connected.is_set() and time.monotonic() < deadline:
                self._idle(0.005)
        else:
            self._client.disconnect()
        if self.threaded:
            self._client.loop_stop()

    def _session_end(self) -> Properties | None:
        """DISCONNECT properties that end the session with the connection: a client that
        says goodbye wants nothing kept for it."""
        if self.protocol != "5":
            return None
        properties = Properties(PacketTypes.DISCONNECT)
        properties.SessionExpiryInterval = 0
        return properties

    def _quiesce(self, deadline: float) -> None:
        """Stop the broker sending us anything, so that nothing is left unread when paho
        closes the socket: unsubscribe everything and wait for the broker's answer (messages
        sent before it arrive before it)."""
        with self._lock:
            filters = list(self._filters)
        if not filters:
            return
        rc, mid = self._client.unsubscribe(filters)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return
        while mid not in self._unsubscribe_acks and time.monotonic() < deadline:
            if not self._connected.is_set():
                return
            self._idle(0.002)


def _diagnose(settings: BrokerSettings) -> str:
    """Why a connection may have failed, from a plain TCP connect and, for mqtts://, a TLS
    handshake made as the client makes it (paho keeps such errors to itself)."""
    host, port, tls = settings.address
    try:
        sock = socket.create_connection((host, port), timeout=2.0)
    except OSError as e:
        return f"TCP connect failed: {e.strerror or e}"
    with sock:
        if not tls:
            return "the port accepts TCP connections but no MQTT session was established"
        try:
            context = ssl.create_default_context(
                cafile=str(settings.tls_ca) if settings.tls_ca else None
            )
            if settings.tls_cert:
                context.load_cert_chain(
                    str(settings.tls_cert), str(settings.tls_key) if settings.tls_key else None
                )
            if settings.tls_insecure:
                context.check_hostname = False
            with context.wrap_socket(sock, server_hostname=host):
                pass
        except ssl.SSLCertVerificationError as e:
            return f"TLS handshake failed: {e.verify_message} (tls_ca is the CA to trust)"
        except (OSError, ValueError) as e:
            return f"TLS handshake failed: {e}"
        return "TCP and TLS work but no MQTT session was established"
