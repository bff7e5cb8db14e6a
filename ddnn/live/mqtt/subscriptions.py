"""What one `MqttClient` subscribed to, and what the broker answered.

The client keeps its topic filters so that it can make them again on every (re)connect, and
matches every incoming topic against them: some brokers (amqtt 0.12) also send a new client
retained messages of other clients' subscriptions, which the client drops. It also keeps the
broker's answers: a service that cannot hear its inputs must not say it is online, so
`MqttClient.connect` waits for the SUBACK of its subscriptions and fails on a refusal, and
`MqttClient.close` waits for the UNSUBACK before it disconnects.
"""

from __future__ import annotations

from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.matcher import MQTTMatcher
from paho.mqtt.reasoncodes import ReasonCode

MATCH_CACHE = 4096  # topics remembered as matching a filter or not


class Subscriptions:
    """The filters of one client and the broker's answers to them. The client changes them
    under its lock; the network thread reads `matches` without it (the matcher is only ever
    added to)."""

    def __init__(self) -> None:
        self.filters: dict[str, int] = {}  # filter -> QoS: made again on every (re)connect
        # The filters again, for matching topics: only added to (under the lock), read by
        # the network thread without it.
        self._matcher = MQTTMatcher()
        self._solicited: dict[str, bool] = {}  # topic -> matched by a filter (a cache)
        self.pending: dict[int, list[str]] = {}  # SUBSCRIBE mid -> its filters, until SUBACK
        self.refused: dict[str, str] = {}  # filter -> why the broker refused it (SUBACK)
        self.unsubscribed: set[int] = set()  # UNSUBSCRIBE mids the broker acknowledged

    def add(self, topic_filter: str, qos: int) -> None:
        """Keep `topic_filter`. A shared subscription's messages come on the topics of its
        filter after `$share/<group>/`."""
        matched = topic_filter
        if topic_filter.startswith("$share/"):
            matched = topic_filter.split("/", 2)[2] if topic_filter.count("/") >= 2 else ""
        self.filters[topic_filter] = qos
        self._matcher[matched] = True
        self._solicited.clear()

    def matches(self, topic: str) -> bool:
        """Whether a filter of this client matches `topic`."""
        solicited = self._solicited.get(topic)
        if solicited is None:
            if len(self._solicited) >= MATCH_CACHE:
                self._solicited.clear()
            solicited = next(self._matcher.iter_match(topic), None) is not None
            self._solicited[topic] = solicited
        return solicited

    def sent(self, result: tuple[MQTTErrorCode, int | None], filters: list[str]) -> None:
        """A SUBSCRIBE of `filters` went out (paho's `subscribe` returned `result`): its
        answer is awaited."""
        rc, mid = result
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
            self.pending[mid] = filters

    def answered(self, mid: int, reason_codes: list[ReasonCode]) -> list[tuple[str, ReasonCode]]:
        """The broker's SUBACK to SUBSCRIBE `mid`; returns the filters it refused, and why."""
        filters = self.pending.pop(mid, [])
        refused = [
            (topic_filter, code)
            for topic_filter, code in zip(filters, reason_codes, strict=False)
            if code.is_failure
        ]
        for topic_filter, code in refused:
            self.refused[topic_filter] = str(code)
        return refused
