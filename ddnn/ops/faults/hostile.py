"""What a hostile client sends in `ddnn faults`: fuzzed payloads and floods.

The threat is a compromised account of a deployment (ddnn/live/access.py): it may publish
only on the topics its role writes (the broker refuses the rest, see the `forgery`
scenario), but there anything at all. `fuzzed` turns well-formed messages taken from the
deployment's own traffic into the payloads a fuzzer would send: random bytes, flipped bytes,
cut or extended messages, and maps whose fields have the wrong type or absurd values.
`Flood` sends, from one thread, a steady stream of messages that look real but belong to no
real sample, at a fixed rate per kind.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import msgpack

from ddnn.core.roles import Role
from ddnn.live.mqtt.client import MqttClient
from ddnn.live.wire import Topics

# Values that break a field in every way a decoder can be wrong about: types, sizes, NaN,
# float32's limits, nesting.
ODD_VALUES: list[object] = [
    None,
    True,
    -1,
    0,
    2**63 - 1,
    -(2**63),
    1e308,
    float("nan"),
    float("inf"),
    3.4e38,
    -3.4e38,
    "",
    "x" * 300,
    "device-0",
    b"",
    b"\x00" * 13,
    [],
    [1, 2, 3],
    {},
    {"v": 1},
]


def fuzzed(valid: bytes, rng: random.Random) -> bytes:
    """One fuzzed payload made from the well-formed message `valid`."""
    how = rng.randrange(6)
    if how == 0 or not valid:  # noise
        return rng.randbytes(rng.randrange(400))
    if how == 1:  # a few bytes flipped
        data = bytearray(valid)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    if how == 2:  # cut short
        return valid[: rng.randrange(len(valid))]
    if how == 3:  # followed by more
        return valid + rng.randbytes(rng.randint(1, 64))
    try:
        fields = msgpack.unpackb(valid, strict_map_key=False)
    except ValueError:
        return rng.randbytes(rng.randrange(400))
    if not isinstance(fields, dict) or not fields:
        return rng.randbytes(rng.randrange(400))
    key = rng.choice(list(fields))
    if how == 4:  # a field of the wrong type or an absurd value
        fields[key] = rng.choice(ODD_VALUES)
    else:  # a field missing, or one too many
        if rng.random() < 0.5:
            del fields[key]
        else:
            fields[rng.choice(["extra", 7, "kind", "v"])] = rng.choice(ODD_VALUES)
    return msgpack.packb(fields, use_bin_type=True)


def read_topics(topics: Topics, roles: list[Role]) -> list[str]:
    """Every topic a service of the deployment reads."""
    tiers = sorted({role.tier for role in roles} & {"edge", "cloud"})
    out = [topics.tick, *(topics.offload(tier) for tier in tiers)]
    for role in roles:
        out.append(topics.status(role))
        if role.tier in ("device", "edge", "cloud"):
            out.append(topics.scores(role))
        if role.tier in ("device", "edge"):
            out.append(topics.features(role))
    return out


def send_paced(
    client: MqttClient, messages: Iterator[tuple[str, bytes]], rate: float, batch: int = 100
) -> int:
    """Publish `messages` at QoS 1, at most `rate` per second, in batches of `batch` each
    acknowledged by the broker before the next (so the client's queue never overflows);
    returns how many were sent."""
    sent = 0
    start = time.monotonic()
    for topic, payload in messages:
        sent += client.publish(topic, payload, qos=1)
        if sent % batch == 0:
            client.wait_published(10.0)
            time.sleep(max(0.0, start + sent / rate - time.monotonic()))
    client.wait_published(10.0)
    return sent


@dataclass
class Kind:
    """One flooded kind of message: `make(n)` is its n-th message, as (the account that
    sends it, topic, payload)."""

    name: str
    make: Callable[[int], tuple[str, str, bytes]]


class Flood:
    """Sends every kind in `kinds` at `rate` messages per second each (QoS 0, as a flood
    would), from a thread, until `stop()`; `client(account)` gives the connection of an
    account; `sent` counts the messages per kind."""

    def __init__(self, kinds: list[Kind], rate: float, client: Callable[[str], MqttClient]) -> None:
        self.kinds = kinds
        self.rate = rate
        self.client = client
        self.sent = dict.fromkeys((k.name for k in kinds), 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flood", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> Flood:
        self._thread.start()
        return self

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join(30)
        if self.error is not None:
            raise self.error
        return self.sent

    def _run(self) -> None:
        start = time.monotonic()
        try:
            while not self._stop.wait(0.02):
                due = int((time.monotonic() - start) * self.rate)
                for kind in self.kinds:
                    while self.sent[kind.name] < due and not self._stop.is_set():
                        account, topic, payload = kind.make(self.sent[kind.name])
                        self.client(account).publish(topic, payload, qos=0)
                        self.sent[kind.name] += 1
        except BaseException as e:  # reported by stop()
            self.error = e
