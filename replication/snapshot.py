"""Byte-copy catch-up of an empty secondary (see protocol.py, "Snapshot").

A FileStorage filled by ``restore`` with a primary's transactions, in order,
is byte-identical to the primary's file: data records carry the same
positions because every record before them has the same size.  So a new,
empty secondary can receive the primary's Data.fs up to a transaction
boundary, plus the blob files of those transactions, at disk speed, instead
of restoring one transaction at a time with an fsync each.

Both sides live here: ``send_snapshot`` runs on a
source's connection greenlet; ``SnapshotReceiver`` on a follower's.
"""
import hashlib
import logging
import os
import shutil
import tempfile

from ZODB.blob import BLOB_SUFFIX
from ZODB.FileStorage import FileStorage
from ZODB.utils import u64

from . import protocol
from .protocol import BlobFile, Chunk, ProtocolError, Snapshot, SnapshotEnd
from .records import snapshot_point

logger = logging.getLogger(__name__)

READ_SIZE = protocol.CHUNK_SIZE


def can_snapshot(storage):
    """Whether ``storage`` is a FileStorage we can copy byte for byte."""
    return isinstance(storage, FileStorage)


def is_empty(storage):
    return can_snapshot(storage) and storage.getSize() <= 4


def send_snapshot(sock, storage, send_blobs, log):
    """Send SNAPSHOT ... SNAPSHOT_END; return the snapshot's tid."""
    with open(storage.getName(), "rb") as f:
        length, tid = snapshot_point(storage)
        log.info("sending a byte copy of %s: %.1f MB up to tid %s",
                 storage.getName(), length / 1e6, tid.hex())
        sock.sendall(Snapshot(tid, length).encode())
        digest = hashlib.blake2b(digest_size=protocol.DIGEST_SIZE)
        remaining = length
        while remaining:
            data = f.read(min(READ_SIZE, remaining))
            if not data:
                raise OSError(f"{storage.getName()} is shorter than its "
                              "committed size")
            digest.update(data)
            sock.sendall(Chunk(data).encode())
            remaining -= len(data)
    blobs = 0
    if send_blobs and getattr(storage, "blob_dir", None):
        for oid, serial, path in committed_blob_files(storage, tid):
            try:
                f = open(path, "rb")
            except FileNotFoundError:
                continue            # packed away meanwhile
            with f:
                size = os.fstat(f.fileno()).st_size
                sock.sendall(BlobFile(oid, serial, size).encode())
                remaining = size
                while remaining:
                    data = f.read(min(READ_SIZE, remaining))
                    if not data:
                        raise OSError(f"blob file {path} shrank")
                    sock.sendall(Chunk(data).encode())
                    remaining -= len(data)
            blobs += 1
    sock.sendall(SnapshotEnd(tid, digest.digest()).encode())
    log.info("byte copy sent (%d blob files)", blobs)
    return tid


def committed_blob_files(storage, tid):
    """(oid, serial, path) of the blob files of transactions up to tid."""
    fshelper = storage.fshelper
    for oid, oid_path in fshelper.listOIDs():
        try:
            names = sorted(os.listdir(oid_path))
        except FileNotFoundError:
            continue
        for name in names:
            if not name.endswith(BLOB_SUFFIX):
                continue
            path = os.path.join(oid_path, name)
            try:
                _, serial = fshelper.splitBlobFilename(path)
            except ValueError:
                continue
            if serial <= tid:
                yield oid, serial, path


class SnapshotReceiver:
    """Receives a byte copy next to an empty FileStorage, then installs it.
    """

    def __init__(self, storage, message):
        self.storage = storage
        self.tid = message.tid
        self.length = message.length
        self.received = 0
        self.path = storage.getName() + ".snapshot"
        self.file = open(self.path, "wb")
        self.digest = hashlib.blake2b(digest_size=protocol.DIGEST_SIZE)
        blob_dir = getattr(storage, "blob_dir", None)
        self.staging = os.path.join(blob_dir, "tmp", "snapshot") \
            if blob_dir else None
        if self.staging:
            shutil.rmtree(self.staging, ignore_errors=True)
        self.blobs = []          # (oid, serial, staged path)
        self.blob = None         # (file, remaining) of the blob arriving

    def chunk(self, data):
        if self.received < self.length:
            if self.received + len(data) > self.length:
                raise ProtocolError("snapshot longer than announced")
            self.digest.update(data)
            self.file.write(data)
            self.received += len(data)
            return
        if self.blob is None:
            raise ProtocolError("CHUNK after the snapshot's data")
        f, remaining = self.blob
        if len(data) > remaining:
            raise ProtocolError("blob file longer than announced")
        f.write(data)
        self._blob_progress(remaining - len(data))

    def blob_file(self, message):
        if self.received < self.length or self.blob is not None:
            raise ProtocolError("BLOBFILE before the previous data ended")
        if self.staging is None:
            raise ProtocolError("blob files for a storage without blobs")
        os.makedirs(self.staging, exist_ok=True)
        path = os.path.join(self.staging, "%016x-%016x.blob" % (
            u64(message.oid), u64(message.serial)))
        self.blobs.append((message.oid, message.serial, path))
        self.blob = (open(path, "wb"), message.size)
        self._blob_progress(message.size)

    def _blob_progress(self, remaining):
        f, _ = self.blob
        if remaining:
            self.blob = (f, remaining)
        else:
            f.close()
            self.blob = None

    def finish(self, message):
        """Check the copy; return (path, blobs) ready to install."""
        if message.tid != self.tid or self.received != self.length or \
                self.blob is not None:
            raise ProtocolError("SNAPSHOT_END before the snapshot's end")
        if message.digest != self.digest.digest():
            raise ProtocolError("snapshot checksum mismatch: the copy was "
                                "corrupted on the way; it was not used")
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        return self.path, self.blobs

    def abort(self):
        if not self.file.closed:
            self.file.close()
        if self.blob is not None:
            self.blob[0].close()
        if os.path.exists(self.path):
            os.remove(self.path)
        if self.staging:
            shutil.rmtree(self.staging, ignore_errors=True)


