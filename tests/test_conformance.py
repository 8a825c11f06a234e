"""ZODB's own storage conformance suites, run against our wrappers.

Every test of the primary runs with a live secondary attached; at the end
the secondary must hold exactly the primary's transactions (ZODB's
IteratorDeepCompare, blobs included).  So each suite doubles as a
replication test over the histories ZODB's authors thought of: undo,
conflict resolution, multi-threaded commits, George Bailey objects...
"""
import os
import time

import ZODB.FileStorage
from ZODB.tests import (BasicStorage, ConflictResolution, HistoryStorage,
                        IteratorStorage, MTStorage, PackableStorage,
                        PersistentStorage, ReadOnlyStorage, RecoveryStorage,
                        RevisionStorage, StorageTestBase, Synchronization,
                        TransactionalUndoStorage)

from replication import PrimaryStorage, ReplicatedStorage, SecondaryStorage
from replication.secondary import State


class TrackingPrimary(ReplicatedStorage):
    """Remembers whether it was packed: a packed primary's history is no
    longer the secondary's (packs are not replicated)."""
    packed = False

    def pack(self, *args, **kw):
        TrackingPrimary.packed = True
        return ReplicatedStorage.pack(self, *args, **kw)


class ReplicatedBase(StorageTestBase.StorageTestBase):

    blobs = False
    use_extension_bytes = True

    def open(self, **kwargs):
        kw = {"blob_dir": "primary-blobs"} if self.blobs else {}
        kw.update(kwargs)
        self._storage = TrackingPrimary(
            ZODB.FileStorage.FileStorage("Primary.fs", **kw),
            replicate_to=self.sock, keep_alive_delay=0.5)

    def setUp(self):
        StorageTestBase.StorageTestBase.setUp(self)
        TrackingPrimary.packed = False
        self.sock = os.path.abspath("replication.sock")
        self.open(create=True)
        kw = {"blob_dir": "secondary-blobs"} if self.blobs else {}
        self.secondary = SecondaryStorage(
            ZODB.FileStorage.FileStorage("Secondary.fs", create=True, **kw),
            self.sock, keep_alive_delay=0.5, reconnect_max=0.2)

    def tearDown(self):
        try:
            if not TrackingPrimary.packed:
                self.assert_replicated()
        finally:
            self.secondary.close()
            StorageTestBase.StorageTestBase.tearDown(self)

    def assert_replicated(self):
        if self._storage.source.closed:
            # The test closed the primary, maybe before the secondary had
            # everything: serve replication from the same file again.
            self.open()
        primary = self._storage
        last = primary.lastTransaction()
        deadline = time.monotonic() + 60
        while self.secondary.lastTransaction() != last:
            if self.secondary.follower.state is State.DIVERGED:
                self.fail("secondary diverged: "
                          + self.secondary.follower.problem)
            if time.monotonic() > deadline:
                self.fail("secondary never caught up with the primary "
                          f"({self.secondary.replication_status()})")
            time.sleep(0.01)
        IteratorStorage.IteratorDeepCompare.compare(
            self, primary, self.secondary)


class PrimaryConformanceTests(
        ReplicatedBase,
        BasicStorage.BasicStorage,
        TransactionalUndoStorage.TransactionalUndoStorage,
        RevisionStorage.RevisionStorage,
        PackableStorage.PackableStorageWithOptionalGC,
        PackableStorage.PackableUndoStorage,
        Synchronization.SynchronizedStorage,
        ConflictResolution.ConflictResolvingStorage,
        ConflictResolution.ConflictResolvingTransUndoStorage,
        HistoryStorage.HistoryStorage,
        IteratorStorage.IteratorStorage,
        IteratorStorage.ExtendedIteratorStorage,
        PersistentStorage.PersistentStorage,
        MTStorage.MTStorage):
    pass


class PrimaryWithBlobsConformanceTests(PrimaryConformanceTests):
    blobs = True


class PrimaryRecoveryTests(StorageTestBase.StorageTestBase,
                           RecoveryStorage.RecoveryStorage):
    """restore() through the primary wrapper (as copyTransactionsFrom does)."""

    def setUp(self):
        StorageTestBase.StorageTestBase.setUp(self)
        self._storage = PrimaryStorage(
            ZODB.FileStorage.FileStorage("Source.fs", create=True),
            "127.0.0.1:0")
        self._dst = self.new_dest(create=True)

    def new_dest(self, **kw):
        return PrimaryStorage(ZODB.FileStorage.FileStorage("Dest.fs", **kw),
                              "127.0.0.1:0")

    def tearDown(self):
        self._dst.close()
        StorageTestBase.StorageTestBase.tearDown(self)


class SecondaryReadOnlyTests(StorageTestBase.StorageTestBase,
                             ReadOnlyStorage.ReadOnlyStorage):
    """A secondary is read-only to everyone but its replication stream."""

    def open(self, read_only=False, **kw):
        base = ZODB.FileStorage.FileStorage("Secondary.fs", **kw)
        if read_only:
            # its source is not running: it keeps trying in the background
            self._storage = SecondaryStorage(
                base, os.path.abspath("nowhere.sock"), reconnect_max=0.2)
        else:
            self._storage = base

    def setUp(self):
        StorageTestBase.StorageTestBase.setUp(self)
        self.open(create=True)
