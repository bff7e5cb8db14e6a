"""mosquitto, the production broker, as `start_broker` runs it (MQTT 5).

It runs in a process of its own, in a session of its own, from a configuration written
here: one listener, TCP_NODELAY, bounds per client and on packet size, persistence in a
`state` folder, a deployment's access files (ddnn/live/access.py), TLS, and a `Bridge` to
another broker (site to cloud: docs/scale-out.md), each when given. Started as root, it drops
to `broker_user` (`mosquitto`, else `nobody`) once it has bound its port, so the files it
reads after that are copied into its own folder or handed to that user.

Design: docs/design/brokers.md (the configuration, privileges and the files handed over).
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ddnn.core.errors import DDNNError
from ddnn.live.access import ACL, PASSWORDS
from ddnn.live.broker.running import RunningBroker, TlsFiles, broker_user
from ddnn.live.mqtt.settings import BrokerSettings, cleartext_password
from ddnn.live.wire import MAX_PACKET

# What mosquitto holds per client beyond the messages in flight to it (a slow or lost client
# with a live session): a flood waits here, bounded, instead of in the client's memory.
MAX_QUEUED_MESSAGES = 1000
MAX_QUEUED_BYTES = 32 * 2**20
AUTOSAVE_SECONDS = 2  # how often mosquitto saves its state folder, when it has one
STATE_FILE = "mosquitto.db"  # in the state folder

log = logging.getLogger(__name__)


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

    def config(self, name: str, readable: Callable[[Path, str], Path] | None = None) -> str:
        """The lines of mosquitto.conf that make this bridge; `readable(path, name)` is where
        mosquitto can read the file `path` (default: where it is). A password that would go
        out in clear text to another machine is warned about, naming the remote."""
        r = self.remote
        host, port, tls = r.address
        if why := cleartext_password(r):
            log.warning("the bridge %s: %s", name, why)
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
            ca = Path(r.tls_ca).resolve()
            lines.append(f"bridge_cafile {readable(ca, 'bridge-ca.pem') if readable else ca}")
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
        self.user = broker_user()  # None: it runs as this process's user
        self._dir = Path(tempfile.mkdtemp(prefix="ddnn-mosquitto-"))
        try:
            if self.user is not None:
                os.chown(self._dir, self.user.pw_uid, self.user.pw_gid)
            config = self._dir / "mosquitto.conf"
            if access is None:
                auth = "allow_anonymous true\n"
            else:
                auth = "allow_anonymous false\n"
                auth += f"password_file {self._readable(access / PASSWORDS, PASSWORDS)}\n"
                auth += f"acl_file {self._readable(access / ACL, ACL)}\n"
            if self.user is not None:
                auth += f"user {self.user.pw_name}\n"
            if tls is not None:
                auth += f"certfile {self._readable(tls.cert, 'cert.pem')}\n"
                auth += f"keyfile {self._readable(tls.key, 'key.pem')}\n"
            bridge_lines = ""
            if bridge is not None:  # they come last: everything after `connection` belongs to it
                bridge_lines = bridge.config(f"ddnn-bridge-{port}", self._readable)
            state = _state_folder(state, self.user)
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
                f"{bridge_lines}"
            )
        except BaseException:
            shutil.rmtree(self._dir, ignore_errors=True)  # nothing of it is left
            raise
        self._log_path = self._dir / "stderr.log"
        # stderr goes to a file, not a pipe: a pipe nobody reads would stall the broker. Its
        # own session keeps a terminal's Ctrl-C away from it: the owner stops it, after its
        # services have said goodbye through it. It runs in its state folder (module doc).
        with open(self._log_path, "wb") as log_file:
            self._process = subprocess.Popen(
                [binary, "-c", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log_file,
                start_new_session=True,
                cwd=state,
            )

    def _readable(self, path: Path, name: str) -> Path:
        """Where mosquitto can read the file `path`: where it is, or, when it drops to
        another user, a copy of it in the broker's folder that only that user may read."""
        path = Path(path).resolve()
        if self.user is None:
            return path
        copy = self._dir / name
        try:
            shutil.copyfile(path, copy)
        except OSError as e:
            raise DDNNError(f"cannot read {path} for the broker: {e.strerror or e}") from None
        os.chmod(copy, 0o600)
        os.chown(copy, self.user.pw_uid, self.user.pw_gid)
        return copy

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


def _state_folder(state: Path | None, user: pwd.struct_passwd | None) -> Path | None:
    """The state folder, made if missing and, when mosquitto drops to `user`, given to that
    user with its state file: mosquitto writes them after dropping. Nothing else in it
    changes hands (a folder given by mistake loses no more than its owner)."""
    if state is None:
        return None
    state = Path(state).resolve()
    state.mkdir(parents=True, exist_ok=True)
    if user is not None:
        for path in (state, state / STATE_FILE):
            if path.exists():
                os.chown(path, user.pw_uid, user.pw_gid, follow_symlinks=False)
    return state


def _persistence(state: Path | None) -> str:
    """mosquitto's persistence lines: off, or kept in the folder `state`, which it runs in
    (module doc): the file is named relative to it."""
    if state is None:
        return "persistence false\n"
    return (
        f"persistence true\npersistence_file {STATE_FILE}\nautosave_interval {AUTOSAVE_SECONDS}\n"
    )
