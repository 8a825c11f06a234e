"""The secondary side of replication: follow a source, apply its stream.

A ``Follower`` is one greenlet on the replication hub (see ``hub.py``) that
connects to a source, says where its storage stands (HELLO), and applies
each streamed transaction atomically to the storage underneath the
read-only ``SecondaryStorage``::

    tpc_begin(tid, status) -> restore / restoreBlob ... -> digest check
    -> tpc_vote -> tpc_finish -> committed(tid, oids)
    ... -> fsync (one for a group of transactions) -> ACK

Any error inside a transaction aborts it, so a secondary's storage only ever
holds whole transactions.  Lost connections are retried with exponential
backoff; a divergent history stops the follower for good (nothing is
overwritten) and says what to do, and so does a handshake that fails on our
own side (our last transaction unreadable, an unexpected error): retrying
would fail the same way.

States (``Follower.state``, changed only by ``_set_state``)::

    CONNECTING --handshake--> CATCHING_UP --at the source's tail--> FOLLOWING
        ^                          |                                   |
        +----- connection lost ----+-----------------------------------+
    any --divergent history--> DIVERGED
    any --stop(), or a handshake that cannot work--> STOPPED

CATCHING_UP means connected but not yet at the last transaction the source
reported (in WELCOME or a heartbeat): applying the backlog, or receiving a
byte copy.  The values are the strings zkzeo's server nodes carry.
"""
import base64
import enum
import logging
import os
import socket
import tempfile
import time

import gevent
import gevent.socket
import ZODB.blob
from ZODB.Connection import TransactionMetaData
from ZODB.TimeStamp import TimeStamp

from . import auth, handshake, protocol
from .address import format_address, parse_address
from .protocol import (ProtocolError, Hello, Welcome, Refuse, Heartbeat, Ack,
                       Txn, Record, Chunk, End, TransactionDigest, Z64,
                       Snapshot, BlobFile, SnapshotEnd, FileTxn,
                       HAS_DATA, IS_BLOB, BLOB_SENT, HAS_DATA_TXN)
from .fsynchooks import fsync_deferred
from .records import is_blob_storage, parse_committed, transaction_digest
from .snapshot import SnapshotReceiver, is_empty

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0


class State(enum.Enum):
    CONNECTING = "connecting"      # no stream (yet, or it was lost)
    CATCHING_UP = "catching-up"    # connected, not yet at the source's tail
    FOLLOWING = "following"        # caught up, applying the live stream
    DIVERGED = "diverged"          # stopped: our history differs
    STOPPED = "stopped"            # stopped: stop(), or cannot follow


# The same strings as zkzeo.layout's REPLICATION_STATES (replication does
# not import zkzeo; a test checks that they agree).
REPLICATION_STATES = tuple(state.value for state in State)


class CannotFollow(Exception):
    """Replicating cannot work until an operator (or a restart) acts: our
    side of the handshake failed."""


class Diverged(Exception):
    """The source refused us because our history differs from its own."""


class StaleSource(ProtocolError):
    """The source is in an older epoch than we have seen (fencing)."""


def tid_time(tid):
    return TimeStamp(tid).timeTime() if tid != Z64 else 0.0


