"""Every use of a private name of ZEO, in one place (checked against ZEO 6.2).

tests/test_zeo_compat.py is the canary: it fails loudly when ZEO changes
one of these.  What zkzeo's client needs from ZEO's internals:

``ZEO.asyncio.client.ClientIO`` (runs on ZEO's IO thread):
  ``manage_connected`` replaces the ``connected`` future that callers
  waiting for a connection await; ZEO *cancels* it on every reconnection,
  so ``new_addrs`` made a client still waiting for its first connection
  fail with ClientDisconnected('connection cancelled').  Ours keeps a
  pending future: waiters wait for the next connection instead.
  ``verify`` refuses a server behind the client's cache; ours drops the
  cache.  ``addrs``, ``protocol``, ``protocols``, ``_clear_protocols``,
  ``try_connecting``, ``disconnected``, ``closed`` and ``read_only is
  Fallback``: to use new addresses without restarting a pending
  connection, to keep a read-only connection while trying for a writable
  one (ZEO's own upgrade path in ``register``), and to close a connection
  to a hung server.
``Protocol.addr``, ``.read_only``, ``.closed``, ``.sm_protocol.transport``:
  a connection's address and mode, and its transport, aborted when the
  server is hung (a graceful close waits for a peer that never reads).
``ClientThread.setup_delegation``, ``.loop``, ``.client``: our ClientIO
  class, and running code on the IO thread.
``ClientStorage(_client_factory=)``, ``._wait``: our ClientThread, and
  waiting for the first connection (``wait=True`` would wait before the
  storage is ready to route).
``ClientStorage._server``, ``._call``, ``._is_read_only``: the ClientThread,
  a server call and the mode of the last connection (for blocks of new
  oids, which must come from the current primary).
``ZEO.cache.ClientCache.current``, ``.f``, ``._lock``: the same-tid fix.
"""
import logging

import ZEO.asyncio.client
import ZEO.cache

from .routing import Connection

logger = logging.getLogger(__name__)

CHECKED_WITH = "6.2"

UPGRADE_RETRY = 1.0     # seconds between a fallback client's upgrade tries


class ClientIO(ZEO.asyncio.client.ClientIO):
    """ZEO's connection manager, with what a failover needs.

    Runs on ZEO's IO thread only.  ``router(current, lost)`` (set by the
    storage) returns a routing.Route; ``reroute()`` applies it.
    """

    router = None
    lost = None            # address of the last lost connection
    _name = ""
    _last_sentence = None
    _upgrade_handle = None

    def start_routing(self, router, name, sentence):
        """Called once by the storage (from the caller's thread, before any
        reroute is scheduled); ``sentence`` is the route it started with."""
        self._name = name
        self._last_sentence = sentence
        self.router = router

    def _ask(self, current):
        """The router's Route, or None (after logging) if it failed."""
        try:
            route = self.router(current, self.lost)
        except Exception:
            logger.exception("%s: could not choose servers", self._name)
            return None
        if route.sentence != self._last_sentence:
            self._last_sentence = route.sentence
            logger.info("%s: %s", self._name, route.sentence)
        return route

    def manage_connected(self):
        # ZEO cancels the pending future here, failing every caller still
        # waiting for a connection; keep it until a connection is made.
        if self.connected is None or self.connected.done():
            self.connected = self.loop.create_future()

    def connection(self):
        """The current connection as routing.Connection, or None."""
        protocol = self.protocol
        if protocol is None or protocol.closed:
            return None
        return Connection(protocol.addr, protocol.read_only is True)

    def reroute(self):
        """Ask the router where to connect, and go there."""
        if self.closed or self.router is None:
            return
        route = self._ask(self.connection())
        if route is not None:
            self.use(route.addresses, route.leave, route.upgrade)
            self._upgrade_later(route.upgrade)

    def _upgrade_later(self, wanted):
        """While a fallback client reads on a read-only connection and a
        writable primary is named, try for a writable connection again
        every UPGRADE_RETRY seconds.  Nothing in ZooKeeper may change to
        tell it: a primary fenced while ZooKeeper was down, and unfenced
        when it came back, looks the same before and after; and ZEO's own
        retry after a refused registration waits about ten seconds."""
        if self._upgrade_handle is not None:
            self._upgrade_handle.cancel()
            self._upgrade_handle = None
        if wanted and not self.closed:
            self._upgrade_handle = self.loop.call_later(
                UPGRADE_RETRY, self._retry_upgrade)

    def _retry_upgrade(self):
        self._upgrade_handle = None
        if self.closed or self.router is None:
            return
        route = self._ask(self.connection())
        if route is None:
            return
        protocol = self.protocol
        if route.upgrade and protocol is not None:
            self.addrs = list(route.addresses)
            self._retarget(keep=protocol, fresh=True)
        else:
            self.use(route.addresses, route.leave, route.upgrade)
        self._upgrade_later(route.upgrade)

    def use(self, addresses, leave=False, upgrade=False):
        changed = list(addresses) != list(self.addrs)
        self.addrs = list(addresses)
        protocol = self.protocol
        if self.closed:
            return
        if leave and protocol is not None:
            abort(protocol)
            # ZEO's own path after a failed tpc_finish: the storage hears
            # of it, and ZEO connects again with self.addrs.
            self.disconnected(protocol)
        elif protocol is None:
            if changed:
                # Not connected: try the new list; the ``connected`` future
                # that callers wait for stays (see manage_connected).
                self._retarget()
        elif upgrade and (changed or not self._trying(protocol)):
            # Keep reading on the read-only connection; ZEO's register()
            # upgrades as soon as one of these registers writable.
            self._retarget(keep=protocol)

    def _trying(self, current):
        return any(not p.closed for p in self.protocols if p is not current)

    def _retarget(self, keep=None, fresh=False):
        """Attempts to exactly self.addrs (besides ``keep``): those under
        way to an address still wanted go on (unless ``fresh``: an attempt
        refused before may be waiting out ZEO's long retry delay), the
        others are closed."""
        wanted = list(self.addrs)
        going = []
        for p in self.protocols:
            if p is keep or p.closed:
                continue
            if not fresh and p.addr in wanted and \
                    p.addr not in [g.addr for g in going]:
                going.append(p)
            else:
                p.close()
        started = [g.addr for g in going]
        self.addrs = [a for a in wanted if a not in started]
        try:
            self.try_connecting()          # sets self.protocols
        finally:
            self.addrs = wanted
        self.protocols = going + list(self.protocols)

    def disconnected(self, protocol=None):
        if protocol is not None and protocol is self.protocol:
            # Lost: route before ZEO connects again (it uses self.addrs).
            self.lost = protocol.addr
            if self.router is not None and not self.closed:
                route = self._ask(None)
                if route is not None:
                    self.addrs = list(route.addresses)
        super().disconnected(protocol)

    async def verify(self, server_tid):
        cache = self.cache
        if server_tid is None:
            server_tid = await self.protocol.server_call("lastTransaction")
        cache_tid = cache.getLastTid() if cache else None
        if cache_tid and cache_tid > server_tid:
            # After an asynchronous failover every surviving server may be
            # behind the cache for good; stock ZEO would refuse them all.
            self.verify_result = "Server behind client: cache dropped"
            logger.warning(
                "%s: server %s is behind this client's cache (its last "
                "transaction %s is older than %s), as after a failover that "
                "lost transactions: dropping the cache",
                getattr(self.client, "__name__", ""), self.protocol.addr,
                server_tid.hex(), cache_tid.hex())
            cache.clear()
            self.client.invalidateCache()
        return await super().verify(server_tid)


