"""ZEO clients whose servers are found, and followed, in ZooKeeper.

``client(url, *args, **kw)`` is ``ZEO.client`` with a zkzeo URL instead of
an address: every other ``ZEO.client`` argument works.  The returned
storage's address list follows the path's children live (kazoo watches):
servers that start are used, servers that stop are dropped, without a
restart.
"""
import logging

import ZEO.asyncio.client
import ZEO.cache
from ZEO.ClientStorage import ClientStorage

from . import zk
from .discovery import FALLBACK, READ, WRITE, ClusterView
from .layout import parse_url

logger = logging.getLogger(__name__)

ZK_CONNECT_TIMEOUT = 10.0


class _FailoverClientIO(ZEO.asyncio.client.ClientIO):
    """ZEO's client connection manager, which does not stay stuck when the
    server is behind its cache.

    Stock ZEO refuses a server whose last transaction is older than the
    client's cache ("server behind client") and retries only after about
    ten seconds.  After an asynchronous failover every surviving server may
    be behind the cache for good (the newest transactions were lost), so
    this client drops its cache, says so, and connects.
    """

    async def verify(self, server_tid):
        cache = self.cache
        if server_tid is None:
            server_tid = await self.protocol.server_call("lastTransaction")
        cache_tid = cache.getLastTid() if cache else None
        if cache_tid and cache_tid > server_tid:
            self.verify_result = "Server behind client: cache dropped"
            logger.warning(
                "%s: server %s is behind this client's cache (its last "
                "transaction %s is older than %s), as after a failover that "
                "lost transactions: dropping the cache",
                getattr(self.client, "__name__", ""), self.protocol.addr,
                server_tid.hex(), cache_tid.hex())
            cache.clear()
            self.client.invalidateCache()
        return await super().verify(server_tid)


class _ClientCache(ZEO.cache.ClientCache):
    """ZEO's client cache without a bug that spoils its file.

    ZEO 6's ``invalidate`` removes an object from its index of current
    records *before* it notices that the invalidation carries the current
    record's own tid, which it then ignores ("Ignoring invalidation with
    same tid as current").  The record stays current in the file; the next
    ``store`` of that object adds a second current record, and the next
    start refuses the whole file ("Moving bad cache file").  Here such an
    invalidation leaves everything as it was.
    """

    def invalidate(self, oid, tid):
        with self._lock:
            ofs = self.current.get(oid) if tid is not None else None
            if ofs is not None:
                self.f.seek(ofs + 13)       # status, size, oid: then tid
                if self.f.read(8) == tid:
                    return
            super().invalidate(oid, tid)


class _FailoverClientThread(ZEO.asyncio.client.ClientThread):

    def setup_delegation(self, loop):
        super().setup_delegation(loop)
        # ClientRunner builds a plain ClientIO; ours only adds to verify().
        self.client.__class__ = _FailoverClientIO
        cache = self.client.cache
        if type(cache) is ZEO.cache.ClientCache:
            cache.__class__ = _ClientCache      # before it is used


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
        self._failing_over = False
        self._zk = zk.start(
            zk.make_client(hosts, session_timeout=zookeeper_session_timeout,
                           settings=zk.settings_from_kwargs(kw)),
            zookeeper_timeout)
        try:
            self._view = ClusterView(self._zk, self.zookeeper_path)
            self._view.wait_ready(zookeeper_timeout)
            snapshot = self._view.snapshot
            addresses = self._wanted(snapshot)
            if not snapshot.exists:
                logger.warning("%s: the path %s does not exist in ZooKeeper"
                               " (yet); waiting for servers to register",
                               url, self.zookeeper_path)
            elif not addresses:
                logger.warning("%s: no ZEO server is registered (yet); "
                               "waiting for one", url)
            kw.setdefault("_client_factory", _FailoverClientThread)
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

    def _wanted(self, snapshot):
        if self._mode == FALLBACK and not self._failing_over and \
                snapshot.primary is not None:
            # ZEO would keep whichever server answers first, maybe a
            # secondary: while the primary is there, only the primary.
            return snapshot.addresses(WRITE)
        return snapshot.addresses(self._mode)

    def _servers_changed(self, snapshot):
        addresses = self._wanted(snapshot)
        primary = snapshot.primary
        leader = ((primary.address, snapshot.state.epoch, primary.role,
                   primary.writable) if primary else None)
        # A new primary can leave the list as it was (it was a secondary in
        # it already); a fallback client connected read-only must still be
        # told, or ZEO never tries for a writable connection again.
        new_leader = leader is not None and \
            leader != getattr(self, "_zk_leader", None)
        self._zk_leader = leader
        if addresses != getattr(self, "_zk_addresses", None) or (
                new_leader and self._mode == FALLBACK):
            self._zk_addresses = addresses
            logger.info("%s: ZEO servers %s", self.zookeeper_url,
                        ", ".join("%s:%s" % a for a in addresses) or "none")
            self.new_addr(addresses)

    def notify_disconnected(self):
        # On ZEO's IO thread.  A fallback client that loses its server
        # tries every registered server at once, without waiting for
        # ZooKeeper to notice (a dead primary's node lives until its
        # session expires).
        ClientStorage.notify_disconnected(self)
        if self._mode == FALLBACK and not self._failing_over:
            self._failing_over = True
            addresses = self._view.snapshot.addresses(FALLBACK)
            self._zk_addresses = addresses
            self._addr = addresses
            # ZEO reconnects with these right after this call returns; its
            # new_addrs() would wait for this very thread.
            self._server.client.addrs = addresses

    def notify_connected(self, conn, info):
        ClientStorage.notify_connected(self, conn, info)
        if self._failing_over and not conn.is_read_only():
            self._failing_over = False

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
