"""ZEO clients whose servers are found, and followed, in ZooKeeper.

``client(url, *args, **kw)`` is ``ZEO.client`` with a zkzeo URL instead of
an address: every other ``ZEO.client`` argument works.  The returned
storage connects where ``routing.route`` says, from what the servers
publish in ZooKeeper, and moves when that changes, without a restart.

Threads of one client::

    caller's threads   __init__, close, the storage API (ZEO's ClientRunner:
                       load, store, tpc_*, new_oid).  ZEO hands each server
                       call to the IO thread and waits for its answer.
    ZEO's IO thread    its asyncio loop: connections, cache verification,
                       notify_connected / notify_disconnected, and routing:
                       _zeo_compat.ClientIO.reroute() asks routing.route()
                       about the newest snapshot and the current connection,
                       then tries new addresses, upgrades a read-only
                       connection, or closes one to a replaced primary.
    kazoo's threads    its connection thread, and its event thread, which
                       runs the ClusterView's watch callbacks; ours,
                       _servers_changed(), only schedules reroute().

    crossings:  kazoo event thread -> IO thread   loop.call_soon_threadsafe
                                                  (reroute), never waiting
                IO thread -> ClusterView          reads ``snapshot``, an
                                                  immutable value
                caller -> IO thread               ZEO's own calls
                process exit                      kazoo stopped with a
                                                  bounded wait (zk.py)
"""
import logging
import threading

from kazoo.exceptions import NoAuthError
from ZEO.ClientStorage import ClientStorage
from ZODB.POSException import ReadOnlyError

from replication import quietlogs

from . import _zeo_compat, zk
from .discovery import ClusterView
from .layout import parse_url
from .routing import FALLBACK, READ, WRITE, route

logger = logging.getLogger(__name__)

ZK_CONNECT_TIMEOUT = 10.0


class ZooKeeperClientStorage(ClientStorage):
    """A ClientStorage that connects where ZooKeeper says."""

    def __init__(self, url, *args, zookeeper_timeout=ZK_CONNECT_TIMEOUT,
                 zookeeper_session_timeout=10.0, **kw):
        quietlogs.install()      # failover refusals: one line each
        if args and isinstance(args[0], str) and "://" in args[0]:
            raise TypeError("pass the zkzeo URL once, as the first argument")
        self.zookeeper_url = url
        hosts, self.zookeeper_path = parse_url(url)
        wait = kw.pop("wait", True)
        # ClientStorage(addr, storage, cache_size, name, wait_timeout,
        #               disconnect_poll, read_only, read_only_fallback, ...)
        read_only = kw.get("read_only") or (len(args) > 5 and args[5])
        fallback = kw.get("read_only_fallback") or (len(args) > 6 and
                                                    args[6])
        self._mode = READ if read_only else FALLBACK if fallback else WRITE
        self._oid_lock = threading.Lock()
        self._oid_block = []
        self._oid_block_of = None
        self._connections = 0
        self._zk = zk.start(
            zk.make_client(hosts, session_timeout=zookeeper_session_timeout,
                           settings=zk.settings_from_kwargs(kw)),
            zookeeper_timeout)
        try:
            try:
                self._view = ClusterView(self._zk, self.zookeeper_path)
            except NoAuthError:
                raise zk.CredentialsError(zk.no_auth_message(
                    self._zk, self.zookeeper_path, "read")) from None
            self._view.wait_ready(zookeeper_timeout)
            snapshot = self._view.snapshot
            first = route(snapshot, self._mode)
            if not snapshot.exists:
                logger.warning("%s: the path %s does not exist in ZooKeeper"
                               " (yet); waiting for servers to register",
                               url, self.zookeeper_path)
            elif not first.addresses:
                logger.warning("%s: %s; waiting", url, first.sentence)
            else:
                logger.info("%s: %s", url, first.sentence)
            ClientStorage.__init__(self, list(first.addresses), *args,
                                   wait=False,
                                   **_zeo_compat.with_our_client_thread(kw))
            _zeo_compat.client_io(self).start_routing(self._route, url,
                                                      first.sentence)
            self._view.on_change = self._servers_changed
            # What changed between the first look and the watch.
            self._servers_changed(None)
            if wait:
                _zeo_compat.wait_connected(self)
        except BaseException:
            self._close_zookeeper()
            server = getattr(self, "_server", None)
            if server is not None:
                server.close()
            raise

    def _servers_changed(self, snapshot):
        # kazoo's event thread: hand over, never wait.
        _zeo_compat.call_soon_in_io_thread(
            self, _zeo_compat.client_io(self).reroute)

    def _route(self, current, lost):
        # IO thread: the newest snapshot, and this client's connection.
        return route(self._view.snapshot, self._mode, current, lost)

    @property
    def _zk_addresses(self):
        """The addresses this client uses now."""
        return list(_zeo_compat.client_io(self).addrs)

    def notify_connected(self, conn, info):
        # IO thread, before callers may use the new connection.
        ClientStorage.notify_connected(self, conn, info)
        with self._oid_lock:
            self._connections += 1
        if not conn.is_read_only():
            conn.lost = None
        elif self._mode == FALLBACK:
            # Read-only: should it try for a writable one now (and again)?
            _zeo_compat.call_soon_in_io_thread(
                self, _zeo_compat.client_io(self).reroute)

    def new_oid(self):
        """A new oid, from a block the *current* server handed out.

        ZEO keeps a block of new oids from the server; after a failover the
        new primary hands the old primary's block out again (conflicts on
        objects nobody touched).  So a block serves only the connection it
        came from.
        """
        if _zeo_compat.read_only_now(self):
            raise ReadOnlyError()
        while True:
            with self._oid_lock:
                connection = self._connections
                if self._oid_block and self._oid_block_of == connection:
                    return self._oid_block.pop()
            block = _zeo_compat.new_oids(self)
            with self._oid_lock:
                if connection == self._connections:
                    self._oid_block = list(reversed(block))
                    self._oid_block_of = connection

    def _close_zookeeper(self):
        view = getattr(self, "_view", None)
        if view is not None:
            view.stop()
        zk.stop(self._zk)

    def close(self):
        try:
            ClientStorage.close(self)
        finally:
            self._close_zookeeper()


def client(url, *args, **kw):
    """Like ``ZEO.client``, with a zkzeo URL instead of an address."""
    return ZooKeeperClientStorage(url, *args, **kw)


def DB(url, *args, **kw):
    """Like ``ZEO.DB``: a ``ZODB.DB`` over ``client(url, ...)``."""
    import ZODB
    storage = client(url, *args, **kw)
    try:
        return ZODB.DB(storage)
    except BaseException:
        storage.close()
        raise


def connection(url, *args, **kw):
    """Like ``ZEO.connection``: a connection whose close closes the DB."""
    db = DB(url, *args, **kw)
    try:
        return db.open_then_close_db_when_connection_closes()
    except BaseException:
        db.close()
        raise
