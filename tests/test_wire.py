"""The wire protocol: every kind round-trips, and bad payloads fail with their reason."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from ddnn.live.wire import (
    MAX_PAYLOAD,
    Decision,
    Features,
    Offload,
    Scores,
    Status,
    Tick,
    Topics,
    WireError,
    decode,
    encode,
)


def scores(**changes) -> dict:
    m = Scores(sample=3, source="device-2", scores=np.ones(3, "<f4").tobytes(), t0=1.5)
    return {**m.model_dump(), **changes}


@pytest.mark.parametrize(
    "message",
    [
        Status(role="device-0", state="online", t=1.0),
        Tick(sample=0, t=2.0),
        Scores(sample=1, source="edge-1", scores=b"\0" * 12, t0=0.0, received={"device-0": 8}),
        Offload(sample=2, sources=["device-0", "device-5"], to="cloud"),
        Features.of(
            4, "device-3", np.where(np.arange(24) % 3, 1.0, -1.0).reshape(2, 3, 4), "binary"
        ),
        Decision(sample=5, decided=True, class_index=1, exit="local", devices=[0, 1]),
        Decision(sample=6, decided=False, reason="no device answered"),
    ],
)
def test_every_kind_round_trips(message):
    assert decode(encode(message)) == message
    # encode packs the fields as they are: the very bytes of packing the model's dump
    assert encode(message) == msgpack.packb(message.model_dump(), use_bin_type=True)


def test_features_travel_bit_packed_and_unpack_exactly():
    fmap = np.where(np.random.default_rng(0).random((4, 16, 16)) > 0.5, 1.0, -1.0)
    m = Features.of(9, "device-0", fmap, "binary")
    assert len(m.data) == 4 * 16 * 16 // 8  # one bit per activation
    assert np.array_equal(decode(encode(m)).array((4, 16, 16)), fmap)
    with pytest.raises(WireError, match="shape"):
        m.array((4, 8, 32))
    short = m.model_copy(update={"data": m.data[:-1]})
    with pytest.raises(WireError, match="bytes"):
        short.array((4, 16, 16))


@pytest.mark.parametrize(("fmt", "encoding", "bits"), [("2bit", "c2", 2), ("4bit", "c4", 4)])
def test_kbit_features_travel_at_k_bits_per_value_and_unpack_exactly(fmt, encoding, bits):
    z = 2**bits - 1
    codes = np.random.default_rng(1).integers(0, z + 1, (3, 5, 5)).astype(np.float32)
    fmap = codes * np.float32(2 / z) - np.float32(1)  # the values a k-bit tier computes
    m = Features.of(9, "device-0", fmap, fmt)
    assert m.encoding == encoding and len(m.data) == -(-75 * bits // 8)
    assert np.array_equal(decode(encode(m)).array((3, 5, 5)), fmap)
    with pytest.raises(WireError, match="codes do not fill"):
        m.model_copy(update={"data": m.data + b"\0"}).array((3, 5, 5))
    # any byte decodes to values of the k-bit levels: nothing else can come in
    noise = m.model_copy(update={"data": bytes(range(len(m.data)))}).array((3, 5, 5))
    assert set(np.unique(noise)) <= set(np.arange(z + 1, dtype=np.float32) * np.float32(2 / z) - 1)


@pytest.mark.parametrize(
    ("payload", "reason", "detail"),
    [
        (b"\xc1", "not msgpack", "FormatError"),
        (msgpack.packb([1, 2]), "not a msgpack map", "list"),
        (msgpack.packb(scores(v=2)), "unsupported schema version", "2"),
        (msgpack.packb(scores(v=True)), "unsupported schema version", "True"),  # bool is no int
        (msgpack.packb(scores(v=1.0)), "unsupported schema version", "1.0"),
        (msgpack.packb(scores(kind="launch")), "unknown message kind", "launch"),
        (msgpack.packb(scores(kind=[1])), "unknown message kind", "[1]"),  # unhashable
        (msgpack.packb(scores(kind={"a": 1})), "unknown message kind", "{'a': 1}"),
        (msgpack.packb(scores(kind="x" * 10_000)), "unknown message kind", "xxx..."),  # cut
        (msgpack.packb(scores(scores=np.array([1, np.nan, 0], "<f4").tobytes())), None, "NaN"),
        (msgpack.packb(scores(scores=b"\0" * 5)), None, "whole number of float32"),
        (msgpack.packb(scores(scores=np.array([3.4e38, 0, 0], "<f4").tobytes())), None, "beyond"),
        (msgpack.packb(scores(sample=-1)), None, "sample"),
        (msgpack.packb(scores(source="device-x")), None, "source"),
        (msgpack.packb(scores(source="device-03")), None, "not a role"),  # one spelling per role
        (msgpack.packb(scores(received={"device-0003": 4})), None, "not a role"),
        (msgpack.packb(scores(sample="3")), None, "sample"),
        (msgpack.packb(scores(extra=1)), None, "extra"),
        (b"\0" * (MAX_PAYLOAD + 1), "payload over the size limit", str(MAX_PAYLOAD)),
    ],
)
def test_bad_payloads_fail_with_a_fixed_reason_and_their_detail(payload, reason, detail):
    """Services count refusals by `reason`, one of a few fixed templates, so hostile input
    cannot grow their counters; the detail, cut short, is what they log."""
    with pytest.raises(WireError) as raised:
        decode(payload)
    assert raised.value.reason == (reason or "bad scores message")
    assert detail in raised.value.detail and len(raised.value.detail) <= 200


def decision(**changes) -> dict:
    m = Decision(sample=5, decided=True, class_index=1, exit="local", devices=[0, 1])
    return {**m.model_dump(), **changes}


def status(**changes) -> dict:
    return {**Status(role="aggregator", state="online", t=1.0).model_dump(), **changes}


@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        # no NaN or infinity in any float field: a NaN time compares false with everything,
        # a NaN latency turns every percentile a reader takes into NaN
        (msgpack.packb({"v": 1, "kind": "tick", "sample": 1, "t": float("nan")}), "finite"),
        (msgpack.packb(scores(t0=float("inf"))), "finite"),
        (msgpack.packb(status(t=float("-inf"))), "finite"),
        (msgpack.packb(decision(latency_ms=float("nan"))), "finite"),
        (msgpack.packb(decision(entropy=float("inf"))), "finite"),
        (msgpack.packb(decision(entropy=1.5)), "entropy"),  # normalized: in [0, 1]
        (msgpack.packb(decision(bytes={"device_scores": -5})), "bytes"),
        (msgpack.packb(decision(devices=[-1])), "devices"),
        (msgpack.packb(decision(class_index=-2)), "class_index"),
        # names a peer chooses are bounded: one message cannot hold megabytes of keys
        (msgpack.packb(decision(bytes={"x" * 200: 1})), "bytes"),
        (msgpack.packb(decision(reason="r" * 600)), "reason"),
        (msgpack.packb(status(counters={"c" * 200: 1})), "counters"),
        (msgpack.packb(status(rejected={"c" * 200: 1})), "rejected"),
    ],
)
def test_numbers_are_finite_and_names_bounded_in_every_kind(payload, detail):
    with pytest.raises(WireError) as raised:
        decode(payload)
    assert raised.value.reason.startswith("bad ") and detail in raised.value.detail


def test_topics_carry_deployment_and_model_version():
    t = Topics("site-a", "abc123")
    assert t.scores("device-1") == "ddnn/site-a/abc123/scores/device-1"
    assert t.decisions == "ddnn/site-a/abc123/decisions"
    with pytest.raises(Exception, match="cannot be part of an MQTT topic"):
        Topics("a/b", "v1")


def test_an_offload_request_goes_on_the_topic_of_the_tier_it_asks():
    """The tier an offload request asks is said twice, by its topic and its `to`: one that
    disagrees is refused, so that a request read as the cloud's cannot ask the edges."""
    t = Topics("site-a", "v1")
    asks_edge = Offload(sample=3, sources=["device-0"], to="edge")
    assert t.offload("edge") == "ddnn/site-a/v1/offload/edge"
    t.check(t.offload("edge"), asks_edge)
    with pytest.raises(WireError, match="other than its topic's"):
        t.check(t.offload("cloud"), asks_edge)
