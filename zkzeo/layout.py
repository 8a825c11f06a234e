"""The ZooKeeper layout: URLs, znode paths, and the JSON kept in znodes.

::

    /databases/main              persistent; data: the cluster state
                                   {"primary": "<server name>", "epoch": 7}
                                 (plus "intent": {"action": "promote" |
                                  "switchover", "to": <name>|null} while an
                                  operator's request is carried out, and
                                  "paused": true while automatic failover
                                  is paused)
    /databases/main/HOST:PORT    ephemeral, one per running ZEO server; data:
                                   {"name": ..., "role": "primary"|"secondary",
                                    "epoch": ..., "pid": ...,
                                    "replication": "HOST:PORT", ...}

The children's names are exactly the servers' ZEO addresses (as zc.zkzeo
registered them), so zc.zkzeo-style clients find our servers too.  Nothing
here does I/O.
"""
import json
import os
import re
from dataclasses import asdict, dataclass, field, replace

DEFAULT_ENSEMBLE = "127.0.0.1:2181"
PRIMARY = "primary"
SECONDARY = "secondary"
ROLES = (PRIMARY, SECONDARY)

# What a secondary says of its replication (``ServerInfo.replication_state``):
# only a FOLLOWING secondary (caught up with its source and applying the
# live stream) gets clients and may be elected.
FOLLOWING = "following"
CATCHING_UP = "catching-up"      # connected, applying the backlog
CONNECTING = "connecting"        # no stream yet (or it was lost)
DIVERGED = "diverged"            # stopped: its history differs
STOPPED = "stopped"              # not replicating at all
REPLICATION_STATES = (FOLLOWING, CATCHING_UP, CONNECTING, DIVERGED, STOPPED)

_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<host>[^:\[\]/]+))"
                        r":(?P<port>\d{1,5})$")
_HOSTS = re.compile(r"^[A-Za-z0-9_.\-\[\]:]+(,[A-Za-z0-9_.\-\[\]:]+)*$")


class LayoutError(ValueError):
    """Something in ZooKeeper or in a URL is not what zkzeo expects."""


def parse_url(url, environ=None):
    """Split a zkzeo URL into (ensemble, path).

    ``zk://HOST:PORT[,HOST:PORT...]/path`` names the ensemble;
    ``zk:/path`` takes it from ``$ZOOKEEPER`` (default 127.0.0.1:2181).
    ``zkzeo://`` is accepted as a synonym of ``zk://``.
    """
    environ = os.environ if environ is None else environ
    if not isinstance(url, str):
        raise LayoutError(f"a zkzeo URL is a string, not {url!r}")
    scheme, sep, rest = url.partition(":")
    if not sep or scheme not in ("zk", "zkzeo"):
        raise LayoutError(
            f"bad zkzeo URL {url!r}: expected zk://HOST:PORT[,HOST:PORT]/path"
            " or zk:/path")
    rest = rest.split("?", 1)[0]
    if rest.startswith("//"):
        hosts, slash, path = rest[2:].partition("/")
        if not hosts:
            raise LayoutError(f"bad zkzeo URL {url!r}: no ZooKeeper hosts "
                              "between // and the path")
        path = "/" + path if slash else ""
    elif rest.startswith("/"):
        hosts = environ.get("ZOOKEEPER") or DEFAULT_ENSEMBLE
        path = rest
    else:
        raise LayoutError(f"bad zkzeo URL {url!r}: the path must start "
                          "with / (zk:/path or zk://hosts/path)")
    if not _HOSTS.match(hosts):
        raise LayoutError(f"bad zkzeo URL {url!r}: bad ZooKeeper host list "
                          f"{hosts!r}")
    return hosts, check_path(path, url)


def check_path(path, context=None):
    context = f" in {context!r}" if context else ""
    if not path or path == "/" or not path.startswith("/"):
        raise LayoutError(f"bad ZooKeeper path {path!r}{context}: name the "
                          "database's node, e.g. /databases/main")
    if path.endswith("/") or "//" in path or any(
            part in (".", "..") for part in path.split("/")):
        raise LayoutError(f"bad ZooKeeper path {path!r}{context}")
    return path


def parse_address(name):
    """(host, port) of a child named HOST:PORT, or LayoutError."""
    match = _HOST_PORT.match(name)
    if not match or not 0 < int(match.group("port")) < 65536:
        raise LayoutError(f"{name!r} is not HOST:PORT")
    return match.group("v6") or match.group("host"), int(match.group("port"))


