"""ACK discipline on a source: a secondary acknowledges only what it was
sent.  An ACK of any other tid is a protocol error that drops the peer
(the log names it), and never counts toward synchronous replication."""
import logging
import socket

import pytest
import ZODB
from ZODB.utils import p64, u64

from replication import protocol
from replication.protocol import (Ack, Auth, Challenge, FrameReader, Hello,
                                  Proof, Welcome, Z64)
from tests.replication_support import Cluster, commit
from tests.support import wait_for


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.close()


class FakeSecondary:
    """Speaks the real protocol to a source, saying what the test wants."""

    def __init__(self, address, name):
        # An empty secondary: "send everything".
        self.sock = socket.create_connection(address, timeout=30)
        self.sock.sendall(protocol.preamble() + Auth(bytes(32)).encode())
        data = b""
        while len(data) < protocol.PREAMBLE_SIZE:
            data += self.sock.recv(65536)
        self.reader = FrameReader()
        self.reader.feed(data[protocol.PREAMBLE_SIZE:])
        assert isinstance(self.next(), Challenge)
        # A source without a shared secret: any proof will do.
        self.sock.sendall(Proof(bytes(32)).encode() + Hello(
            0, Z64, protocol.NO_DIGEST, 0, name).encode())
        self.welcome = self.next()
        assert isinstance(self.welcome, Welcome)

    def next(self):
        while True:
            message = self.reader.next()
            if message is not None:
                return message
            data = self.sock.recv(65536)
            if not data:
                return None
            self.reader.feed(data)

    def ack(self, tid):
        self.sock.sendall(Ack(tid).encode())

    def hung_up_on(self):
        """Read until the source closes the connection."""
        try:
            while self.sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        return True

    def close(self):
        self.sock.close()


def test_an_ack_of_a_transaction_never_sent_drops_the_peer(cluster, caplog):
    caplog.set_level(logging.INFO, "replication")
    primary = cluster.primary(blobs=False)
    db = ZODB.DB(primary)
    try:
        last = primary.lastTransaction()
        future = p64(u64(last) + 1000)
        liar = FakeSecondary(primary.replication_address, "liar")
        try:
            assert liar.welcome.last_tid == last
            wait_for(lambda: len(primary.source.secondaries) == 1,
                     "the source to count the fake secondary")
            liar.ack(future)
            assert liar.hung_up_on()
        finally:
            liar.close()
        wait_for(lambda: not primary.source.secondaries,
                 "the source to forget the peer")
        [line] = [r for r in caplog.records if "not sent" in r.getMessage()]
        assert line.levelno == logging.ERROR
        assert f"ACK of transaction {future.hex()}" in line.getMessage()
        assert "liar@127.0.0.1:" in line.getMessage()      # names the peer
        # Nothing it said counts toward synchronous replication.
        assert not primary.source.wait_for_acks(last, 1, 0)
        assert not primary.source.wait_for_acks(future, 1, 0)
    finally:
        db.close()


def test_an_honest_ack_counts(cluster):
    primary = cluster.primary(blobs=False)
    db = ZODB.DB(primary)
    try:
        commit(db, x=1)
        last = primary.lastTransaction()
        honest = FakeSecondary(primary.replication_address, "honest")
        try:
            # It receives everything (TXN ... END or FILE_TXN per
            # transaction) and acknowledges the last one.
            wait_for(lambda: primary.source.status()[0]["sent_tid"] ==
                     last.hex(), "the source to send everything")
            honest.ack(last)
            wait_for(lambda: primary.source.wait_for_acks(last, 1, 0),
                     "the ACK to count")
        finally:
            honest.close()
    finally:
        db.close()
