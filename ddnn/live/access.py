"""Who may publish and read what: per-role broker accounts, generated from the topology.

Every role of a deployment gets its own broker account (`<deployment>/<account>`, so many
deployments' access files merge into one broker's: `merge_access`), plus `trigger` (ticks),
`observer` (reads everything, writes nothing), with a cloud, `bridge` (a site broker's
login to the cloud's) and, only where the deployment captures hard examples (`capture`),
`capture` (`ddnn capture`), with the devices' grants to send it their frames. What each
account may do (`grants`) follows from the topology alone: a role writes only its own
topics and reads only what its service subscribes to.
`write_access` writes the files a broker enforces and each service logs in with, in
`<artifacts>/access/<deployment>/`: mosquitto's password file and ACL (which both brokers of
`ddnn broker` read), an EMQX 5 ACL, and one credentials file per account.

Design: docs/design/access.md (the accounts, each grant, the files).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from ddnn.core.config import ModelConfig
from ddnn.core.errors import ConfigError, problems
from ddnn.core.files import replaced
from ddnn.core.roles import CAPTURE, CLOUD, Role, deployment_roles
from ddnn.live.mqtt.settings import BrokerSettings
from ddnn.live.protocol import PROTOCOL, Protocol, granted, part_of, topics_of
from ddnn.live.wire import Topics

TRIGGER = "trigger"
OBSERVER = "observer"
BRIDGE = "bridge"
ACCESS = "access"  # the folder of an export that holds the access files, one per deployment
PASSWORDS = "passwords"
ACL = "acl"
EMQX_ACL = "acl.emqx.conf"
ITERATIONS = 101  # what mosquitto_passwd uses for its PBKDF2-SHA512 ("$7$") hashes


@dataclass(frozen=True)
class Grant:
    """The topic filters one account may read (subscribe to, receive) and write (publish)."""

    read: tuple[str, ...]
    write: tuple[str, ...]


def grants(
    model: ModelConfig, topics: Topics, protocol: Protocol = PROTOCOL, capture: bool = False
) -> dict[str, Grant]:
    """Each account of a deployment of `model` -> what it may read and write: every use of
    its entry in the protocol table (ddnn/live/protocol.py) that brokers grant (`capture`:
    the deployment captures hard examples), whatever mode its service runs in; and each
    account's own probe topics. A party with no use granted has no account."""
    out: dict[str, Grant] = {}
    for party in [*deployment_roles(model), TRIGGER, CAPTURE]:
        part = part_of(party, protocol)
        read, write = (
            tuple(
                t
                for u in uses
                if granted(u, model, capture)
                for t in topics_of(u, party, model, topics)
            )
            for uses in (part.reads, part.writes)
        )
        if read or write:
            out[party] = Grant(read, write)
    out[OBSERVER] = Grant((f"{topics.root}/#",), ())
    if model.cloud is not None:
        # a bridge reads what goes in to the site and writes what goes out to the cloud
        out[BRIDGE] = Grant(*bridged(model, topics, protocol))
    probe = f"{topics.hello}/{{}}/#"
    return {
        name: Grant(g.read + (probe.format(name),), g.write + (probe.format(name),))
        for name, g in out.items()
    }


