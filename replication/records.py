"""Storage transactions to protocol messages, and their digests.

A transaction read from a storage iterator is encoded once into
``EncodedTransaction``: its frames as bytes, with blob contents left as
``BlobRef`` placeholders that each connection streams from the file in
chunks (so a blob is never whole in memory and never encoded twice).
"""
import os
import struct
from collections import namedtuple

import ZODB.blob
import ZODB.interfaces
from ZODB.FileStorage import FileStorage
from ZODB.FileStorage.FileStorage import FileIterator
from ZODB.FileStorage.format import (DATA_HDR, DATA_HDR_LEN, TRANS_HDR,
                                     TRANS_HDR_LEN)
from ZODB.utils import p64, u64

from . import protocol
from .protocol import (HAS_DATA, HAS_DATA_TXN, IS_BLOB, BLOB_SENT, Z64,
                       INLINE_DATA, Chunk, End, FileTxn, Record,
                       TransactionDigest, Txn)

BlobRef = namedtuple("BlobRef", "path size")


class EncodedTransaction(namedtuple("EncodedTransaction",
                                    "tid parts size digest")):
    """Frames of one transaction: ``parts`` are bytes or BlobRefs;
    ``digest`` is the one its END (or FILE_TXN) frame carries."""
    __slots__ = ()


def is_blob_storage(storage):
    return ZODB.interfaces.IBlobStorage.providedBy(storage)


def next_tid(tid):
    return p64(u64(tid) + 1)


def encode_transaction(storage, txn, send_blobs=True):
    """Encode one iterator transaction record of ``storage``.

    This runs in the committing thread for every commit (see
    ``Source._deliver``): each record's frame head is packed in one go and
    its data is copied once, into the joined frames.
    """
    tid = txn.tid
    user = txn.user or b""
    desc = txn.description or b""
    ext = txn.extension_bytes or b""
    status = txn.status if isinstance(txn.status, bytes) else \
        txn.status.encode("ascii")
    digest = TransactionDigest(tid, status, user, desc, ext)
    out = [Txn(tid, status, user, desc, ext).encode()]
    parts = []
    size = 0
    blobs = is_blob_storage(storage)
    frame_head = Record.frame_head
    for record in txn:
        data = record.data
        blob_len = 0
        flags = 0
        blob_path = None
        if data is not None:
            flags = HAS_DATA
            if blobs and ZODB.blob.is_blob_record(data):
                flags |= IS_BLOB
                blob_path = storage.loadBlob(record.oid, record.tid)
                blob_len = os.path.getsize(blob_path)
                if send_blobs:
                    flags |= BLOB_SENT
        data_txn = record.data_txn
        if data_txn:
            flags |= HAS_DATA_TXN
        else:
            data_txn = Z64
        data_len = len(data) if data else 0
        digest.record(record.oid, record.tid, data, flags & IS_BLOB, blob_len)
        out.append(frame_head(record.oid, record.tid, data_txn, flags,
                              data_len, blob_len))
        if data_len <= INLINE_DATA:
            if data_len:
                out.append(data)
        else:
            view = memoryview(data)
            for start in range(0, data_len, protocol.CHUNK_SIZE):
                out.append(Chunk(view[start:start + protocol.CHUNK_SIZE]
                                 .tobytes()).encode())
        size += data_len
        if blob_path is not None and send_blobs and blob_len:
            parts.append(b"".join(out))
            out = []
            parts.append(BlobRef(blob_path, blob_len))
            size += blob_len
    d = digest.digest()
    out.append(End(tid, d).encode())
    parts.append(b"".join(out))
    return EncodedTransaction(tid, parts, size, d)


def encode_file_transaction(storage, txn):
    """The FILE_TXN encoding of ``txn`` (from ``parse_committed``), or None
    when it needs the frames of ``encode_transaction``: maybe a blob record
    (whose file must follow), a record too large to go inline, or a
    transaction too large for one frame."""
    raw = txn.raw
    if len(raw) > FileTxn.MAX_DATA or txn.largest > INLINE_DATA or (
            b"ZODB.blob" in raw and is_blob_storage(storage)):
        return None
    digest = FileTxn.hash(raw)
    return EncodedTransaction(
        txn.tid, [FileTxn(txn.tid, txn.pos, digest, raw).encode()],
        len(raw), digest)


def open_iterator(storage, start=None, stop=None):
    """``storage.iterator(start, stop)``, safe against a concurrent commit.

    FileStorage's iterator finds ``start`` by reading the file's last
    transaction; if a commit is writing at that moment it fails ("Can't find
    last transaction in large file").  FileStorage writes under its
    ``_lock``, so the iterator is positioned while holding it.
    """
    lock = getattr(storage, "_lock", None)
    if start is None or lock is None:
        return storage.iterator(start, stop)
    with lock:
        return storage.iterator(start, stop)


def snapshot_point(storage):
    """(length, tid): a consistent end of a FileStorage's committed file.

    FileStorage updates its size and last tid together under its lock when
    a commit finishes; bytes before that size never change (a pack writes a
    new file, and our open handle keeps reading the old one).
    """
    with storage._lock:
        return storage.getSize(), storage.lastTransaction()


MAX_READ = 8 * 1024 * 1024     # larger commits are read by the iterator


