"""Start a local MQTT broker, and measure what a broker can carry.

`start_broker` is how `ddnn demo`, `ddnn broker` and the tests get a broker without anything
installed by hand: the `mosquitto` binary when there is one (the production broker; MQTT 5),
else amqtt, a pure-Python broker run in a thread of this process (MQTT 3.1.1 only, and about
four times slower). Either way it listens on 127.0.0.1 only, unless told otherwise, and
keeps nothing on disk unless given a `state` folder: mosquitto then keeps its retained
messages and its clients' sessions there (saved every few seconds and on a clean stop), so
that a restarted broker still knows which services are online and what they had not yet
received (amqtt keeps nothing across restarts: the services announce themselves again on
reconnect, and the aggregator counts a device silent for three status intervals as offline).
Given the access files of a deployment (ddnn/live/access.py), it takes only their accounts
and enforces their grants (mosquitto natively, the embedded broker through
ddnn/live/embedded_access.py); without them it allows anonymous clients to do anything. The
returned `RunningBroker` says which MQTT version its clients must use (`.protocol`) and
hands out matching client settings (`.settings(account)`).

`broker_ceiling` measures the raw rate a broker relays small messages from one paho client to
another: the ceiling under any service built on it, whatever the model costs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ddnn.core.errors import DDNNError
from ddnn.live.access import ACL, PASSWORDS, login, read_acl, read_passwords
from ddnn.live.mqtt import (
    BrokerSettings,
    MqttClient,
    Protocol,
    as_settings,
    format_broker_url,
)
from ddnn.live.wire import MAX_PAYLOAD

log = logging.getLogger(__name__)

KINDS = ("auto", "mosquitto", "embedded")
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


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class RunningBroker:
    """A broker started by `start_broker`. `stop()` is idempotent; also a context manager."""

    def __init__(
        self,
        kind: str,
        host: str,
        port: int,
        protocol: Protocol,
        access: Path | None,
        tls: TlsFiles | None = None,
    ) -> None:
        self.kind = kind
        self.host = host
        self.port = port
        self.protocol: Protocol = protocol
        self.access = access  # the access files it enforces; None: anonymous clients
        self.tls = tls
        self.url = format_broker_url(host, port, tls is not None)
        self._stopped = False

    def settings(self, account: str | None = None) -> BrokerSettings:
        """Client settings for this broker (URL and protocol filled in), logged in as
        `account` of its access files."""
        settings = BrokerSettings(url=self.url, protocol=self.protocol)
        if account is None:
            return settings
        if self.access is None:
            raise DDNNError(
                f"the broker at {self.url} has no accounts (it takes anonymous clients)"
            )
        return login(settings, self.access, account)

    @property
    def pid(self) -> int | None:
        """The broker's own process (None: it runs inside this one)."""
        return None

    @property
    def running(self) -> bool:
        """False once stopped, or when the broker died by itself."""
        return not self._stopped and self._alive()

    def _alive(self) -> bool:
        raise NotImplementedError

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._stop()

    def _stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> RunningBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "running"
        return f"<RunningBroker {self.kind} {self.url} MQTT {self.protocol} {state}>"


MAX_PACKET = MAX_PAYLOAD + 65536  # the largest payload, with room for topic and headers
# What mosquitto holds per client beyond the messages in flight to it (a slow or lost client
# with a live session): a flood waits here, bounded, instead of in the client's memory.
MAX_QUEUED_MESSAGES = 1000
MAX_QUEUED_BYTES = 32 * 2**20
AUTOSAVE_SECONDS = 2  # how often mosquitto saves its state folder, when it has one


@dataclass(frozen=True)
class TlsFiles:
    """The broker's certificate (PEM, its chain after it) and private key: it then speaks
    TLS only (mqtts://)."""

    cert: Path
    key: Path


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


