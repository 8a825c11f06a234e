"""The source side of replication: stream a storage's transactions.

A ``Source`` serves replication for one storage (a primary's, or a
secondary's that feeds a chain).  It runs entirely on the replication hub
(see ``hub.py``): a gevent ``StreamServer`` accepts secondaries and each
connection is one greenlet that sends, plus one that reads acknowledgements.

Committers tell the source about new transactions with ``notify_commit()``
from any thread.  Each new transaction is encoded *once* into a short
in-memory log shared by every connection.  In the steady state the
committing thread does that itself, from the bytes it just wrote, and
writes the transaction to every secondary that is following live (see
``outbox.py``): no hand-off to the hub per commit.  The hub takes over for
whatever that cannot do without waiting: a socket that does not take the
bytes at once, blobs, a secondary that is behind the log (it reads the
storage iterator), and anything unusual about the file.  Over TLS too:
the committer encrypts under the connection's lock (``tls.py``).

Who may connect (see ``auth.py``, ``handshake.py``): with TLS or a shared
secret configured, a peer that does not prove itself gets nothing, and
only proved secondaries are ever in ``secondaries`` (so only they count
toward ``sync-replicas``).  Every peer is bounded before it proves
anything: at most ``max_connections`` connections, ``handshake_timeout``
seconds to finish the handshake, a few kilobytes buffered.
"""
import bisect
import logging
import os
import socket
import stat
import threading
import time

import gevent
import gevent.event
import gevent.server
import gevent.socket

from . import auth, fsynchooks, handshake, protocol
from .address import format_address, parse_address
from .handshake import AuthenticationError, HandshakeTimeout
from .hub import get_hub
from .logs import PeerLog
from .outbox import MAX_BACKLOG, Outbox
from .protocol import (ProtocolError, Welcome, Refuse, Heartbeat, Ack,
                       Chunk, Z64)
from .tls import peer_name
from .snapshot import can_snapshot, send_snapshot
from .records import BlobRef, Tail, encode_file_transaction, \
    encode_transaction, is_blob_storage, next_tid, open_iterator, \
    parse_committed, transaction_digest

logger = logging.getLogger(__name__)

RECENT_BYTES = 32 * 1024 * 1024   # shared log of recently encoded txns
CATCHUP_BATCH = 1024 * 1024       # bytes per send while catching up
REFUSAL_LOG_INTERVAL = 10.0       # seconds between "too many" lines


class Secondary:
    """What a source knows about one connected secondary."""

    def __init__(self, peer, sock):
        self.peer = peer
        self.sock = sock
        self.out = Outbox(sock)
        # True while the committing thread writes new transactions to it
        # (it has everything before them); the hub sets it, a committer
        # that cannot write at once clears it.  Under Source._lock.
        self.following = False
        self.name = ""
        self.sent_tid = Z64
        self.acked_tid = Z64
        self.connected_at = time.time()
        self.last_heard = time.monotonic()
        self.end_reason = None     # (level, message) once it is over

    def status(self):
        return {"name": self.name, "peer": self.peer,
                "sent_tid": self.sent_tid.hex(),
                "acked_tid": self.acked_tid.hex(),
                "connected_at": self.connected_at}


