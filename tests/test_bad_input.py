"""Bad input on the replication port and in the stream.

Each case: the connection ends, the log names the peer and what was wrong,
the secondary's Data.fs keeps only whole transactions, and the servers go
on serving.
"""
import logging
import os
import shutil
import socket
import threading

import pytest
import ZODB
from ZODB.FileStorage import FileStorage

from replication import protocol
from replication.protocol import (Auth, Challenge, FrameReader, Hello, Refuse,
                                  Welcome, Z64)
from replication.records import (encode_file_transaction, encode_transaction,
                                 parse_committed)
from replication.secondary import State
from tests.replication_support import (Cluster, assert_same_history, blob,
                                       commit, wait_caught_up)
from tests.support import wait_for


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.close()


@pytest.fixture
def primary(cluster):
    p = cluster.primary()
    db = ZODB.DB(p)
    commit(db, x=1, b=blob(b"blob"))
    yield p
    db.close()


def talk(address, data, read=True):
    """Send raw bytes to a replication port; return what comes back."""
    with socket.create_connection(address, timeout=30) as s:
        chunks = []
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            while read:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except (ConnectionResetError, BrokenPipeError, OSError):
            pass   # the source hung up on us, as it should
    return b"".join(chunks)


def assert_still_serving(cluster, primary, name):
    secondary = cluster.secondary(primary, name=name)
    wait_caught_up(secondary, primary)
    assert_same_history(primary, secondary)


@pytest.mark.parametrize("garbage, complaint", [
    (os.urandom(64) + b"\0", "not a zkzeo replication peer"),
    (b"GET / HTTP/1.1\r\nHost: example\r\n\r\n",
     "not a zkzeo replication peer (first bytes b'GET / '"),
    (protocol.preamble() + b"\x7f\xff\xff\xff", "exceeds the limit"),
    (protocol.preamble() + protocol.frame(ord("?"), b"x"),
     "unknown message tag"),
    (protocol.preamble() + protocol.Ack(Z64).encode(),
     "expected AUTH, got Ack"),
], ids=["random", "http", "oversized", "unknown-tag", "no-auth"])
def test_garbage_on_the_replication_port(cluster, primary, caplog, garbage,
                                         complaint):
    caplog.set_level(logging.INFO, "replication")
    talk(primary.replication_address, garbage)
    wait_for(lambda: complaint in caplog.text,
             f"the source to log {complaint!r}")
    line = next(r for r in caplog.records if complaint in r.getMessage())
    assert "127.0.0.1:" in line.getMessage()   # names the peer
    assert_still_serving(cluster, primary, "after-garbage")


def test_unknown_protocol_version_is_refused_with_a_reason(
        cluster, primary, caplog):
    answer = talk(primary.replication_address,
                  protocol.PREAMBLE.pack(protocol.MAGIC, 99))
    assert protocol.parse_preamble(answer[:6]) == protocol.VERSION
    reader = FrameReader()
    reader.feed(answer[6:])
    refusal = reader.next()
    assert isinstance(refusal, Refuse)
    assert refusal.code == protocol.UNSUPPORTED_VERSION
    assert "version 99 is not supported" in refusal.message
    assert "unsupported protocol version 99" in caplog.text
    assert_still_serving(cluster, primary, "after-version")


def diverge(cluster, primary, name, extra_commit=True):
    """A secondary that has the primary's history plus its own commit."""
    secondary = cluster.secondary(primary, name=name)
    wait_caught_up(secondary, primary)
    secondary.close()
    if extra_commit:
        fs = FileStorage(cluster.path(name + ".fs"),
                         blob_dir=cluster.path(name + ".blobs"))
        db = ZODB.DB(fs)
        commit(db, x="only on the secondary")
        db.close()
    with open(cluster.path(name + ".fs"), "rb") as f:
        return f.read()


def test_divergent_secondary_stops_and_keeps_its_data(cluster, primary,
                                                      caplog):
    before = diverge(cluster, primary, "diverged")
    db = ZODB.DB(primary)
    commit(db, x="only on the primary")
    secondary = cluster.secondary(primary, name="diverged")
    wait_for(lambda: secondary.follower.state is State.DIVERGED,
             "the secondary to find its history divergent")
    assert "not in this source's history" in secondary.follower.problem
    assert secondary.replication_state() == "diverged"
    critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert critical and "divergent history" in critical[0].getMessage()
    assert "rebuild it" in critical[0].getMessage()
    secondary.close()
    with open(cluster.path("diverged.fs"), "rb") as f:
        assert f.read() == before                     # nothing overwritten
    assert_still_serving(cluster, primary, "healthy")
    db.close()


def test_secondary_ahead_of_its_source_is_divergent(cluster, primary):
    diverge(cluster, primary, "ahead")
    secondary = cluster.secondary(primary, name="ahead")
    wait_for(lambda: secondary.follower.state is State.DIVERGED,
             "the secondary to find its history divergent")
    assert "newer than this source's last" in secondary.follower.problem


