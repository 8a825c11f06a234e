"""A running zkrunzeo server's HA loop: snapshot -> decision -> action.

One thread runs the loop.  It wakes when the ClusterView reports a change
or kazoo reports a connection state change (both only set an Event: kazoo
callbacks never block), and at least every ``TICK`` seconds for timers
(fencing after a lost session, the automatic failover grace period, a
stalled switchover).  ``ha.decide`` chooses; this module acts, with
compare-and-set writes to ZooKeeper, and logs the decision's sentence.
"""
import logging
import threading
import time

from kazoo.exceptions import BadVersionError
from kazoo.protocol.states import KazooState

from . import ha
from .layout import PRIMARY, SECONDARY, ClusterState

logger = logging.getLogger(__name__)

TICK = 0.2
ELECTION_SETTLE = 0.5


class Controller:

    def __init__(self, zk, view, registration, storage, config,
                 replication_source):
        self.zk = zk
        self.view = view
        self.registration = registration
        self.storage = storage
        self.config = config
        self.replication_source = replication_source
        self.name = registration.info.name
        self._wake = threading.Event()
        self._stopping = False
        self._suspended_at = None
        self._session_lost = False
        self._primary_missing_at = None
        self._fenced_at = None
        view.on_change = lambda snapshot: self._wake.set()
        zk.add_listener(self._zk_state)
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name="zkzeo-controller")

    def start(self):
        self.thread.start()

    def stop(self):
        self._stopping = True
        self._wake.set()
        self.zk.remove_listener(self._zk_state)
        if self.thread.is_alive():
            self.thread.join(10)

    def _zk_state(self, state):
        # kazoo's thread: record and wake the loop, nothing else.
        if state == KazooState.SUSPENDED:
            self._suspended_at = self._suspended_at or time.monotonic()
        elif state == KazooState.LOST:
            self._session_lost = True
        else:
            self._suspended_at = None
            self._session_lost = False
        self._wake.set()

    def _session_ok(self):
        # kazoo reports SUSPENDED only some 2/3 of the session timeout after
        # it last heard from ZooKeeper, and no LOST at all while no ensemble
        # member answers; the session may expire (and another server be
        # promoted) a third of the timeout later.  So a primary stops
        # writing as soon as the connection is suspended.
        return not self._session_lost and self._suspended_at is None

    def me(self, snapshot):
        now = time.monotonic()
        storage = self.storage
        if snapshot.state.primary and snapshot.primary is None and \
                snapshot.state.primary != self.name:
            self._primary_missing_at = self._primary_missing_at or now
        else:
            self._primary_missing_at = None
        if storage.fenced:
            self._fenced_at = self._fenced_at or now
        else:
            self._fenced_at = None
        follower = storage.follower
        return ha.Me(
            name=self.name, role=storage.role.value, epoch=storage.epoch,
            fenced=storage.fenced,
            following=follower.peer if follower is not None else None,
            session_ok=self._session_ok(),
            fenced_for=now - self._fenced_at if self._fenced_at else 0.0,
            primary_gone_for=(now - self._primary_missing_at
                              if self._primary_missing_at else 0.0),
            auto_failover=self.config.auto_failover)

    def _run(self):
        last_sentence = None
        while not self._stopping:
            self._wake.wait(TICK)
            self._wake.clear()
            if self._stopping:
                break
            snapshot = self.view.snapshot
            try:
                info = self.registration.info
                if self.storage.epoch != info.epoch and self._session_ok():
                    # a secondary that followed a promotion says so
                    self.registration.publish(
                        info.with_(epoch=self.storage.epoch))
            except Exception as e:
                logger.warning("could not publish the epoch: %s", e)
            action, sentence = ha.decide(snapshot, self.me(snapshot))
            if action == ha.NOTHING:
                if sentence != last_sentence:
                    logger.debug("%s", sentence)
                last_sentence = sentence
                continue
            last_sentence = sentence
            logger.info("%s", sentence)
            try:
                getattr(self, "_" + action.replace("-", "_"))(snapshot)
            except Exception:
                logger.exception("could not %s; trying again", action)
                time.sleep(TICK)
                self._wake.set()

    # --- actions ------------------------------------------------------------

    def _promote(self, snapshot):
        self.storage.become_primary(snapshot.state.epoch)
        self.registration.update(self._fresh_info(PRIMARY, snapshot))

    def _demote(self, snapshot):
        # Let a commit in flight finish (or fail at vote) first.
        self.storage.fenced = True
        with self.storage.base._commit_lock:
            pass
        self.storage.become_secondary(self.replication_source,
                                      snapshot.state.epoch)
        self.registration.update(self._fresh_info(SECONDARY, snapshot))

    def _fresh_info(self, role, snapshot):
        # A new role starts without the facts of the old one (a frozen
        # tid, a tid published for an election).
        info = self.registration.info
        extra = {k: v for k, v in info.extra.items()
                 if k not in ("frozen_tid", "last_tid")}
        return info.with_(role=role, epoch=snapshot.state.epoch, extra=extra)

    def _follow(self, snapshot):
        self.storage.follower.retarget()

    def _fence(self, snapshot):
        self.storage.fenced = True
        if snapshot.state.handover and self._session_ok():
            # Let the commit in flight (if any) finish, then say where our
            # history ends, for the switchover to wait for.
            base = self.storage.base
            with base._commit_lock:
                last = base.lastTransaction()
            self.registration.publish(self.registration.info.with_(
                extra=dict(self.registration.info.extra,
                           frozen_tid=last.hex())))

    def _unfence(self, snapshot):
        self.storage.fenced = False
        if "frozen_tid" in self.registration.info.extra:
            extra = dict(self.registration.info.extra)
            del extra["frozen_tid"]
            self.registration.publish(
                self.registration.info.with_(extra=extra))

    def _abandon_handover(self, snapshot):
        state = snapshot.state
        try:
            self.zk.set(self.view.path,
                        ClusterState(state.primary, state.epoch).to_bytes(),
                        version=snapshot.state_version)
        except BadVersionError:
            pass                   # the switchover moved on meanwhile
        self.view.refresh()

    def _elect(self, snapshot):
        base = self.storage.base
        info = self.registration.info
        self.registration.publish(info.with_(extra=dict(
            info.extra, last_tid=base.lastTransaction().hex())))
        time.sleep(ELECTION_SETTLE)       # let the others publish theirs
        fresh = self.view.refresh()
        if fresh.state_version != snapshot.state_version:
            return                        # someone else acted
        candidates = []
        for server in fresh.servers:
            tid = server.extra.get("last_tid")
            if server.role == SECONDARY and tid:
                candidates.append((server.name, bytes.fromhex(tid)))
        if not ha.elect(candidates, self.name):
            logger.info("%s is not the most up-to-date secondary; another "
                        "one takes over", self.name)
            return
        state = ClusterState(self.name, fresh.state.epoch + 1)
        try:
            self.zk.set(self.view.path, state.to_bytes(),
                        version=fresh.state_version)
        except BadVersionError:
            logger.info("another server changed the cluster state first")
            return
        logger.warning("automatic failover: %s made itself primary in epoch "
                       "%d (primary %s was gone)", self.name, state.epoch,
                       snapshot.state.primary)
        self.view.refresh()
        self._wake.set()

