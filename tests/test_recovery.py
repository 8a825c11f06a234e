"""Recovery from a transaction torn by a crash between tpc_vote and
tpc_finish (issue 9, item 4).

The torn files are made for real: a process commits through ZODB (or
applies a source's transactions as a follower does) and is SIGKILLed after
every vote of its last transaction and before its tpc_finish.  A
FileStorage opened on such a file says its last transaction is the torn
one, which is in no file.
"""
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import ZEO
from ZODB.FileStorage import FileStorage

from replication.recovery import recover_torn_transaction
from replication.secondary import Follower, State
from tests.replication_support import Cluster, assert_same_history
from tests.support import replica_db, wait_for
from tests.zeo_servers import replication_address

# argv: path blob_dir source source_blob_dir count
#   source "-": commit `count` transactions through ZODB (each with a blob),
#   then one more killed between vote and finish.
#   Otherwise: apply the source's transactions as a follower does, and be
#   killed between vote and finish of the count-th.
KILLED_BETWEEN_VOTE_AND_FINISH = textwrap.dedent("""
    import os, shutil, signal, sys, tempfile
    import transaction, ZODB, ZODB.blob
    from ZODB.Connection import TransactionMetaData
    from ZODB.FileStorage import FileStorage

    path, blob_dir, source, source_blobs, count = sys.argv[1:]
    count = int(count)

    def die():
        print("killed between vote and finish", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    class DieBeforeFinish:
        # Sorts before the connection: its tpc_finish runs after every
        # tpc_vote and before the storage's tpc_finish.
        def __init__(self, tm):
            self.transaction_manager = tm
        def sortKey(self):
            return "\\0"
        def tpc_finish(self, t):
            die()
        def abort(self, t): pass
        tpc_begin = commit = tpc_vote = tpc_abort = abort

    storage = FileStorage(path, blob_dir=blob_dir)
    if source == "-":
        db = ZODB.DB(storage)
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        for i in range(count + 1):
            conn.root.x = i
            conn.root.b = ZODB.blob.Blob(b"blob %d" % i)
            if i == count:
                tm.get().join(DieBeforeFinish(tm))
            tm.commit()
    else:
        src = FileStorage(source, blob_dir=source_blobs, read_only=True)
        for n, txn in enumerate(src.iterator(), 1):
            meta = TransactionMetaData(txn.user, txn.description,
                                       txn.extension)
            storage.tpc_begin(meta, txn.tid, txn.status)
            for r in txn:
                if r.data and ZODB.blob.is_blob_record(r.data):
                    fd, blob = tempfile.mkstemp(
                        dir=storage.temporaryDirectory())
                    os.close(fd)
                    shutil.copyfile(src.loadBlob(r.oid, r.tid), blob)
                    storage.restoreBlob(r.oid, r.tid, r.data, blob,
                                        r.data_txn, meta)
                else:
                    storage.restore(r.oid, r.tid, r.data, "", r.data_txn,
                                    meta)
            storage.tpc_vote(meta)
            if n == count:
                die()
            storage.tpc_finish(meta)
    """)


