"""In-process replication fixtures for the tests."""
import os

import transaction
import ZODB
import ZODB.blob
from ZODB.FileStorage import FileStorage
from ZODB.tests.IteratorStorage import IteratorDeepCompare

from replication import PrimaryStorage, SecondaryStorage
from replication.secondary import State
from tests.support import wait_for


class Cluster:
    """Primaries and secondaries in one process, closed by close()."""

    def __init__(self, directory):
        self.directory = str(directory)
        self.storages = []

    def path(self, name):
        return os.path.join(self.directory, name)

    def filestorage(self, name, blobs=True, blob_dir=None, **kw):
        path = self.path(name + ".fs")
        if blob_dir and not os.path.exists(path):
            # FileStorage empties the blob dir of a new Data.fs: a shared
            # one must meet an existing file (replication.config does this
            # for configured servers).
            FileStorage(path, create=True).close()
        if blobs:
            kw["blob_dir"] = blob_dir or self.path(name + ".blobs")
        return FileStorage(path, **kw)

    def primary(self, name="primary", blobs=True, **kw):
        kw.setdefault("keep_alive_delay", 0.5)
        s = PrimaryStorage(self.filestorage(name, blobs), "127.0.0.1:0",
                           name=name, **kw)
        self.storages.append(s)
        return s

    def secondary(self, source, name="secondary", blobs=True,
                  blob_dir=None, **kw):
        kw.setdefault("keep_alive_delay", 0.5)
        kw.setdefault("reconnect_max", 0.2)
        address = source.replication_address if hasattr(
            source, "replication_address") else source
        s = SecondaryStorage(self.filestorage(name, blobs, blob_dir),
                             address, name=name, **kw)
        self.storages.append(s)
        return s

    def close(self):
        for s in reversed(self.storages):
            try:
                s.close()
            except Exception:
                pass


def wait_caught_up(secondary, primary, timeout=60):
    def check():
        if secondary.follower.state is State.DIVERGED:
            raise AssertionError(secondary.follower.problem)
        return secondary.lastTransaction() == primary.lastTransaction()
    wait_for(check, f"secondary {secondary.follower.name} to reach the "
             f"primary's last transaction", timeout)


def assert_same_history(storage1, storage2, shared_blobs=False):
    """ZODB's own oracle: same transactions, records and blob files."""
    class Compare(IteratorDeepCompare):
        def assertEqual(self, a, b):
            assert a == b, f"{a!r} != {b!r}"

        def assertNotEqual(self, a, b):
            # the oracle insists on two blob files; a shared dir has one
            assert shared_blobs or a != b

        def assertRaises(self, exc, func, *args):
            try:
                func(*args)
            except exc:
                return
            raise AssertionError(f"{func} did not raise {exc}")
    Compare().compare(storage1, storage2)


def commit(db, **values):
    with db.transaction() as conn:
        for k, v in values.items():
            setattr(conn.root, k, v)
    return db.storage.lastTransaction()


def blob(data):
    b = ZODB.blob.Blob()
    with b.open("w") as f:
        f.write(data)
    return b


__all__ = ["Cluster", "wait_caught_up", "assert_same_history", "commit",
           "blob", "transaction", "ZODB"]
