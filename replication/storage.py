"""ZODB storage wrappers: a replicating primary and a read-only secondary.

Both wrap a storage that supports iteration and restore (a FileStorage, with
or without blobs) and delegate the ZODB storage API to it explicitly.  They
provide the interfaces that the wrapped storage provides.
"""
import logging

import zope.interface
from ZODB.FileStorage import FileStorage
from ZODB.POSException import ReadOnlyError

from . import snapshot
from .secondary import Follower
from .source import Source

logger = logging.getLogger(__name__)


class StorageProxy:
    """Explicit delegation of the ZODB storage API to ``self.base``."""

    def __init__(self, base):
        self.base = base
        zope.interface.directlyProvides(
            self, zope.interface.providedBy(base))

    # IStorage: reading
    def getName(self):
        return self.base.getName()

    def getSize(self):
        return self.base.getSize()

    def __len__(self):
        return len(self.base)

    def sortKey(self):
        return self.base.sortKey()

    def lastTransaction(self):
        return self.base.lastTransaction()

    def getTid(self, oid):
        return self.base.getTid(oid)

    def load(self, oid, version=""):
        return self.base.load(oid, version)

    def loadBefore(self, oid, tid):
        return self.base.loadBefore(oid, tid)

    def loadSerial(self, oid, serial):
        return self.base.loadSerial(oid, serial)

    def history(self, oid, size=1):
        return self.base.history(oid, size)

    def isReadOnly(self):
        return self.base.isReadOnly()

    def supportsUndo(self):
        return self.base.supportsUndo()

    def registerDB(self, db):
        self.base.registerDB(db)

    def close(self):
        self.base.close()

    def cleanup(self):
        return self.base.cleanup()

    def pack(self, t, referencesf, gc=None):
        if gc is None:
            return self.base.pack(t, referencesf)
        return self.base.pack(t, referencesf, gc=gc)

    # IStorage: writing
    def new_oid(self):
        return self.base.new_oid()

    def tpc_begin(self, transaction, tid=None, status=" "):
        return self.base.tpc_begin(transaction, tid, status)

    def store(self, oid, serial, data, version, transaction):
        return self.base.store(oid, serial, data, version, transaction)

    def restore(self, oid, serial, data, version, prev_txn, transaction):
        return self.base.restore(oid, serial, data, version, prev_txn,
                                 transaction)

    def checkCurrentSerialInTransaction(self, oid, serial, transaction):
        return self.base.checkCurrentSerialInTransaction(oid, serial,
                                                         transaction)

    def deleteObject(self, oid, serial, transaction):
        return self.base.deleteObject(oid, serial, transaction)

    def tpc_vote(self, transaction):
        return self.base.tpc_vote(transaction)

    def tpc_finish(self, transaction, func=lambda tid: None):
        return self.base.tpc_finish(transaction, func)

    def tpc_abort(self, transaction):
        return self.base.tpc_abort(transaction)

    def tpc_transaction(self):
        return self.base.tpc_transaction()

    @property
    def _transaction(self):
        # ZEO's server falls back to it for storages without tpc_transaction
        return self.base.tpc_transaction()

    # IStorageUndoable
    def undo(self, transaction_id, transaction):
        return self.base.undo(transaction_id, transaction)

    def undoLog(self, first=0, last=-20, filter=None):
        return self.base.undoLog(first, last, filter)

    def undoInfo(self, first=0, last=-20, specification=None):
        return self.base.undoInfo(first, last, specification)

    # IStorageIteration, IStorageCurrentRecordIteration, lastInvalidations
    def iterator(self, start=None, stop=None):
        return self.base.iterator(start, stop)

    def record_iternext(self, next=None):
        return self.base.record_iternext(next)

    def lastInvalidations(self, count):
        return self.base.lastInvalidations(count)

    # IBlobStorage
    @property
    def fshelper(self):
        return self.base.fshelper

    @property
    def blob_dir(self):
        return self.base.blob_dir

    def loadBlob(self, oid, serial):
        return self.base.loadBlob(oid, serial)

    def openCommittedBlobFile(self, oid, serial, blob=None):
        return self.base.openCommittedBlobFile(oid, serial, blob)

    def storeBlob(self, oid, oldserial, data, blobfilename, version,
                  transaction):
        return self.base.storeBlob(oid, oldserial, data, blobfilename,
                                   version, transaction)

    def restoreBlob(self, oid, serial, data, blobfilename, prev_txn,
                    transaction):
        return self.base.restoreBlob(oid, serial, data, blobfilename,
                                     prev_txn, transaction)

    def temporaryDirectory(self):
        return self.base.temporaryDirectory()

    def is_blob_record(self, record):
        return self.base.is_blob_record(record)

    def copyTransactionsFrom(self, other):
        return self.base.copyTransactionsFrom(other)


class SyncReplicationTimeout(Exception):
    """Too few secondaries acknowledged a commit in time (sync-block)."""


