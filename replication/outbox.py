"""Bytes for one connection's socket, written from any thread.

A primary's committing thread (ZEO's event loop, or the application's
thread for an in-process ``ZODB.DB``) writes each new transaction straight
to the sockets of the secondaries that are following live.  Handing every
commit to the replication hub instead costs two thread switches and a GIL
hand-off per commit, more than the write itself.

``write()`` never blocks: what the socket does not take now waits in a
backlog, in order, and the hub's ``flush()`` writes it when the socket is
writable again.  Everything is written under one lock, so a frame is never
interleaved with another thread's; the file descriptor is closed under the
same lock, so no thread writes to a descriptor number that was reused.

Over TLS the socket is a ``tls.ServerConnection``: the outbox then takes
its lock and seals (encrypts) what it is given under that lock, so bytes
are encrypted and written in one order, whichever thread writes.
"""
import errno
import os
import socket
import threading

import gevent.socket

MAX_BACKLOG = 8 * 1024 * 1024   # beyond this a writer lets the hub catch up
RECHECK = 1.0                   # a wait for writability looks again this often


class Outbox:

    def __init__(self, sock):
        self.sock = sock            # a gevent socket, owned by the hub
        self._fd = sock.fileno()
        self._seal = getattr(sock, "seal", None)     # TLS
        self._lock = getattr(sock, "lock", None) or threading.Lock()
        self._backlog = bytearray()
        self.error = None           # the OSError that broke the connection

    @property
    def backlog(self):
        return len(self._backlog)

    def write(self, data):
        """Write ``data`` after everything written before, without
        blocking.  Returns True when the socket took all of it, False when
        some waits for ``flush()`` (or the connection is broken)."""
        with self._lock:
            if self._fd is None or self.error is not None:
                return False
            if self._seal is not None:
                try:
                    data = self._seal(data)
                except OSError as e:    # ssl.SSLError: the stream is over
                    self.error = e
                    return False
            if self._backlog:
                self._backlog += data
                return False
            written = self._write(data)
            if written == len(data):
                return True
            self._backlog += memoryview(data)[written:]
            return False

    def flush(self):
        """On the hub: wait until the backlog is written."""
        while True:
            with self._lock:
                if self._backlog and self._fd is not None:
                    del self._backlog[:self._write(self._backlog)]
                if self.error is not None:
                    raise self.error
                if self._fd is None:
                    raise ConnectionError("connection closed")
                if not self._backlog:
                    return
                fd = self._fd
            try:
                # Our own watcher: a close() elsewhere does not cancel it,
                # hence the timeout and the look again.
                gevent.socket.wait_write(fd, timeout=RECHECK)
            except socket.timeout:
                pass

    def sendall(self, data):
        """On the hub: write and wait until written (sock.sendall)."""
        self.write(data)
        self.flush()

    def close(self):
        with self._lock:
            self._fd = None
            self._backlog = bytearray()
            self.sock.close()

    def _write(self, data):
        if self._fd is None:
            return 0
        try:
            return os.write(self._fd, data)
        except BlockingIOError:
            return 0
        except InterruptedError:
            return 0
        except OSError as e:
            # EPIPE, ECONNRESET...: the connection is over.
            self.error = e if e.errno != errno.EPIPE else \
                ConnectionError("the peer closed the connection")
            return 0