def kill_between_vote_and_finish(path, blob_dir, count, source="-",
                                 source_blobs="-"):
    done = subprocess.run(
        [sys.executable, "-c", KILLED_BETWEEN_VOTE_AND_FINISH, str(path),
         str(blob_dir), str(source), str(source_blobs), str(count)],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert "killed between vote and finish" in done.stdout


def complete_tids(path, tmp_path):
    """(the tid FileStorage names as last, the tids really in the file),
    read from a copy so that the file itself stays as the crash left it."""
    copy = os.path.join(str(tmp_path), "copy-" + os.path.basename(path))
    shutil.copyfile(path, copy)
    fs = FileStorage(copy, read_only=True)
    try:
        return fs.lastTransaction(), [t.tid for t in fs.iterator()]
    finally:
        fs.close()
        for suffix in ("", ".index", ".lock", ".tmp"):
            if os.path.exists(copy + suffix):
                os.remove(copy + suffix)


def assert_torn(path, tmp_path):
    named, tids = complete_tids(path, tmp_path)
    assert named not in tids and named > tids[-1], \
        "the file is not torn the way a crash leaves it"
    return tids


def test_primary_and_secondary_servers_recover_from_a_torn_transaction(
        servers, tmp_path):
    repl = replication_address()
    primary = servers("primary", start=False, replicate_to=repl)
    secondary = servers("secondary", start=False, replicate_from=repl)
    # The primary: 1 + 4 commits, then one killed after its vote.
    kill_between_vote_and_finish(primary.path, primary.blobs, 4)
    primary_tids = assert_torn(primary.path, tmp_path)
    # The secondary had the primary's first 2 transactions and was killed
    # applying the third.
    kill_between_vote_and_finish(secondary.path, secondary.blobs, 3,
                                 primary.path, primary.blobs)
    secondary_tids = assert_torn(secondary.path, tmp_path)
    assert secondary_tids == primary_tids[:2]

    primary.start()
    secondary.start()
    for server, tids in ((primary, primary_tids),
                         (secondary, secondary_tids)):
        wait_for(lambda: "torn by a crash" in server.output(),
                 f"{server.name} to say what it recovered from")
        assert f"reopened at the last complete transaction " \
               f"{tids[-1].hex()}" in server.output()
    wait_for(lambda: f"following from tid {secondary_tids[-1].hex()}"
             in secondary.output(),
             "the secondary to resume from its last complete transaction")

    # Both replicate: a new commit reaches a reader of the secondary.
    db = ZEO.DB(primary.address, wait_timeout=60,
                blob_dir=str(tmp_path / "writer-blobs"))
    reader = replica_db(ZEO.client(
        secondary.address, read_only=True, wait_timeout=60,
        blob_dir=str(tmp_path / "reader-blobs"), shared_blob_dir=False))
    try:
        with db.transaction() as conn:
            conn.root.x = "after the crash"
        last = db.storage.lastTransaction()
        wait_for(lambda: reader.storage.lastTransaction() == last,
                 "the commit to reach the secondary")
        with reader.transaction() as conn:
            assert conn.root.x == "after the crash"
            assert conn.root.b.open().read() == b"blob 3"
    finally:
        reader.close()
        db.close()
    for server in (primary, secondary):
        output = server.output()
        assert "Traceback" not in output
        assert "cannot read" not in output
        server.stop()
        # FileStorage kept the cut bytes; nothing was deleted.
        assert os.path.exists(server.path + ".tr0")
    opened = [FileStorage(s.path, blob_dir=s.blobs, read_only=True)
              for s in (primary, secondary)]
    try:
        assert_same_history(*opened)
        assert [t.tid for t in opened[0].iterator()][:-1] == primary_tids
    finally:
        for fs in opened:
            fs.close()


def test_recovery_keeps_the_cut_bytes_and_says_so_once(tmp_path, caplog):
    path, blobs = tmp_path / "Data.fs", tmp_path / "blobs"
    kill_between_vote_and_finish(path, blobs, 2)
    tids = assert_torn(str(path), tmp_path)
    size = os.path.getsize(path)

    def reopen():
        return FileStorage(str(path), blob_dir=str(blobs))
    caplog.set_level(logging.INFO, "replication")
    storage = recover_torn_transaction(reopen(), reopen)
    try:
        assert storage.lastTransaction() == tids[-1]
        assert [t.tid for t in storage.iterator()] == tids
        # FileStorage cut the torn bytes off and kept them: nothing lost.
        assert os.path.getsize(path) + os.path.getsize(
            str(path) + ".tr0") == size
        [warning] = [r for r in caplog.records
                     if r.name.startswith("replication")]
        assert warning.levelno == logging.WARNING
        assert "torn by a crash" in warning.getMessage()
        assert "kept in " + str(path) + ".tr0" in warning.getMessage()
        # A storage whose last transaction is whole is left as it is.
        assert recover_torn_transaction(storage, reopen) is storage
    finally:
        storage.close()


def test_a_follower_that_cannot_read_its_own_last_transaction_stops(
        tmp_path, caplog):
    # Without recovery (a FileStorage opened directly), the handshake cannot
    # work: the follower must stop once, saying what to do, not retry with
    # tracebacks for ever.
    cluster = Cluster(tmp_path)
    try:
        primary = cluster.primary(blobs=False)
        path = tmp_path / "torn.fs"
        kill_between_vote_and_finish(path, tmp_path / "torn-blobs", 1)
        torn = FileStorage(str(path), blob_dir=str(tmp_path / "torn-blobs"))
        caplog.set_level(logging.INFO, "replication")
        follower = Follower(torn, primary.replication_address,
                            lambda tid, oids: None, reconnect_min=0.01,
                            reconnect_max=0.05)
        try:
            follower.start()
            wait_for(lambda: follower.state is State.STOPPED,
                     "the follower to stop")
            wait_for(lambda: follower._greenlet.ready(),
                     "the follower's greenlet to end")
            assert "torn by a crash?" in follower.problem
            records = [r for r in caplog.records
                       if r.name == "replication.secondary"]
            [stopped] = records
            assert stopped.levelno == logging.CRITICAL
            assert stopped.exc_info is None
            assert "Restart this server" in stopped.getMessage()
        finally:
            follower.stop()
            torn.close()
    finally:
        cluster.close()
