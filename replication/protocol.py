"""The replication wire protocol: messages, framing and checksums (no I/O).

Connection
==========
A *secondary* connects to a *source* (a primary, or another secondary that
feeds a chain), over TLS when the servers have a ``<replication-ssl>``
section (``tls.py``: both sides present a certificate and check the
other's).  Each side first sends the 6-byte preamble ``b"ZKZR"`` + protocol
version (unsigned 16-bit, big endian), then length-prefixed frames::

    frame   := length:u32  tag:u8  payload:(length - 1 bytes)

``length`` counts the tag and payload and is at most ``MAX_FRAME``; a larger
length, an unknown tag or a payload that does not decode ends the
connection with a ``ProtocolError`` naming what was wrong.  Nothing that a
peer sends is ever unpickled.  Until the handshake is complete a frame may
hold at most ``HANDSHAKE_MAX_FRAME`` bytes, and a source reads at most
``ACK_MAX_FRAME`` bytes per frame from a secondary after it, so a peer
cannot make a source buffer more than that; the whole handshake must
finish within the source's handshake timeout.

Conversation
============
::

    secondary                                source
    ---------                                ------
    preamble, AUTH(nonce_c)               ->
                                          <- preamble, CHALLENGE(flags,
                                               nonce_s, source proof)
                                             or preamble, REFUSE(reason)
                                             (unsupported version)
    PROOF(secondary proof), HELLO(last    ->
      tid, digest of that transaction,
      epoch, flags, name)
                                          <- WELCOME(source last tid,
                                               epoch, flags) or REFUSE(reason)
                                          <- TXN, RECORD..., [CHUNK...], END
                                             or FILE_TXN
                                             (one per transaction, oldest
                                              first, catch-up then live)
                                          <- HEARTBEAT(source last tid, epoch)
                                             when idle for keep-alive-delay
    ACK(last durable tid)                 ->  every keep-alive-delay, and
                                              after commits: at once when
                                              WELCOME set ACK_EACH (the
                                              source has synchronous
                                              replicas), else at most every
                                              ACK_INTERVAL seconds

Shared secret: with ``secret-file`` configured, both sides prove that they
know the secret without sending it (``auth.py``).  Each side sends a fresh
32-byte random nonce; the proofs are HMAC-SHA256 under the secret of a
label naming the side that proves, then ``nonce_c + nonce_s``::

    source proof    = HMAC(secret, b"zkzeo-replication source\0"
                                   + nonce_c + nonce_s)
    secondary proof = HMAC(secret, b"zkzeo-replication secondary\0"
                                   + nonce_c + nonce_s)

CHALLENGE sets flag ``SECRET`` when its proof is meaningful (the source has
a secret); without a secret a side sends 32 zero bytes.  A secondary with a
secret drops a source that does not prove it; a source with a secret
answers a wrong proof with REFUSE(``NOT_AUTHENTICATED``) before it has read
HELLO, so such a peer gets no data.  Proofs are compared in constant time.
The secret authenticates the handshake only: without TLS the stream that
follows is neither encrypted nor protected against an on-path attacker.

Snapshot: a secondary whose FileStorage is empty sets ``CAN_SNAPSHOT`` in
HELLO.  The source may then answer WELCOME with a byte copy of its Data.fs
up to a transaction boundary instead of transaction records (a replica built
by restore is byte-identical to its primary, so this is the same file, at
disk speed)::

                                          <- SNAPSHOT(tid, length)
                                          <- CHUNK... (length bytes of Data.fs)
                                          <- BLOBFILE(oid, serial, size),
                                             CHUNK... (per blob file <= tid)
                                          <- SNAPSHOT_END(tid, BLAKE2b-256 of
                                               the Data.fs bytes)
                                          <- TXN... (live, after tid)

The secondary writes the copy aside, checks the hash, and only then puts it
in place of its empty storage.

The source checks that HELLO's tid exists in its history and that its own
transaction with that tid has the same digest; otherwise it answers REFUSE
with code ``DIVERGENT`` and the secondary stops replicating (its data is
never overwritten).  A tid of eight zero bytes means "empty: send everything".

Transactions
============
``TXN`` carries the transaction metadata (tid, status, user, description and
the raw extension bytes), ``RECORD`` one data record (oid, serial, backpointer
tid, flags, data length, blob length) with its data inline when it is at most
``INLINE_DATA`` bytes, else followed by ``CHUNK`` frames; a blob record's
file content follows as ``CHUNK`` frames (none for a 0-byte blob, none when
blob replication is off).  ``END`` repeats the tid and carries the
transaction digest; the secondary compares it with the digest of what it
received before it votes, so a corrupted record is never committed.

``FILE_TXN`` is the live fast path: one committed transaction exactly as the
source's FileStorage wrote it (transaction header, data records, redundant
length) with its file position and the BLAKE2b-256 of those bytes, which
the secondary checks before it parses and applies them like the frames
above.  A source sends it only for a transaction without back pointers or
blob records, with every record at most ``INLINE_DATA`` bytes, that fits in
one frame: encoding it costs the committing thread one hash and one copy.

The digest (``TransactionDigest``) is BLAKE2b-256 over the metadata and every
record's oid, serial, data (or its absence) and blob length; it is the same
whether computed from the stream or from a storage's iterator, which makes it
the history proof in HELLO.

Byte layout of payloads (all integers big endian; tids and oids 8 bytes)::

    AUTH       nonce:32
    CHALLENGE  flags:u16 nonce:32 proof:32
    PROOF      proof:32
    HELLO      epoch:u64 tid:8 digest:32 flags:u16 name_len:u16 name
               (name: utf-8, at most MAX_NAME bytes)
    WELCOME    epoch:u64 last_tid:8 flags:u16
    REFUSE     code:u8 message(utf-8)
    TXN        tid:8 status:1 user_len:u16 desc_len:u16 ext_len:u32
               user desc ext
    RECORD     oid:8 serial:8 data_txn:8 flags:u8 data_len:u32 blob_len:u64
               [data if data_len <= INLINE_DATA]
    CHUNK      bytes
    END        tid:8 digest:32
    FILE_TXN   tid:8 pos:u64 digest:32 FileStorage transaction bytes
    HEARTBEAT  epoch:u64 last_tid:8
    ACK        tid:8
    SNAPSHOT   tid:8 length:u64
    BLOBFILE   oid:8 serial:8 size:u64
    SNAPSHOT_END tid:8 digest:32
"""
import hashlib
import struct
from collections import namedtuple