class _Mosquitto(RunningBroker):
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
            if _accepts(self.host, self.port):
                return None
            time.sleep(0.05)
        return f"mosquitto did not accept connections on {self.url} within {timeout:g} s"

    @property
    def pid(self) -> int | None:
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


def _amqtt_broker_class() -> type:
    """amqtt's Broker, less one bug of 0.12.1: on every connect it sends the new client the
    retained messages of every topic filter that *any* client subscribes to. Here a client
    gets the retained messages of its own subscriptions only."""
    # Imported here, not at the top: only the embedded broker needs amqtt, and importing it
    # (with its dependencies) would slow every service, which only ever uses the client.
    from amqtt.broker import Broker

    class ScopedRetainBroker(Broker):
        async def _publish_retained_messages_for_subscription(
            self, subscription: tuple[str, int], session: Any
        ) -> None:
            holders = self._subscriptions.get(subscription[0], ())
            if any(held.client_id == session.client_id for held, _ in holders):
                await super()._publish_retained_messages_for_subscription(subscription, session)

    if not hasattr(Broker, "_publish_retained_messages_for_subscription"):
        return Broker  # a later amqtt; MqttClient drops unsolicited messages anyway
    return ScopedRetainBroker


class _Embedded(RunningBroker):
    """amqtt's broker on its own event loop in a daemon thread."""

    def __init__(self, host: str, port: int, access: Path | None) -> None:
        super().__init__("embedded", host, port, "3.1.1", access)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_request: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name=f"amqtt-{port}", daemon=True)
        self._thread.start()

    def _config(self) -> dict[str, Any]:
        bind = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        # No packet/event logging and no $SYS publisher: both cost time per message.
        plugins: dict[str, Any] = {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
        }
        if self.access is not None:
            checks = {"access": str(self.access.resolve())}
            plugins = {
                "ddnn.live.embedded_access.PasswordCheck": checks,
                "ddnn.live.embedded_access.TopicGrants": checks,
            }
        # amqtt's default listener binds 0.0.0.0: bind the one address asked for.
        return {"listeners": {"default": {"type": "tcp", "bind": bind}}, "plugins": plugins}

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as e:  # reported to start_broker through wait_ready
            self._error = e
        finally:
            self._ready.set()
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(self) -> None:
        self._stop_request = asyncio.Event()
        broker = _amqtt_broker_class()(self._config())
        await broker.start()
        self._ready.set()
        try:
            await self._stop_request.wait()
        finally:
            await broker.shutdown()

    def wait_ready(self, timeout: float) -> str | None:
        if not self._ready.wait(timeout):
            return f"the embedded broker did not start within {timeout:g} s"
        if self._error is not None:
            return f"the embedded broker failed to start: {self._error}"
        # Broker.start() returns once its listening socket is bound: no TCP probe needed (amqtt
        # would log a probe that sends nothing as an error).
        return None

    def _alive(self) -> bool:
        return self._thread.is_alive()

    def _stop(self) -> None:
        loop, request = self._loop, self._stop_request
        if loop is not None and request is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(request.set)
        self._thread.join(10)


