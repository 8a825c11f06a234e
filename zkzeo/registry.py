"""A server's ephemeral node: ``PATH/HOST:PORT`` with its ServerInfo JSON.

Registration is idempotent and retried (``client.retry``).  Changes are
written in place.  A node left by
an earlier session of ours (a crashed process whose session has not yet
expired) is replaced; a node owned by our current session is updated.
After a session expiry kazoo reconnects with a new session, and the
listener *spawns* re-registration (kazoo listeners must not block).  A clean
shutdown deletes the node at once.
"""
import logging
import threading

from kazoo.exceptions import NodeExistsError, NoNodeError
from kazoo.protocol.states import KazooState

logger = logging.getLogger(__name__)


class Registration:

    def __init__(self, client, path, info):
        self.client = client
        self.path = path
        self.info = info
        self.node = f"{path}/{info.child}"
        self._lock = threading.Lock()
        self._closed = False
        self._lost = False
        client.add_listener(self._state_listener)

    def register(self):
        """Create (or take over, or update) our node; returns self."""
        with self._lock:
            if self._closed:
                return self
            self.client.retry(self._register)
        return self

    def _register(self):
        data = self.info.to_bytes()
        self.client.ensure_path(self.path)
        try:
            self.client.create(self.node, data, ephemeral=True)
            logger.info("registered %s as %s (%s)", self.node,
                        self.info.role, self.info.name)
            return
        except NodeExistsError:
            pass
        try:
            _, stat = self.client.get(self.node)
        except NoNodeError:
            return self._register()
        if stat.ephemeralOwner == self.client.client_id[0]:
            self.client.set(self.node, data)
            return
        # Left by an earlier process at this address whose session has not
        # expired yet: it is dead (we hold its address), so replace it.
        logger.info("replacing %s left by an earlier session", self.node)
        try:
            self.client.delete(self.node)
        except NoNodeError:
            pass
        return self._register()

    def update(self, info):
        """Publish new data (a role change, a new replication state) in
        place: watchers of the node see it, and the node never disappears
        (a node missing for an instant looks like a dead server)."""
        with self._lock:
            self.info = info
            if self._closed:
                return
            try:
                self.client.retry(self._register)
            except Exception as e:
                # Not registered now: try again from kazoo's side, and on
                # the next reconnection.
                logger.warning("could not publish %s (%s); retrying",
                               self.node, e)
                self._lost = True
                self.client.handler.spawn(self._reregister)

    publish = update

    def _delete(self, node):
        try:
            self.client.retry(self.client.delete, node)
        except NoNodeError:
            pass

    def close(self):
        """Remove the node now (clean shutdown)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self.client.remove_listener(self._state_listener)
            if self.client.connected:
                try:
                    self._delete(self.node)
                    logger.info("unregistered %s", self.node)
                except Exception as e:
                    logger.warning("could not remove %s: %s (it goes when "
                                   "the session expires)", self.node, e)

    def _state_listener(self, state):
        # On kazoo's thread: never block here.
        if state == KazooState.LOST:
            self._lost = True
            logger.warning("ZooKeeper session lost; %s will be registered "
                           "again when the connection is back", self.node)
        elif state == KazooState.CONNECTED and self._lost:
            self._lost = False
            self.client.handler.spawn(self._reregister)

    def _reregister(self):
        try:
            self.register()
        except Exception:
            logger.exception("could not register %s again; retrying on the "
                             "next reconnection", self.node)
            self._lost = True