MAGIC = b"ZKZR"
VERSION = 3         # 2: WELCOME has flags; 3: AUTH, CHALLENGE, PROOF
PREAMBLE = struct.Struct(">4sH")
PREAMBLE_SIZE = PREAMBLE.size

FRAME_HEADER = struct.Struct(">IB")
_LENGTH = struct.Struct(">I")
MAX_FRAME = 4 * 1024 * 1024 + 64
MAX_NAME = 255                  # bytes of a HELLO name
HANDSHAKE_MAX_FRAME = 1024      # any frame before the handshake is done
ACK_MAX_FRAME = 64              # a secondary's frames after it
NONCE_SIZE = 32
PROOF_SIZE = 32
CHUNK_SIZE = 1024 * 1024
INLINE_DATA = 1024 * 1024

Z64 = b"\0" * 8
DIGEST_SIZE = 32
NO_DIGEST = b"\0" * DIGEST_SIZE

# HELLO flags
WANT_BLOBS = 1
CAN_SNAPSHOT = 2   # empty FileStorage: a byte copy of the source's file is ok

# WELCOME flags
ACK_EACH = 1       # acknowledge every transaction at once (synchronous mode)
ACK_INTERVAL = 0.05  # otherwise at most this often (seconds) while streaming

# CHALLENGE flags
SECRET = 1         # the source proves it knows the shared secret

# RECORD flags
HAS_DATA = 1      # data is not None (None: creation undone)
IS_BLOB = 2       # a blob record; blob_len bytes of file follow as CHUNKs
BLOB_SENT = 4     # the blob's content is in the stream
HAS_DATA_TXN = 8  # data_txn is a backpointer hint

