"""ZEO clients whose servers are found, and followed, in ZooKeeper.

``client(url, *args, **kw)`` is ``ZEO.client`` with a zkzeo URL instead of
an address: every other ``ZEO.client`` argument works.  The returned
storage's address list follows the path's children live (kazoo watches):
servers that start are used, servers that stop are dropped, without a
restart.
"""
import logging

from ZEO.ClientStorage import ClientStorage

from . import zk
from .discovery import FALLBACK, READ, WRITE, ClusterView
from .layout import parse_url

logger = logging.getLogger(__name__)

ZK_CONNECT_TIMEOUT = 10.0


class ZooKeeperClientStorage(ClientStorage):
    """A ClientStorage with its address list kept by a ClusterView."""

    def __init__(self, url, *args, zookeeper_timeout=ZK_CONNECT_TIMEOUT,
                 zookeeper_session_timeout=10.0, **kw):
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
        self._zk = zk.start(
            zk.make_client(hosts, session_timeout=zookeeper_session_timeout),
            zookeeper_timeout)
        try:
            self._view = ClusterView(self._zk, self.zookeeper_path)
            self._view.wait_ready(zookeeper_timeout)
            snapshot = self._view.snapshot
            addresses = snapshot.addresses(self._mode)
            if not snapshot.exists:
                logger.warning("%s: the path %s does not exist in ZooKeeper"
                               " (yet); waiting for servers to register",
                               url, self.zookeeper_path)
            elif not addresses:
                logger.warning("%s: no ZEO server is registered (yet); "
                               "waiting for one", url)
            ClientStorage.__init__(self, addresses, *args, wait=False, **kw)
            self._view.on_change = self._servers_changed
            self._servers_changed(self._view.snapshot)
            if wait:
                self._wait()
        except BaseException:
            self._close_zookeeper()
            server = getattr(self, "_server", None)
            if server is not None:
                server.close()
            raise

    def _servers_changed(self, snapshot):
        addresses = snapshot.addresses(self._mode)
        if addresses != getattr(self, "_zk_addresses", None):
            self._zk_addresses = addresses
            logger.info("%s: ZEO servers %s", self.zookeeper_url,
                        ", ".join("%s:%s" % a for a in addresses) or "none")
            self.new_addr(addresses)

    def _close_zookeeper(self):
        view = getattr(self, "_view", None)
        if view is not None:
            view.stop()
        self._zk.stop()
        self._zk.close()

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