class PrimaryStorage(StorageProxy):
    """A writable storage whose commits are streamed to secondaries.

    With ``sync_replicas=N``, ``tpc_finish`` returns only once N secondaries
    have acknowledged the transaction as durable, or after ``sync_timeout``
    seconds with a warning (or with ``SyncReplicationTimeout`` when
    ``sync_block`` is set; the transaction is committed on the primary in
    either case).
    """

    def __init__(self, base, replicate_to, keep_alive_delay=1.0,
                 sync_replicas=0, sync_timeout=10.0, sync_block=False,
                 replicate_blobs=True, name="primary", hub=None):
        StorageProxy.__init__(self, base)
        self.sync_replicas = sync_replicas
        self.sync_timeout = sync_timeout
        self.sync_block = sync_block
        self.source = Source(base, replicate_to, keep_alive_delay,
                             send_blobs=replicate_blobs, name=name, hub=hub)
        self.replication_address = self.source.start()
        self._degraded_at = None   # tid of the last commit not waited for

    def tpc_finish(self, transaction, func=lambda tid: None):
        tid = self.base.tpc_finish(transaction, func)
        self.source.notify_commit()
        if self.sync_replicas:
            self._wait_for_replicas(tid)
        return tid

    def _wait_for_replicas(self, tid):
        source = self.source
        if self._degraded_at is not None:
            # Degraded: do not wait again until enough secondaries have
            # caught up with the commits they missed.
            if not source.wait_for_acks(self._degraded_at,
                                        self.sync_replicas, 0):
                self._degraded_at = tid
                return
            logger.warning("synchronous replication restored: %d "
                           "secondaries acknowledge commits again",
                           self.sync_replicas)
            self._degraded_at = None
        if source.wait_for_acks(tid, self.sync_replicas, self.sync_timeout):
            return
        message = (f"transaction {tid.hex()} was not acknowledged by "
                   f"{self.sync_replicas} secondaries within "
                   f"{self.sync_timeout}s")
        if self.sync_block:
            logger.error("%s; the commit is durable on the primary only",
                         message)
            raise SyncReplicationTimeout(message)
        logger.warning("%s; continuing asynchronously until they catch up: "
                       "commits are NOT on any secondary yet", message)
        self._degraded_at = tid

    def replication_status(self):
        return {"role": "primary", "address": self.replication_address,
                "secondaries": self.source.status(),
                "last_tid": self.lastTransaction().hex()}

    def close(self):
        self.source.close()
        self.base.close()


class SecondaryStorage(StorageProxy):
    """A read-only storage kept up to date from a replication source.

    Its ZEO clients (or its in-process DB) see each replicated transaction
    as an ordinary invalidation.  With ``replicate_to`` it also serves
    replication to further secondaries (a chain).
    """

    def __init__(self, base, replicate_from, replicate_to=None,
                 keep_alive_delay=1.0, replicate_blobs=True,
                 name="secondary", reconnect_max=5.0, reopen=None,
                 hub=None):
        StorageProxy.__init__(self, base)
        self._db = None
        if reopen is None and snapshot.can_snapshot(base):
            reopen = _filestorage_reopener(base)
        self._reopen = reopen
        self.source = None
        self.replication_address = None
        if replicate_to:
            self.source = Source(base, replicate_to, keep_alive_delay,
                                 send_blobs=replicate_blobs, name=name,
                                 hub=hub)
            self.replication_address = self.source.start()
        self.follower = Follower(base, replicate_from, self._committed,
                                 install=self._install_snapshot if reopen
                                 else None,
                                 keep_alive_delay=keep_alive_delay,
                                 want_blobs=replicate_blobs, name=name,
                                 reconnect_max=reconnect_max, hub=hub)
        self.follower.start()

    def _committed(self, tid, oids):
        # On the replication hub, after a replicated commit.
        db = self._db
        if db is not None:
            db.invalidate(tid, oids)
        if self.source is not None:
            self.source.notify_commit()

    def _install_snapshot(self, path, blobs):
        # On the replication hub: the empty storage makes way for a byte
        # copy of the source's.  Clients (there is nothing they could have
        # read) are told to drop their caches and reconnect.
        new = snapshot.install(self.base, path, blobs, self._reopen)
        self.base = new
        if self._db is not None:
            new.registerDB(self._db)
            self._db.invalidateCache()
        if self.source is not None:
            self.source.storage = new
            self.source.notify_commit()
        return new

    def registerDB(self, db):
        self._db = db
        self.base.registerDB(db)

    def isReadOnly(self):
        return True

    def _read_only(self, *args, **kw):
        raise ReadOnlyError()

    new_oid = tpc_begin = store = restore = storeBlob = restoreBlob = \
        checkCurrentSerialInTransaction = deleteObject = undo = \
        copyTransactionsFrom = _read_only

    def replication_status(self):
        status = {"role": "secondary"}
        status.update(self.follower.status())
        if self.source is not None:
            status["address"] = self.replication_address
            status["secondaries"] = self.source.status()
        return status

    def close(self):
        self.follower.stop()
        if self.source is not None:
            self.source.close()
        self.base.close()


def _filestorage_reopener(fs):
    name = fs.getName()
    blob_dir = getattr(fs, "blob_dir", None)
    options = {"pack_gc": fs._pack_gc, "pack_keep_old": fs.pack_keep_old}
    if blob_dir:
        options["blob_dir"] = blob_dir

    def reopen():
        return FileStorage(name, **options)
    return reopen