# REFUSE codes
UNSUPPORTED_VERSION = 1
DIVERGENT = 2
STALE_EPOCH = 3
NOT_READY = 4
NOT_AUTHENTICATED = 5

REFUSE_NAMES = {UNSUPPORTED_VERSION: "unsupported version",
                DIVERGENT: "divergent history",
                STALE_EPOCH: "stale epoch",
                NOT_READY: "not ready",
                NOT_AUTHENTICATED: "not authenticated"}
MAX_REFUSAL = 1000   # characters of a REFUSE message kept


class ProtocolError(Exception):
    """The peer sent something this protocol does not allow."""


def printable(text, limit=None):
    """``text`` (a peer's) safe to log: control and other non-printable
    characters escaped (no line can be forged), ``limit`` characters at
    most.  Logging's ``%`` formatting is the logger's business: peer
    strings go in arguments, never in format strings."""
    if limit is not None and len(text) > limit:
        text = text[:limit] + "..."
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else
                   c.encode("unicode_escape").decode("ascii")
                   for c in text)


def preamble():
    return PREAMBLE.pack(MAGIC, VERSION)


def parse_preamble(data):
    """Return the peer's protocol version, or raise ProtocolError."""
    magic, version = PREAMBLE.unpack(data)
    if magic != MAGIC:
        raise ProtocolError(
            f"not a zkzeo replication peer (first bytes {bytes(data)!r})")
    return version


def frame(tag, payload=b""):
    return FRAME_HEADER.pack(len(payload) + 1, tag) + payload


# --- messages ------------------------------------------------------------
# Each message is a namedtuple with a TAG, encode() -> frame bytes and a
# decode(payload) classmethod; DECODERS maps tags to classes.

def _message(name, tag, fields, layout):
    base = namedtuple(name, fields)
    st = struct.Struct(">" + layout)

    class Message(base):
        __slots__ = ()
        TAG = tag
        STRUCT = st

        def encode(self):
            return frame(tag, st.pack(*self))

        @classmethod
        def decode(cls, payload):
            if len(payload) != st.size:
                raise ProtocolError(
                    f"{name} payload is {len(payload)} bytes, "
                    f"expected {st.size}")
            return cls(*st.unpack(payload))

    Message.__name__ = Message.__qualname__ = name
    return Message


Auth = _message("Auth", ord("a"), "nonce", "32s")
Challenge = _message("Challenge", ord("c"), "flags nonce proof", "H32s32s")
Proof = _message("Proof", ord("p"), "proof", "32s")
Welcome = _message("Welcome", ord("W"), "epoch last_tid flags", "Q8sH")
End = _message("End", ord("E"), "tid digest", "8s32s")
Heartbeat = _message("Heartbeat", ord("B"), "epoch last_tid", "Q8s")
Ack = _message("Ack", ord("A"), "tid", "8s")
Snapshot = _message("Snapshot", ord("S"), "tid length", "8sQ")
BlobFile = _message("BlobFile", ord("F"), "oid serial size", "8s8sQ")
SnapshotEnd = _message("SnapshotEnd", ord("Z"), "tid digest", "8s32s")


class Hello(namedtuple("Hello", "epoch tid digest flags name")):
    __slots__ = ()
    TAG = ord("H")
    HEAD = struct.Struct(">Q8s32sHH")

    def encode(self):
        name = self.name.encode("utf-8")
        if len(name) > MAX_NAME:
            raise ValueError(f"name {self.name!r} is longer than {MAX_NAME} "
                             "bytes")
        return frame(self.TAG, self.HEAD.pack(
            self.epoch, self.tid, self.digest, self.flags, len(name)) + name)

    @classmethod
    def decode(cls, payload):
        head = cls.HEAD.size
        if len(payload) < head:
            raise ProtocolError("HELLO too short")
        epoch, tid, digest, flags, name_len = cls.HEAD.unpack_from(payload)
        if len(payload) != head + name_len:
            raise ProtocolError("HELLO name length does not match")
        if name_len > MAX_NAME:
            raise ProtocolError(f"HELLO name longer than {MAX_NAME} bytes")
        # Shown in logs and status: never a control character.
        name = printable(bytes(payload[head:]).decode("utf-8", "replace"))
        return cls(epoch, tid, digest, flags, name)