def bridged(
    model: ModelConfig, topics: Topics, protocol: Protocol = PROTOCOL
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What crosses a bridge between a site's broker (devices, aggregator, edges) and the
    cloud's: (the topics the cloud writes, which go in to the site; the topics it reads,
    which go out to the cloud)."""
    part = part_of(CLOUD, protocol)
    to_site, to_cloud = (
        tuple(t for u in uses for t in topics_of(u, CLOUD, model, topics))
        for uses in (part.writes, part.reads)
    )
    return to_site, to_cloud


class Credentials(BaseModel):
    """One account's login, and the deployment it is for: a service refuses to use the
    credentials of another deployment or model version (the broker would deny it all)."""

    model_config = ConfigDict(extra="forbid")

    username: str
    password: str
    deployment: str
    model_version: str


def hash_password(password: str, salt: bytes | None = None) -> str:
    """A mosquitto `$7$` hash: PBKDF2-SHA512 over `ITERATIONS` rounds, a 12-byte salt."""
    salt = secrets.token_bytes(12) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, ITERATIONS)
    return f"$7${ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_password(password: str, hashed: str) -> bool:
    """Whether `password` matches a `$7$` hash (anything else never matches)."""
    try:
        _, kind, rounds, salt, digest = hashed.split("$")
        if kind != "7":
            return False
        got = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt), int(rounds))
        return hmac.compare_digest(got, base64.b64decode(digest))
    except ValueError:  # a malformed hash (wrong fields, bad base64, bad rounds)
        return False


def emqx_acl_text(accounts: dict[str, Grant]) -> str:
    """`accounts` as an EMQX 5 file-authorizer ACL: one allow rule per account and action,
    then deny everything else (set `authorization.no_match = deny` too)."""
    lines = ["%% generated by ddnn: each account may read and write only these topics"]
    for name, grant in accounts.items():
        for action, filters in (("subscribe", grant.read), ("publish", grant.write)):
            if filters:
                quoted = ", ".join(json.dumps(f) for f in filters)
                lines.append(f"{{allow, {{username, {json.dumps(name)}}}, {action}, [{quoted}]}}.")
    lines.append("{deny, all}.")
    return "\n".join(lines) + "\n"


def covers(granted: str, topic: str) -> bool:
    """Whether the granted filter `granted` covers `topic`, a topic name or a subscription's
    filter (whose `+` and `#` must then be covered too), as mosquitto's ACL check does."""
    want, have = topic.split("/"), granted.split("/")
    for i, level in enumerate(have):
        if level == "#":
            return True
        if i >= len(want) or want[i] == "#" or (level != "+" and level != want[i]):
            return False
    return len(want) == len(have)


def writer_of(accounts: dict[str, Grant], topic: str) -> str:
    """The account that may publish on `topic` (a `KeyError` naming it when none may)."""
    for name, grant in accounts.items():
        if any(covers(f, topic) for f in grant.write):
            return name
    raise KeyError(f"no account may publish on {topic}")


def username(deployment: str, account: str) -> str:
    """The broker user name of `account` (a role, `trigger`, ...) of `deployment`."""
    return f"{deployment}/{account}"


def merge_access(folders: list[Path], into: Path) -> Path:
    """One broker's access files (passwords and ACL) for the deployments whose access folders
    are `folders`: many sites on one broker. Returns `into`."""
    hashes: dict[str, str] = {}
    accounts: dict[str, Grant] = {}
    for folder in folders:
        theirs = read_passwords(Path(folder) / PASSWORDS)
        grants_ = read_acl(Path(folder) / ACL)
        clash = sorted((set(theirs) | set(grants_)) & (set(hashes) | set(accounts)))
        if clash:
            raise ConfigError(f"{folder}: account {clash[0]!r} is in two of the access folders")
        hashes |= theirs
        accounts |= grants_
    into.mkdir(parents=True, exist_ok=True)
    _write_private(into / PASSWORDS, "".join(f"{u}:{h}\n" for u, h in hashes.items()))
    with replaced(into / ACL) as tmp:
        tmp.write_text(acl_text(accounts))
    return into


def access_dir(artifacts: Path, deployment: str) -> Path:
    return Path(artifacts) / ACCESS / deployment


def write_access(
    artifacts: Path, model: ModelConfig, deployment: str, model_version: str, capture: bool = False
) -> Path:
    """Write new accounts for deployment `deployment` of an export (module doc); returns
    their folder. Each call makes new passwords: the old ones stop working once the broker
    reloads the files. `capture`: the deployment captures hard examples (the `capture`
    account, and the devices' grants to send it frames); without it, the credentials file
    of an earlier capture account is removed, as the broker no longer knows it."""
    topics = Topics(deployment, model_version)
    if any(c == ":" or c.isspace() for c in deployment):
        raise ConfigError(
            f"deployment {deployment!r} cannot name broker accounts: no ':' or spaces"
        )
    accounts = grants(model, topics, capture=capture)
    users = {username(deployment, name): grant for name, grant in accounts.items()}
    folder = access_dir(artifacts, deployment)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{CAPTURE}.json").unlink(missing_ok=True)  # written again below if granted
    passwords = {name: secrets.token_urlsafe(24) for name in accounts}
    for name, password in passwords.items():
        login = Credentials(
            username=username(deployment, name),
            password=password,
            deployment=deployment,
            model_version=model_version,
        )
        _write_private(folder / f"{name}.json", login.model_dump_json(indent=2) + "\n")
    lines = [f"{username(deployment, n)}:{hash_password(p)}" for n, p in passwords.items()]
    _write_private(folder / PASSWORDS, "\n".join(lines) + "\n")
    with replaced(folder / ACL) as tmp:
        tmp.write_text(acl_text(users))
    _write_private(folder / EMQX_ACL, emqx_acl_text(users))  # for whoever runs the EMQX
    return folder


