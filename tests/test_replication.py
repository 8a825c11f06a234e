"""Replication between storages in one process."""
import logging
import os

import pytest
import transaction
import ZODB
from ZODB.Connection import TransactionMetaData

from replication.storage import SyncReplicationTimeout
from tests.replication_support import (Cluster, assert_same_history, blob,
                                       commit, wait_caught_up)
from tests.support import wait_for


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.close()


def test_records_and_blobs_of_every_size_arrive_exactly(cluster):
    primary = cluster.primary()
    db = ZODB.DB(primary)
    commit(db, small=1, empty_blob=blob(b""))
    commit(db, big_record="x" * (3 * 1024 * 1024))    # > one frame
    commit(db, big_blob=blob(os.urandom(5 * 1024 * 1024 + 7)))
    secondary = cluster.secondary(primary)
    wait_caught_up(secondary, primary)
    commit(db, small=2, another=blob(b"live"))          # live, not catch-up
    wait_caught_up(secondary, primary)
    assert_same_history(primary, secondary)
    sdb = ZODB.DB(secondary)
    with sdb.transaction() as conn:
        assert conn.root.small == 2
        assert conn.root.empty_blob.open().read() == b""
        assert conn.root.another.open().read() == b"live"
    sdb.close()
    db.close()


def test_metadata_and_raw_extension_bytes_are_kept(cluster):
    primary = cluster.primary(blobs=False)
    ZODB.DB(primary).close()  # creates the root
    primary = cluster.primary(name="p2", blobs=False)
    # extension bytes that are not what re-pickling the dict would give
    ext = b"\x80\x02}q\x00X\x01\x00\x00\x00aq\x01K\x01s."
    t = TransactionMetaData(b"user \xc3\xa9", b"desc", ext)
    primary.tpc_begin(t)
    primary.store(primary.new_oid(), b"\0" * 8, b"data", "", t)
    primary.tpc_vote(t)
    tid = primary.tpc_finish(t)
    secondary = cluster.secondary(primary, blobs=False)
    wait_caught_up(secondary, primary)
    txn = next(iter(secondary.iterator(tid, tid)))
    assert (txn.user, txn.description, txn.extension_bytes) == (
        b"user \xc3\xa9", b"desc", ext)
    assert_same_history(primary, secondary)


def test_undo_and_status_survive_replication(cluster):
    primary = cluster.primary()
    db = ZODB.DB(primary)
    commit(db, x=1)
    commit(db, x=2)
    undo_id = db.undoLog(0, 1)[0]["id"]
    db.undo(undo_id)
    transaction.commit()
    secondary = cluster.secondary(primary)
    wait_caught_up(secondary, primary)
    assert_same_history(primary, secondary)
    sdb = ZODB.DB(secondary)
    with sdb.transaction() as conn:
        assert conn.root.x == 1
    sdb.close()
    db.close()


def chain(cluster):
    """primary -> middle -> end, all with x=0: (primary, db, middle, end)"""
    primary = cluster.primary()
    db = ZODB.DB(primary)
    commit(db, x=0)
    middle = cluster.secondary(primary, name="middle",
                               replicate_to="127.0.0.1:0")
    end = cluster.secondary(middle, name="end")
    wait_caught_up(end, primary)
    return primary, db, middle, end


class FsyncRecorder:
    """Records ("fsync", fd) for os.fsync (a follower's group fsyncs),
    and whatever else a test adds, in one ordered list."""

    def __init__(self, monkeypatch):
        import threading
        self.events = []
        self.lock = threading.Lock()
        self.real_fsync = os.fsync
        monkeypatch.setattr(os, "fsync", self.fsync)

    def add(self, event):
        with self.lock:
            self.events.append(event)

    def fsync(self, fd):
        self.add(("fsync", fd))
        self.real_fsync(fd)

    def seen(self, keep):
        with self.lock:
            return [e for e in self.events if keep(e)]


def test_chain_and_live_invalidations_to_secondary_connections(cluster):
    primary, db, middle, end = chain(cluster)
    edb = ZODB.DB(end)
    conn = edb.open()
    assert conn.root.x == 0
    for i in range(1, 20):
        tid = commit(db, x=i, b=blob(b"%d" % i))
        # An open connection of the chained secondary sees each commit
        # through invalidation alone.
        wait_for(lambda: (transaction.begin(), conn.root.x)[1] == i,
                 f"commit {i} to reach a connection at the end of the chain")
        assert end.lastTransaction() == tid
    assert conn.root.b.open().read() == b"19"
    status = middle.replication_status()
    assert status["state"] == "following" and status["lag_seconds"] == 0
    [downstream] = status["secondaries"]
    assert downstream["name"] == "end"
    wait_for(lambda: middle.replication_status()["secondaries"][0][
        "acked_tid"] == primary.lastTransaction().hex(),
        "the end of the chain to acknowledge the last transaction")
    conn.close()
    edb.close()
    assert_same_history(primary, end)
    db.close()


