"""Packing a replicated primary: secondaries pack alike, or start over from a
byte copy when their position was packed away; never "divergent"."""
import glob
import logging
import time

import pytest
import ZODB
import ZODB.serialize

from replication import packs
from replication.secondary import State
from tests.replication_support import (Cluster, assert_same_history, blob,
                                       commit, wait_caught_up)
from tests.support import wait_for


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.close()


def churn(db, rounds, start=0):
    """Transactions that leave garbage for a pack: replaced values and
    blobs, and blobs that become unreachable."""
    for i in range(start, start + rounds):
        commit(db, counter=i, doc=blob(b"version %d" % i),
               spare=blob(b"x" * (i % 3)) if i % 2 else None)


def wait_following_and_packed(secondary, primary, timeout=60):
    def check():
        if secondary.follower.state in (State.DIVERGED, State.STOPPED):
            raise AssertionError(secondary.follower.problem)
        return (secondary.follower.state is State.FOLLOWING and
                secondary.lastTransaction() == primary.lastTransaction() and
                packs.read_state(secondary.base) ==
                packs.read_state(primary.base))
    wait_for(check, f"secondary {secondary.name} to follow, packed as its "
             "primary", timeout)


def pack_now(db):
    # A pack time strictly after the last commit, as `zeopack -d 0` gives.
    t = time.time()
    while packs.stop_tid(t) <= db.storage.lastTransaction():
        time.sleep(0.01)
        t = time.time()
    db.pack(t)


def test_a_following_secondary_packs_alike(cluster, caplog):
    caplog.set_level(logging.INFO, "replication")
    primary = cluster.primary()
    db = ZODB.DB(primary)
    secondary = cluster.secondary(primary)
    churn(db, 10)
    wait_caught_up(secondary, primary)
    size_before = secondary.getSize()
    pack_now(db)
    wait_following_and_packed(secondary, primary)
    assert secondary.getSize() < size_before
    assert "packing alike" in caplog.text
    assert not glob.glob(cluster.path("secondary.fs.packed-away-*"))
    churn(db, 3, start=10)      # and it goes on following
    wait_caught_up(secondary, primary)
    assert_same_history(primary, secondary)
    db.close()


@pytest.mark.parametrize("rewind", [False, True])
def test_an_offline_secondary_whose_position_was_packed_away_starts_over(
        cluster, caplog, rewind):
    primary = cluster.primary()
    db = ZODB.DB(primary)
    secondary = cluster.secondary(primary, rewind_divergent=rewind)
    churn(db, 5)
    wait_caught_up(secondary, primary)
    stopped_at = secondary.lastTransaction()
    secondary.close()
    churn(db, 5, start=5)
    pack_now(db)
    churn(db, 2, start=10)
    caplog.set_level(logging.INFO, "replication")
    secondary = cluster.secondary(primary, rewind_divergent=rewind)
    wait_following_and_packed(secondary, primary)
    assert_same_history(primary, secondary)
    assert "was packed away" in caplog.text
    assert "divergent" not in caplog.text
    # Nothing was deleted: the old file is kept aside, whole.
    [aside] = glob.glob(cluster.path(
        f"secondary.fs.packed-away-{stopped_at.hex()}"))
    from ZODB.FileStorage import FileStorage
    old = FileStorage(aside, read_only=True)
    try:
        assert old.lastTransaction() == stopped_at
    finally:
        old.close()
    db.close()


def test_an_offline_secondary_after_the_pack_time_packs_itself(cluster):
    # Its last transaction was committed after the pack: still in the
    # source's history as it was, so it catches up and packs alike.
    primary = cluster.primary()
    db = ZODB.DB(primary)
    churn(db, 5)
    pack_now(db)
    secondary = cluster.secondary(primary)   # byte copy of a packed file
    wait_following_and_packed(secondary, primary)
    churn(db, 3, start=5)
    wait_caught_up(secondary, primary)
    secondary.close()
    churn(db, 3, start=8)
    # packed again, up to a time after the secondary's last transaction
    primary_state = packs.read_state(primary.base)
    pack_now(db)
    assert packs.read_state(primary.base) != primary_state
    secondary = cluster.secondary(primary)
    wait_following_and_packed(secondary, primary)
    assert_same_history(primary, secondary)
    db.close()


def test_a_copy_of_a_packed_primary_knows_it_is_packed(cluster):
    # A secondary that took a byte copy of a packed file serves its own
    # secondaries (now, or once promoted) knowing that pack.
    primary = cluster.primary()
    db = ZODB.DB(primary)
    churn(db, 5)
    pack_now(db)
    secondary = cluster.secondary(primary, replicate_to="127.0.0.1:0")
    wait_following_and_packed(secondary, primary)
    assert secondary.source.pack_state == packs.read_state(primary.base)
    db.close()


