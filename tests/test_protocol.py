"""The wire protocol as conversations: feed bytes, pop decoded messages."""
import pytest

from replication import protocol
from replication.protocol import (Ack, Auth, Challenge, Chunk, End,
                                  FrameReader, Heartbeat, Hello, Proof,
                                  ProtocolError, Record, Refuse, Txn,
                                  Welcome, Z64)

TID = b"\x03\xe8\x00\x00\x00\x00\x00\x01"


def roundtrip(message):
    reader = FrameReader()
    reader.feed(message.encode())
    decoded = reader.next()
    assert reader.next() is None
    return decoded


@pytest.mark.parametrize("message", [
    Auth(b"n" * 32),
    Challenge(protocol.SECRET, b"n" * 32, b"p" * 32),
    Proof(b"p" * 32),
    Hello(7, TID, b"d" * 32, protocol.WANT_BLOBS, "s1 \u00e9"),
    Welcome(7, TID, protocol.ACK_EACH),
    Refuse(protocol.DIVERGENT, "your history differs"),
    Txn(TID, b" ", b"user", b"description", b"\x80\x03}q\x00."),
    Record(b"\0" * 8, TID, Z64, protocol.HAS_DATA, 3, 0, b"abc"),
    Record(b"\0" * 8, TID, Z64, protocol.HAS_DATA, protocol.INLINE_DATA + 1,
           0, None),
    Chunk(b"x" * 1000),
    End(TID, b"\1" * 32),
    Heartbeat(3, TID),
    Ack(TID),
])
def test_every_message_round_trips(message):
    assert roundtrip(message) == message


def test_frames_split_at_every_byte_are_reassembled():
    stream = (Txn(TID, b" ", b"", b"", b"").encode()
              + Record(b"\0" * 8, TID, Z64, 1, 2, 0, b"hi").encode()
              + End(TID, b"\2" * 32).encode())
    reader = FrameReader()
    got = []
    for i in range(len(stream)):
        reader.feed(stream[i:i + 1])
        got.extend(reader)
    assert [type(m) for m in got] == [Txn, Record, End]
    assert got[1].data == b"hi"


def test_preamble_names_garbage():
    assert protocol.parse_preamble(protocol.preamble()) == protocol.VERSION
    with pytest.raises(ProtocolError, match="not a zkzeo replication peer"):
        protocol.parse_preamble(b"GET / ")


def test_oversized_frame_is_refused_before_buffering():
    reader = FrameReader()
    reader.feed(b"\x7f\xff\xff\xff" + b"T")
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        reader.next()


def test_unknown_tag_and_bad_payloads():
    reader = FrameReader()
    reader.feed(protocol.frame(ord("?"), b"x"))
    with pytest.raises(ProtocolError, match="unknown message tag"):
        reader.next()
    reader = FrameReader()
    reader.feed(protocol.frame(Ack.TAG, b"short"))
    with pytest.raises(ProtocolError, match="expected 8"):
        reader.next()
    reader = FrameReader()
    reader.feed(protocol.frame(Txn.TAG, Txn.HEAD.pack(TID, b" ", 5, 0, 0)))
    with pytest.raises(ProtocolError, match="lengths do not match"):
        reader.next()


def test_digest_depends_on_every_part():
    def digest(data=b"abc", ext=b"", oid=b"\0" * 8, blob_len=0):
        d = protocol.TransactionDigest(TID, b" ", b"u", b"d", ext)
        d.record(oid, TID, data, bool(blob_len), blob_len)
        return d.digest()
    base = digest()
    assert base == digest()
    assert len({base, digest(data=b"abd"), digest(ext=b"x"),
                digest(oid=b"\0" * 7 + b"\1"), digest(blob_len=1),
                digest(data=None)}) == 6


def test_peer_strings_are_decoded_printable():
    name = "a%s\nCRITICAL b\r\x1b"
    hello = roundtrip(Hello(0, TID, b"d" * 32, 0, name))
    assert hello.name == "a%s\\nCRITICAL b\\r\\x1b"
    refusal = roundtrip(Refuse(protocol.NOT_READY, "x\n" * 2000))
    assert "\n" not in refusal.message
    assert len(refusal.message) < 2 * protocol.MAX_REFUSAL + 10