def format_address(address):
    host, port = address[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


PROMOTE = "promote"
SWITCHOVER = "switchover"
INTENTS = (PROMOTE, SWITCHOVER)


@dataclass(frozen=True)
class Intent:
    """An operator's request that the servers carry out: ``promote`` (a
    secondary takes over; ``force`` even though the primary is still
    registered) or ``switchover`` (planned: the primary stops accepting
    commits, a secondary catches up with it, then takes over).  ``to`` names
    the server, or is None for "the most up-to-date candidate"."""
    action: str
    to: str = None
    force: bool = False

    def to_json(self):
        value = {"action": self.action, "to": self.to}
        if self.force:
            value["force"] = True
        return value

    @classmethod
    def from_json(cls, value, path=""):
        if not isinstance(value, dict) or value.get("action") not in INTENTS:
            raise LayoutError(f"cluster state of {path}: bad intent "
                              f"{value!r}")
        to = value.get("to")
        if to is not None and not isinstance(to, str):
            raise LayoutError(f"cluster state of {path}: intent target must "
                              f"be a server name, not {to!r}")
        return cls(value["action"], to, value.get("force") is True)


@dataclass(frozen=True)
class ClusterState:
    """The data of the database's node: who is primary, in which epoch, an
    operator's pending intent (promote, switchover), and whether automatic
    failover is paused."""
    primary: str = None
    epoch: int = 0
    intent: Intent = None
    paused: bool = False

    @property
    def handover(self):
        """The switchover's target name ("" for any candidate), or None."""
        if self.intent is not None and self.intent.action == SWITCHOVER:
            return self.intent.to or ""
        return None

    @classmethod
    def from_bytes(cls, data, path=""):
        if not data:
            return cls()
        try:
            value = json.loads(data.decode("utf-8"))
            primary, epoch = value.get("primary"), int(value.get("epoch", 0))
            intent = value.get("intent")
            paused = value.get("paused") is True
        except (ValueError, AttributeError, TypeError):
            raise LayoutError(
                f"the data of {path or 'the cluster node'} is not zkzeo's "
                f"cluster state (JSON with primary and epoch): "
                f"{data[:80]!r}") from None
        if primary is not None and not isinstance(primary, str):
            raise LayoutError(f"cluster state of {path}: primary must be a "
                              f"server name, not {primary!r}")
        if epoch < 0:
            raise LayoutError(f"cluster state of {path}: negative epoch "
                              f"{epoch}")
        if intent is not None:
            intent = Intent.from_json(intent, path)
        return cls(primary, epoch, intent, paused)

    def to_bytes(self):
        value = {"primary": self.primary, "epoch": self.epoch}
        if self.intent is not None:
            value["intent"] = self.intent.to_json()
        if self.paused:
            value["paused"] = True
        return json.dumps(value, sort_keys=True).encode()

    def with_(self, **changes):
        return replace(self, **changes)

    def next_primary(self, name):
        """The state naming ``name`` primary in the next epoch (intent
        done, pause kept)."""
        return ClusterState(name, self.epoch + 1, None, self.paused)


@dataclass(frozen=True)
class ServerInfo:
    """What a running server publishes in its ephemeral node."""
    name: str
    role: str
    address: tuple = field(default=None, compare=False)
    epoch: int = 0
    pid: int = 0
    replication: str = None
    # A primary says True only while it accepts commits (it holds the
    # current epoch, a live session and a fresh lease); clients that write
    # go only to such a server.
    writable: bool = False
    # A secondary's replication state (one of REPLICATION_STATES).
    replication_state: str = None
    # Part of equality: a change of what a server says (a frozen tid, its
    # position in an election) is a change of the snapshot.
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_node(cls, child, data):
        """Parse child name and data; LayoutError says what is wrong."""
        address = parse_address(child)
        try:
            value = json.loads((data or b"").decode("utf-8"))
            if not isinstance(value, dict):
                raise ValueError
            name, role = value["name"], value["role"]
        except (ValueError, KeyError, UnicodeDecodeError):
            raise LayoutError(
                f"server node {child!r} has no zkzeo data (JSON with name "
                f"and role); written by hand or by zc.zkzeo?") from None
        if role not in ROLES:
            raise LayoutError(f"server node {child!r} has unknown role "
                              f"{role!r}")
        state = value.get("replication_state")
        if state is not None and state not in REPLICATION_STATES:
            raise LayoutError(f"server node {child!r} has unknown "
                              f"replication state {state!r}")
        known = {"name", "role", "epoch", "pid", "replication", "writable",
                 "replication_state"}
        return cls(name, role, address, int(value.get("epoch") or 0),
                   int(value.get("pid") or 0), value.get("replication"),
                   value.get("writable") is True, state,
                   {k: v for k, v in value.items() if k not in known})

    def to_bytes(self):
        value = dict(self.extra)
        value.update(name=self.name, role=self.role, epoch=self.epoch,
                     pid=self.pid, replication=self.replication,
                     writable=self.writable,
                     replication_state=self.replication_state)
        return json.dumps(value, sort_keys=True).encode()

    @property
    def child(self):
        return format_address(self.address)

    def with_(self, **changes):
        values = asdict(self)
        values.update(changes)
        return ServerInfo(**values)
