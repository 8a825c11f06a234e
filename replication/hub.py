"""The replication hub: one thread running a gevent hub per process.

Concurrency seam
================
All replication I/O -- a source's stream server and its per-secondary
connections, a secondary's stream client -- runs as greenlets on one gevent
hub in a thread of its own, written as straight-line blocking code.  ZEO's
threads (the server's asyncio loop, committing clients) never touch those
greenlets.  They cross into the hub in exactly two ways:

* ``Hub.call(func, *args)`` runs ``func`` in a new greenlet on the hub and
  waits for its result (start/stop of servers and clients);
* ``Hub.watcher(callback)`` returns a ``Wakeup`` whose ``send()`` is safe from
  any thread and runs ``callback`` on the hub (gevent's async watcher); a
  primary uses it to say "a commit finished".

One shortcut skips the hub: a committing thread writes a new transaction
straight to the sockets of the secondaries that follow live, without
blocking, through each connection's ``Outbox`` (``outbox.py``); it wakes
the hub only when a socket did not take everything.  Over TLS it encrypts
under the connection's lock, which the hub takes to decrypt what it reads
(``tls.ServerConnection``).

Going the other way, the hub only sets ``threading`` primitives (a
Condition for synchronous replication) and calls storage methods.  No
monkey-patching: ZEO keeps its real threads and sockets.
"""
import concurrent.futures
import logging
import threading

import gevent
import gevent.event

logger = logging.getLogger(__name__)


class Wakeup:
    """A thread-safe way to run a callback on the hub (coalescing)."""

    def __init__(self, watcher):
        self._watcher = watcher

    def send(self):
        self._watcher.send()

    def close(self):
        self._watcher.close()


class Hub:

    def __init__(self, name="replication-hub"):
        self.name = name
        self._started = threading.Event()
        self._stop = None
        self.loop = None
        self.thread = threading.Thread(target=self._run, name=name,
                                       daemon=True)
        self.thread.start()
        self._started.wait()

    def _run(self):
        hub = gevent.get_hub()
        self.loop = hub.loop
        self._stop = gevent.event.Event()
        # An idle loop would exit ("would block forever"); this referenced
        # watcher keeps it running until stop().
        keepalive = self.loop.async_()
        keepalive.start(lambda: None)
        self._started.set()
        try:
            self._stop.wait()
        finally:
            keepalive.close()

    def call(self, func, *args, timeout=None):
        """Run func(*args) in a greenlet on the hub; return its result."""
        if threading.current_thread() is self.thread:
            return func(*args)
        future = concurrent.futures.Future()

        def run():
            try:
                future.set_result(func(*args))
            except BaseException as e:
                future.set_exception(e)

        self.loop.run_callback_threadsafe(gevent.spawn, run)
        return future.result(timeout)

    def watcher(self, callback):
        def make():
            w = self.loop.async_()
            w.start(callback)
            return Wakeup(w)
        return self.call(make)

    def stop(self):
        if self.thread.is_alive():
            self.loop.run_callback_threadsafe(self._stop.set)
            self.thread.join(5)


_hub = None
_hub_lock = threading.Lock()


def get_hub():
    """The process's replication hub, started on first use."""
    global _hub
    with _hub_lock:
        if _hub is None or not _hub.thread.is_alive():
            _hub = Hub()
        return _hub