def test_a_catching_up_secondary_ends_packed_alike(cluster):
    primary = cluster.primary()
    db = ZODB.DB(primary)
    churn(db, 3)
    secondary = cluster.secondary(primary)
    wait_caught_up(secondary, primary)
    secondary.close()
    churn(db, 150, start=3)
    secondary = cluster.secondary(primary)
    wait_for(lambda: secondary.follower.state is not State.CONNECTING,
             "the secondary to connect")
    pack_now(db)          # while it applies the backlog (or just after)
    churn(db, 2, start=153)
    wait_following_and_packed(secondary, primary)
    assert_same_history(primary, secondary)
    db.close()


def test_a_chain_packs_alike(cluster):
    primary = cluster.primary()
    db = ZODB.DB(primary)
    middle = cluster.secondary(primary, name="middle",
                               replicate_to="127.0.0.1:0")
    last = cluster.secondary(middle, name="last")
    churn(db, 5)
    wait_caught_up(last, primary)
    pack_now(db)
    wait_following_and_packed(middle, primary)
    wait_following_and_packed(last, primary)
    assert_same_history(primary, last)
    db.close()


def test_a_secondary_cannot_be_packed_by_a_client(cluster):
    from ZODB.POSException import ReadOnlyError
    primary = cluster.primary()
    db = ZODB.DB(primary)
    commit(db, x=1)
    secondary = cluster.secondary(primary)
    wait_caught_up(secondary, primary)
    with pytest.raises(ReadOnlyError):
        secondary.pack(time.time(), None)
    db.close()


def test_a_pack_time_past_the_last_transaction_packs_up_to_it():
    from ZODB.TimeStamp import TimeStamp
    last = TimeStamp(2026, 11, 29, 3, 0, 12.345678).raw()
    t = packs.not_after(time.time() + 3600, last)
    assert last <= packs.stop_tid(t) < \
        TimeStamp(2026, 11, 29, 3, 0, 12.345679).raw()
    assert packs.not_after(1000.0, last) == 1000.0


def test_filestorage_packs_up_to_the_stop_tid_we_compute(tmp_path):
    # Canary: secondaries pack to the same point only if packs.stop_tid is
    # FileStorage's own formula for a pack time.
    from ZODB.FileStorage import FileStorage
    fs = FileStorage(str(tmp_path / "Data.fs"))
    db = ZODB.DB(fs)
    try:
        tids = [commit(db, x=i) for i in range(3)]
        t = packs.not_after(time.time() + 60, tids[1])
        assert tids[1] <= packs.stop_tid(t) < tids[2]
        fs.pack(t, ZODB.serialize.referencesf)
        kept = [(txn.tid, txn.status) for txn in fs.iterator()]
        # up to tids[1] packed (status "p"), tids[2] as it was
        assert kept[-2:] == [(tids[1], "p"), (tids[2], " ")]
        assert tids[0] not in [tid for tid, _ in kept]
    finally:
        db.close()


T = [b"\0" * 7 + bytes([i]) for i in range(8)]
D = [bytes([i]) * 32 for i in range(8)]
PACKED = packs.PackState(0.0, T[5], T[6], D[6])   # up to T5, last was T6
V = packs.Verdict


@pytest.mark.parametrize("state, tid, digest, source_digest, verdict", [
    (None, T[4], D[4], D[4], V.SAME),
    (None, T[4], D[4], None, V.MISSING),
    (None, T[4], D[4], D[3], V.DIFFERENT),
    (PACKED, T[4], D[4], D[4], V.SAME),          # pack kept it as it was
    (PACKED, T[4], D[4], None, V.PACKED_AWAY),   # pack removed it
    (PACKED, T[4], D[4], D[3], V.PACKED_AWAY),   # pack rewrote it
    (PACKED, T[5], D[5], None, V.PACKED_AWAY),   # at the pack time
    (PACKED, T[6], D[6], D[1], V.DIFFERENT),     # after it: kept as it was
    (PACKED, T[7], D[7], None, V.MISSING),
    (packs.PackState(0.0, T[7], T[6], D[6]),     # packed to a time after
     T[6], D[6], D[1], V.SAME),                  # its last transaction
    (packs.PackState(0.0, T[7], T[6], D[6]),
     T[6], D[2], D[1], V.PACKED_AWAY),
])
def test_packed_away_or_divergent(state, tid, digest, source_digest,
                                  verdict):
    assert packs.history_check(state, tid, digest, source_digest) is verdict
