"""The wire protocol as an AsyncAPI 3 document (MQTT binding), generated, never hand-written:
`DESCRIPTION`, the document's own introduction, says from what."""

from __future__ import annotations

from typing import Any

from ddnn.core.config import ModelConfig
from ddnn.core.roles import Role
from ddnn.live.access import BRIDGE, OBSERVER, grants
from ddnn.live.protocol import PER_TIER, PROTOCOL, Protocol, Whose
from ddnn.live.service import DATA_KINDS, STATUS_EVERY
from ddnn.live.wire import CHANNELS, SCHEMA, Topics, _Message

DESCRIPTION = """\
Everything in it comes from the code that the services run: the channels from the wire
(`CHANNELS`), each payload's JSON Schema from its pydantic model (`model_json_schema`), who
sends and who receives on each channel from the protocol table through the broker accounts'
grants (`ddnn.live.access.grants`, over a deployment with every kind of role: devices, an
edge, the cloud, and the opt-in capture of hard examples), the QoS from the services' rule
(`DATA_KINDS` at QoS 0, the rest at 1), and the retained statuses with their last will.
`docs/asyncapi.yaml` is its output, and a test fails when the two disagree, so that someone
writing a device in another language can trust it.

Payloads travel as msgpack maps of the fields below (`application/msgpack`); a `bytes` field
is a msgpack bin. Topics carry the deployment, the model version (the manifest's) and a role
(`device-<i>`, `edge-<e>`, `cloud`, `aggregator`, `capture`), or the tier an offload request
asks.
"""
DEPLOYMENT, VERSION = "{deployment}", "{model_version}"
# A deployment with every kind of role, so that every channel has its senders and receivers.
EXAMPLE = ModelConfig(n_devices=2, edge={"groups": [[0, 1]]})
PARAMETERS = {
    "deployment": {"description": "the deployment's name (`--deployment`)"},
    "model_version": {"description": "the export's model version (its manifest)"},
    "role": {
        "description": "the sending role: device-<i>, edge-<e>, cloud, aggregator or capture",
        "examples": ["device-0", "edge-0", "cloud"],
    },
    "tier": {
        "description": "the tier asked to fuse the sample (its inputs send it their maps)",
        "enum": ["edge", "cloud"],
    },
}
ACCOUNTS = {  # the kinds of account, by the prefix of their name
    "device": "an end device (`ddnn device`)",
    "edge": "an edge tier (`ddnn edge`)",
    "cloud": "the cloud tier (`ddnn cloud`), or one of its replicas",
    "aggregator": "the local aggregator (`ddnn aggregator`)",
    "trigger": "what ticks the cameras, and reads the decisions",
    "capture": "the hard-example capture (`ddnn capture`)",
}


def _channel_of(topic: str) -> str | None:
    """The channel (the level after the root) a concrete topic or filter belongs to."""
    level = topic.split("/")[3] if topic.count("/") >= 3 else None
    return level if level in CHANNELS else None


def _address(level: str, protocol: Protocol) -> str:
    uses = [u for part in protocol.values() for u in (*part.reads, *part.writes)]
    whose = {u.whose for u in uses if u.channel == level} - {Whose.CHANNEL}
    last = "" if not whose else "/{tier}" if whose <= set(PER_TIER) else "/{role}"
    return f"ddnn/{DEPLOYMENT}/{VERSION}/{level}{last}"


def _schema(message: type[_Message]) -> dict[str, Any]:
    schema = message.model_json_schema()
    schema.pop("title", None)
    return schema


def document(protocol: Protocol = PROTOCOL) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the wire protocol (of another table: a test's)."""
    topics = Topics("d", "v")
    users: dict[tuple[str, str], set[str]] = {}  # (channel, send|receive) -> account kinds
    for account, grant in grants(EXAMPLE, topics, protocol, capture=True).items():
        if account in (OBSERVER, BRIDGE):
            continue  # reads everything / relays: no role of the protocol
        kind = "trigger" if account == "trigger" else Role(account).tier
        for action, filters in (("receive", grant.read), ("send", grant.write)):
            for f in filters:
                if (level := _channel_of(f)) is not None:
                    users.setdefault((level, action), set()).add(kind)
    channels, operations, messages = {}, {}, {}
    for level, message in CHANNELS.items():
        name = message.model_fields["kind"].default
        messages[name] = {
            "name": name,
            "contentType": "application/msgpack",
            "summary": " ".join((message.__doc__ or "").split("\n\n")[0].split()),
            "payload": _schema(message),
        }
        channel: dict[str, Any] = {
            "address": _address(level, protocol),
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
        }
        channel["parameters"] = {
            p: {"$ref": f"#/components/parameters/{p}"}
            for p in PARAMETERS
            if f"{{{p}}}" in channel["address"]
        }
        if level == "job":
            channel["description"] = (
                "cloud replicas receive it through the MQTT 5 shared subscription "
                f"$share/<group>/{channel['address']}: each job reaches one replica"
            )
        if level == "capture":
            channel["description"] = (
                "only where the deployment captures hard examples (opt-in: `ddnn credentials "
                "--capture`), and then also the devices receive the decisions: frames leave "
                "the cameras"
            )
        if level == "status":
            channel["description"] = (
                f"retained; sent on connect and every {STATUS_EVERY:g} s with the counters; "
                "the broker sends the last will (state offline) when a connection is lost"
            )
        channels[level] = channel
        qos = 0 if name in DATA_KINDS else 1
        for action in ("send", "receive"):
            for kind in sorted(users.get((level, action), ())):
                operations[f"{kind}_{action}s_{level}"] = {
                    "action": action,
                    "channel": {"$ref": f"#/channels/{level}"},
                    "summary": f"{ACCOUNTS[kind]} {action}s {name}",
                    "messages": [{"$ref": f"#/channels/{level}/messages/{name}"}],
                    "bindings": {"mqtt": {"qos": qos, "retain": level == "status"}},
                }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "DDNN wire protocol",
            "version": str(SCHEMA),
            # each paragraph on one line
            "description": "\n\n".join(" ".join(p.split()) for p in DESCRIPTION.split("\n\n")),
        },
        "defaultContentType": "application/msgpack",
        "servers": {
            "site": {
                "host": "localhost:1883",
                "protocol": "mqtt",
                "description": "a site's broker (mosquitto, or `ddnn broker`); mqtts on 8883",
                "bindings": {
                    "mqtt": {
                        "lastWill": {
                            "topic": _address("status", protocol),
                            "qos": 1,
                            "retain": True,
                            "message": "a status message with state offline",
                        },
                        "keepAlive": 5,
                    }
                },
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": messages,
            "parameters": PARAMETERS,
        },
    }
