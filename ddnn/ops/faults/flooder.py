"""A flooding account in a process of its own (the `device-flood` scenario,
ddnn/ops/faults/flood_scenario.py): valid scores of one device, thousands a second.

A process, not a thread of the fault harness: at 5,000 messages a second a thread would
hold the harness's interpreter lock much of the time, and delay the driver's ticks and so
the latencies measured. It imports only the MQTT client, so it starts in a fraction of a
second.

Protocol: one JSON line on stdin (`Order`); it connects and says `ready` on stdout; then
floods between the lines `on <live sample id>` and `off` (`Switch`), and once stdin closes
prints one JSON line: messages sent, and over how many seconds of flooding.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass

import msgpack

from ddnn.live.mqtt.client import MqttClient
from ddnn.live.mqtt.settings import BrokerSettings

BEHIND = 20  # the recent ids flooded start this far behind the live one: decided already
RECENT = 50  # ... and span this many
AHEAD = 1_000_000  # the other half: ids this far ahead, which no tick has started


@dataclass
class Order:
    """What to flood: `topic` at `rate` per second, each message `template` (a msgpack map
    of valid scores) with its sample id and capture time set anew, the ids near the live
    one, which moves on at `frame_rate` from the one each `on` line names."""

    broker: str  # BrokerSettings as JSON: the account's login
    topic: str
    template: str  # hex of the msgpack map
    rate: float
    frame_rate: float


def sample_id(n: int, live: int) -> int:
    """The n-th flooded id: alternately a recent one (late) and one far ahead (unstarted)."""
    if n % 2 == 0:
        return max(0, live - BEHIND - (n // 2) % RECENT)
    return live + AHEAD + n


class Switch:
    """The lines on stdin: `on <live sample id>` starts a burst of flood, `off` ends it,
    the end of the input stops the flooder."""

    def __init__(self) -> None:
        self.on = threading.Event()
        self.stop = threading.Event()
        self.live = 0  # the live sample id when the burst began
        self.since = 0.0  # monotonic: when it began
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in sys.stdin:
            word, _, live = line.strip().partition(" ")
            if word == "on":
                self.live, self.since = int(live or 0), time.monotonic()
                self.on.set()
            elif word == "off":
                self.on.clear()
        self.on.clear()
        self.stop.set()


def flood(order: Order, switch: Switch) -> tuple[int, float]:
    """Send while `switch` is on, until it stops; returns (messages sent, seconds on)."""
    settings = BrokerSettings.model_validate_json(order.broker)
    client = MqttClient(settings, f"ddnn-flooder-{time.monotonic_ns()}", threaded=False)
    client.connect()
    fields = msgpack.unpackb(bytes.fromhex(order.template))
    print("ready", flush=True)
    sent = burst = 0  # all messages, and those of the current burst
    seconds = 0.0
    began: float | None = None
    try:
        while not switch.stop.is_set():
            now = time.monotonic()
            if not switch.on.is_set():
                if began is not None:
                    seconds, began = seconds + now - began, None
                client.get(timeout=0.005)  # keeps the connection alive
                continue
            if began is None:
                began, burst = switch.since, 0
            live = switch.live + int((now - began) * order.frame_rate)
            fields["t0"] = time.time()
            for _ in range(int((now - began) * order.rate) - burst):
                fields["sample"] = sample_id(sent, live)
                client.publish(order.topic, msgpack.packb(fields, use_bin_type=True), qos=0)
                sent += 1
                burst += 1
            client.get(timeout=0.002)  # runs the network: sends what was gathered
    finally:
        if began is not None:
            seconds += time.monotonic() - began
        client.close()
    return sent, seconds


def main() -> None:
    order = Order(**json.loads(sys.stdin.readline()))
    sent, seconds = flood(order, Switch())
    print(json.dumps({"sent": sent, "seconds": round(seconds, 3)}), flush=True)


if __name__ == "__main__":
    main()
