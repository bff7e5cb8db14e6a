"""The MQTT client every live service uses: a thin, thread-safe wrapper around paho-mqtt 2.x.

Why a wrapper: paho's defaults are wrong for this system in ways that only show under load or
faults. This module fixes them once: the client reconnects by itself and subscribes again; it
can run the network in its owner's thread (`threaded=False`); callbacks only put
`(topic, payload)` on a bounded inbox (`MAX_INBOX`) that the caller drains with `get(timeout)`,
with back-pressure over MQTT 5 and a rate check per topic before it; it sets TCP_NODELAY and a
short keepalive, and over MQTT 5 (the default; 3.1.1 per broker) keeps its session across a
lost connection. A service that stops on purpose publishes its own "offline" before `close()`.

Design: docs/design/mqtt-client.md (each choice and why; back-pressure; sessions; last will).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import cast

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from ddnn.core.errors import DDNNError
from ddnn.live.mqtt import diagnosis
from ddnn.live.mqtt.network import RECONNECT_DELAY, Inbox, Incoming, PahoClient
from ddnn.live.mqtt.settings import (
    BrokerSettings,
    Protocol,
    as_settings,
    cleartext_password,
)
from ddnn.live.mqtt.subscriptions import Subscriptions
from ddnn.live.transport import Received, Will, take
from ddnn.live.wire import MAX_PACKET, MAX_PAYLOAD

log = logging.getLogger(__name__)

MAX_INBOX = 1000  # incoming messages waiting for the caller
RECEIVE_MAXIMUM = MAX_INBOX // 2  # QoS 1 ones in flight to us: the rest of the inbox is QoS 0's
SESSION_EXPIRY = 60  # seconds an MQTT 5 broker keeps our session after a lost connection


class MqttClient:
    """One MQTT connection. Thread-safe: publish and subscribe from any thread; incoming
    messages wait in a queue for `get()`.

    `publish` never blocks. QoS 0 while disconnected is dropped (`publish` returns False, so
    that callers can report it instead of losing it silently) and QoS 1 is queued, to go out
    once on reconnect (at most `MAX_QUEUED` messages, then dropped: ddnn/live/mqtt/network.py).
    QoS 1 is at-least-once: receivers must tolerate duplicates. A message on a topic that
    none of this client's filters matches is dropped and counted in `unsolicited` (amqtt 0.12
    sends such messages). One thread reads (`get`): taking a message acknowledges the one it
    took before.

    `threaded=False`: the network runs in the caller's thread, in `get()` and the other calls
    that wait (module doc); then one thread only may use the client, and it must call `get()`
    at least every `keepalive` seconds. `keep_session=False`: the broker drops the session
    with the connection (module doc: for the members of a shared subscription).
    `expect_denials=True`: publishes meant to be refused (a fault scenario's forger) are
    counted in `denied` without a warning each.
    """

    def __init__(
        self,
        settings: BrokerSettings | str,
        client_id: str,
        *,
        will: Will | None = None,
        threaded: bool = True,
        keep_session: bool = True,
        expect_denials: bool = False,
    ) -> None:
        self.settings = as_settings(settings)
        self.threaded = threaded
        self.keep_session = keep_session
        self.client_id = client_id
        self.protocol: Protocol = self.settings.protocol
        self._address = self.settings.address
        self.last_error: str | None = None
        self.refused_for_good = False  # a refusal that retrying will not change
        self._inbox: queue.Queue[Incoming] | Inbox = (
            queue.Queue(MAX_INBOX) if threaded else Inbox(MAX_INBOX)
        )
        self._taken: tuple[int, int, int] | None = None  # (mid, qos, connection) to ack
        self.dropped = 0  # messages that found the inbox full
        # Fairness (ddnn/live/rates.py): whether a message on a topic may go on to the inbox,
        # asked before it takes a place there; one refused is dropped (the asker counts it).
        self._admit: Callable[[str], bool] | None = None
        self._lock = threading.Lock()
        self._subscriptions = Subscriptions()  # changed under the lock
        self.unsolicited = 0
        self._unacked: deque[paho.MQTTMessageInfo] = deque()  # QoS 1 sent, no PUBACK yet
        self._connected = threading.Event()
        # What the broker refused: publishes (MQTT 5 PUBACK reason codes; a 3.1.1 broker
        # drops them without a word) and subscriptions (`refused_filters`).
        self.denied = 0
        self.expect_denials = expect_denials  # an attacker's client: refusals are not news
        self.connections = 0  # successful (re)connects: a broker restart loses retained state
        self._started = False
        self._closed = False

        if why := cleartext_password(self.settings):
            log.warning("%s", why)
        client = PahoClient(self.settings, client_id, will=will, owned=not threaded)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        self._client = client

    # ------------------------------------------------------------------ paho callbacks
    # These run in paho's network thread: they only record state and hand messages on.

    def _on_connect(self, client, userdata, flags, reason_code: ReasonCode, properties) -> None:
        if reason_code.is_failure:
            self.last_error = f"the broker refused the connection: {reason_code}"
            self.refused_for_good = str(reason_code) not in diagnosis.TRANSIENT_REFUSALS
            log.warning("MQTT %s: %s", self.settings.url, self.last_error)
            return
        self._client.set_nodelay()
        # The subscriptions go out before anyone learns of the connection: a message the
        # caller publishes once connected then follows them, so the broker has sent the
        # retained messages of those subscriptions before it delivers that one.
        with self._lock:
            filters = list(self._subscriptions.filters.items())
            if filters:
                self._subscriptions.sent(client.subscribe(filters), [f for f, _ in filters])
            self.last_error = None
            self.connections += 1
            self._client.retry_delay = RECONNECT_DELAY[0]
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

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        for topic_filter, code in self._subscriptions.answered(mid, reason_codes):
            log.error(
                "MQTT %s: the broker refused the subscription to %s: %s",
                self.settings.url,
                topic_filter,
                code,
            )

    def _on_publish(self, client, userdata, mid, reason_code: ReasonCode, properties) -> None:
        if reason_code.is_failure:
            self.denied += 1
            if self.denied <= 5 and not self.expect_denials:
                log.warning(
                    "MQTT %s: the broker refused a publish: %s", self.settings.url, reason_code
                )

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        self._subscriptions.unsubscribed.add(mid)

    def _on_message(self, client, userdata, message: paho.MQTTMessage) -> None:
        topic = message.topic
        # Only what this client subscribed to: some brokers (amqtt 0.12) also send a new
        # client retained messages of other clients' subscriptions.
        if not self._subscriptions.matches(topic):
            self.unsolicited += 1
            client.ack(message.mid, message.qos)
            return
        # (QoS 0: asked before paho made a message of it, `PahoClient._handle_publish`)
        if message.qos and self._admit is not None and not self._admit(topic):
            client.ack(message.mid, message.qos)  # over its account's rate: dropped, counted
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
    def admit(self) -> Callable[[str], bool] | None:
        """Asked with the topic of each incoming message before it takes a place in the
        inbox; False drops it (module doc). None: all go in."""
        return self._admit

    @admit.setter
    def admit(self, admit: Callable[[str], bool] | None) -> None:
        self._admit = admit
        self._client.admit = admit  # QoS 0 ones, before paho makes a message of them

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def refused_filters(self) -> dict[str, str]:
        """The subscriptions the broker refused (SUBACK): filter -> reason."""
        return self._subscriptions.refused

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
                # the broker drops, rather than sends, a message bigger than the wire takes
                properties.MaximumPacketSize = MAX_PACKET
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
        """Unthreaded: run the network in this thread for up to `timeout` seconds
        (`PahoClient.pump`); reconnecting, unless closed."""
        failure = self._client.pump(timeout, reconnect=not self._closed)
        if failure is not None:
            self.last_error = failure

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
            reason = diagnosis.diagnose(self.settings)
        hint = diagnosis.hint(self.settings, reason)
        raise DDNNError(
            f"cannot connect to MQTT broker {self.url} within {timeout:g} s: {reason}{hint}"
        )

    def _check_subscriptions(self, deadline: float) -> None:
        """Wait (until `deadline`) for the broker's answer to the subscriptions made on
        connecting, and raise if it refused one: a service that cannot hear its inputs must
        not say it is online."""
        while self._subscriptions.pending and time.monotonic() < deadline:
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
        with self._lock:
            self._subscriptions.add(topic_filter, qos)
            now = self._connected.is_set()
        if now:
            self._subscriptions.sent(self._client.subscribe(topic_filter, qos), [topic_filter])
            if not self.threaded:
                self._client.flush()  # now, not when the owner next waits

    def send(
        self, topic: str, payload: bytes, qos: int = 0, retain: bool = False
    ) -> paho.MQTTMessageInfo | None:
        """Send (QoS 0) or queue (QoS 1) a message; its receipt, or None when it was
        dropped. paho keeps a QoS 1 message published while disconnected and sends it on
        reconnect (MQTT_ERR_NO_CONN): that one is taken, not dropped, so that no caller
        adds a copy of its own (one copy per reconnect, not one per attempt)."""
        if qos not in (0, 1):
            raise ValueError(f"qos must be 0 or 1, got {qos}")
        if len(payload) > MAX_PAYLOAD:
            # The broker would cut the connection off, and paho would resend a QoS 1 one
            # after every reconnect, for ever: it is refused here, like any dropped message.
            return None
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if qos == 1 and info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            # queued: paho sends it on reconnect and marks it published on its PUBACK; its
            # `is_published()` would raise for ever on this code
            info.rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return None
        if qos == 1:
            with self._lock:
                self._unacked.append(info)
            self._all_acknowledged()  # forget the acknowledged ones: the deque stays short
        return info

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> bool:
        """`send`, saying only whether the message was taken."""
        return self.send(topic, payload, qos, retain) is not None

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
            self._client.flush_if_due()  # busy: the inbox may not run dry for a while
            deadline = None if timeout is None else time.monotonic() + timeout
            inbox = cast(Inbox, self._inbox)
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
            filters = list(self._subscriptions.filters)
        if not filters:
            return
        rc, mid = self._client.unsubscribe(filters)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return
        while mid not in self._subscriptions.unsubscribed and time.monotonic() < deadline:
            if not self._connected.is_set():
                return
            self._idle(0.002)