def test_same_tid_with_different_content_is_divergent(cluster, primary):
    # Same tids, different records: a copy of the primary whose last
    # transaction was replaced.
    name = "twisted"
    diverge(cluster, primary, name, extra_commit=False)
    fs = FileStorage(cluster.path(name + ".fs"))
    last = fs.lastTransaction()
    fs.close()
    with open(cluster.path(name + ".fs"), "r+b") as f:
        data = f.read()
        # flip a byte inside the last transaction's data: find the last
        # occurrence of the pickle of root x=1 is fragile, so change the
        # final record's last data byte before the trailing length.
        f.seek(len(data) - 9)
        f.write(bytes([data[-9] ^ 0xFF]))
    secondary = cluster.secondary(primary, name=name)
    wait_for(lambda: secondary.follower.state is State.DIVERGED,
             "the secondary to find its history divergent")
    assert f"transaction {last.hex()} differs" in secondary.follower.problem


class ScriptedSource:
    """A replication source (without a secret) that answers HELLO with
    scripted bytes, then closes: for streams no real source would send."""

    def __init__(self, script):
        self.script = script
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()
        self.connections = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                reader = FrameReader()
                data = b""
                hello = False
                while not hello:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                    if len(data) >= 6:
                        reader.feed(data[6:])
                        data = data[:6]
                        for message in reader:
                            if isinstance(message, Auth):
                                conn.sendall(protocol.preamble() + Challenge(
                                    0, bytes(32), bytes(32)).encode())
                            hello = hello or isinstance(message, Hello)
                self.connections += 1
                conn.sendall(self.script)

    def close(self):
        self.listener.close()


def encoded_history(cluster, encoding="frames"):
    """A real primary's transactions, encoded as a source would send them:
    as TXN/RECORD/END frames, or as FILE_TXN (the live fast path)."""
    fs = FileStorage(cluster.path("model.fs"), blob_dir=cluster.path("mb"))
    db = ZODB.DB(fs)
    commit(db, a=1)
    commit(db, a=2, big="y" * 100)
    if encoding == "frames":
        txns = [encode_transaction(fs, t) for t in fs.iterator()]
    else:
        with open(fs.getName(), "rb") as f:
            data = f.read()[4:]     # after the file's magic
        txns = [encode_file_transaction(fs, t)
                for t in parse_committed(data, 4)]
    db.close()
    shutil.rmtree(cluster.path("mb"))
    return txns


def stream(txns):
    return b"".join(p for t in txns for p in t.parts)


@pytest.mark.parametrize("encoding, damage, complaint", [
    ("frames", "truncate", "aborting incomplete transaction"),
    ("frames", "corrupt", "checksum mismatch"),
    ("file", "truncate", "source closed the connection"),
    ("file", "corrupt", "checksum mismatch"),
])
def test_bad_stream_commits_nothing_partial(cluster, caplog, encoding,
                                            damage, complaint):
    caplog.set_level(logging.INFO, "replication")
    txns = encoded_history(cluster, encoding)
    good, bad = stream(txns[:2]), stream(txns[2:])
    if damage == "truncate":
        bad = bad[:len(bad) // 2]      # the source dies mid-transaction
    else:
        i = bad.index(b"y" * 100)
        bad = bad[:i] + b"z" + bad[i + 1:]   # one byte flipped in transit
    source = ScriptedSource(Welcome(0, txns[-1].tid, 0).encode() + good + bad)
    try:
        secondary = cluster.secondary("%s:%s" % source.address, name="s")
        wait_for(lambda: complaint in caplog.text and
                 source.connections >= 2,
                 f"the secondary to log {complaint!r} and reconnect")
        assert secondary.lastTransaction() == txns[1].tid
        secondary.close()
    finally:
        source.close()
    fs = FileStorage(cluster.path("s.fs"), read_only=True)
    assert [t.tid for t in fs.iterator()] == [t.tid for t in txns[:2]]
    fs.close()


def test_corrupted_byte_copy_is_never_installed(cluster, caplog):
    import hashlib
    from replication.protocol import Chunk, Snapshot, SnapshotEnd
    txns = encoded_history(cluster)
    with open(cluster.path("model.fs"), "rb") as f:
        data = f.read()
    good_hash = hashlib.blake2b(data, digest_size=32).digest()
    bad = data[:-20] + bytes([data[-20] ^ 1]) + data[-19:]
    tid = txns[-1].tid
    source = ScriptedSource(Welcome(0, tid, 0).encode()
                            + Snapshot(tid, len(bad)).encode()
                            + Chunk(bad).encode()
                            + SnapshotEnd(tid, good_hash).encode())
    try:
        secondary = cluster.secondary("%s:%s" % source.address, name="s")
        wait_for(lambda: "snapshot checksum mismatch" in caplog.text and
                 source.connections >= 2,
                 "the secondary to reject the copy and try again")
        assert secondary.lastTransaction() == Z64
        assert secondary.getSize() == 4
        secondary.close()
    finally:
        source.close()
    assert not os.path.exists(cluster.path("s.fs.snapshot"))
