"""Start a local MQTT broker: `start_broker`.

`start_broker` is how `ddnn demo`, `ddnn broker` and the tests get a broker without anything
installed by hand: the `mosquitto` binary when there is one (MQTT 5, ddnn/live/broker/mosquitto.py),
else an embedded one that `pip install` brought (MQTT 3.1.1, ddnn/live/broker/embedded.py).
It listens on 127.0.0.1 only unless told otherwise, keeps state only in a `state` folder
(mosquitto), and given a deployment's access files (ddnn/live/access.py) takes only their
accounts and, except rumqttd, enforces their grants. The returned `RunningBroker`
(ddnn/live/broker/running.py) says which MQTT version its clients must use (`.protocol`),
whether it enforces grants (`.enforces_grants`), and hands out client settings (`.settings`).

Design: docs/design/brokers.md (which broker when, what each keeps and enforces).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
from pathlib import Path

from ddnn.core.errors import DDNNError
from ddnn.live.access import ACL, PASSWORDS, read_acl, read_passwords
from ddnn.live.broker.embedded import ENGINES, EmbeddedBroker
from ddnn.live.broker.mosquitto import Bridge, MosquittoBroker
from ddnn.live.broker.running import RunningBroker, TlsFiles
from ddnn.live.mqtt.settings import is_loopback
from ddnn.live.rates import DEFAULT_FRAME_RATE

log = logging.getLogger(__name__)

KINDS = ("auto", "mosquitto", *ENGINES)
START_TIMEOUT = 10.0


def find_mosquitto() -> str | None:
    """The mosquitto binary: on PATH, or where Debian puts it (/usr/sbin is often not on a
    non-root user's PATH)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (mosquitto cannot be told to bind port 0). Another
    process may take it before the broker binds it; `start_broker` then tries another."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    """Whether binding host:port fails the way a broker's bind would (with SO_REUSEADDR, as
    both brokers set it). Checked first because the readiness probe cannot tell our broker
    from another program already listening there."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def start_broker(
    port: int | None = None,
    host: str = "127.0.0.1",
    kind: str = "auto",
    access: Path | None = None,
    tls: TlsFiles | None = None,
    state: Path | None = None,
    bridge: Bridge | None = None,
    grants: bool = True,
    insecure_plaintext: bool = False,
    frame_rate: float = DEFAULT_FRAME_RATE,
) -> RunningBroker:
    """Start a broker on host:port (a free port when None) and return once it accepts
    connections. kind: "mosquitto", "rumqttd" or "amqtt" (embedded, module doc), or "auto":
    mosquitto when the binary is installed, else rumqttd, or amqtt when `grants` must hold.
    `access`: a folder of access files (ddnn/live/access.py) whose accounts alone it takes;
    None: anonymous clients. `grants`: whether anything relies on the broker enforcing the
    access files' topic grants (False: accounts are enough, as when every account is a
    process of the caller's own). `tls`: speak TLS only, with this certificate (mosquitto
    only). `state`: a folder where mosquitto keeps retained messages and sessions across
    restarts (ignored by the embedded brokers). `bridge`: forward topics to and from another
    broker (mosquitto only). `insecure_plaintext`: listen on an address other machines can
    reach without TLS, where anyone on the way reads every password and message (refused
    otherwise). `frame_rate`: the deployment's samples per second, which sizes the token
    bucket per client and topic of amqtt, a broker in Python that a flood would otherwise
    swamp (ddnn/live/rates.py; 0: no limit; the other kinds relay floods at compiled speed)."""
    if tls is None and not is_loopback(host) and not insecure_plaintext:
        raise DDNNError(
            f"refusing to listen on {host} over plain MQTT: other machines could reach it, and "
            "anyone on the way would read every password and message. Give it --tls-cert and "
            "--tls-key, or --insecure-plaintext on a network you trust"
        )
    if access is not None:
        access = Path(access)
        for name in (PASSWORDS, ACL):
            if not (access / name).is_file():
                raise DDNNError(f"{access} has no {name} file: make it with `ddnn credentials`")
        read_acl(access / ACL)  # a broken file is refused here, by every kind, with its line
        read_passwords(access / PASSWORDS)
    if frame_rate < 0:
        raise DDNNError(f"a frame rate is positive (or 0: no limit), got {frame_rate:g}")
    if kind not in KINDS:
        raise DDNNError(f"broker kind must be one of {', '.join(KINDS)}, got {kind!r}")
    binary = find_mosquitto()
    if kind == "mosquitto" and binary is None:
        raise DDNNError(
            "no mosquitto binary found (install the mosquitto package, or use --kind rumqttd "
            "or amqtt)"
        )
    use_mosquitto = kind == "mosquitto" or (kind == "auto" and binary is not None)
    if kind == "auto" and not use_mosquitto:
        kind = "amqtt" if access is not None and grants else "rumqttd"
    if kind == "rumqttd" and access is not None and grants:
        raise DDNNError(
            "rumqttd checks accounts but not their topic grants (any account could write any "
            "topic): use mosquitto or amqtt where the grants must hold"
        )
    if bridge is not None and not use_mosquitto:
        raise DDNNError("a bridge needs the mosquitto broker (install the mosquitto package)")
    if tls is not None:
        if not use_mosquitto:
            raise DDNNError("TLS needs the mosquitto broker (install the mosquitto package)")
        for path in (tls.cert, tls.key):
            if not Path(path).is_file():
                raise DDNNError(f"TLS file {path} does not exist")
    if port == 0:
        port = None  # "any free port", as for a socket: the one chosen is in the URL
    if port is not None and port_in_use(host, port):
        raise DDNNError(f"cannot start a broker on {host}:{port}: the address is in use")
    attempts = 1 if port is not None else 3
    why = ""
    for _ in range(attempts):
        chosen = port if port is not None else free_port(host)
        broker: MosquittoBroker | EmbeddedBroker
        if use_mosquitto:
            broker = MosquittoBroker(binary, host, chosen, access, tls, state, bridge)
        else:
            broker = EmbeddedBroker(kind, host, chosen, access, frame_rate)
        failure = broker.wait_ready(START_TIMEOUT)
        if failure is None:
            log.info("started %r", broker)
            return broker
        details = broker.stderr_text() if isinstance(broker, MosquittoBroker) else ""
        broker.stop()
        why = f"{failure}: {details}" if details else failure
        if port is not None or "in use" not in why.lower():
            break
    raise DDNNError(f"could not start the {broker.kind} broker on {host}:{chosen}: {why}")
