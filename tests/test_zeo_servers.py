"""End to end: real runzeo processes, ZEO clients, SIGKILL and restarts."""
import os

import pytest
import transaction
import ZEO
from ZODB.FileStorage import FileStorage

from tests.replication_support import assert_same_history, blob
from tests.support import replica_db, wait_for
from tests.zeo_servers import replication_address


def read_only_db(server):
    return replica_db(ZEO.client(
        server.address, read_only=True, wait_timeout=60,
        blob_dir=os.path.join(server.directory, "client-blobs"),
        shared_blob_dir=False))


def wait_for_value(conn, key, value, where):
    def check():
        transaction.begin()   # see invalidations that arrived
        return getattr(conn.root, key, None) == value
    wait_for(check, f"{key}={value!r} to be visible on {where}")


def test_primary_two_secondaries_and_a_chain(servers, tmp_path):
    repl, chain = replication_address(), replication_address()
    primary = servers("primary", replicate_to=repl)
    s1 = servers("s1", replicate_from=repl)
    s2 = servers("s2", replicate_from=repl, replicate_to=chain)
    s3 = servers("s3", replicate_from=chain)
    secondaries = [s1, s2, s3]

    db = ZEO.DB(primary.address, wait_timeout=60,
                blob_dir=str(tmp_path / "primary-client-blobs"))
    readers = {s.name: read_only_db(s) for s in secondaries}
    conns = {name: rdb.open() for name, rdb in readers.items()}

    def write(**values):
        with db.transaction() as conn:
            for k, v in values.items():
                setattr(conn.root, k, v)

    write(x=1, b=blob(b"first blob"), empty=blob(b""))
    for name, conn in conns.items():
        wait_for_value(conn, "x", 1, name)
        assert conn.root.b.open().read() == b"first blob"
        assert conn.root.empty.open().read() == b""

    # A secondary killed with SIGKILL resumes where it stopped.
    conns.pop("s1").close()
    readers.pop("s1").close()
    s1.kill()
    write(x=2, b2=blob(os.urandom(3 * 1024 * 1024)))
    resumed_from = FileStorage(s1.path, read_only=True)
    stopped_at = resumed_from.lastTransaction()
    resumed_from.close()
    s1.start()
    wait_for(lambda: f"following from tid {stopped_at.hex()}" in s1.output(),
             "s1 to resume from the last transaction it had")
    readers["s1"] = read_only_db(s1)
    conns["s1"] = readers["s1"].open()
    for name, conn in conns.items():
        wait_for_value(conn, "x", 2, name)

    # A primary restarted (same replication address) is found again.
    db.close()
    primary.stop()
    primary.start()
    db = ZEO.DB(primary.address, wait_timeout=60,
                blob_dir=str(tmp_path / "primary-client-blobs"))
    write(x=3, b=blob(b"after restart"))
    for name, conn in conns.items():
        wait_for_value(conn, "x", 3, name)
        assert conn.root.b.open().read() == b"after restart"

    for c in conns.values():
        c.close()
    for r in readers.values():
        r.close()
    db.close()
    last = None
    for s in [primary] + secondaries:
        s.stop()
    storages = [FileStorage(s.path, blob_dir=s.blobs, read_only=True)
                for s in [primary] + secondaries]
    try:
        for other in storages[1:]:
            assert_same_history(storages[0], other)
        last = storages[0].lastTransaction()
        assert all(s.lastTransaction() == last for s in storages)
    finally:
        for s in storages:
            s.close()


@pytest.mark.parametrize("start_empty", [True, False],
                         ids=["byte-copy", "transactions"])
def test_source_killed_mid_transfer_leaves_whole_transactions(
        servers, tmp_path, start_empty):
    repl = replication_address()
    primary = servers("primary", replicate_to=repl)
    db = ZEO.DB(primary.address, wait_timeout=60,
                blob_dir=str(tmp_path / "client-blobs"))
    with db.transaction() as conn:
        conn.root.small = 1
    late = None
    if not start_empty:
        # The secondary has the start of the history, so the rest comes as
        # transactions (not as a byte copy of the file).
        late = servers("late", replicate_from=repl)
        wait_for(lambda: _last_tid(late) == _last_tid(primary),
                 "the secondary to copy the first transaction")
        late.stop()
    for i in range(3):
        with db.transaction() as conn:
            setattr(conn.root, f"big{i}", blob(os.urandom(20 * 1024 * 1024)))
    db.close()
    if late is None:
        late = servers("late", replicate_from=repl)
    else:
        late.start()
    wait_for(lambda: "following from tid" in late.output(),
             "the secondary to start catching up")
    primary.kill()                       # while the blobs stream
    wait_for(lambda: "connection lost" in late.output(),
             "the secondary to notice its source died")
    late.stop()
    fs = FileStorage(late.path, blob_dir=late.blobs, read_only=True)
    tids = [t.tid for t in fs.iterator()]
    fs.close()
    # Whatever arrived is whole: every transaction the file holds is
    # complete (FileStorage's iterator checks), and it is a prefix of the
    # primary's history.
    pfs = FileStorage(primary.path, blob_dir=primary.blobs, read_only=True)
    ptids = [t.tid for t in pfs.iterator()]
    pfs.close()
    assert tids == ptids[:len(tids)]
    assert not os.path.exists(late.path + ".snapshot")
    # Both come back and the secondary completes the copy.
    primary.start()
    late.start()
    wait_for(lambda: _last_tid(late) == ptids[-1],
             "the secondary to finish the copy after restarts")


def _last_tid(server):
    fs = FileStorage(server.path, read_only=True)
    try:
        return fs.lastTransaction()
    finally:
        fs.close()