def abort(protocol):
    """Close a connection at once, even to a server that does not read."""
    smp = protocol.sm_protocol
    transport = smp.transport if smp is not None else None
    protocol.close()
    if transport is not None:
        transport.abort()


class ClientCache(ZEO.cache.ClientCache):
    """ZEO's client cache without a bug that spoils its file.

    ZEO 6's ``invalidate`` removes an object from its index of current
    records *before* it notices that the invalidation carries the current
    record's own tid, which it then ignores ("Ignoring invalidation with
    same tid as current").  The record stays current in the file; the next
    ``store`` of that object adds a second current record, and the next
    start refuses the whole file ("Moving bad cache file").  Here such an
    invalidation leaves everything as it was.
    """

    def invalidate(self, oid, tid):
        with self._lock:
            ofs = self.current.get(oid) if tid is not None else None
            if ofs is not None:
                self.f.seek(ofs + 13)       # status, size, oid: then tid
                if self.f.read(8) == tid:
                    return
            super().invalidate(oid, tid)


class ClientThread(ZEO.asyncio.client.ClientThread):
    """ZEO's ClientThread with our ClientIO and ClientCache classes."""

    def setup_delegation(self, loop):
        super().setup_delegation(loop)
        # ClientRunner builds a plain ClientIO; ours only adds to it.
        self.client.__class__ = ClientIO
        cache = self.client.cache
        if type(cache) is ZEO.cache.ClientCache:
            cache.__class__ = ClientCache      # before it is used


def with_our_client_thread(kw):
    """ClientStorage keyword arguments that make it use our ClientThread."""
    return dict(kw, _client_factory=ClientThread)


def wait_connected(storage):
    """Wait (up to the storage's wait_timeout) for its first connection."""
    storage._wait()


def client_io(storage):
    """The storage's ClientIO (use it on the IO thread only)."""
    return storage._server.client


def call_soon_in_io_thread(storage, function, *args):
    """Run ``function(*args)`` on the storage's IO thread; do not wait."""
    loop = storage._server.loop
    if loop is not None and not loop.is_closed():
        try:
            loop.call_soon_threadsafe(function, *args)
        except RuntimeError:
            pass                  # the loop closed meanwhile


def new_oids(storage):
    """A block of new oids from the storage's server."""
    return storage._call("new_oids")


def read_only_now(storage):
    """Whether the storage's last connection was read-only (as ZEO's own
    new_oid checks it: a disconnected client is not read-only)."""
    return bool(storage._is_read_only)