class PendingTransaction:
    """A transaction being received: begun on the storage, not voted."""

    def __init__(self, storage, txn):
        self.storage = storage
        self.tid = txn.tid
        self.meta = TransactionMetaData(txn.user, txn.description,
                                        txn.extension)
        self.digest = TransactionDigest(txn.tid, txn.status, txn.user,
                                        txn.description, txn.extension)
        self.oids = []
        self.record = None      # the Record whose data/blob is arriving
        self.data = None        # bytearray of a large record's data
        self.blob_file = None   # (fd, path) of a blob being received
        self.blob_remaining = 0
        storage.tpc_begin(self.meta, txn.tid, txn.status.decode("ascii"))
        self.begun = True

    def add_record(self, record, blob_dir):
        if self.record is not None:
            raise ProtocolError("RECORD inside a record")
        if record.serial != self.tid:
            raise ProtocolError(
                f"record serial {record.serial.hex()} is not its "
                f"transaction's tid {self.tid.hex()}")
        self.record = record
        if not record.inline:
            self.data = bytearray()
            return
        self._data_complete(record.data, blob_dir)

    def add_chunk(self, data, blob_dir):
        if self.record is None:
            raise ProtocolError("CHUNK outside a record")
        if self.data is not None:
            self.data += data
            if len(self.data) > self.record.data_len:
                raise ProtocolError("record data longer than announced")
            if len(self.data) == self.record.data_len:
                data, self.data = bytes(self.data), None
                self._data_complete(data, blob_dir)
            return
        if self.blob_file is None:
            raise ProtocolError("CHUNK outside a record")
        if len(data) > self.blob_remaining:
            raise ProtocolError("blob longer than announced")
        os.write(self.blob_file[0], data)
        self.blob_remaining -= len(data)
        if not self.blob_remaining:
            self._blob_complete()

    def _data_complete(self, data, blob_dir):
        record = self.record
        if not record.flags & HAS_DATA:
            data = None
        self.record_data = data
        is_blob = bool(record.flags & IS_BLOB)
        self.digest.record(record.oid, record.serial, data, is_blob,
                           record.blob_len)
        if is_blob and record.flags & BLOB_SENT:
            if blob_dir is None:
                raise ProtocolError("blob record for a storage without blobs")
            self.blob_file = tempfile.mkstemp(
                suffix=".blob", dir=self.storage.temporaryDirectory())
            self.blob_remaining = record.blob_len
            if not self.blob_remaining:
                self._blob_complete()
            return
        data_txn = record.data_txn if record.flags & HAS_DATA_TXN else None
        self.storage.restore(record.oid, record.serial, data, "", data_txn,
                             self.meta)
        self.oids.append(record.oid)
        self.record = None

    def _blob_complete(self):
        record = self.record
        fd, path = self.blob_file
        os.close(fd)
        self.blob_file = None
        data_txn = record.data_txn if record.flags & HAS_DATA_TXN else None
        self.storage.restoreBlob(record.oid, record.serial, self.record_data,
                                 path, data_txn, self.meta)
        self.oids.append(record.oid)
        self.record = None

    def finish(self, end, invalidate):
        """Vote and finish; ``invalidate(tid, oids)`` runs inside
        ``tpc_finish``, before the storage's ``lastTransaction()`` moves
        (ZODB's order: a reader never sees the new tid without them)."""
        if self.record is not None:
            raise ProtocolError("END inside a record")
        if end.tid != self.tid:
            raise ProtocolError(
                f"END for {end.tid.hex()} inside transaction "
                f"{self.tid.hex()}")
        if end.digest != self.digest.digest():
            raise ProtocolError(
                f"checksum mismatch in transaction {self.tid.hex()}: the "
                "data was corrupted on the way; nothing was committed")
        with fsync_deferred():      # the follower fsyncs before it ACKs
            self.storage.tpc_vote(self.meta)
            self.storage.tpc_finish(
                self.meta, lambda tid: invalidate(tid, self.oids))
        self.begun = False
        return self.oids

    def abort(self):
        if self.blob_file is not None:
            fd, path = self.blob_file
            os.close(fd)
            if os.path.exists(path):
                os.remove(path)
            self.blob_file = None
        if self.begun:
            self.storage.tpc_abort(self.meta)
            self.begun = False