class Refuse(namedtuple("Refuse", "code message")):
    __slots__ = ()
    TAG = ord("X")

    def encode(self):
        return frame(self.TAG, bytes([self.code]) + self.message.encode())

    @classmethod
    def decode(cls, payload):
        if not payload:
            raise ProtocolError("empty REFUSE")
        return cls(payload[0], printable(
            bytes(payload[1:]).decode("utf-8", "replace"), MAX_REFUSAL))


class Txn(namedtuple("Txn", "tid status user description extension")):
    """Transaction metadata; user, description and extension are bytes."""
    __slots__ = ()
    TAG = ord("T")
    HEAD = struct.Struct(">8scHHI")

    def encode(self):
        return frame(self.TAG, self.HEAD.pack(
            self.tid, self.status, len(self.user), len(self.description),
            len(self.extension)) + self.user + self.description
            + self.extension)

    @classmethod
    def decode(cls, payload):
        head = cls.HEAD.size
        if len(payload) < head:
            raise ProtocolError("TXN too short")
        tid, status, ul, dl, el = cls.HEAD.unpack_from(payload)
        if len(payload) != head + ul + dl + el:
            raise ProtocolError("TXN lengths do not match its payload")
        payload = bytes(payload)
        user = payload[head:head + ul]
        desc = payload[head + ul:head + ul + dl]
        ext = payload[head + ul + dl:]
        return cls(tid, status, user, desc, ext)


class Record(namedtuple("Record",
                        "oid serial data_txn flags data_len blob_len data")):
    """One data record; ``data`` is None when it follows as CHUNKs."""
    __slots__ = ()
    TAG = ord("R")
    HEAD = struct.Struct(">8s8s8sBIQ")
    _FRAMED = struct.Struct(">IB8s8s8sBIQ")     # FRAME_HEADER + HEAD

    def encode(self):
        head = self.frame_head(self.oid, self.serial, self.data_txn,
                               self.flags, self.data_len, self.blob_len)
        return head if self.data is None else head + self.data

    @classmethod
    def frame_head(cls, oid, serial, data_txn, flags, data_len, blob_len):
        """The bytes of a RECORD frame before its inline data, if any (the
        encoder's hot path: no copy of the data)."""
        inline = data_len if data_len <= INLINE_DATA else 0
        return cls._FRAMED.pack(1 + cls.HEAD.size + inline, cls.TAG, oid,
                                serial, data_txn, flags, data_len, blob_len)

    @classmethod
    def decode(cls, payload):
        head = cls.HEAD.size
        if len(payload) < head:
            raise ProtocolError("RECORD too short")
        oid, serial, data_txn, flags, data_len, blob_len = \
            cls.HEAD.unpack_from(payload)
        rest = len(payload) - head
        if data_len <= INLINE_DATA:
            if rest != data_len:
                raise ProtocolError("RECORD data length does not match")
            data = bytes(payload[head:])
        else:
            if rest:
                raise ProtocolError("RECORD with large data has inline bytes")
            data = None
        return cls(oid, serial, data_txn, flags, data_len, blob_len, data)

    @property
    def inline(self):
        return self.data_len <= INLINE_DATA


class Chunk(namedtuple("Chunk", "data")):
    __slots__ = ()
    TAG = ord("C")

    def encode(self):
        return frame(self.TAG, self.data)

    @classmethod
    def decode(cls, payload):
        return cls(bytes(payload))


