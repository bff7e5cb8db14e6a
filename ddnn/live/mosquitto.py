"""mosquitto, the production broker, as `start_broker` runs it (MQTT 5).

It runs in a process of its own, in a session of its own, from a configuration written
here: one listener, TCP_NODELAY, bounds on what it holds per client and on packet size,
persistence in a `state` folder when given one (retained messages and sessions, saved every
few seconds and on a clean stop), the access files of a deployment (ddnn/live/access.py)
when given them, TLS when given a certificate, and a `Bridge` to another broker when asked:
the usual site to cloud topology (docs/scale-out.md).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ddnn.core.errors import DDNNError
from ddnn.live.access import ACL, PASSWORDS
from ddnn.live.broker_settings import BrokerSettings
from ddnn.live.running_broker import RunningBroker, TlsFiles
from ddnn.live.wire import MAX_PACKET

# What mosquitto holds per client beyond the messages in flight to it (a slow or lost client
# with a live session): a flood waits here, bounded, instead of in the client's memory.
MAX_QUEUED_MESSAGES = 1000
MAX_QUEUED_BYTES = 32 * 2**20
AUTOSAVE_SECONDS = 2  # how often mosquitto saves its state folder, when it has one


@dataclass(frozen=True)
class Bridge:
    """A mosquitto bridge from the broker being started to `remote` (a broker URL, with the
    account the bridge logs in with and, for mqtts://, the CA to trust): the usual site to
    cloud topology. `to_remote` are the topics forwarded there, `from_remote` those
    forwarded back (QoS 1 both ways: the bridge is one connection, its acknowledgements
    cost little, and the topics it carries keep what the clients asked for)."""

    remote: BrokerSettings
    to_remote: tuple[str, ...]
    from_remote: tuple[str, ...]

    def config(self, name: str) -> str:
        """The lines of mosquitto.conf that make this bridge."""
        r = self.remote
        host, port, tls = r.address
        lines = [
            f"connection {name}",
            f"address {host}:{port}",
            f"remote_clientid {name}",
            "bridge_protocol_version mqttv311",
            "cleansession true",
            "notifications false",
            "restart_timeout 1",
            "start_type automatic",
        ]
        if r.username is not None:
            lines += [f"remote_username {r.username}", f"remote_password {r.password}"]
        if tls:
            if r.tls_ca is None:
                raise DDNNError(f"a bridge to {r.url} needs the CA to trust (tls_ca)")
            lines.append(f"bridge_cafile {Path(r.tls_ca).resolve()}")
        lines += [f"topic {t} out 1" for t in self.to_remote]
        lines += [f"topic {t} in 1" for t in self.from_remote]
        return "\n".join(lines) + "\n"


class MosquittoBroker(RunningBroker):
    """The mosquitto binary in a process of its own, configured by a file of its own."""

    def __init__(
        self,
        binary: str,
        host: str,
        port: int,
        access: Path | None,
        tls: TlsFiles | None,
        state: Path | None,
        bridge: Bridge | None = None,
    ) -> None:
        super().__init__("mosquitto", host, port, "5", access, tls)
        self._dir = Path(tempfile.mkdtemp(prefix="ddnn-mosquitto-"))
        config = self._dir / "mosquitto.conf"
        if access is None:
            auth = "allow_anonymous true\n"
        else:
            auth = "allow_anonymous false\n"
            auth += f"password_file {(access / PASSWORDS).resolve()}\n"
            auth += f"acl_file {(access / ACL).resolve()}\n"
        if os.geteuid() == 0:
            # Started as root, mosquitto drops to the `mosquitto` user, which can neither read
            # the access files nor write the state folder, both only their owner's: it stays
            # the user that made them.
            auth += f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
        if tls is not None:
            auth += f"certfile {Path(tls.cert).resolve()}\nkeyfile {Path(tls.key).resolve()}\n"
        config.write_text(
            f"listener {port} {host}\n"
            f"{auth}"
            "set_tcp_nodelay true\n"
            f"{_persistence(state)}"
            f"max_queued_messages {MAX_QUEUED_MESSAGES}\n"
            f"max_queued_bytes {MAX_QUEUED_BYTES}\n"
            # No DDNN message comes near MAX_PAYLOAD: refuse bigger packets at the broker,
            # before they cost its memory and every subscriber's.
            f"max_packet_size {MAX_PACKET}\n"
            "log_dest stderr\n"
            "log_type error\n"
            "log_type warning\n"
            # a bridge's lines come last: everything after `connection` belongs to it
            f"{bridge.config(f'ddnn-bridge-{port}') if bridge is not None else ''}"
        )
        self._log_path = self._dir / "stderr.log"
        # stderr goes to a file, not a pipe: a pipe nobody reads would stall the broker. Its
        # own session keeps a terminal's Ctrl-C away from it: the owner stops it, after its
        # services have said goodbye through it.
        with open(self._log_path, "wb") as log_file:
            self._process = subprocess.Popen(
                [binary, "-c", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log_file,
                start_new_session=True,
            )

    def stderr_text(self) -> str:
        try:
            return self._log_path.read_text(errors="replace").strip()
        except OSError:
            return ""

    def wait_ready(self, timeout: float) -> str | None:
        """None once the broker accepts connections; else why it did not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return f"mosquitto exited with status {self._process.returncode}"
            if self.accepts():
                return None
            time.sleep(0.05)
        return f"mosquitto did not accept connections on {self.url} within {timeout:g} s"

    @property
    def pid(self) -> int:
        return self._process.pid

    def _alive(self) -> bool:
        return self._process.poll() is None

    def _stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
        shutil.rmtree(self._dir, ignore_errors=True)


def _persistence(state: Path | None) -> str:
    """mosquitto's persistence lines: off, or kept in the folder `state`."""
    if state is None:
        return "persistence false\n"
    state = Path(state).resolve()
    state.mkdir(parents=True, exist_ok=True)
    return (
        f"persistence true\npersistence_location {state}/\nautosave_interval {AUTOSAVE_SECONDS}\n"
    )