class Follower:
    """Follows one source and applies its transactions to ``storage``.

    ``invalidate(tid, oids)`` is called on the hub from inside each
    transaction's ``tpc_finish`` (the secondary storage passes the
    invalidations on to its DB there, before ``lastTransaction()`` moves),
    ``committed(tid, oids)`` after it is committed; it is fsynced, with the
    others of its group, before it is acknowledged (see
    ``fsynchooks.py``).  With
    ``install(path, blobs) -> storage``, an empty storage accepts a byte
    copy of its source's file, which ``install`` puts in its place.
    """

    def __init__(self, storage, source_address, committed, install=None,
                 rewind=None, invalidate=lambda tid, oids: None,
                 keep_alive_delay=1.0, want_blobs=True, name="",
                 epoch=lambda: 0, seen_epoch=lambda epoch: None,
                 reconnect_min=0.1, reconnect_max=5.0, hub=None,
                 security=auth.OPEN):
        from .hub import get_hub
        self.storage = storage
        self.security = security
        self.source_address = source_address
        self.committed = committed
        self.invalidate = invalidate
        self.install = install
        self.rewind = rewind
        self.keep_alive_delay = keep_alive_delay
        self.want_blobs = want_blobs and is_blob_storage(storage)
        self.blob_dir = getattr(storage, "blob_dir", None) if \
            is_blob_storage(storage) else None
        self.name = name
        self.epoch = epoch
        self.seen_epoch = seen_epoch
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.hub = hub or get_hub()
        self.state = State.CONNECTING
        self.problem = None
        self.source_last_tid = Z64
        self._catch_up_to = Z64    # the source's last tid as it reported it
        self.source_epoch = 0
        self.connected_since = None
        self.peer = None           # the source address in use
        self._greenlet = None
        self._sock = None
        self._ack_delay = 0.0      # set from the source's WELCOME
        self._unsynced = False     # applied transactions not fsynced yet

    @property
    def source(self):
        a = self.source_address
        return format_address(a) if not callable(a) else "(dynamic)"

    def start(self):
        self._greenlet = self.hub.call(gevent.spawn, self._run)

    def retarget(self):
        """Drop the current connection and ask the source address again."""
        def restart():
            if self._greenlet is not None:
                self._greenlet.kill()
            self._greenlet = gevent.spawn(self._run)
        self.hub.call(restart)

    def stop(self):
        def kill():
            if self._greenlet is not None:
                self._greenlet.kill()
            if self.state is not State.DIVERGED:    # keep why it stopped
                self._set_state(State.STOPPED, self.problem)
        self.hub.call(kill)

    def status(self):
        last = self.storage.lastTransaction()
        source_last = max(self.source_last_tid, last)
        return {
            "source": self.source,
            "state": self.state.value,
            "problem": self.problem,
            "last_tid": last.hex(),
            "source_last_tid": source_last.hex(),
            "lag_seconds": max(0.0, tid_time(source_last) - tid_time(last)),
        }

    # --- on the hub -----------------------------------------------------

    def _set_state(self, state, problem=None):
        """The one place where the state changes (with why, if not fine)."""
        self.state = state
        self.problem = problem

    def _check_caught_up(self, last_tid, log):
        if self.state is State.CATCHING_UP and last_tid >= self._catch_up_to:
            self._set_state(State.FOLLOWING)
            log.info("caught up with the source at tid %s: following its "
                     "live stream", last_tid.hex())

    def _run(self):
        delay = self.reconnect_min
        log = logger
        unexpected = None       # the last unexpected error, said in full
        while True:
            source = self.source_address
            address = source() if callable(source) else source
            if address is None:
                delay = self._wait_to_retry(
                    "no source to replicate from is known yet",
                    _adapter(self.name, "?"), delay)
                continue
            self.peer = address
            last_before = self.storage.lastTransaction()
            try:
                address = parse_address(address)
            except ValueError as e:
                self._set_state(State.CONNECTING,
                                f"bad source address {source!r}: {e}")
                _adapter(self.name, "?").error("%s", self.problem)
                gevent.sleep(self.reconnect_max)
                continue
            peer = format_address(address)
            log = _adapter(self.name, peer)
            try:
                sock = _connect(address, self.security)
            except OSError as e:
                delay = self._wait_to_retry(
                    f"cannot connect to {peer}: {e}", log, delay)
                continue
            self._sock = sock
            try:
                self._session(sock, log)
            except Diverged as e:
                sock.close()
                if self.rewind is not None:
                    try:
                        common = self._common_tid(address, log)
                        if common is not None:
                            log.warning("%s; rewinding to the last common "
                                        "transaction %s", e, common.hex())
                            self.storage = self.rewind(common)
                            continue
                    except Exception:
                        log.exception("rewind failed")
                self._set_state(State.DIVERGED, str(e))
                log.critical(
                    "replication stopped: %s. This secondary's data was "
                    "left as it is. Either rebuild it from the source (move "
                    "its Data.fs aside and restart it), or restart it with "
                    "rewind-divergent on, which keeps the whole Data.fs as "
                    "Data.fs.divergent-TID and cuts the divergent "
                    "transactions off.", e)
                return
            except CannotFollow as e:
                sock.close()
                self._set_state(State.STOPPED, str(e))
                log.critical(
                    "replication stopped: %s. Nothing was changed. Restart "
                    "this server: on opening, a Data.fs whose last "
                    "transaction was torn by a crash is cut back to its last "
                    "complete one. If it fails again, rebuild this secondary "
                    "from its source (move its Data.fs aside and restart "
                    "it).", e)
                return
            except ProtocolError as e:
                self._set_state(State.CONNECTING,
                                f"protocol error from {peer}: {e}")
                log.error("dropping connection: %s", e)
            except (OSError, ConnectionError, EOFError) as e:
                self._set_state(State.CONNECTING,
                                f"connection to {peer} lost: {e}")
                log.warning("connection lost: %s", e or type(e).__name__)
            except gevent.GreenletExit:
                sock.close()
                raise
            except Exception as e:
                problem = f"{type(e).__name__}: {e}"
                self._set_state(State.CONNECTING, problem)
                if problem == unexpected:
                    # The same again: the traceback was logged already.
                    log.error("replication error again: %s; retrying",
                              problem)
                else:
                    log.exception("replication error")
                unexpected = problem
            finally:
                if self.state in (State.FOLLOWING, State.CATCHING_UP):
                    self._set_state(State.CONNECTING, self.problem)
                self.connected_since = None
            sock.close()
            # Start again quickly only after a session that got somewhere;
            # a failure that repeats after the handshake backs off too.
            progressed = self.storage.lastTransaction() != last_before
            if progressed:
                unexpected = None
            delay = self.reconnect_min if progressed else \
                min(delay * 2, self.reconnect_max)
            gevent.sleep(delay)

    def _wait_to_retry(self, problem, log, delay):
        """Record why we are not following, say it once (repeating it every
        few seconds helps nobody), wait; return the next, longer delay."""
        (log.debug if problem == self.problem else log.warning)(
            "%s; retrying every %.1fs at most", problem, self.reconnect_max)
        self._set_state(State.CONNECTING, problem)
        gevent.sleep(delay)
        return min(delay * 2, self.reconnect_max)

    def _hello_flags(self):
        return protocol.WANT_BLOBS if self.want_blobs else 0

    def _handshake(self, sock, tid, flags):
        """Say HELLO for our transaction ``tid``; return (the source's
        protocol version, its answer: WELCOME or REFUSE, the reader)."""
        try:
            digest = transaction_digest(self.storage, tid)
        except Exception as e:
            raise CannotFollow(
                f"cannot read this secondary's own transaction {tid.hex()}: "
                f"{type(e).__name__}: {e}") from e
        if digest is None:
            raise CannotFollow(
                f"this secondary's last transaction {tid.hex()} is not in "
                f"its own {self.storage.getName()} (torn by a crash?)")
        sock.settimeout(CONNECT_TIMEOUT)
        hello = Hello(self.epoch(), tid, digest, flags, self.name)
        with handshake.deadline(self.security.handshake_timeout,
                                "the handshake with the source"):
            if self.security.tls is not None:
                handshake.tls_handshake(sock)
            return handshake.connect(sock, self.security, hello)

    def _session(self, sock, log):
        last_tid = self.storage.lastTransaction()
        flags = self._hello_flags()
        if self.install is not None and is_empty(self.storage):
            flags |= protocol.CAN_SNAPSHOT
        try:
            version, answer, reader = self._handshake(sock, last_tid, flags)
        except (CannotFollow, ProtocolError, OSError, EOFError):
            raise
        except Exception as e:
            # Not the network, not the peer: trying again fails the same
            # way, several times a second, for ever.
            raise CannotFollow(f"unexpected error in the handshake: "
                               f"{type(e).__name__}: {e}") from e
        if isinstance(answer, Refuse):
            reason = protocol.REFUSE_NAMES.get(answer.code, answer.code)
            if answer.code == protocol.DIVERGENT:
                raise Diverged(f"divergent history: {answer.message}")
            if answer.code == protocol.STALE_EPOCH:
                raise StaleSource(f"source refused: {answer.message}")
            raise ProtocolError(f"source refused: {reason}: "
                                f"{answer.message}")
        if not isinstance(answer, Welcome):
            raise ProtocolError(
                f"expected WELCOME, got {type(answer).__name__}")
        if version != protocol.VERSION:
            raise ProtocolError(f"source speaks protocol version {version}")
        if answer.epoch < self.epoch():
            raise StaleSource(
                f"the source is at epoch {answer.epoch}, older than epoch "
                f"{self.epoch()} this secondary has seen: not following it")
        self.seen_epoch(answer.epoch)
        self.source_epoch = answer.epoch
        self.source_last_tid = self._catch_up_to = answer.last_tid
        # A source with synchronous replicas waits for our ACKs; any other
        # hears from us at most every ACK_INTERVAL while data streams in.
        self._ack_delay = 0.0 if answer.flags & protocol.ACK_EACH else \
            min(protocol.ACK_INTERVAL, self.keep_alive_delay)
        self.connected_since = time.time()
        if last_tid >= answer.last_tid:
            self._set_state(State.FOLLOWING)
            log.info("following from tid %s, the source's last",
                     last_tid.hex())
        else:
            self._set_state(State.CATCHING_UP)
            log.info("following from tid %s; catching up with the source's "
                     "last, %s", last_tid.hex(), answer.last_tid.hex())
        sock.settimeout(None)
        self._receive(sock, reader, log)

    def _common_tid(self, address, log, depth=1000):
        """The newest of our last ``depth`` transactions that the source
        has too (asking it as a new connection would), or None."""
        for entry in self.storage.undoLog(0, -depth):
            tid = base64.decodebytes(entry["id"])   # undoLog's encoding
            sock = _connect(address, self.security)
            try:
                _, answer, _ = self._handshake(sock, tid, self._hello_flags())
            finally:
                sock.close()
            if isinstance(answer, Welcome):
                return tid
            if not (isinstance(answer, Refuse) and
                    answer.code == protocol.DIVERGENT):
                raise ProtocolError(f"unexpected answer {answer!r}")
        log.critical("no common transaction among the last %d; rewind "
                     "impossible", depth)
        return None

    def _receive(self, sock, reader, log):
        pending = None       # PendingTransaction being received
        snapshot = None      # SnapshotReceiver while a byte copy arrives
        last_tid = self._acked = self.storage.lastTransaction()
        # What an earlier process applied may never have been fsynced.
        self._unsynced = True
        self._last_sent = self._last_received = time.monotonic()
        view = memoryview(bytearray(4 << 20))
        try:
            while True:
                message = reader.next()
                if message is None:
                    n = self._recv_into(sock, view, last_tid)
                    reader.feed(view[:n])
                    continue
                if isinstance(message, FileTxn):
                    # A whole transaction in one frame: checked, parsed and
                    # stored here, then finished like TXN...END.
                    _check_new_transaction("FILE_TXN", message.tid, last_tid,
                                           pending, snapshot)
                    pending = self._file_transaction(message)
                    message = End(message.tid, pending.digest.digest())
                if isinstance(message, Record):
                    if pending is None:
                        raise ProtocolError("RECORD outside a transaction")
                    pending.add_record(message, self.blob_dir)
                elif isinstance(message, Chunk):
                    if snapshot is not None:
                        snapshot.chunk(message.data)
                    elif pending is not None:
                        pending.add_chunk(message.data, self.blob_dir)
                    else:
                        raise ProtocolError("CHUNK outside a transaction")
                elif isinstance(message, Txn):
                    _check_new_transaction("TXN", message.tid, last_tid,
                                           pending, snapshot)
                    pending = PendingTransaction(self.storage, message)
                elif isinstance(message, End):
                    if pending is None:
                        raise ProtocolError("END outside a transaction")
                    oids = pending.finish(message, self.invalidate)
                    pending = None
                    self._unsynced = True
                    last_tid = message.tid
                    if last_tid > self.source_last_tid:
                        self.source_last_tid = last_tid
                    self.committed(last_tid, oids)
                    self._check_caught_up(last_tid, log)
                elif isinstance(message, Heartbeat):
                    if pending is not None or snapshot is not None:
                        raise ProtocolError("HEARTBEAT inside a transaction")
                    if message.epoch < self.epoch():
                        raise StaleSource(
                            f"the source went back to epoch {message.epoch}")
                    self.seen_epoch(message.epoch)
                    self.source_last_tid = message.last_tid
                    self.source_epoch = message.epoch
                    # Idle at the source: it has sent all it has.
                    self._catch_up_to = max(self._catch_up_to,
                                            message.last_tid)
                    self._check_caught_up(last_tid, log)
                elif isinstance(message, Snapshot):
                    if self.install is None or last_tid != Z64 or \
                            pending is not None or snapshot is not None:
                        raise ProtocolError("SNAPSHOT that was not asked for")
                    log.info("receiving a byte copy of the source's file: "
                             "%.1f MB up to tid %s", message.length / 1e6,
                             message.tid.hex())
                    snapshot = SnapshotReceiver(self.storage, message)
                elif isinstance(message, BlobFile):
                    if snapshot is None:
                        raise ProtocolError("BLOBFILE outside a snapshot")
                    snapshot.blob_file(message)
                elif isinstance(message, SnapshotEnd):
                    if snapshot is None:
                        raise ProtocolError("SNAPSHOT_END outside a snapshot")
                    path, blobs = snapshot.finish(message)
                    snapshot = None
                    self.storage = self.install(path, blobs)
                    last_tid = self.storage.lastTransaction()
                    if last_tid != message.tid:
                        raise RuntimeError(
                            f"the installed copy ends at {last_tid.hex()}, "
                            f"not at {message.tid.hex()}")
                    self.source_last_tid = max(self.source_last_tid,
                                               last_tid)
                    log.info("byte copy installed (%d blob files); "
                             "following from tid %s", len(blobs),
                             last_tid.hex())
                    self._check_caught_up(last_tid, log)
                else:
                    raise ProtocolError(
                        f"unexpected {type(message).__name__} from a source")
        finally:
            if pending is not None:
                log.warning("aborting incomplete transaction %s",
                            pending.tid.hex())
                pending.abort()
            if snapshot is not None:
                log.warning("discarding incomplete byte copy")
                snapshot.abort()
            try:
                self.make_durable()
            except ValueError:
                pass        # the storage was closed (its writes flushed)
            except OSError as e:
                log.error("could not fsync %s: %s", self.storage.getName(),
                          e)

    def make_durable(self):
        """fsync what was applied since the last time (see fsynchooks)."""
        if self._unsynced:
            file = getattr(self.storage, "_file", None)
            if file is not None:
                os.fsync(file.fileno())
            self._unsynced = False

    def _file_transaction(self, message):
        """Check and parse a FILE_TXN; return it begun on our storage with
        its records stored, ready to finish."""
        if FileTxn.hash(message.data) != message.digest:
            raise ProtocolError(
                f"checksum mismatch in transaction {message.tid.hex()}: the "
                "data was corrupted on the way; nothing was committed")
        txns = parse_committed(message.data, message.pos)
        if not txns or len(txns) != 1 or txns[0].tid != message.tid:
            raise ProtocolError(
                f"FILE_TXN for {message.tid.hex()} does not hold exactly "
                "that transaction")
        txn = txns[0]
        pending = PendingTransaction(self.storage, Txn(
            txn.tid, txn.status, txn.user, txn.description,
            txn.extension_bytes))
        try:
            for r in txn.records:
                if len(r.data) > protocol.INLINE_DATA:
                    raise ProtocolError("FILE_TXN record larger than "
                                        "INLINE_DATA")
                if self.blob_dir is not None and \
                        ZODB.blob.is_blob_record(r.data):
                    raise ProtocolError("blob record in a FILE_TXN")
                pending.add_record(Record(r.oid, r.tid, Z64, HAS_DATA,
                                          len(r.data), 0, r.data),
                                   self.blob_dir)
        except BaseException:
            pending.abort()
            raise
        return pending

    def _recv_into(self, sock, view, last_tid):
        """Receive into view (everything buffered is applied).  Meanwhile
        ACK ``last_tid`` when it is due (see ``_ack_delay``), and at least
        every keep-alive-delay even while data flows, so the source always
        hears from us; give up on a source silent for too long."""
        silence = self.keep_alive_delay * 3 + 1
        while True:
            now = time.monotonic()
            delay = self._ack_delay if self._acked != last_tid else \
                self.keep_alive_delay
            if now - self._last_sent >= delay:
                self.make_durable()
                self._send(sock, Ack(last_tid))
                self._acked = last_tid
                delay = self.keep_alive_delay
            quiet = now - self._last_received
            if quiet >= silence:
                raise ConnectionError(
                    f"no word from the source for {quiet:.1f}s")
            wait = min(self._last_sent + delay - now, silence - quiet)
            try:
                with gevent.Timeout(max(wait, 0.001)):
                    n = sock.recv_into(view)
            except gevent.Timeout:
                continue
            if not n:
                raise EOFError("source closed the connection")
            self._last_received = time.monotonic()
            return n

    def _send(self, sock, message):
        sock.sendall(message.encode())
        self._last_sent = time.monotonic()


def _check_new_transaction(what, tid, last_tid, pending, snapshot):
    """A transaction may begin only between others, after our last one."""
    if pending is not None or snapshot is not None:
        raise ProtocolError(f"{what} inside a transaction")
    if tid <= last_tid:
        raise ProtocolError(f"transaction {tid.hex()} is not after our last "
                            f"one {last_tid.hex()}")


def _connect(address, security=auth.OPEN):
    """A socket connected to ``address``, wrapped in TLS when configured
    (its TLS handshake is part of ``Follower._handshake``)."""
    if isinstance(address, str):
        sock = gevent.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect(address)
        except OSError:
            sock.close()
            raise
    else:
        sock = gevent.socket.create_connection(address, CONNECT_TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if security.tls is not None:
        try:
            sock = security.tls.wrap_client(sock, address)
        except BaseException:
            sock.close()
            raise
    return sock


class _Adapter(logging.LoggerAdapter):
    def process(self, msg, kwargs):
        return f"secondary {self.extra['name']} <- {self.extra['peer']}: " \
               f"{msg}", kwargs


def _adapter(name, peer):
    return _Adapter(logger, {"name": name or "-", "peer": peer})
