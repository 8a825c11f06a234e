"""``zkzeo-runzeo``: ZEO's runzeo for servers with replication storages.

It is ZEO's own runzeo (same options, same configuration file, where
``%import replication`` makes the ``<replication>`` section available),
extended through ``ZEOServer``'s hooks:

* it logs the address the ZEO server really listens on, so that
  ``address :0`` (an OS-assigned port) is usable;
* its StorageServer lets replicated storages send an asynchronous commit
  to their secondaries just after the committing client has its answer;
* refusals of read-only servers are logged as one line, not a traceback
  (``quietlogs``);
* its StorageServer forgets the connections it closes itself (ZEO 6 keeps
  sending them invalidations), and answers a client's quick cache
  verification only for a tid that is in this server's history.  After a failover that lost
  transactions, a client whose cache holds data of a lost transaction T
  would otherwise get the invalidations of the new history after T and keep
  T's stale objects for ever; told "unknown", it drops its cache instead.
"""
import logging
import os

import ZEO.runzeo
import ZEO.StorageServer

from . import quietlogs
from .records import transaction_digest

logger = logging.getLogger(__name__)


def bound_address(server):
    """The (host, port) or unix path a ZEO 6 StorageServer listens on."""
    return server.acceptor.addr


class StorageServer(ZEO.StorageServer.StorageServer):

    def __init__(self, addr, storages, **kw):
        super().__init__(addr, storages, **kw)
        for storage in storages.values():
            if hasattr(storage, "replicate_after_reply"):
                # tpc_finish runs on our event loop, which answers the
                # client before it runs what tpc_finish scheduled.
                storage.replicate_after_reply = True

    def get_invalidations(self, storage_id, tid):
        storage = self.storages[storage_id]
        base = getattr(storage, "base", storage)   # FileStorage's own lock
        if tid > storage.lastTransaction() or \
                transaction_digest(base, tid) is None:
            logger.warning(
                "a client's cache is at transaction %s, which is not in the "
                "history of storage %r (lost in a failover, or packed "
                "away): the client will drop its cache", tid.hex(),
                storage_id)
            return None, []
        return super().get_invalidations(storage_id, tid)

    def _invalidateCache(self, storage_id):
        # ZEO closes every connection of the storage so clients register
        # again (we use it on every role change).  ZEO 6 forgets a
        # connection only when the *client* closes it: one the server closed
        # would stay registered, receive every invalidation ("socket.send()
        # raised exception") and count as a client.  So forget them too.
        self._setup_invq(storage_id, self.storages[storage_id])
        for zs in self.zeo_storages_by_storage_id[storage_id][:]:
            zs.call_soon_threadsafe(self._drop_connection, zs)

    def _drop_connection(self, zs):
        # notify_disconnected aborts the connection's transaction (freeing
        # the storage's commit lock) and forgets the connection.
        zs.connection.close()
        zs.notify_disconnected()


def create_server(storages, options):
    """ZEO.runzeo.create_server's server, of our StorageServer class."""
    msgpack = options.msgpack if isinstance(options.msgpack, bool) \
        else os.environ.get("ZEO_MSGPACK")
    return StorageServer(
        options.address, storages,
        read_only=options.read_only,
        client_conflict_resolution=options.client_conflict_resolution,
        msgpack=msgpack,
        invalidation_queue_size=options.invalidation_queue_size,
        invalidation_age=options.invalidation_age,
        transaction_timeout=options.transaction_timeout,
        ssl=options.ssl)


class ZEOServer(ZEO.runzeo.ZEOServer):

    def create_server(self):
        quietlogs.install()
        self.server = create_server(self.storages, self.options)
        logger.info("ZEO server listening on %s", bound_address(self.server))


def main(args=None):
    options = ZEO.runzeo.ZEOOptions()
    options.realize(args)
    ZEOServer(options).main()


if __name__ == "__main__":
    main()