class Source:

    def __init__(self, storage, address, keep_alive_delay=1.0,
                 send_blobs=True, epoch=lambda: 0, hub=None, name="",
                 ack_each=lambda: False, encode_during_fsync=lambda: True,
                 security=auth.OPEN):
        self.storage = storage
        self.security = security
        self.requested_address = parse_address(address)
        self.keep_alive_delay = keep_alive_delay
        self.send_blobs = send_blobs
        self.epoch = epoch
        self.ack_each = ack_each     # do secondaries ACK every transaction?
        # Should the hub encode a commit while its committer fsyncs?  Not
        # when the committer sends only after answering its client anyway.
        self.encode_during_fsync = encode_during_fsync
        self.name = name
        self.hub = hub or get_hub()
        self.address = None
        self.secondaries = set()
        self._acks = threading.Condition()
        # Guards the shared log, _last_tid, _tail, the set of secondaries
        # and their `following`: committers and the hub both use them.
        self._lock = threading.Lock()
        self._server = None
        self._connections = 0      # open connections (on the hub)
        self._refused = 0          # over the limit since the last line
        self._refused_logged_at = None
        self._wakeup = None
        self._closed = False
        self._notified = None      # (tid, committed size) from committers
        self._notified_lock = threading.Lock()
        # Encoded by the hub while a committer waits for its fsync:
        # (last tid before, end, last tid, [EncodedTransaction])
        self._prepared = None
        self._prepare_end = 0
        self._prepare_wakeup = None
        self._unhook = None
        self._tail = Tail(storage)

    # --- called from any thread -----------------------------------------

    def start(self):
        self.hub.call(self._start)
        self._wakeup = self.hub.watcher(self._on_commit)
        self._prepare_wakeup = self.hub.watcher(self._prepare)
        self._unhook = fsynchooks.before_fsync(lambda: self.storage,
                                               self._before_fsync)
        logger.info("serving replication of %s on %s",
                    self.storage.getName(), format_address(self.address))
        return self.address

    def notify_commit(self, tid=None, end=None):
        """Transaction ``tid`` was committed, and the storage's committed
        size is now ``end`` (thread-safe; both optional).

        Without secondaries there is nothing to do: a secondary that
        connects reads the storage's last transaction itself."""
        if tid is not None:
            with self._notified_lock:   # committers may race: never back
                previous = self._notified
                if previous is None or tid > previous[0]:
                    self._notified = (tid, end)
        wakeup = self._wakeup
        if wakeup is None or not self.secondaries:
            return
        try:
            done = tid is not None and end is not None and \
                self._deliver(tid, end)
        except Exception:
            # The commit is durable already: never fail it for this.
            logger.exception("could not send a new transaction at once; "
                             "the replication thread will")
            with self._lock:
                self._tail = Tail(self.storage)   # read it the long way
            done = False
        if not done:
            wakeup.send()

    def _before_fsync(self):
        """In the committing thread, inside FileStorage's tpc_finish: its
        transaction is in the file, the disk sync is next.  Let the hub
        encode it meanwhile (``_prepare``), when secondaries want it."""
        if self._prepare_wakeup is not None and self.secondaries and \
                self.encode_during_fsync():
            # FileStorage's end of the transaction being finished
            self._prepare_end = getattr(self.storage, "_nextpos", 0)
            self._prepare_wakeup.send()

    def _prepare(self):
        # On the hub, while a committer waits for its fsync (GIL free).
        end = self._prepare_end
        with self._lock:
            self._prepared = None
            if not end or self._tail.storage is not self.storage:
                return
            after = self._last_tid
            txns = self._tail.peek_committed(after, end, records=False)
            if not txns:
                return      # late: the committer has done it already
            encoded = [encode_file_transaction(self.storage, txn)
                       for txn in txns]
            if None not in encoded:
                self._prepared = (after, end, txns[-1].tid, encoded)

    def _deliver(self, tid, end):
        """In the committing thread: encode the transactions up to file
        position ``end`` into the shared log (or take what ``_prepare``
        encoded during the fsync) and write them to the secondaries
        following live.  True when the hub has nothing to do.
        """
        with self._lock:
            if tid <= self._last_tid:
                return True     # a later commit's notice came first
            if self._tail.storage is not self.storage:
                return False
            prepared, self._prepared = self._prepared, None
            if prepared is not None and prepared[:2] == (self._last_tid,
                                                         end):
                _, _, last, encoded = prepared
                self._tail.advance(last, end)
            else:
                txns = self._tail.read_committed(self._last_tid, end,
                                                 records=False)
                if not txns:
                    return False
                encoded = [
                    encode_file_transaction(self.storage, txn) or
                    encode_transaction(self.storage, _with_records(txn),
                                       self.send_blobs)
                    for txn in txns]
            self._append_recent(self._last_tid, encoded)
            done = True
            for secondary in self.secondaries:
                if not secondary.following:
                    done = False
                    continue
                for enc in encoded:
                    if enc.tid <= secondary.sent_tid:
                        continue    # it had it already (a byte copy)
                    if len(enc.parts) > 1 or \
                            secondary.out.backlog > MAX_BACKLOG:
                        # Blob files, or a slow secondary: the hub sends.
                        secondary.following = False
                        done = False
                        break
                    # Before the bytes go: its ACK may come back at once.
                    secondary.sent_tid = enc.tid
                    if not secondary.out.write(enc.parts[0]):
                        done = False        # the hub flushes the rest
            return done

    def wait_for_acks(self, tid, count, timeout, abandon=lambda: False):
        """Wait until ``count`` secondaries acknowledged ``tid``.

        Returns True if they did within ``timeout`` seconds, False if not,
        and False as soon as ``abandon()`` is true (the storage lost the
        primary role: ``wake_waiters`` makes that immediate).
        """
        deadline = time.monotonic() + timeout
        with self._acks:
            while True:
                if abandon():
                    return False
                acked = sum(1 for s in list(self.secondaries)
                            if s.acked_tid >= tid)
                if acked >= count:
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._acks.wait(min(remaining, 0.1))

    def wake_waiters(self):
        """Make every ``wait_for_acks`` look at ``abandon()`` now."""
        with self._acks:
            self._acks.notify_all()

    def status(self):
        return [s.status() for s in list(self.secondaries)]

    @property
    def closed(self):
        return self._closed

    def close(self):
        if self._closed:
            return
        self._closed = True
        if self._unhook is not None:
            self._unhook()
        self.hub.call(self._stop)
        for watcher in (self._wakeup, self._prepare_wakeup):
            if watcher is not None:
                self.hub.call(watcher.close)
        self._wakeup = self._prepare_wakeup = None

    # --- on the hub ---------------------------------------------------------

    def _start(self):
        addr = self.requested_address
        if isinstance(addr, str):
            if os.path.exists(addr):
                if not stat.S_ISSOCK(os.stat(addr).st_mode):
                    raise OSError(f"replicate-to {addr} exists and is not a "
                                  "socket; not removing it")
                os.unlink(addr)  # a stale socket of an earlier run
            sock = gevent.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
            sock = gevent.socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            addr = (addr[0] or ("::" if family == socket.AF_INET6
                                else "0.0.0.0"), addr[1])
        sock.bind(addr)
        sock.listen(64)
        name = sock.getsockname()
        self.address = name if isinstance(name, str) else name[:2]
        self._last_tid = self._tail.at_end()
        self._clear_recent()       # shared log of EncodedTransactions
        self._changed = gevent.event.Event()
        self._server = gevent.server.StreamServer(sock, self._handle)
        self._server.start()

    def _stop(self):
        if self._server is not None:
            self._server.close()
        for s in list(self.secondaries):
            s.out.close()
        if isinstance(self.address, str) and os.path.exists(self.address):
            os.unlink(self.address)

    def _on_commit(self, from_committer=True):
        try:
            with self._lock:
                self._read_new(from_committer)
        except Exception:
            logger.exception("could not read new transactions; secondaries "
                             "will catch up from the storage")
            with self._lock:
                self._clear_recent()
        changed, self._changed = self._changed, gevent.event.Event()
        changed.set()

    def _read_new(self, from_committer):
        notified = self._notified if from_committer else None
        if notified is not None:
            last, end = notified    # no wait for the storage's lock
        else:
            last, end = self.storage.lastTransaction(), None
        if last <= self._last_tid:
            return
        if not self.secondaries:
            # Nobody to send them to: remember where the file ends, for
            # the committers' next read.
            self._clear_recent()
            self._last_tid = max(last, self._current_tail().at_end())
            return
        previous, self._last_tid = self._last_tid, last
        for secondary in self.secondaries:
            # Their send loops send what the hub reads, after what they
            # have; a committer must not write past it meanwhile.
            secondary.following = False
        self._extend_recent(previous, end)

    def reset(self, storage):
        """Serve ``storage`` (a reopened, maybe rewound file) from now on:
        forget positions and encoded transactions of the old one."""
        def reset():
            with self._lock:
                self.storage = storage
                self._tail = Tail(storage)
                self._clear_recent()
                self._last_tid = self._tail.at_end()
                self._notified = self._prepared = None
                for s in list(self.secondaries):
                    s.following = False
                    s.out.close()  # they reconnect and are checked again
        self.hub.call(reset)

    def _clear_recent(self):
        self._recent, self._recent_tids, self._recent_bytes = [], [], 0
        self._recent_base = None

    def _current_tail(self):
        if self._tail.storage is not self.storage:
            self._tail = Tail(self.storage)   # a byte copy replaced it
        return self._tail

    def _extend_recent(self, previous, end=None):
        self._append_recent(previous, [
            encode_transaction(self.storage, txn, self.send_blobs)
            for txn in self._current_tail().read(previous, self._last_tid,
                                                 end)])

    def _append_recent(self, previous, encoded):
        # The shared log is contiguous: it must continue from `previous`.
        if self._recent_tids and self._recent_tids[-1] != previous:
            self._clear_recent()
        if not self._recent_tids:
            self._recent_base = previous
        for enc in encoded:
            self._recent.append(enc)
            self._recent_tids.append(enc.tid)
            self._recent_bytes += enc.size
        if encoded and encoded[-1].tid > self._last_tid:
            self._last_tid = encoded[-1].tid
        if self._recent_bytes > RECENT_BYTES and len(self._recent) > 1:
            drop = len(self._recent) // 2
            self._recent_bytes -= sum(e.size for e in self._recent[:drop])
            self._recent_base = self._recent_tids[drop - 1]
            del self._recent[:drop]
            del self._recent_tids[:drop]

    def _from_recent(self, after):
        """Encoded transactions after tid `after` from the shared log, or
        None when the log does not reach back that far."""
        tids = self._recent_tids
        if not tids:
            return None
        if after == self._recent_base:
            return self._recent[:]     # a trim must not shift what is sent
        i = bisect.bisect_right(tids, after)
        if i > 0 and tids[i - 1] == after:
            return self._recent[i:]
        return None

    def _handle(self, sock, peer):
        peer = format_address(peer) if peer else "unix-socket"
        log = PeerLog(logger, {"role": "source", "peer": peer})
        if self._connections >= self.security.max_connections:
            sock.close()
            self._refuse_over_limit(peer)
            return
        self._connections += 1
        secondary = None
        try:
            if not isinstance(sock.getsockname(), str):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            timeout = self.security.handshake_timeout
            sock.settimeout(timeout)
            tls = self.security.tls
            with handshake.deadline(timeout, "the handshake"):
                if tls is not None:
                    sock = tls.wrap_server(sock)
                    handshake.tls_handshake(sock)
                hello, reader = handshake.accept(sock, self.security)
            secondary = Secondary(peer, sock)
            self._serve(secondary, hello, reader, log)
        except AuthenticationError as e:
            log.warning("refused: %s", e)
        except HandshakeTimeout as e:
            log.warning("dropping connection: %s", e)
        except ProtocolError as e:
            log.error("dropping connection: %s", e)
        except (OSError, ConnectionError, EOFError) as e:
            # The ACK reader may have ended the connection (and said why).
            reason = secondary is not None and secondary.end_reason or (
                logging.INFO, f"connection ended: {e or type(e).__name__}")
            log.log(*reason)
        except gevent.GreenletExit:
            pass
        except Exception:
            log.exception("dropping connection after an unexpected error")
        finally:
            self._connections -= 1
            if secondary is None:
                sock.close()
            else:
                with self._lock:
                    self.secondaries.discard(secondary)
                    secondary.following = False
                with self._acks:
                    self._acks.notify_all()
                secondary.out.close()

    def _refuse_over_limit(self, peer):
        """One line for the first connection over max_connections, then at
        most one every REFUSAL_LOG_INTERVAL seconds (a flood of
        connections must not flood the log)."""
        self._refused += 1
        now = time.monotonic()
        last = self._refused_logged_at
        if last is not None and now - last < REFUSAL_LOG_INTERVAL:
            return
        logger.warning(
            "source: refused %d connection(s) (the last from %s): already "
            "%d replication connections (max-connections)", self._refused,
            peer, self._connections)
        self._refused = 0
        self._refused_logged_at = now

    def _serve(self, secondary, hello, reader, log):
        sock = secondary.sock
        secondary.name = hello.name
        who = peer_name(sock)
        log.extra = dict(log.extra, peer=f"{hello.name}@{secondary.peer}" + (
            f" ({who})" if who else ""))
        self._on_commit(from_committer=False)   # made while nobody listened
        refusal = self._check_history(hello)
        if refusal is not None:
            sock.sendall(refusal.encode())
            log.error("refused: %s", refusal.message)
            return
        sock.sendall(Welcome(
            self.epoch(), self._last_tid,
            protocol.ACK_EACH if self.ack_each() else 0).encode())
        secondary.sent_tid = secondary.acked_tid = hello.tid
        with self._lock:
            self.secondaries.add(secondary)
        log.info("secondary connected from tid %s; sending %s",
                 hello.tid.hex(), "everything" if hello.tid == Z64
                 else "what follows it")
        sock.settimeout(None)
        reader.max_frame = protocol.ACK_MAX_FRAME
        acks = gevent.spawn(self._read_acks, secondary, reader)
        try:
            if (hello.flags & protocol.CAN_SNAPSHOT and hello.tid == Z64
                    and self._last_tid != Z64 and can_snapshot(self.storage)):
                # No ACK can come before SNAPSHOT_END, its last frame, and
                # nothing yields between that send and this assignment.
                secondary.sent_tid = send_snapshot(
                    sock, self.storage,
                    self.send_blobs and hello.flags & protocol.WANT_BLOBS,
                    log)
            self._send_loop(secondary)
        finally:
            acks.kill()

    def _check_history(self, hello):
        if self.send_blobs and is_blob_storage(self.storage) and \
                not hello.flags & protocol.WANT_BLOBS:
            return Refuse(protocol.NOT_READY,
                          "this source streams blob files but the secondary "
                          "does not take them (replicate-blobs off, or no "
                          "blob-dir): set replicate-blobs alike on both")
        if hello.epoch > self.epoch():
            return Refuse(protocol.STALE_EPOCH,
                          f"this source is at epoch {self.epoch()}, the "
                          f"secondary has seen epoch {hello.epoch}")
        if hello.tid == Z64:
            return None
        if hello.tid > self._last_tid:
            return Refuse(protocol.DIVERGENT,
                          f"the secondary's last transaction "
                          f"{hello.tid.hex()} is newer than this source's "
                          f"last transaction {self._last_tid.hex()}")
        digest = transaction_digest(self.storage, hello.tid)
        if digest is None:
            return Refuse(protocol.DIVERGENT,
                          f"the secondary's last transaction "
                          f"{hello.tid.hex()} is not in this source's "
                          "history (a transaction the source never had, or "
                          "one a pack of the source removed)")
        if digest != hello.digest:
            return Refuse(protocol.DIVERGENT,
                          f"transaction {hello.tid.hex()} differs between "
                          "the secondary and this source")
        return None

    def _read_acks(self, secondary, reader):
        """Read ACKs; on any problem record why and close the socket, which
        ends the sending greenlet too."""
        sock = secondary.sock
        silence = self.keep_alive_delay * 3 + 1
        frame_started = None     # when the partial frame buffered began
        try:
            while True:
                message = reader.next()
                if message is None:
                    # A frame must arrive whole within `silence` too: a
                    # byte now and then does not keep a connection.
                    now = time.monotonic()
                    if not reader.pending:
                        frame_started = None
                    elif frame_started is None:
                        frame_started = now
                    if frame_started is None:
                        wait, problem = silence, "no word"
                    else:
                        wait = frame_started + silence - now
                        problem = "no whole frame"
                    with gevent.Timeout(max(wait, 0.001), ConnectionError(
                            f"{problem} from the secondary for {silence}s")):
                        data = sock.recv(handshake.READ_SIZE)
                    if not data:
                        raise EOFError("secondary closed the connection")
                    reader.feed(data)
                    continue
                frame_started = None
                if not isinstance(message, Ack):
                    raise ProtocolError(
                        f"unexpected {type(message).__name__} from a "
                        "secondary")
                if message.tid > secondary.sent_tid:
                    # It cannot have what we never sent it: never count it
                    # toward synchronous replication.
                    raise ProtocolError(
                        f"ACK of transaction {message.tid.hex()}, which was "
                        "not sent on this connection (the last one sent is "
                        f"{secondary.sent_tid.hex()})")
                secondary.last_heard = time.monotonic()
                if message.tid > secondary.acked_tid:
                    secondary.acked_tid = message.tid
                    with self._acks:
                        self._acks.notify_all()
        except ProtocolError as e:
            secondary.end_reason = (logging.ERROR,
                                    f"dropping connection: {e}")
        except (OSError, ConnectionError, EOFError) as e:
            secondary.end_reason = (logging.INFO, f"connection ended: {e}")
        secondary.out.close()

    def _send_loop(self, secondary):
        out = secondary.out
        catchup = None
        while True:
            out.flush()      # what a committer wrote and the socket refused
            with self._lock:
                caught_up = secondary.sent_tid >= self._last_tid
                if caught_up:
                    # From now on committers write new transactions.
                    secondary.following = True
                    changed = self._changed
                else:
                    recent = self._from_recent(secondary.sent_tid)
            if caught_up:
                catchup = _close(catchup)
                if not changed.wait(self.keep_alive_delay):
                    # A commit racing with this secondary's arrival may
                    # have been left to us (look without waiting for the
                    # storage's lock, which a commit holds in its fsync).
                    self._on_commit()
                    out.write(Heartbeat(self.epoch(),
                                        self._last_tid).encode())
                continue
            if recent:
                catchup = _close(catchup)
                for enc in recent:
                    secondary.sent_tid = enc.tid    # before: see _deliver
                    self._send_batch(out, [enc])
                continue
            # Catching up through the storage iterator.
            if catchup is None:
                catchup = iter(open_iterator(
                    self.storage, next_tid(secondary.sent_tid),
                    self._last_tid))
            pending = []
            pending_bytes = 0
            for txn in catchup:
                enc = encode_transaction(self.storage, txn, self.send_blobs)
                pending.append(enc)
                pending_bytes += enc.size
                if pending_bytes >= CATCHUP_BATCH:
                    break
            else:
                catchup = None
            if not pending:
                # The iterator ended before _last_tid (a concurrent commit
                # it did not see yet); start a fresh one.
                catchup = None
                gevent.sleep(0.01)
                continue
            secondary.sent_tid = pending[-1].tid    # before: see _deliver
            self._send_batch(out, pending)

    def _send_batch(self, out, encoded):
        buf = []
        for enc in encoded:
            for part in enc.parts:
                if isinstance(part, BlobRef):
                    if buf:
                        out.sendall(b"".join(buf))
                        buf = []
                    _send_blob(out, part)
                else:
                    buf.append(part)
        if buf:
            out.sendall(b"".join(buf))


def _with_records(txn):
    """``txn`` from ``parse_committed(..., records=False)``, parsed again
    with its records."""
    [whole] = parse_committed(txn.raw, txn.pos)
    return whole


def _send_blob(out, ref):
    with open(ref.path, "rb") as f:
        remaining = ref.size
        while remaining:
            data = f.read(min(protocol.CHUNK_SIZE, remaining))
            if not data:
                raise OSError(f"blob file {ref.path} shrank while sending")
            out.sendall(Chunk(data).encode())
            remaining -= len(data)


def _close(it):
    close = getattr(it, "close", None)
    if close is not None:
        close()
    return None
