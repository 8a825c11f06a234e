"""ZODB storage wrappers: a replicating primary and a read-only secondary.

Both wrap a storage that supports iteration and restore (a FileStorage, with
or without blobs) and delegate the ZODB storage API to it explicitly.  They
provide the interfaces that the wrapped storage provides.
"""
import asyncio
import enum
import logging
import threading
import time

import zope.interface
from ZODB.FileStorage import FileStorage
from ZODB.POSException import ReadOnlyError

from . import auth, packs, snapshot
from .recovery import recover_torn_transaction
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


def NotPrimary(reason):
    """The error of a commit on a server that stopped being the primary
    while the commit was in flight: it did not succeed (fencing: it never
    succeeds late).  A plain ReadOnlyError with the reason, because ZEO
    clients turn any exception class they do not know into a
    ServerException, which applications cannot tell from a bug."""
    return ReadOnlyError(reason)


class Role(enum.Enum):
    PRIMARY = "primary"
    SECONDARY = "secondary"


class ReplicatedStorage(StorageProxy):
    """A storage that is either a replication primary or a secondary, and
    can switch between the two without being reopened.

    *Primary*: writable (unless fenced); every commit is streamed to the
    secondaries connected to ``replicate_to``.  With ``sync_replicas=N``,
    ``tpc_finish`` returns only once N secondaries have acknowledged the
    transaction as durable, or after ``sync_timeout`` seconds with a warning
    (or ``SyncReplicationTimeout`` with ``sync_block``; the transaction is
    committed on the primary in either case).

    *Secondary*: read-only to clients; a follower applies the stream of
    ``replicate_from`` (an address, or a callable giving the current one),
    and its clients see each replicated transaction as an invalidation.
    With ``replicate_to`` it also serves replication (a chain).

    Role changes happen in ``become_primary`` and ``become_secondary``; both
    close the storage's client connections (ZEO checks read-only-ness only
    when a client registers).  ``fenced`` refuses writes while true.
    """

    def __init__(self, base, replicate_to=None, replicate_from=None,
                 keep_alive_delay=1.0, sync_replicas=0, sync_timeout=10.0,
                 sync_block=False, replicate_blobs=True, name="",
                 reconnect_max=5.0, reopen=None, epoch=0,
                 rewind_divergent=False, hub=None, security=auth.OPEN):
        if reopen is None and snapshot.can_snapshot(base):
            reopen = _filestorage_reopener(base)
        if reopen is not None:
            # A crash between tpc_vote and tpc_finish leaves a last tid that
            # is in no file; nothing here may start from it.
            base = recover_torn_transaction(base, reopen)
        StorageProxy.__init__(self, base)
        self.security = security   # TLS, secret, limits (auth.Security)
        self.name = name or base.getName()
        self.keep_alive_delay = keep_alive_delay
        self.sync_replicas = sync_replicas
        self.sync_timeout = sync_timeout
        self.sync_block = sync_block
        self.replicate_blobs = replicate_blobs
        self.reconnect_max = reconnect_max
        self.rewind_divergent = rewind_divergent
        self.hub = hub
        self.epoch = epoch
        self._fenced = False
        # A monotonic deadline until which a primary may acknowledge
        # commits, renewed by whoever decides roles (zkzeo's lease); None
        # when nobody does (fixed roles, as in zc.zrs).
        self.lease_until = None
        # Set by a ZEO server that runs tpc_finish on its event loop: an
        # asynchronous commit then goes to the secondaries right after the
        # committing client has its answer, not before.
        self.replicate_after_reply = False
        self._db = None
        self._degraded_at = None   # tid of the last commit not waited for
        self._role_lock = threading.RLock()
        self._packing = threading.Lock()
        self._reopen = reopen
        self.source = None
        self.replication_address = None
        self.follower = None
        if replicate_to:
            self.source = Source(base, replicate_to, keep_alive_delay,
                                 send_blobs=replicate_blobs, name=self.name,
                                 epoch=lambda: self.epoch, hub=hub,
                                 ack_each=lambda: self.sync_replicas > 0,
                                 encode_during_fsync=lambda: not (
                                     self.replicate_after_reply and
                                     not self.sync_replicas),
                                 security=security)
            self.replication_address = self.source.start()
        if replicate_from is None:
            if self.source is None:
                raise ValueError("a primary needs replicate_to")
            self.role = Role.PRIMARY
        else:
            self.role = Role.SECONDARY
            self._follow(replicate_from)

    # --- roles ----------------------------------------------------------

    def _follow(self, source):
        self.follower = Follower(
            self.base, source, self._committed, invalidate=self._invalidate,
            install=self._install_snapshot if self._reopen else None,
            rewind=self._rewind if self._reopen and self.rewind_divergent
            else None,
            start_over=self._start_over if self._reopen else None,
            pack=self._pack_replica if self._reopen else None,
            keep_alive_delay=self.keep_alive_delay,
            want_blobs=self.replicate_blobs, name=self.name,
            epoch=lambda: self.epoch, seen_epoch=self._seen_epoch,
            reconnect_max=self.reconnect_max, hub=self.hub,
            security=self.security)
        self.follower.start()

    def become_primary(self, epoch):
        """Stop following, accept writes (in ``epoch``)."""
        with self._role_lock:
            if self.source is None:
                raise ValueError(f"{self.name} cannot become primary: it "
                                 "has no replicate-to address")
            if self.follower is not None:
                self.follower.stop()
                self.follower = None
            self.epoch = max(self.epoch, epoch)
            self.role = Role.PRIMARY
            self.fenced = False
            logger.info("%s is primary (epoch %s) at tid %s", self.name,
                        self.epoch, self.lastTransaction().hex())
            if self.lease_until is None:
                self._drop_clients()
            else:
                # A new epoch needs its own lease; whoever grants it makes
                # clients register again then (reconnect_clients), so that
                # none registers writable before commits can succeed.
                self.lease_until = 0.0

    def become_secondary(self, source, epoch):
        """Refuse writes and follow ``source`` (in ``epoch``)."""
        with self._role_lock:
            self.role = Role.SECONDARY
            self.epoch = max(self.epoch, epoch)
            if self.lease_until is not None:
                self.lease_until = 0.0     # a lease belongs to one epoch
            if self.source is not None:
                self.source.wake_waiters()
            if self.follower is not None:
                self.follower.stop()
            self._follow(source)
            logger.info("%s is a secondary (epoch %s) at tid %s", self.name,
                        self.epoch, self.lastTransaction().hex())
            self._drop_clients()

    def _drop_clients(self):
        # ZEO's StorageServerDB.invalidateCache closes every connection of
        # this storage, so clients register again and learn the new role.
        if self._db is not None:
            self._db.invalidateCache()

    @property
    def fenced(self):
        return self._fenced

    @fenced.setter
    def fenced(self, value):
        self._fenced = value
        if value and self.source is not None:
            self.source.wake_waiters()     # commits waiting for ACKs fail

    def finish_commits_in_flight(self):
        """Return once no commit holds the storage's commit lock (one in
        flight fails at its vote or finish once fenced)."""
        lock = getattr(self.base, "_commit_lock", None)  # FileStorage's
        if lock is not None:
            with lock:
                pass

    def lease_valid(self):
        lease = self.lease_until
        return lease is None or time.monotonic() < lease

    @property
    def writable(self):
        return self.role is Role.PRIMARY and not self.fenced and \
            self.lease_valid()

    def isReadOnly(self):
        # What ZEO asks when a client registers: read-only until the first
        # lease of the role is granted (``lease_until`` 0.0), but not when
        # a lease merely lapses: it comes back without any event a client
        # would see, and a client registered read-only meanwhile would stay
        # so.  Commits check the lease itself (NotPrimary).
        return self.role is not Role.PRIMARY or self.fenced or \
            self.lease_until == 0.0

    def _check_writable(self):
        if self.isReadOnly():
            raise ReadOnlyError()
        if not self.lease_valid():
            raise NotPrimary(self._not_primary_reason())

    def reconnect_clients(self):
        """Make every client register again: after the storage starts
        accepting commits again, clients that registered read-only while
        it did not must learn it (ZEO asks only at registration)."""
        self._drop_clients()

    # --- writes (primary) -------------------------------------------------

    def new_oid(self):
        self._check_writable()
        return self.base.new_oid()

    def tpc_begin(self, transaction, tid=None, status=" "):
        self._check_writable()
        return self.base.tpc_begin(transaction, tid, status)

    def store(self, oid, serial, data, version, transaction):
        self._check_writable()
        return self.base.store(oid, serial, data, version, transaction)

    def storeBlob(self, oid, oldserial, data, blobfilename, version,
                  transaction):
        self._check_writable()
        return self.base.storeBlob(oid, oldserial, data, blobfilename,
                                   version, transaction)

    def deleteObject(self, oid, serial, transaction):
        self._check_writable()
        return self.base.deleteObject(oid, serial, transaction)

    def tpc_vote(self, transaction):
        # Checked again: fencing may have begun since tpc_begin.
        self._check_writable()
        return self.base.tpc_vote(transaction)

    def tpc_finish(self, transaction, func=lambda tid: None):
        if not self.writable:
            # Fenced (or the lease ran out) since the vote: the commit
            # fails here rather than succeed on a server that may have been
            # replaced meanwhile.
            self.base.tpc_abort(transaction)
            raise NotPrimary(self._not_primary_reason())
        epoch = self.epoch
        tid = self.base.tpc_finish(transaction, func)
        if self.source is not None:
            end = self._committed_size()
            loop = None
            if self.replicate_after_reply and not self.sync_replicas:
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:
                    pass        # not on the server's loop after all
            if loop is not None:
                loop.call_soon(self.source.notify_commit, tid, end)
            else:
                self.source.notify_commit(tid, end)
        if self.sync_replicas:
            self._wait_for_replicas(tid, epoch)
        if not self.writable or self.epoch != epoch:
            # Replaced while the commit was being finished: do not
            # acknowledge it (it may be cut off this server's history).
            raise NotPrimary(f"transaction {tid.hex()} was committed on "
                             f"{self.name} but "
                             f"{self._not_primary_reason()}: it is not "
                             "acknowledged and may be rewound away")
        return tid

    def _not_primary_reason(self):
        if self.role is not Role.PRIMARY:
            return f"{self.name} is no longer the primary"
        if self.fenced:
            return f"{self.name} stopped accepting commits (fenced)"
        return (f"{self.name} could not confirm in time that it is still "
                "the primary (lease expired)")

    def _wait_for_replicas(self, tid, epoch):
        source = self.source
        replaced = lambda: (self.role is not Role.PRIMARY or self.fenced
                            or self.epoch != epoch)
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
        if source.wait_for_acks(tid, self.sync_replicas, self.sync_timeout,
                                abandon=replaced):
            return
        if replaced():
            return          # tpc_finish refuses to acknowledge it
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

    # Replication's own writes go to the base storage directly; through
    # this storage these are never allowed on a secondary.
    def restore(self, *args, **kw):
        self._check_writable()
        return self.base.restore(*args, **kw)

    def restoreBlob(self, *args, **kw):
        self._check_writable()
        return self.base.restoreBlob(*args, **kw)

    def undo(self, transaction_id, transaction):
        self._check_writable()
        return self.base.undo(transaction_id, transaction)

    def copyTransactionsFrom(self, other):
        self._check_writable()
        return self.base.copyTransactionsFrom(other)

    def pack(self, t, referencesf, gc=None):
        """Pack a primary; its secondaries pack alike (see packs.py).  A
        secondary packs only as its source tells it."""
        self._check_writable()
        if not snapshot.can_snapshot(self.base):
            return StorageProxy.pack(self, t, referencesf, gc)
        state = packs.pack(self.base, t, gc)
        if self.source is not None:
            self.source.packed(state)

    # --- secondary ----------------------------------------------------------

    def _seen_epoch(self, epoch):
        # The source's epoch; a secondary never goes back to an older one.
        if epoch > self.epoch:
            self.epoch = epoch

    def _committed_size(self):
        # FileStorage's size is the end of its last committed transaction.
        return self.base.getSize() if snapshot.can_snapshot(self.base) \
            else None

    def _invalidate(self, tid, oids):
        # On the replication hub, inside the base storage's tpc_finish of a
        # replicated commit, before its lastTransaction() moves to tid:
        # ZODB's order.  The other order lets a reader start at tid while
        # its cache still holds what tid changed: a torn snapshot.
        db = self._db
        if db is not None:
            db.invalidate(tid, oids)

    def _committed(self, tid, oids):
        # On the replication hub, after a replicated commit (invalidated
        # already, see _invalidate).
        if self.source is not None:
            if self.source.secondaries and self.follower is not None:
                # Never hand on what a crash here could take back: the
                # secondaries fed from here would be ahead of us.
                self.follower.make_durable()
            self.source.notify_commit(tid, self._committed_size())

    def _install_snapshot(self, path, blobs):
        # On the replication hub: the empty storage makes way for a byte
        # copy of the source's.
        return self._replace_base(
            lambda old: snapshot.install(old, path, blobs, self._reopen))

    def _rewind(self, common):
        # On the replication hub, after the source called our history
        # divergent: cut our own tail off (kept aside) and follow again.
        return self._replace_base(
            lambda old: snapshot.rewind(old, common, self._reopen))

    def _start_over(self):
        # On the replication hub: our position was packed away on the
        # source; our files go aside, an empty storage takes a byte copy.
        return self._replace_base(lambda old: snapshot.start_over(
            old, self._reopen, move_blobs=self.replicate_blobs))

    def _pack_replica(self, state, copied=False):
        # In a thread of the replication hub (the follower waits): pack as
        # the source did, or (a byte copy of its packed file) record it.
        # close() waits for it: a pack left running would go on writing
        # next to a closed (or removed) file.
        with self._packing:
            return self._pack_replica_now(state, copied)

    def _pack_replica_now(self, state, copied):
        if copied:
            packs.write_state(self.base, state)
            if self.source is not None:
                self.source.pack_state = state   # for when we are primary
        else:
            packs.pack(self.base, state.time, record=state)
            if self.source is not None:
                self.source.packed(state)    # a chain: ours pack alike
        return self.base

    def _replace_base(self, replace):
        """Swap the base storage for ``replace(old)``, which closes the old
        one and reopens the file.  An empty stand-in answers meanwhile, and
        clients are told to drop their caches and reconnect."""
        old = new = self.base
        stand_in = snapshot.empty_stand_in(old)
        self.base = stand_in
        try:
            new = replace(old)
        except BaseException:
            try:
                new = self._reopen()  # the old one got closed on the way
            except Exception:
                new = old             # still open: it holds its lock file
            raise
        finally:
            self.base = new
            snapshot.discard_stand_in(stand_in)
        if self._db is not None:
            new.registerDB(self._db)
            self._db.invalidateCache()
        if self.source is not None:
            self.source.reset(new)
        return new

    def registerDB(self, db):
        self._db = db
        self.base.registerDB(db)

    # --- status and closing -------------------------------------------------

    def replication_state(self):
        """None for a primary; for a secondary, how it replicates: one of
        ``replication.secondary.REPLICATION_STATES`` ("connecting",
        "catching-up", "following", "diverged", "stopped").  Only a
        "following" secondary has its source's data up to the moment it
        connected, and is applying the live stream."""
        follower = self.follower
        if self.role is Role.PRIMARY or follower is None:
            return None
        return follower.state.value

    def replication_status(self):
        status = {"role": self.role.value, "epoch": self.epoch,
                  "fenced": self.fenced,
                  "last_tid": self.lastTransaction().hex(),
                  "replication_state": self.replication_state()}
        if self.follower is not None:
            status.update(self.follower.status())
        if self.source is not None:
            status["address"] = self.replication_address
            status["secondaries"] = self.source.status()
        return status

    def close(self):
        if self.follower is not None:
            self.follower.stop()
        if self.source is not None:
            self.source.close()
        with self._packing:          # a replica's pack in progress ends
            self.base.close()


def PrimaryStorage(base, replicate_to, **options):
    """A ReplicatedStorage that starts as primary, serving ``replicate_to``.
    """
    return ReplicatedStorage(base, replicate_to=replicate_to, **options)


def SecondaryStorage(base, replicate_from, replicate_to=None, **options):
    """A ReplicatedStorage that starts as secondary of ``replicate_from``.
    """
    return ReplicatedStorage(base, replicate_to=replicate_to,
                             replicate_from=replicate_from, **options)


def _filestorage_reopener(fs):
    name = fs.getName()
    blob_dir = getattr(fs, "blob_dir", None)
    options = {"pack_gc": fs._pack_gc, "pack_keep_old": fs.pack_keep_old}
    if blob_dir:
        options["blob_dir"] = blob_dir

    def reopen():
        return FileStorage(name, **options)
    return reopen