def _write_private(path: Path, text: str) -> None:
    """Write `text` to a file only its owner can read, whole or not at all."""
    with replaced(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)


def acl_text(accounts: dict[str, Grant]) -> str:
    """The mosquitto ACL file of `accounts` (anything not granted is denied)."""
    lines = ["# generated by ddnn: each account may read and write only these topics"]
    for name, grant in accounts.items():
        lines += ["", f"user {name}"]
        both = [f for f in grant.read if f in grant.write]
        lines += [f"topic readwrite {f}" for f in both]
        lines += [f"topic read {f}" for f in grant.read if f not in both]
        lines += [f"topic write {f}" for f in grant.write if f not in both]
    return "\n".join(lines) + "\n"


def read_acl(path: Path) -> dict[str, Grant]:
    """The accounts of an ACL file as `acl_text` writes it (a `ConfigError` for a line of
    any other form: the embedded broker must not guess what mosquitto would do)."""
    out: dict[str, tuple[list[str], list[str]]] = {}
    user: str | None = None
    for number, raw in enumerate(_read(path).splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        words = line.split()
        if words[0] == "user" and len(words) == 2:
            user = words[1]
            out.setdefault(user, ([], []))
        elif words[0] == "topic" and len(words) == 3 and user is not None:
            access, topic = words[1], words[2]
            if access not in ("read", "write", "readwrite"):
                raise ConfigError(f"{path}:{number}: unknown access {access!r}")
            if access != "write":
                out[user][0].append(topic)
            if access != "read":
                out[user][1].append(topic)
        else:
            raise ConfigError(f"{path}:{number}: not a line of a ddnn ACL: {line[:80]!r}")
    return {name: Grant(tuple(r), tuple(w)) for name, (r, w) in out.items()}


def read_passwords(path: Path) -> dict[str, str]:
    """user -> password hash, from a mosquitto password file."""
    out = {}
    for number, raw in enumerate(_read(path).splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user or not hashed.startswith("$7$"):
            raise ConfigError(f"{path}:{number}: not `user:$7$...` (a mosquitto_passwd line)")
        out[user] = hashed
    return out


def read_credentials(path: Path) -> Credentials:
    try:
        return Credentials.model_validate(json.loads(_read(path)))
    except json.JSONDecodeError as e:
        raise ConfigError(f"credentials file {path} is not JSON: {e}") from None
    except ValidationError as e:
        raise ConfigError(f"credentials file {path}: {problems(e, 1)}") from None


def login(settings: BrokerSettings, access: Path, account: str) -> BrokerSettings:
    """`settings` logged in as `account` of the access files in `access`."""
    creds = read_credentials(Path(access) / f"{account}.json")
    return settings.model_copy(update={"username": creds.username, "password": creds.password})


def login_for(
    artifacts: Path, role: Role | str, deployment: str, model_version: str
) -> Credentials | None:
    """The credentials `write_access` made for `role` (or another account) of `deployment`,
    or None if it made none; a `ConfigError` when they are for another model version (a
    stale export)."""
    path = access_dir(artifacts, deployment) / f"{role}.json"
    if not path.exists():
        return None
    return credentials_for(path, role, deployment, model_version)


def credentials_for(
    path: Path, role: Role | str, deployment: str, model_version: str
) -> Credentials:
    """The credentials in `path`, which must be `role`'s of `deployment` at `model_version`:
    a `ConfigError` naming the mismatch otherwise (the broker would refuse every topic)."""
    login = read_credentials(path)
    if login.username != username(deployment, role):
        raise ConfigError(
            f"{path} holds the account {login.username!r} of deployment "
            f"{login.deployment!r}, not {role!r} of {deployment!r}"
        )
    if login.model_version != model_version:
        raise ConfigError(
            f"{path} is for model version {login.model_version} of deployment "
            f"{login.deployment!r}, not {model_version} of {deployment!r}: run `ddnn credentials` "
            "again"
        )
    return login


def _read(path: Path) -> str:
    try:
        return Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text file") from None