class Tail:
    """The transactions a storage gained since the last read.

    For a FileStorage it remembers the file position just after the last
    transaction read, and which file object that position belongs to (a
    pack puts a new file in place), so reading what a commit added is one
    ``pread`` of the committed bytes, parsed in memory: no search, no
    iterator, and no wait for FileStorage's lock, which a commit holds
    through its fsync.  Reading stops at ``end``, the committed size the
    committer saw, because the next transaction may be half written.  In
    every other case (first read, after a pack, back pointers, other
    storages) it uses open_iterator.
    """

    def __init__(self, storage):
        self.storage = storage
        self.tid = self.pos = self.file = None

    def at_end(self):
        """Position after the storage's last committed transaction, so the
        next commit is read from memory at once; return that tid."""
        storage = self.storage
        if not isinstance(storage, FileStorage):
            return storage.lastTransaction()
        with storage._lock:
            file = storage._file
            self.pos, self.tid = snapshot_point(storage)
            self.file = file
        return self.tid

    def read_committed(self, after, end, records=True):
        """The transactions between tid ``after`` and file position ``end``
        from memory (see ``parse_committed``), or None when only the
        iterator can read them; the tail moves past them."""
        txns = self.peek_committed(after, end, records)
        if txns:
            self.advance(txns[-1].tid, end)
        return txns

    def advance(self, tid, end):
        """The transactions up to ``tid``, ending at ``end``, were read."""
        self.tid, self.pos = tid, end

    def peek_committed(self, after, end, records=True):
        """``read_committed`` without moving the tail."""
        storage = self.storage
        file = getattr(storage, "_file", None)
        if (end is None or not isinstance(storage, FileStorage)
                or self.tid != after or self.pos is None
                or file is None or file is not self.file
                or end - self.pos > MAX_READ):
            return None
        try:
            data = os.pread(file.fileno(), end - self.pos, self.pos)
        except (OSError, ValueError):       # closed meanwhile
            return None
        txns = parse_committed(data, self.pos, records)
        if txns is None or len(data) != end - self.pos:
            return None
        return txns

    def read(self, after, last, end=None):
        """Yield the transactions after tid ``after``, up to ``last``."""
        storage = self.storage
        file = getattr(storage, "_file", None)    # before a pack swaps it
        txns = self.read_committed(after, end)
        if txns is not None:
            yield from txns
            return
        self.tid = self.pos = None          # valid again only when done
        it = open_iterator(storage, next_tid(after), last)
        try:
            tid = after
            while True:
                txn = next(it, None)
                if txn is None:
                    break
                if txn.tid <= tid:
                    raise ValueError(f"{storage.getName()}: transaction "
                                     f"{txn.tid.hex()} is not after "
                                     f"{tid.hex()}")
                tid = txn.tid
                yield txn
            if isinstance(it, FileIterator):
                # FileIterator's position after the last transaction read
                self.tid, self.pos, self.file = tid, it._pos, file
        finally:
            _close_iterator(it)


class CommittedTransaction(namedtuple(
        "CommittedTransaction",
        "tid status user description extension_bytes records pos raw "
        "largest")):
    """A transaction parsed from FileStorage bytes; iterates its records
    like a storage iterator's transaction.  ``raw`` are its bytes, from
    file position ``pos``; ``largest`` is its largest record's size."""
    __slots__ = ()

    def __iter__(self):
        return iter(self.records)


CommittedRecord = namedtuple("CommittedRecord", "oid tid data data_txn")

_TXN_HEADER = struct.Struct(TRANS_HDR)
_DATA_HEADER = struct.Struct(DATA_HDR)
_LENGTH = struct.Struct(">Q")


def parse_committed(data, offset, records=True):
    """Parse whole committed FileStorage transactions from ``data``, the
    file's bytes from position ``offset``; with ``records`` false, check
    the data records but leave them out (``records`` is None then).

    Returns None for anything the storage iterator must read instead: a
    back pointer (undo), a status other than committed or packed, or bytes
    that are not whole, consistent transactions.
    """
    txns = []
    pos, size = 0, len(data)
    while pos < size:
        if pos + TRANS_HDR_LEN > size:
            return None
        tid, tlen, status, ulen, dlen, elen = _TXN_HEADER.unpack_from(
            data, pos)
        tend = pos + tlen
        if status not in b" p" or tend + 8 > size or \
                _LENGTH.unpack_from(data, tend)[0] != tlen:
            return None
        p = pos + TRANS_HDR_LEN
        user = data[p:p + ulen]
        p += ulen
        desc = data[p:p + dlen]
        p += dlen
        ext = data[p:p + elen]
        p += elen
        found = [] if records else None
        largest = 0
        while p < tend:
            if p + DATA_HDR_LEN > tend:
                return None
            oid, serial, _prev, tloc, vlen, plen = _DATA_HEADER.unpack_from(
                data, p)
            if tloc != offset + pos or vlen or not plen or serial != tid:
                return None             # back pointer, or not ours to read
            p += DATA_HDR_LEN
            if p + plen > tend:
                return None
            if records:
                found.append(CommittedRecord(oid, serial, data[p:p + plen],
                                             None))
            if plen > largest:
                largest = plen
            p += plen
        txns.append(CommittedTransaction(tid, status, user, desc, ext,
                                         found, offset + pos,
                                         data[pos:tend + 8], largest))
        pos = tend + 8
    return txns


def _close_iterator(it):
    close = getattr(it, "close", None)
    if close is not None:
        close()


def transaction_digest(storage, tid):
    """The digest of ``storage``'s transaction ``tid``, or None if absent."""
    if tid == Z64:
        return protocol.NO_DIGEST
    it = open_iterator(storage, tid, tid)
    try:
        for txn in it:
            if txn.tid == tid:
                return encode_transaction(storage, txn, send_blobs=False
                                          ).digest
            return None
        return None
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()
