"""Watching a database's node: the cluster state and its running servers.

A ``ClusterView`` keeps an up-to-date ``Snapshot`` of the path through
kazoo watches (a DataWatch on the database's node, which also works while
the node does not exist, and a ChildrenWatch on its children once it does),
and calls ``on_change(snapshot)`` after each change.  kazoo runs watch
callbacks on its own event thread; ``on_change`` must not block for long.
"""
import functools
import logging
import threading
from dataclasses import dataclass, field

from kazoo.exceptions import NoNodeError
from kazoo.recipe.watchers import ChildrenWatch, DataWatch

from .layout import ClusterState, LayoutError, ServerInfo
from .routing import FALLBACK, READ, WRITE, route

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    """An immutable picture of one database's node in ZooKeeper."""
    path: str
    exists: bool = False
    state: ClusterState = ClusterState()
    state_version: int = -1
    servers: tuple = ()          # ServerInfo, sorted by address
    problems: tuple = field(default=(), compare=False)

    def by_name(self, name):
        for s in self.servers:
            if s.name == name:
                return s
        return None

    @property
    def primary(self):
        """The running server the cluster state names as primary."""
        if self.state.primary is None:
            return None
        return self.by_name(self.state.primary)

    def addresses(self, mode=WRITE):
        """ZEO addresses for a new client of ``mode`` (see routing.py)."""
        return list(route(self, mode).addresses)


class ClusterView:
    """Follows ``path`` in ZooKeeper; ``snapshot`` is always current.

    Three kinds of watch keep it so: a DataWatch on the database's node
    (the cluster state), a ChildrenWatch on its children (servers coming
    and going), and a DataWatch on each child (a server changing what it
    says of itself, e.g. a primary that starts accepting writes: servers
    update their node in place, never delete and re-create it, because a
    node missing for an instant looks like a dead server).
    """

    def __init__(self, client, path, on_change=None):
        self.client = client
        self.path = path
        self.on_change = on_change
        self.snapshot = Snapshot(path)
        self._lock = threading.RLock()
        self._state = (None, None)      # data, stat of the database's node
        self._children = None
        self._children_watch = None
        self._child_data = {}           # child -> data, kept by DataWatches
        self._child_watches = set()     # children with a DataWatch
        self._stopped = False
        self._warned = set()
        self._ready = threading.Event()
        DataWatch(client, path, self._state_changed)

    def wait_ready(self, timeout=None):
        return self._ready.wait(timeout)

    def stop(self):
        self._stopped = True

    def _state_changed(self, data, stat):
        if self._stopped:
            return False
        with self._lock:
            self._state = (data, stat)
            if stat is None:
                self._children = None
                self._children_watch = None
            elif self._children_watch is None:
                # ChildrenWatch stops for good when the node is deleted,
                # so one is started each time the node (re)appears.
                self._children_watch = ChildrenWatch(
                    self.client, self.path, self._children_changed)
            self._publish()
        self._ready.set()

    def _children_changed(self, children):
        if self._stopped:
            return False
        with self._lock:
            self._children = list(children)
            for child in children:
                if child not in self._child_watches:
                    self._child_watches.add(child)
                    # Calls back at once with the child's data.
                    DataWatch(self.client, f"{self.path}/{child}",
                              functools.partial(self._child_changed, child))
            for child in set(self._child_data) - set(children):
                del self._child_data[child]
            self._publish()

    def _child_changed(self, child, data, stat):
        if self._stopped:
            return False
        with self._lock:
            if stat is None:
                self._child_data.pop(child, None)
                if child not in (self._children or ()):
                    self._child_watches.discard(child)
                    self._publish()
                    return False        # gone for good; a new one if back
            else:
                self._child_data[child] = data
            self._publish()

    def refresh(self):
        """Re-read everything now, bypassing the watches: what a decision
        that must not act on a stale picture reads."""
        with self._lock:
            try:
                data, stat = self.client.retry(self.client.get, self.path)
                children = self.client.retry(self.client.get_children,
                                             self.path)
            except NoNodeError:
                data, stat, children = None, None, []
            fresh = {}
            for child in children:
                try:
                    fresh[child], _ = self.client.retry(
                        self.client.get, f"{self.path}/{child}")
                except NoNodeError:
                    continue            # gone meanwhile
            snapshot = self._build(data, stat, sorted(fresh), fresh)
            self._set(snapshot)
        return snapshot

    def _publish(self):
        data, stat = self._state
        children = [c for c in sorted(self._children or ())
                    if c in self._child_data]
        self._set(self._build(data, stat, children, self._child_data))

    def _build(self, data, stat, children, child_data):
        problems = []
        try:
            state = ClusterState.from_bytes(data, self.path)
        except LayoutError as e:
            problems.append(str(e))
            state = ClusterState()
        servers = []
        for child in children:
            try:
                servers.append(ServerInfo.from_node(child, child_data[child]))
            except LayoutError as e:
                problems.append(f"{self.path}: {e}; skipped")
        for problem in problems:
            if problem not in self._warned:
                self._warned.add(problem)
                logger.warning("%s", problem)
        return Snapshot(self.path, stat is not None, state,
                        stat.version if stat else -1,
                        tuple(servers), tuple(problems))

    def _set(self, snapshot):
        changed = snapshot != self.snapshot
        self.snapshot = snapshot
        if changed and self.on_change is not None:
            try:
                self.on_change(snapshot)
            except Exception:
                logger.exception("error handling a change of %s", self.path)


__all__ = ["ClusterView", "Snapshot", "WRITE", "FALLBACK", "READ"]