class FileTxn(namedtuple("FileTxn", "tid pos digest data")):
    """A committed transaction as the source's FileStorage stores it, from
    file position ``pos``; ``digest`` is BLAKE2b-256 of ``data``."""
    __slots__ = ()
    TAG = ord("D")
    HEAD = struct.Struct(">8sQ32s")
    _FRAMED = struct.Struct(">IB8sQ32s")        # FRAME_HEADER + HEAD
    MAX_DATA = MAX_FRAME - 1 - HEAD.size

    def encode(self):
        return self._FRAMED.pack(1 + self.HEAD.size + len(self.data),
                                 self.TAG, self.tid, self.pos,
                                 self.digest) + self.data

    @classmethod
    def decode(cls, payload):
        head = cls.HEAD.size
        if len(payload) < head:
            raise ProtocolError("FILE_TXN too short")
        tid, pos, digest = cls.HEAD.unpack_from(payload)
        return cls(tid, pos, digest, bytes(payload[head:]))

    @staticmethod
    def hash(data):
        return hashlib.blake2b(data, digest_size=DIGEST_SIZE).digest()


MESSAGES = (Auth, Challenge, Proof, Hello, Welcome, Refuse, Txn, Record, Chunk, End, Heartbeat, Ack,
            Snapshot, BlobFile, SnapshotEnd, FileTxn)
DECODERS = {m.TAG: m for m in MESSAGES}


class FrameReader:
    """Turns received bytes into messages; feed() then pop messages.

    A frame's length is checked against ``max_frame`` as soon as its four
    length bytes are in, and nothing is allocated for the announced length:
    the buffer holds what was received, so a reader fed in bounded reads
    never holds more than ``max_frame`` plus one read.
    """

    def __init__(self, max_frame=MAX_FRAME):
        self.max_frame = max_frame
        self.buffer = bytearray()
        self.pos = 0

    def feed(self, data):
        if self.pos and self.pos == len(self.buffer):
            self.buffer.clear()
            self.pos = 0
        self.buffer += data

    @property
    def pending(self):
        """Bytes received and not decoded yet (part of a frame)."""
        return len(self.buffer) - self.pos

    def _check_length(self, length):
        if length == 0:
            raise ProtocolError("zero-length frame")
        if length > self.max_frame:
            raise ProtocolError(
                f"frame of {length} bytes exceeds the limit of "
                f"{self.max_frame}")

    def next(self):
        """Return the next decoded message, or None if more bytes are needed.
        """
        buf = self.buffer
        pos = self.pos
        if len(buf) - pos < 4:
            return None
        length, = _LENGTH.unpack_from(buf, pos)
        self._check_length(length)     # before waiting for a huge frame
        if len(buf) - pos < FRAME_HEADER.size:
            return None
        tag = buf[pos + 4]
        end = pos + 4 + length
        if len(buf) < end:
            return None
        cls = DECODERS.get(tag)
        if cls is None:
            raise ProtocolError(f"unknown message tag {tag}")
        message = cls.decode(memoryview(buf)[pos + 5:end])
        self.pos = end
        if end > 1 << 20 and end * 2 > len(buf):
            # drop consumed bytes now and then, not after every frame
            del buf[:end]
            self.pos = 0
        return message

    def __iter__(self):
        while True:
            message = self.next()
            if message is None:
                return
            yield message


class TransactionDigest:
    """BLAKE2b-256 over a transaction's metadata and records.

    Fed in the same order from a stream or from a storage iterator, so the
    digest of a secondary's last transaction proves (in HELLO) that its
    history agrees with the source's.
    """

    _meta = struct.Struct(">8scHHI")
    _rec = struct.Struct(">8s8sBIQ")

    def __init__(self, tid, status, user, description, extension):
        self._h = h = hashlib.blake2b(digest_size=DIGEST_SIZE)
        h.update(self._meta.pack(tid, status, len(user), len(description),
                                 len(extension)))
        h.update(user)
        h.update(description)
        h.update(extension)

    def record(self, oid, serial, data, is_blob, blob_len):
        flags = (HAS_DATA if data is not None else 0) | (
            IS_BLOB if is_blob else 0)
        self._h.update(self._rec.pack(oid, serial, flags,
                                      len(data) if data else 0, blob_len))
        if data:
            self._h.update(data)

    def digest(self):
        return self._h.digest()
