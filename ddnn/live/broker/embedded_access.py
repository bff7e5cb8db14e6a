"""The access files of ddnn/live/access.py, enforced by the embedded broker (amqtt plugins).

mosquitto reads the `passwords` and `acl` files itself; amqtt gets these two plugins, which
read the same files, so that both brokers `ddnn broker` starts refuse the same things:
unknown users and wrong passwords at connect, and any publish, subscription or delivery
outside the account's grants. A publish amqtt refuses is dropped silently (MQTT 3.1.1 has no
PUBACK reason codes), a refused subscription gets a failure in its SUBACK.

Only the embedded broker imports this module (by its dotted name, in its plugin config), so
nothing else pays for importing amqtt.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from amqtt.contexts import Action, BaseContext
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from ddnn.live.access import ACL, PASSWORDS, check_password, covers, read_acl, read_passwords


@dataclass
class AccessConfig:
    access: str = ""  # the folder `write_access` wrote


class PasswordCheck(BaseAuthPlugin):
    """Connect only with a user name and password of the `passwords` file."""

    Config = AccessConfig

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        self._hashes = read_passwords(Path(self.config.access) / PASSWORDS)

    async def authenticate(self, *, session: Session) -> bool:
        hashed = self._hashes.get(session.username or "")
        return hashed is not None and check_password(session.password or "", hashed)


class TopicGrants(BaseTopicPlugin):
    """Publish, subscribe and receive only within the account's grants in the `acl` file."""

    Config = AccessConfig

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        self._grants = read_acl(Path(self.config.access) / ACL)

    async def topic_filtering(
        self,
        *,
        session: Session | None = None,
        topic: str | None = None,
        action: Action | None = None,
    ) -> bool:
        grant = self._grants.get(session.username or "") if session is not None else None
        if grant is None or topic is None:
            return False
        allowed = grant.write if action == Action.PUBLISH else grant.read
        return any(covers(granted, topic) for granted in allowed)
