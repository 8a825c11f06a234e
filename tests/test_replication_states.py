"""A secondary's replication state, as the server knows it.

``ReplicatedStorage.replication_state()``: None for a primary; for a
secondary "connecting" (no stream), "catching-up" (connected, not yet at
the source's last transaction as the source reported it: backlog or byte
copy), "following" (caught up, live), "diverged", "stopped".  Only a
"following" secondary may get clients (issue 9, item 7), so the states are
checked here as a conversation with a source the test scripts frame by
frame.
"""
import hashlib
import logging
import socket

import pytest
import ZODB
from ZODB.FileStorage import FileStorage
from ZODB.utils import p64

import zkzeo.layout
from replication import protocol
from replication.protocol import (HAS_DATA, HAS_DATA_TXN, Auth, Challenge,
                                  Chunk, FrameReader, Hello, Proof, Record,
                                  Snapshot, SnapshotEnd, Txn, Welcome, Z64)
from replication.records import encode_transaction
from replication.secondary import REPLICATION_STATES
from tests.replication_support import Cluster, commit, wait_caught_up
from tests.support import wait_for


def test_replication_speaks_the_states_zkzeo_publishes():
    assert set(REPLICATION_STATES) == set(zkzeo.layout.REPLICATION_STATES)


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.close()


@pytest.fixture
def history(tmp_path):
    """A source's Data.fs with two transactions after the root's: (path,
    [tid, ...], [encoded transaction, ...])."""
    path = str(tmp_path / "source.fs")
    db = ZODB.DB(FileStorage(path))
    commit(db, x=1)
    commit(db, x=2)
    db.close()
    fs = FileStorage(path, read_only=True)
    try:
        tids, encoded = [], []
        for txn in fs.iterator():
            tids.append(txn.tid)
            encoded.append(b"".join(encode_transaction(fs, txn).parts))
        return path, tids, encoded
    finally:
        fs.close()


class ScriptedSource:
    """A replication port whose every word the test says."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(60)
        self.address = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.conn = None

    def accept(self):
        """Accept the follower, say the preamble and a CHALLENGE (no shared
        secret), and read its HELLO (returned)."""
        self.conn, _ = self.listener.accept()
        self.conn.settimeout(60)
        data = b""
        while len(data) < protocol.PREAMBLE_SIZE:
            data += self.conn.recv(65536)
        reader = FrameReader()
        reader.feed(data[protocol.PREAMBLE_SIZE:])
        while True:
            message = reader.next()
            if message is None:
                reader.feed(self.conn.recv(65536))
            elif isinstance(message, Auth):
                self.say(protocol.preamble(),
                         Challenge(0, bytes(32), bytes(32)).encode())
            elif not isinstance(message, Proof):
                assert isinstance(message, Hello)
                return message

    def say(self, *frames):
        self.conn.sendall(b"".join(frames))

    def hang_up(self):
        self.conn.close()

    def close(self):
        if self.conn is not None:
            self.conn.close()
        self.listener.close()


@pytest.fixture
def source():
    s = ScriptedSource()
    yield s
    s.close()


def state_becomes(secondary, expected):
    wait_for(lambda: secondary.replication_state() == expected,
             f"the secondary to be {expected!r} (it is "
             f"{secondary.replication_state()!r})")
    assert secondary.replication_status()["replication_state"] == expected


def test_states_from_connecting_to_catching_up_to_following(
        cluster, source, history):
    _, tids, encoded = history
    # Silence would drop the connection only after 3 * 5 + 1 s.
    secondary = cluster.secondary(source.address, blobs=False,
                                  keep_alive_delay=5)
    # Connected at the TCP level, no WELCOME yet: no stream.
    assert source.accept().tid == Z64
    assert secondary.replication_state() == "connecting"

    source.say(Welcome(0, tids[-1], 0).encode())
    state_becomes(secondary, "catching-up")
    source.say(encoded[0], encoded[1])
    wait_for(lambda: secondary.lastTransaction() == tids[1],
             "two transactions to be applied")
    assert secondary.replication_state() == "catching-up"
    source.say(encoded[2])
    state_becomes(secondary, "following")

    source.hang_up()
    state_becomes(secondary, "connecting")
    # Back with everything the source has: following at once.
    assert source.accept().tid == tids[-1]
    source.say(Welcome(0, tids[-1], 0).encode())
    state_becomes(secondary, "following")

    secondary.follower.stop()
    assert secondary.replication_state() == "stopped"


def test_an_empty_secondary_is_catching_up_until_its_byte_copy_is_in(
        cluster, source, history):
    path, tids, _ = history
    with open(path, "rb") as f:
        data = f.read()
    secondary = cluster.secondary(source.address, blobs=False,
                                  keep_alive_delay=5)
    hello = source.accept()
    assert hello.flags & protocol.CAN_SNAPSHOT
    source.say(Welcome(0, tids[-1], 0).encode(),
               Snapshot(tids[-1], len(data)).encode(),
               Chunk(data[:100]).encode())
    state_becomes(secondary, "catching-up")
    assert secondary.lastTransaction() == Z64     # no data yet
    source.say(Chunk(data[100:]).encode(), SnapshotEnd(
        tids[-1], hashlib.blake2b(
            data, digest_size=protocol.DIGEST_SIZE).digest()).encode())
    state_becomes(secondary, "following")
    assert secondary.lastTransaction() == tids[-1]


def test_a_following_secondary_of_a_real_primary_has_its_data(cluster):
    # Whenever an empty secondary says "following", it holds everything the
    # primary had when it connected.
    primary = cluster.primary()
    db = ZODB.DB(primary)
    try:
        for i in range(20):
            commit(db, x=i)
        at_start = primary.lastTransaction()
        assert primary.replication_state() is None
        assert primary.replication_status()["replication_state"] is None
        secondary = cluster.secondary(primary)
        seen = set()

        def following():
            state = secondary.replication_state()
            seen.add(state)
            if state == "following":
                assert secondary.lastTransaction() >= at_start
                return True
        wait_for(following, "the secondary to follow", interval=0.001)
        assert seen <= {"connecting", "catching-up", "following"}
        wait_caught_up(secondary, primary)
    finally:
        db.close()


def test_an_unexpected_error_that_repeats_is_told_in_full_once(
        cluster, source, caplog):
    # A record whose back pointer names a transaction the secondary does
    # not have: its storage refuses it (not a protocol error).  The
    # follower retries, but logs the traceback only the first time.
    tid = p64(1 << 60)
    bad = Txn(tid, b" ", b"", b"", b"").encode() + Record(
        p64(0), tid, p64(12345), HAS_DATA | HAS_DATA_TXN, 4, 0,
        b"data").encode()
    caplog.set_level(logging.INFO, "replication")
    secondary = cluster.secondary(source.address, blobs=False,
                                  keep_alive_delay=5)
    for attempt in range(3):
        source.accept()
        source.say(Welcome(0, tid, 0).encode(), bad)
        wait_for(lambda: len([r for r in caplog.records
                              if "replication error" in r.getMessage()])
                 > attempt, "the follower to fail on the record")
        source.hang_up()
    errors = [r for r in caplog.records
              if "replication error" in r.getMessage()]
    assert [bool(r.exc_info) for r in errors] == [True, False, False]
    assert "UndoError" in errors[1].getMessage()
    assert secondary.replication_state() == "connecting"