def test_shared_blob_directory_without_blob_replication(cluster):
    primary = cluster.primary(replicate_blobs=False)
    db = ZODB.DB(primary)
    commit(db, b=blob(b"shared"))
    secondary = cluster.secondary(primary, replicate_blobs=False,
                                  blob_dir=cluster.path("primary.blobs"))
    wait_caught_up(secondary, primary)
    assert_same_history(primary, secondary, shared_blobs=True)
    db.close()


def test_restarted_secondary_resumes_where_it_stopped(cluster, caplog):
    primary = cluster.primary()
    db = ZODB.DB(primary)
    commit(db, x=1)
    secondary = cluster.secondary(primary)
    wait_caught_up(secondary, primary)
    stopped_at = secondary.lastTransaction()
    secondary.close()
    for i in range(5):
        commit(db, x=i)
    caplog.set_level(logging.INFO, "replication")
    secondary = cluster.secondary(primary)
    wait_caught_up(secondary, primary)
    assert f"connected from tid {stopped_at.hex()}" in caplog.text
    assert_same_history(primary, secondary)
    db.close()


def test_restarted_primary_is_found_again(cluster):
    primary = cluster.primary()
    db = ZODB.DB(primary)
    commit(db, x=1)
    address = "%s:%s" % primary.replication_address
    secondary = cluster.secondary(primary)
    wait_caught_up(secondary, primary)
    db.close()
    from replication import PrimaryStorage
    primary = PrimaryStorage(cluster.filestorage("primary"), address)
    cluster.storages.append(primary)
    db = ZODB.DB(primary)
    commit(db, x=2)
    wait_caught_up(secondary, primary)
    db.close()


def test_sync_replicas_commit_returns_after_the_secondary_has_it(cluster):
    primary = cluster.primary(sync_replicas=1, sync_timeout=30)
    secondary = cluster.secondary(primary)
    wait_for(lambda: primary.source.status(), "the secondary to connect")
    db = ZODB.DB(primary)
    for i in range(20):
        tid = commit(db, x=i)
        # No waiting: tpc_finish returned only after the acknowledgement.
        assert secondary.lastTransaction() >= tid
    db.close()


def test_sync_replicas_timeout_degrades_or_blocks(cluster, caplog):
    primary = cluster.primary(sync_replicas=1, sync_timeout=0.2)
    db = ZODB.DB(primary)
    commit(db, x=1)
    assert "NOT on any secondary" in caplog.text
    commit(db, x=2)                       # degraded: no second warning
    assert caplog.text.count("NOT on any secondary") == 1
    secondary = cluster.secondary(primary)
    wait_caught_up(secondary, primary)
    wait_for(lambda: primary.source.status()[0]["acked_tid"] ==
             primary.lastTransaction().hex(), "the secondary's ACK")
    for i in range(3):
        tid = commit(db, x=i)
        assert secondary.lastTransaction() >= tid    # synchronous again
    assert "synchronous replication restored" in caplog.text
    db.close()
    blocking = cluster.primary(name="blocking", sync_replicas=1,
                               sync_timeout=0.2, sync_block=True)
    with pytest.raises(SyncReplicationTimeout):
        ZODB.DB(blocking)   # creating the root commits


def test_secondary_refuses_a_source_of_an_older_epoch(cluster):
    primary = cluster.primary()
    primary.epoch = 1
    db = ZODB.DB(primary)
    commit(db, x=1)
    secondary = cluster.secondary(primary, epoch=3)
    wait_for(lambda: secondary.follower.problem and "epoch" in
             secondary.follower.problem,
             "the secondary to refuse the stale source")
    assert "epoch 3" in secondary.follower.problem
    assert secondary.lastTransaction() != primary.lastTransaction()
    primary.epoch = 3                 # the source catches up with the epoch
    wait_caught_up(secondary, primary)
    db.close()


