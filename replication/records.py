"""Storage transactions to protocol messages, and their digests.

A transaction read from a storage iterator is encoded once into
``EncodedTransaction``: its frames as bytes, with blob contents left as
``BlobRef`` placeholders that each connection streams from the file in
chunks (so a blob is never whole in memory and never encoded twice).
"""
import os
from collections import namedtuple

import ZODB.blob
import ZODB.interfaces
from ZODB.FileStorage import FileStorage
from ZODB.FileStorage.FileStorage import FileIterator
from ZODB.utils import p64, u64

from . import protocol
from .protocol import (HAS_DATA, HAS_DATA_TXN, IS_BLOB, BLOB_SENT, Z64,
                       INLINE_DATA, Chunk, End, Record, TransactionDigest, Txn)

BlobRef = namedtuple("BlobRef", "path size")


class EncodedTransaction(namedtuple("EncodedTransaction",
                                    "tid parts size digest")):
    """Frames of one transaction: ``parts`` are bytes or BlobRefs."""
    __slots__ = ()


def is_blob_storage(storage):
    return ZODB.interfaces.IBlobStorage.providedBy(storage)


def next_tid(tid):
    return p64(u64(tid) + 1)


def encode_transaction(storage, txn, send_blobs=True):
    """Encode one iterator transaction record of ``storage``."""
    user = txn.user or b""
    desc = txn.description or b""
    ext = txn.extension_bytes or b""
    status = txn.status if isinstance(txn.status, bytes) else \
        txn.status.encode("ascii")
    digest = TransactionDigest(txn.tid, status, user, desc, ext)
    out = [Txn(txn.tid, status, user, desc, ext).encode()]
    parts = []
    size = 0
    blobs = is_blob_storage(storage)
    for record in txn:
        data = record.data
        blob_len = 0
        flags = 0
        blob_path = None
        if data is not None:
            flags |= HAS_DATA
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
        if data_len <= INLINE_DATA:
            out.append(Record(record.oid, record.tid, data_txn, flags,
                              data_len, blob_len, data or b"").encode())
        else:
            out.append(Record(record.oid, record.tid, data_txn, flags,
                              data_len, blob_len, None).encode())
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
    out.append(End(txn.tid, d).encode())
    parts.append(b"".join(out))
    return EncodedTransaction(txn.tid, parts, size, d)


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


class Tail:
    """The transactions a storage gained since the last read.

    For a FileStorage it remembers the file position just after the last
    transaction read, and the file's identity (a pack puts a new file in
    place), so reading what a commit added is a seek and a read: no search,
    and no wait for FileStorage's lock, which a commit holds through its
    fsync.  Reading stops at ``end``, the committed size the committer saw,
    because the next transaction may be half written.  In every other case
    (first read, after a pack, other storages) it uses open_iterator.
    """

    def __init__(self, storage):
        self.storage = storage
        self.tid = self.pos = self.ino = None

    def read(self, after, last, end=None):
        """Yield the transactions after tid ``after``, up to ``last``."""
        storage = self.storage
        pos = self.pos
        fast = (end is not None and self.tid == after and pos is not None
                and isinstance(storage, FileStorage)
                and _inode(storage.getName()) == self.ino)
        self.tid = self.pos = None          # valid again only when done
        if fast:
            it = FileIterator(storage.getName(), pos=pos)
        else:
            it = open_iterator(storage, next_tid(after), last)
        try:
            tid = after
            while not fast or it._pos < end:
                txn = next(it, None)
                if txn is None:
                    break
                if txn.tid <= tid:
                    raise ValueError(f"{storage.getName()}: transaction "
                                     f"{txn.tid.hex()} is not after "
                                     f"{tid.hex()}")
                tid = txn.tid
                yield txn
            if isinstance(storage, FileStorage):
                # FileIterator's position after the last transaction read
                self.tid, self.pos = tid, it._pos
                self.ino = _inode(storage.getName())
        finally:
            _close_iterator(it)


def _inode(path):
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


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
