"""The primary's write lease: commits are acknowledged only while a fresh
read of ZooKeeper has confirmed, recently enough, that this server is the
primary.

Why a lease and not only kazoo's connection events: a process paused
(SIGSTOP, a long GC, a VM freeze) past its session timeout learns nothing
until it runs again, and then its ZEO loop may finish commits before
kazoo's thread has noticed anything, or after kazoo has quietly connected
with a *new* session, which proves nothing about who is primary now.

The rule.  At time ``t0`` (monotonic, taken *before* the request) a renewal
sends ``sync`` + reads of the cluster state and of our own node.  If they
say that the state names us in our epoch, with no intent to change primary,
and that our node is owned by our live session, the storage may acknowledge
commits until ``t0 + duration``, with ``duration`` half the session
timeout.  Nobody else can become primary before that: an election needs
our node gone, i.e. our session expired, which ZooKeeper does at the
earliest a whole session timeout after it last heard from us (after
``t0``); an operator's forced promotion waits out this lease too (see
``Lease.may_take_over``).  A pause of any length makes the lease run out
(CLOCK_MONOTONIC keeps counting while stopped), so a resumed primary
refuses commits until a read done after the pause confirms it again.

The renewal runs on a thread of its own, so an HA action that takes a
while never lets the lease lapse; it wakes the controller when the lease
starts or stops being granted.
"""
import logging
import threading
import time

from kazoo.exceptions import KazooException, NoNodeError

from .layout import PRIMARY, ClusterState, LayoutError, ServerInfo

logger = logging.getLogger(__name__)


class ZooKeeperSilent(KazooException):
    """ZooKeeper did not answer a renewal in time."""


def lease_duration(session_timeout):
    return session_timeout / 2.0


class Lease:
    """Keeps ``storage.lease_until`` renewed while ZooKeeper says so."""

    def __init__(self, zk, path, registration, storage, session_timeout,
                 on_change=lambda: None):
        self.zk = zk
        self.path = path
        self.registration = registration
        self.storage = storage
        self.duration = lease_duration(session_timeout)
        self.interval = self.duration / 8.0
        self.on_change = on_change
        self.granted_epoch = None    # the epoch of the last grant
        self._first_named = {}       # epoch -> when we first saw it name us
        self._stopping = False
        self._wake = threading.Event()
        storage.lease_until = 0.0    # from now on, commits need a lease
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name="zkzeo-lease")

    def start(self):
        self.thread.start()

    def stop(self):
        self._stopping = True
        self._wake.set()

    def renew_now(self):
        self._wake.set()

    def _run(self):
        while not self._stopping:
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stopping:
                break
            if self.storage.role.value != PRIMARY:
                self.granted_epoch = None
                continue
            try:
                granted = self.renew()
            except (KazooException, LayoutError) as e:
                granted = False
                logger.debug("could not renew the write lease: %s", e)
            except Exception:
                granted = False
                logger.exception("could not renew the write lease")
            if not granted and self.granted_epoch is not None and \
                    not self.storage.lease_valid():
                logger.warning(
                    "%s: ZooKeeper has not confirmed for %.1fs that it is "
                    "still the primary of epoch %d: its write lease ran out "
                    "and it refuses commits until a fresh read confirms it",
                    self.registration.info.name, self.duration,
                    self.granted_epoch)
                self.granted_epoch = None
                self.on_change()

    def renew(self):
        """One renewal; True if the lease was extended."""
        t0 = time.monotonic()
        name = self.registration.info.name
        epoch = self.storage.epoch
        # Sent together (ZooKeeper answers a session's requests in order,
        # so the reads come after the sync): one round trip, not three, on
        # a loaded machine.  Asynchronous with a timeout: while ZooKeeper
        # hangs, kazoo queues requests until it reconnects, and the lease
        # must still be seen to run out (and said so) on time.
        synced = self.zk.sync_async(self.path)
        state_read = self.zk.get_async(self.path)
        node_read = self.zk.get_async(self.registration.node)
        self._answer(synced)
        data, _ = self._answer(state_read)
        state = ClusterState.from_bytes(data, self.path)
        if state.primary != name or state.epoch != epoch or \
                state.intent is not None:
            return False
        try:
            _, stat = self._answer(node_read)
        except NoNodeError:
            return False
        session = self.zk.client_id
        if session is None or stat.ephemeralOwner != session[0]:
            return False
        first = self._first_named.setdefault(epoch, t0)
        if not self.may_take_over(epoch, t0 - first):
            return False
        first_grant = self.storage.lease_until == 0.0
        self.storage.lease_until = t0 + self.duration
        if first_grant:
            # The role's first lease: clients that registered read-only
            # meanwhile register again, now writable.
            self.storage.reconnect_clients()
        if self.granted_epoch != epoch:
            self.granted_epoch = epoch
            logger.info("%s holds the write lease of epoch %d", name, epoch)
            self.on_change()
        return True

    def _answer(self, result):
        try:
            return result.get(timeout=self.duration)
        except self.zk.handler.timeout_exception:
            raise ZooKeeperSilent(f"no answer within {self.duration:g}s")

    def may_take_over(self, epoch, named_for):
        """A new primary writes only once no other server may still be
        acknowledging commits: every other registered server says it is
        not a writable primary (it stepped down), or has been named
        primary for longer than any other server's lease could last."""
        if named_for >= self.duration:
            return True
        me = self.registration.info.name
        for child in self.zk.get_children(self.path):
            try:
                data, _ = self.zk.get(f"{self.path}/{child}")
                info = ServerInfo.from_node(child, data)
            except (NoNodeError, LayoutError):
                continue
            if info.name != me and info.role == PRIMARY and info.writable:
                return False
        return True