def test_every_transaction_arrives_while_secondaries_come_and_go(cluster,
                                                                 caplog):
    """Committers write live transactions to following secondaries
    themselves, the hub sends everything else (catch-up, blobs, undo's
    back pointers, a reconnect): the hand-over between the two must neither
    skip nor repeat a transaction, whatever the timing."""
    import threading
    from persistent.mapping import PersistentMapping
    from ZODB.POSException import ConflictError, UndoError
    from ZODB.utils import z64
    primary = cluster.primary()
    db = ZODB.DB(primary)
    commit(db, **{f"t{n}": PersistentMapping() for n in range(3)})
    stop = threading.Event()
    errors = []

    def committer(n):
        try:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    with db.transaction() as conn:
                        mine = conn.root()[f"t{n}"]
                        mine["i"] = i
                        if i % 7 == 0:
                            mine["b"] = blob(b"%d" % i)  # the hub sends it
                except ConflictError:
                    continue    # another thread undid our last change
                if i % 11 == 0:                       # back pointers
                    try:
                        db.undo(db.undoLog(0, 1)[0]["id"])
                        transaction.commit()
                    except (ConflictError, UndoError):
                        transaction.abort()  # changed since: not undoable
        except Exception as e:          # pragma: no cover - reported below
            errors.append(e)
            raise

    threads = [threading.Thread(target=committer, args=(n,))
               for n in range(3)]
    for t in threads:
        t.start()
    try:
        for round in range(3):
            secondary = cluster.secondary(primary, name=f"s{round}")
            # Let it catch up with commits flowing, then reconnect.
            wait_for(lambda: secondary.replication_status()["state"] ==
                     "following" and secondary.lastTransaction() > z64,
                     "the secondary to follow")
            secondary.follower.retarget()
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors
    commit(db, x=1)
    for s in cluster.storages:
        if s is not primary:
            wait_caught_up(s, primary)
            assert_same_history(primary, s)
    # Nothing was sent twice or out of order either (a secondary would
    # have refused it, logged an error and reconnected).
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR
                and r.name.startswith("replication")]
    db.close()


def test_live_commits_take_the_file_bytes_fast_path(cluster):
    """A following secondary gets small live commits as FILE_TXN (the
    committing thread's cheap path); blobs and undo still arrive exactly,
    through the frames the hub sends."""
    from replication.protocol import FRAME_HEADER, FileTxn
    primary = cluster.primary()
    db = ZODB.DB(primary)
    commit(db, x=0)
    secondary = cluster.secondary(primary)
    wait_caught_up(secondary, primary)
    wait_for(lambda: primary.source.secondaries and
             all(s.following for s in primary.source.secondaries),
             "the secondary to follow live")
    tid = commit(db, x=1)
    last = primary.source._recent[-1]       # the shared log's newest entry
    assert last.tid == tid
    assert last.parts[0][FRAME_HEADER.size - 1] == FileTxn.TAG
    commit(db, b=blob(b"blob"))
    db.undo(db.undoLog(0, 1)[0]["id"])
    transaction.commit()
    commit(db, x=2)
    wait_caught_up(secondary, primary)
    assert_same_history(primary, secondary)
    db.close()


def test_secondary_fsyncs_groups_of_transactions_before_it_acks(
        cluster, monkeypatch):
    """A secondary commits each transaction without FileStorage's fsync and
    fsyncs once for a group, always before the ACK that reports them."""
    from replication import fsynchooks, protocol
    record = FsyncRecorder(monkeypatch)

    def filestorage_fsync(fd):       # FileStorage's own, per commit
        record.add(("commit-fsync", fd))
        record.real_fsync(fd)

    monkeypatch.setattr(fsynchooks, "_real_fsync", filestorage_fsync)
    # One group for the 50 commits however slow this machine is.
    monkeypatch.setattr(protocol, "ACK_INTERVAL", 2.0)
    primary = cluster.primary()
    db = ZODB.DB(primary)
    commit(db, x=0)
    secondary = cluster.secondary(primary, keep_alive_delay=5)
    wait_caught_up(secondary, primary)
    fd = secondary.base._file.fileno()
    follower = secondary.follower
    real_send, real_committed = follower._send, follower.committed
    monkeypatch.setattr(follower, "_send", lambda sock, message: (
        record.add(("ack", message.tid)), real_send(sock, message)))
    monkeypatch.setattr(follower, "committed", lambda tid, oids: (
        record.add(("applied", tid)), real_committed(tid, oids)))
    for i in range(50):
        tid = commit(db, x=i)
    wait_for(lambda: ("ack", tid) in record.seen(lambda e: True),
             "the ACK of the last commit")
    mine = record.seen(lambda e: e[0] in ("ack", "applied") or e[1] == fd)
    assert ("commit-fsync", fd) not in mine     # no per-commit fsync
    fsyncs = [e for e in mine if e == ("fsync", fd)]
    assert 1 <= len(fsyncs) < 50                # groups, not one each
    # The ACK of the last transaction comes after an fsync that came after
    # the last transaction was applied.
    applied, acked = mine.index(("applied", tid)), mine.index(("ack", tid))
    assert ("fsync", fd) in mine[applied:acked]
    assert secondary.lastTransaction() == tid
    # A primary's own commits keep their fsync.
    primary_fd = primary.base._file.fileno()
    assert ("commit-fsync", primary_fd) in record.seen(lambda e: True)
    db.close()


