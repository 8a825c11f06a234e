"""Readers of a secondary never see a torn snapshot.

A writer on the primary sets two objects to the same value in every
transaction; readers on the secondary check, in every transaction they
begin, that both agree.  ZODB's contract makes that hold: a storage calls
the DB's ``invalidate`` (through ``tpc_finish``'s callback) before its
``lastTransaction()`` returns the new tid.  A reader that saw the new tid
without its invalidations would read one object from its cache (old) and
the other from the storage (new).
"""
import os
import sys
import threading

import pytest
import transaction
import ZEO
import ZODB
from persistent.mapping import PersistentMapping

from tests.replication_support import Cluster, wait_caught_up
from tests.support import replica_db, wait_for
from tests.zeo_servers import replication_address

COMMITS = 400


@pytest.fixture(autouse=True)
def frequent_thread_switches():
    # Threads take turns far more often than every 5 ms: a reader gets
    # many chances to run between any two steps of the follower.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(interval)


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.close()


def setup_pair(db):
    with db.transaction() as conn:
        conn.root.a = PersistentMapping(v=0)
        conn.root.b = PersistentMapping(v=0)


def write_pairs(db, stop, commits=COMMITS):
    """Commit ``commits`` transactions, each setting a and b to i."""
    for i in range(1, commits + 1):
        if stop.is_set():
            return
        with db.transaction() as conn:
            conn.root.a["v"] = i
            conn.root.b["v"] = i


def read_pairs(db, done, torn, reads):
    """Until ``done``: begin a transaction, read a and b, compare.  Only b
    is ghosted after each read, so a comes from the cache and b from the
    storage: a missed invalidation shows as a disagreement."""
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    try:
        while not done.is_set():
            tm.begin()
            a, b = conn.root.a, conn.root.b
            va, vb = a["v"], b["v"]
            reads.append(1)
            if va != vb:
                torn.append((va, vb))
            b._p_deactivate()
            tm.abort()
    finally:
        conn.close()


def stress(writer_db, reader_db, last_tid, readers=2):
    """Run the writer and the readers; return (torn reads, reads)."""
    stop, done = threading.Event(), threading.Event()
    torn, reads = [], []
    threads = [threading.Thread(target=read_pairs,
                                args=(reader_db, done, torn, reads))
               for _ in range(readers)]
    for t in threads:
        t.start()
    try:
        write_pairs(writer_db, stop)
        wait_for(lambda: last_tid() == writer_db.storage.lastTransaction(),
                 "the readers' storage to have every commit")
    finally:
        stop.set()
        done.set()
        for t in threads:
            t.join(60)
    return torn, len(reads)


def test_in_process_db_on_a_secondary_never_sees_a_torn_snapshot(cluster):
    primary = cluster.primary(blobs=False)
    secondary = cluster.secondary(primary, blobs=False)
    writer = ZODB.DB(primary)
    try:
        setup_pair(writer)
        wait_caught_up(secondary, primary)
        reader = ZODB.DB(secondary)
        try:
            torn, reads = stress(writer, reader, secondary.lastTransaction)
        finally:
            reader.close()
    finally:
        writer.close()
    assert reads > COMMITS
    assert not torn, f"{len(torn)} torn reads of {reads}, e.g. {torn[:5]}"


def test_zeo_clients_of_a_secondary_server_never_see_a_torn_snapshot(
        servers, tmp_path):
    # ZEO's server forwards the secondary's invalidations to its clients,
    # and a ZEO client moves its lastTransaction() only after it has
    # invalidated: the same contract, one hop further.
    repl = replication_address()
    primary = servers("primary", replicate_to=repl)
    secondary = servers("secondary", replicate_from=repl)
    writer = ZEO.DB(primary.address, wait_timeout=60,
                    blob_dir=str(tmp_path / "writer-blobs"))
    try:
        before = writer.storage.lastTransaction()
        setup_pair(writer)
        reader = replica_db(ZEO.client(
            secondary.address, read_only=True, wait_timeout=60,
            blob_dir=os.path.join(secondary.directory, "client-blobs"),
            shared_blob_dir=False), before)
        try:
            torn, reads = stress(writer, reader,
                                 reader.storage.lastTransaction)
        finally:
            reader.close()
    finally:
        writer.close()
    assert reads > COMMITS
    assert not torn, f"{len(torn)} torn reads of {reads}, e.g. {torn[:5]}"