def install(storage, path, blobs, reopen):
    """Replace the empty FileStorage ``storage`` by the copy at ``path``.

    Returns the reopened storage.  Blob files move into the blob directory
    first; the Data.fs is renamed into place last, so a crash in between
    leaves an empty storage (that will take a new copy), never a Data.fs
    pointing at missing blobs.
    """
    if storage.getSize() > 4:
        raise RuntimeError("refusing to replace a storage that has data")
    target = storage.getName()
    fshelper = getattr(storage, "fshelper", None)
    for oid, serial, staged in blobs:
        fshelper.getPathForOID(oid, create=True)
        os.replace(staged, fshelper.getBlobFilename(oid, serial))
    storage.close()
    for suffix in (".index", ".tmp"):
        if os.path.exists(target + suffix):
            os.remove(target + suffix)
    os.replace(path, target)
    _fsync_dir(os.path.dirname(os.path.abspath(target)))
    return reopen()


def rewind(storage, common, reopen):
    """Cut the transactions after ``common`` off the FileStorage
    ``storage``, keeping the whole file first as ``Data.fs.divergent-TID``
    (TID: the first transaction cut off).  Returns the reopened storage.
    """
    from ZODB.FileStorage.FileStorage import FileIterator
    path = storage.getName()
    it = FileIterator(path, start=common)
    try:
        txn = next(it)
        if txn.tid != common:
            raise ValueError(f"transaction {common.hex()} not found")
        end = it._pos          # just after the common transaction
        following = next(it, None)
    finally:
        it.close()
    first_cut = following.tid.hex() if following is not None else "none"
    aside = f"{path}.divergent-{first_cut}"
    storage.close()
    shutil.copyfile(path, aside)
    with open(aside, "rb+") as f:
        os.fsync(f.fileno())
    with open(path, "rb+") as f:
        f.truncate(end)
        os.fsync(f.fileno())
    for suffix in (".index", ".tmp"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    logger.warning("rewound %s to transaction %s; the file as it was is "
                   "kept in %s", path, common.hex(), aside)
    return reopen()


def empty_stand_in(storage):
    """An empty FileStorage (with blobs if ``storage`` has them) in a
    temporary directory, to answer for ``storage`` while it is replaced:
    a client or ZEO server asking meanwhile finds an empty database, as it
    would have a moment earlier, rather than a closed file."""
    directory = tempfile.mkdtemp(prefix="zkzeo-stand-in-")
    blobs = {"blob_dir": os.path.join(directory, "blobs")} if getattr(
        storage, "blob_dir", None) else {}
    stand_in = FileStorage(os.path.join(directory, "empty.fs"), create=True,
                           **blobs)
    stand_in.stand_in_directory = directory
    return stand_in


def discard_stand_in(stand_in):
    stand_in.close()
    shutil.rmtree(stand_in.stand_in_directory, ignore_errors=True)


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def start_over(storage, reopen, move_blobs=True):
    """Put the FileStorage ``storage``'s files aside, as
    ``Data.fs.packed-away-TID`` (TID: its last transaction) and the blob
    directory likewise, and reopen an empty storage in their place, ready
    for a byte copy.  Nothing is deleted.  With ``move_blobs`` false (a
    blob directory shared with the source) the blob directory stays."""
    path = storage.getName()
    blob_dir = getattr(storage, "blob_dir", None)
    aside = f"{path}.packed-away-{storage.lastTransaction().hex()}"
    storage.close()
    os.replace(path, aside)
    for suffix in (".index", ".tmp", ".packed"):
        if os.path.exists(path + suffix):
            os.replace(path + suffix, aside + suffix)
    if blob_dir and move_blobs and os.path.exists(blob_dir):
        os.replace(blob_dir, aside + ".blobs")
    # Created without the blob directory: FileStorage empties the blob
    # directory of a Data.fs it creates.
    FileStorage(path, create=True).close()
    _fsync_dir(os.path.dirname(os.path.abspath(path)))
    logger.warning("%s was put aside as %s%s; an empty one replaces it",
                   path, aside, f" (blobs in {aside}.blobs)"
                   if blob_dir and move_blobs else "")
    return reopen()