def test_hub_encodes_during_the_primarys_fsync(cluster, monkeypatch):
    """Just before a primary's FileStorage fsyncs a commit, the hub is
    asked to read and encode it (the committing thread waits for the disk
    meanwhile); the committing thread then only writes it out."""
    primary = cluster.primary(keep_alive_delay=30)    # no heartbeat reads
    db = ZODB.DB(primary)
    commit(db, x=0)
    secondary = cluster.secondary(primary)
    wait_caught_up(secondary, primary)
    source = primary.source
    wait_for(lambda: source.secondaries and
             all(s.following for s in source.secondaries),
             "the secondary to follow live")

    class PrepareNow:       # the hub prepares before the fsync goes on
        def send(self):
            source.hub.call(source._prepare)

        def close(self):
            pass

    reads = []
    read_committed = source._tail.read_committed
    monkeypatch.setattr(source, "_prepare_wakeup", PrepareNow())
    monkeypatch.setattr(source._tail, "read_committed",
                        lambda *a, **kw: reads.append(a) or
                        read_committed(*a, **kw))
    for i in range(5):
        commit(db, x=i)
    assert reads == []          # every commit used what the hub encoded
    wait_caught_up(secondary, primary)
    assert_same_history(primary, secondary)
    db.close()


def test_a_failing_before_fsync_callback_does_not_fail_the_commit(
        tmp_path, caplog):
    from ZODB.FileStorage import FileStorage
    from replication import fsynchooks
    fs = FileStorage(str(tmp_path / "Data.fs"))
    calls = []

    def callback():
        calls.append(1)
        raise RuntimeError("boom")

    unregister = fsynchooks.before_fsync(lambda: fs, callback)
    try:
        db = ZODB.DB(fs)
        commit(db, x=1)
        assert calls and "before-fsync callback failed" in caplog.text
        assert not fs._file.closed
        unregister()
        commit(db, x=2)
        assert len(calls) == 2      # the root's creation, then x=1
    finally:
        unregister()
        db.close()


def test_zeo_servers_encode_after_answering_not_during_the_fsync(cluster):
    """In a ZEO server an asynchronous commit is sent after the client has
    its answer, so the hub must not take the GIL during the fsync before
    that answer; a synchronous commit is sent before it, so it should."""
    primary = cluster.primary()
    assert primary.source.encode_during_fsync()         # in process
    primary.replicate_after_reply = True                 # as runzeo sets
    assert not primary.source.encode_during_fsync()
    primary.sync_replicas = 1
    assert primary.source.encode_during_fsync()


def test_our_zeo_server_sends_asynchronous_commits_after_answering(cluster):
    from replication.runzeo import StorageServer
    primary = cluster.primary()
    server = StorageServer(("127.0.0.1", 0), {"1": primary})
    try:
        assert primary.replicate_after_reply
    finally:
        server.close()


def test_a_chain_forwards_only_what_it_has_fsynced(cluster, monkeypatch):
    """A secondary that feeds others fsyncs a transaction before it hands
    it on: after a crash it must never be behind its own secondaries."""
    primary, db, middle, end = chain(cluster)
    wait_for(lambda: middle.source.secondaries, "the end to connect")
    fd = middle.base._file.fileno()
    record = FsyncRecorder(monkeypatch)
    real_notify = middle.source.notify_commit
    monkeypatch.setattr(middle.source, "notify_commit", lambda tid, end: (
        record.add(("forward", tid)), real_notify(tid, end)))
    tids = [commit(db, x=i) for i in range(1, 6)]
    wait_caught_up(end, primary)
    seen = record.seen(lambda e: e[0] == "forward" or e[1] == fd)
    for tid in tids:
        forwarded = seen.index(("forward", tid))
        assert ("fsync", fd) in seen[:forwarded]
        seen = seen[forwarded + 1:]
    db.close()
