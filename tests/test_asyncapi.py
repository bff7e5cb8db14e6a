"""`ddnn asyncapi` (ddnn/live/asyncapi.py): the AsyncAPI 3 document of the wire protocol, its
structure, and docs/asyncapi.yaml kept equal to what the code generates."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from ddnn.cli.protocol import render
from ddnn.live.asyncapi import document
from ddnn.live.wire import CHANNELS, KINDS
from tests.helpers import ddnn

DOCS = Path(__file__).parent.parent / "docs" / "asyncapi.yaml"


def resolve(doc: dict, ref: str) -> dict:
    """A local JSON pointer ("#/a/b") into `doc`; fails when it points nowhere."""
    assert ref.startswith("#/"), ref
    node = doc
    for part in ref[2:].split("/"):
        assert part in node, f"{ref} points nowhere"
        node = node[part]
    return node


def test_the_checked_in_document_is_what_the_code_generates():
    """Change a message model, a topic or a grant and regenerate: `ddnn asyncapi --out
    docs/asyncapi.yaml`."""
    assert DOCS.read_text() == render(), "docs/asyncapi.yaml is stale: run ddnn asyncapi --out"
    assert yaml.safe_load(DOCS.read_text()) == document()


def test_the_document_has_asyncapi_3_structure_and_covers_every_message_kind():
    doc = document()
    assert doc["asyncapi"] == "3.0.0" and doc["info"]["title"] and doc["info"]["version"]
    assert doc["servers"]["site"]["protocol"] == "mqtt"
    assert set(doc["components"]["messages"]) == set(KINDS)
    assert set(doc["channels"]) == set(CHANNELS)
    for name, channel in doc["channels"].items():
        assert channel["address"].startswith("ddnn/{deployment}/{model_version}/" + name)
        for parameter in channel["parameters"]:
            assert "{" + parameter + "}" in channel["address"]
            assert resolve(doc, channel["parameters"][parameter]["$ref"])["description"]
        for ref in channel["messages"].values():
            message = resolve(doc, ref["$ref"])
            payload = message["payload"]
            assert payload["type"] == "object" and {"kind", "v"} <= set(payload["properties"])
            assert payload["properties"]["kind"]["const"] == message["name"]
    for name, op in doc["operations"].items():
        assert op["action"] in ("send", "receive"), name
        channel = resolve(doc, op["channel"]["$ref"])
        for ref in op["messages"]:
            assert ref["$ref"].startswith(op["channel"]["$ref"] + "/messages/")
            resolve(doc, ref["$ref"])
        assert op["bindings"]["mqtt"]["qos"] in (0, 1)
        assert op["bindings"]["mqtt"]["retain"] == channel["address"].endswith("status/{role}")
    # every channel has someone who sends on it and someone who receives it
    for name in doc["channels"]:
        actions = {op["action"] for op in doc["operations"].values()
                   if op["channel"]["$ref"] == f"#/channels/{name}"}  # fmt: skip
        assert actions == {"send", "receive"}, name


def test_who_sends_what_follows_the_services():
    ops = document()["operations"]
    assert ops["device_sends_scores"]["bindings"]["mqtt"]["qos"] == 0  # data at QoS 0
    assert ops["aggregator_sends_decisions"]["bindings"]["mqtt"]["qos"] == 1
    assert "trigger_sends_tick" in ops and "device_receives_tick" in ops
    assert "cloud_receives_job" in ops and "aggregator_sends_job" in ops
    assert "cloud_sends_features" not in ops  # nothing above the cloud takes maps
    assert "device_receives_scores" not in ops  # a device reads ticks and offloads only


def test_the_command_prints_yaml_or_json_or_writes_a_file(tmp_path):
    assert yaml.safe_load(ddnn("asyncapi").stdout) == document()
    assert json.loads(ddnn("asyncapi", "--json").stdout) == document()
    ddnn("asyncapi", "--out", str(tmp_path / "a.yaml"))
    assert (tmp_path / "a.yaml").read_text() == DOCS.read_text()
