"""What `start_broker` returns: a broker running on this machine, whichever kind it is.

`RunningBroker` is the one interface to every kind (mosquitto, ddnn/live/broker/mosquitto.py, and
the embedded rumqttd and amqtt, ddnn/live/broker/embedded.py): where it listens (`.url`),
which MQTT version its clients must use (`.protocol`), whether it enforces the topic grants
of its access files (`.enforces_grants`), client settings that match (`.settings(account)`),
and `stop()`.
"""

from __future__ import annotations

import os
import pwd
import socket
from dataclasses import dataclass
from pathlib import Path

from ddnn.core.errors import DDNNError
from ddnn.live.access import login
from ddnn.live.mqtt.settings import BrokerSettings, Protocol, format_broker_url

# Who a broker started as root runs as, the first that exists: `mosquitto`, as the Debian
# package makes, else `nobody`.
UNPRIVILEGED_USERS = ("mosquitto", "nobody")


def broker_user() -> pwd.struct_passwd | None:
    """The user a broker drops to once it has bound its port: None unless this process is
    root, which no broker needs to stay (a flaw in it then gives away no more than that user)."""
    if os.geteuid() != 0:
        return None
    for name in UNPRIVILEGED_USERS:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise DDNNError(
        "started as root, the broker must drop to an unprivileged user, and neither "
        f"{' nor '.join(UNPRIVILEGED_USERS)} exists: create the mosquitto user (the Debian "
        "package does), or start the broker as another user"
    )


@dataclass(frozen=True)
class TlsFiles:
    """The broker's certificate (PEM, its chain after it) and private key: it then speaks
    TLS only (mqtts://)."""

    cert: Path
    key: Path


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
        self.enforces_grants = access is not None  # False where it checks logins only
        self.quick_ack = False  # whether its clients must ack at once (BrokerSettings)
        # what its own token buckets are sized for (0: off); None where it has none
        self.frame_rate: float | None = None
        self.tls = tls
        self.url = format_broker_url(host, port, tls is not None)
        self._stopped = False

    def settings(self, account: str | None = None) -> BrokerSettings:
        """Client settings for this broker (URL and protocol filled in), logged in as
        `account` of its access files."""
        settings = BrokerSettings(url=self.url, protocol=self.protocol, quick_ack=self.quick_ack)
        if account is None:
            return settings
        if self.access is None:
            raise DDNNError(
                f"the broker at {self.url} has no accounts (it takes anonymous clients)"
            )
        return login(settings, self.access, account)

    @property
    def limits_rate(self) -> bool:
        """Whether it drops a client's messages over a rate itself."""
        return bool(self.frame_rate)

    def rate_dropped(self) -> int | None:
        """Messages it dropped over a client's rate so far; None where it limits none."""
        return None

    def accepts(self) -> bool:
        """Whether a TCP connection to the broker's port is accepted now: how a broker that
        binds without saying so is seen to be up."""
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    @property
    def pid(self) -> int:
        """The broker's own process (every kind runs in one: its CPU can be measured)."""
        raise NotImplementedError

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