def start_broker(
    port: int | None = None,
    host: str = "127.0.0.1",
    kind: str = "auto",
    access: Path | None = None,
    tls: TlsFiles | None = None,
    state: Path | None = None,
    bridge: Bridge | None = None,
) -> RunningBroker:
    """Start a broker on host:port (a free port when None) and return once it accepts
    connections. kind: "mosquitto", "embedded" (amqtt, in this process), or "auto"
    (mosquitto when the binary is installed, else embedded). `access`: a folder of access
    files (ddnn/live/access.py) whose accounts alone it takes; None: anonymous clients.
    `tls`: speak TLS only, with this certificate (mosquitto only). `state`: a folder where
    mosquitto keeps retained messages and sessions across restarts (ignored by amqtt).
    `bridge`: forward topics to and from another broker (mosquitto only)."""
    if access is not None:
        access = Path(access)
        for name in (PASSWORDS, ACL):
            if not (access / name).is_file():
                raise DDNNError(f"{access} has no {name} file: make it with `ddnn credentials`")
        read_acl(access / ACL)  # a broken file is refused here, by both kinds, with its line
        read_passwords(access / PASSWORDS)
    if kind not in KINDS:
        raise DDNNError(f"broker kind must be one of {', '.join(KINDS)}, got {kind!r}")
    binary = find_mosquitto()
    if kind == "mosquitto" and binary is None:
        raise DDNNError(
            "no mosquitto binary found (install the mosquitto package, or use --kind embedded)"
        )
    use_mosquitto = kind == "mosquitto" or (kind == "auto" and binary is not None)
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
        broker: _Mosquitto | _Embedded
        if use_mosquitto:
            broker = _Mosquitto(binary, host, chosen, access, tls, state, bridge)
        else:
            broker = _Embedded(host, chosen, access)
        failure = broker.wait_ready(START_TIMEOUT)
        if failure is None:
            log.info("started %r", broker)
            return broker
        details = broker.stderr_text() if isinstance(broker, _Mosquitto) else ""
        broker.stop()
        why = f"{failure}: {details}" if details else failure
        if port is not None or "in use" not in why.lower():
            break
    raise DDNNError(f"could not start the {broker.kind} broker on {host}:{chosen}: {why}")


def broker_ceiling(
    settings_or_url: BrokerSettings | str,
    messages: int = 2000,
    payload_bytes: int = 64,
    timeout: float = 30.0,
    topic: str | None = None,
) -> dict[str, Any]:
    """Relay `messages` QoS 0 messages of `payload_bytes` from one paho client through the
    broker to another and time it, from the first publish to the last receipt.

    `topic`: where (default: a new one under `ddnn/bench/`), for a broker whose accounts may
    publish only on their own topics. Bounded: after `timeout` seconds it reports what was
    received by then. The publisher waits whenever it is more than a few hundred messages
    ahead of the subscriber, so that neither the broker nor the client drops QoS 0 messages
    it cannot keep up with; the figure is the rate the pair sustains, not a burst.
    """
    if messages < 1:
        raise DDNNError(f"messages must be at least 1, got {messages}")
    settings = as_settings(settings_or_url)
    stamp = f"{os.getpid()}-{time.monotonic_ns()}"
    topic = topic or f"ddnn/bench/{stamp}"
    payload = bytes(payload_bytes)
    subscriber = MqttClient(settings, f"ddnn-bench-sub-{stamp}")
    publisher = MqttClient(settings, f"ddnn-bench-pub-{stamp}")
    try:
        subscriber.connect()
        publisher.connect()
        received = 0
        subscriber.subscribe(topic, qos=0)
        # The subscription is in place once a probe published after it comes back.
        deadline = time.monotonic() + 5.0
        while True:
            publisher.publish(topic, b"probe")
            if subscriber.get(0.2) is not None:
                break
            if time.monotonic() > deadline:
                raise DDNNError(f"no message came back through the broker at {settings.url}")
        while subscriber.get(0.2) is not None:
            pass  # drain extra probes
        window = 500
        sent = 0
        start = time.perf_counter()
        end = start + timeout
        last = start
        while received < messages:
            now = time.perf_counter()
            if now > end:
                break
            while sent < messages and sent - received < window:
                if publisher.publish(topic, payload):
                    sent += 1
                else:
                    break
            got = subscriber.get(min(0.1, max(0.0, end - now)))
            if got is not None:
                received += 1
                while received < messages and subscriber.get(0) is not None:
                    received += 1
                last = time.perf_counter()
        seconds = max(last - start, 1e-9)
    finally:
        publisher.close()
        subscriber.close()
    return {
        "broker": settings.url,
        "messages": messages,
        "payload_bytes": payload_bytes,
        "received": received,
        "seconds": round(seconds, 4),
        "messages_per_second": round(received / seconds, 1) if received else 0.0,
    }
