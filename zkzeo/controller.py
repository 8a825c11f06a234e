"""A running zkrunzeo server's HA loop: snapshot -> decision -> action.

One thread runs the loop.  It wakes when the ClusterView reports a change,
when kazoo reports a connection state change, or when the write lease is
granted or lost (each only sets an Event: kazoo callbacks never block), and
at least every ``TICK`` seconds for timers (the automatic failover grace
period, a stalled switchover) and to publish what changed in the server's
own node (its replication state, whether it accepts commits).

``ha.decide`` chooses; ``ACTIONS`` maps each ``ha.Action`` to the method
that performs it, with compare-and-set writes to ZooKeeper; the decision's
sentence is logged at INFO.  Actions that change the cluster state or
unfence decide again on a freshly read snapshot first: a watch's picture
may be stale, and a new ZooKeeper session proves nothing about who is
primary now.  The write lease (``lease.py``) runs on its own thread and
gates every commit independently of this loop.
"""
import logging
import threading
import time

from kazoo.exceptions import BadVersionError, KazooException
from kazoo.protocol.states import KazooState

from replication.storage import Role

from . import ha, history
from .layout import FOLLOWING, PRIMARY, STOPPED
from .lease import Lease

logger = logging.getLogger(__name__)

TICK = 0.2

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
        self._gone_key = None        # (primary, epoch) the timer is for
        self._gone_since = None
        self._fenced_at = None
        self._followed_epoch = None
        self._position = None        # (epoch, last tid) published
        self._frozen_tid = None      # where a switchover froze us
        self._highest_epoch = storage.epoch
        self._refused = None         # the cluster state last refused
        self.lease = Lease(zk, view.path, registration, storage,
                           config.session_timeout, on_change=self._wake.set)
        view.on_change = lambda snapshot: self._wake.set()
        zk.add_listener(self._zk_state)
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name="zkzeo-controller")

    def start(self):
        self.lease.start()
        self.thread.start()

    def stop(self):
        self._stopping = True
        self.lease.stop()
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
        # kazoo reports SUSPENDED some 2/3 of the session timeout after it
        # last heard from ZooKeeper, and no LOST at all while no ensemble
        # member answers: a primary stops as soon as it is suspended (the
        # lease would stop it a little later anyway).
        return not self._session_lost and self._suspended_at is None

    # --- what this server knows and says of itself -------------------------

    def replication_state(self):
        if self.storage.role is Role.PRIMARY:
            return None
        # A secondary without a follower does not replicate.
        return self.storage.replication_state() or STOPPED

    def me(self, snapshot):
        now = time.monotonic()
        storage = self.storage
        state = snapshot.state
        if state.primary and snapshot.primary is None and \
                state.primary != self.name:
            # The grace period belongs to one primary in one epoch: a
            # timer started for an earlier one never fires for this one.
            key = (state.primary, state.epoch)
            if key != self._gone_key:
                self._gone_key, self._gone_since = key, now
        else:
            self._gone_key = self._gone_since = None
        if storage.fenced:
            self._fenced_at = self._fenced_at or now
        else:
            self._fenced_at = None
        replication_state = self.replication_state()
        if replication_state == FOLLOWING:
            self._followed_epoch = storage.epoch
        follower = storage.follower
        return ha.Me(
            name=self.name, role=storage.role.value, epoch=storage.epoch,
            fenced=storage.fenced,
            following=follower.peer if follower is not None else None,
            session_ok=self._session_ok(),
            fenced_for=now - self._fenced_at if self._fenced_at else 0.0,
            primary_gone_for=now - self._gone_since if self._gone_since
            else 0.0,
            auto_failover=self.config.auto_failover,
            last_tid=storage.lastTransaction().hex(),
            replication_state=replication_state,
            followed_epoch=self._followed_epoch,
            position=self._position)

    def _info(self, me):
        """The node data this server should publish now."""
        info = self.registration.info
        primary = me.role == PRIMARY
        extra = {k: v for k, v in info.extra.items()
                 if k not in ("followed_epoch", "position", "frozen_tid",
                              "last_tid")}
        if not primary and me.followed_epoch is not None:
            extra["followed_epoch"] = me.followed_epoch
        if not primary and self._position is not None and \
                self._position[0] == me.epoch:
            extra["position"] = list(self._position)
        if primary and self._frozen_tid is not None:
            extra["frozen_tid"] = self._frozen_tid
        writable = (primary and not me.fenced and
                    self.lease.granted_epoch == me.epoch)
        return info.with_(role=me.role, epoch=me.epoch, writable=writable,
                          replication_state=me.replication_state,
                          extra=extra)

    def _publish(self, me):
        info = self._info(me)
        current = self.registration.info
        if info != current:
            self.registration.update(info)

    # --- the loop ----------------------------------------------------------

    def _run(self):
        last_sentence = None
        while not self._stopping:
            self._wake.wait(TICK)
            self._wake.clear()
            if self._stopping:
                break
            snapshot = self.view.snapshot
            if not self._acceptable(snapshot.state):
                continue
            try:
                me = self.me(snapshot)
                if me.session_ok:
                    self._publish(me)
                action, sentence = ha.decide(snapshot, me)
            except KazooException as e:
                logger.warning("%s could not reach ZooKeeper (%s); trying "
                               "again", self.name, e.__class__.__name__)
                continue
            if action is ha.Action.NOTHING:
                if sentence != last_sentence:
                    logger.debug("%s", sentence)
                last_sentence = sentence
                continue
            last_sentence = sentence
            if action not in CONFIRMED_FRESH:
                logger.info("%s", sentence)
            try:
                ACTIONS[action](self, snapshot)
            except KazooException as e:
                logger.warning("%s could not %s: ZooKeeper said %s; trying "
                               "again", self.name, action.value,
                               e.__class__.__name__)
                self._retry_soon()
            except Exception:
                logger.exception("%s could not %s; trying again", self.name,
                                 action.value)
                self._retry_soon()

    def _acceptable(self, state):
        """Epochs only grow: a cluster state going back (written by hand,
        or by a hostile client) is refused, loudly, and nothing acts on it.
        """
        if state.epoch >= self._highest_epoch:
            self._highest_epoch = state.epoch
            self._refused = None
            return True
        if state != self._refused:
            self._refused = state
            logger.critical(
                "%s refuses the cluster state of %s: its epoch %d is older "
                "than epoch %d, which this server has seen; someone wrote "
                "it by hand or without compare-and-set.  Restore the epoch "
                "and check who can "
                "write to ZooKeeper (docs/security.md)", self.name,
                self.view.path, state.epoch, self._highest_epoch)
        return False

    def _retry_soon(self):
        time.sleep(TICK)
        self._wake.set()

    def _decide_fresh(self, expected):
        """Decide again on a fresh read; log the sentence if the decision
        stands (a resumed process must not say what a stale picture
        suggested)."""
        fresh = self.view.refresh()
        action, sentence = ha.decide(fresh, self.me(fresh))
        if action is expected:
            logger.info("%s", sentence)
        return fresh, action, sentence

    # --- actions ------------------------------------------------------------

    def _promote(self, snapshot):
        self._position = None
        self.storage.become_primary(snapshot.state.epoch)
        self._publish(self.me(snapshot))
        self.lease.renew_now()

    def _demote(self, snapshot):
        # Commits in flight fail (fenced); let the one holding the commit
        # lock end before replication starts writing.
        self.storage.fenced = True
        self.storage.finish_commits_in_flight()
        self._frozen_tid = None
        self.storage.become_secondary(self.replication_source,
                                      snapshot.state.epoch)
        self._publish(self.me(snapshot))

    def _fence(self, snapshot):
        self.storage.fenced = True
        state = snapshot.state
        if state.handover is not None and self._session_ok():
            # Say where our history ends, for the switchover's target to
            # catch up with: after the commit in flight, if any, ended.
            self.storage.finish_commits_in_flight()
            self._frozen_tid = self.storage.lastTransaction().hex()
            self._publish(self.me(snapshot))

    def _unfence(self, snapshot):
        fresh, action, _ = self._decide_fresh(ha.Action.UNFENCE)
        if action is not ha.Action.UNFENCE:
            self._wake.set()
            return
        self._frozen_tid = None
        self.storage.fenced = False
        try:
            self.lease.renew()
        except KazooException:
            self.lease.renew_now()       # its own thread tries again
        # Clients that registered read-only while we were fenced (a commit
        # of theirs failed meanwhile, say) must register again.
        self.storage.reconnect_clients()
        self._publish(self.me(fresh))

    def _follow(self, snapshot):
        self.storage.follower.retarget()

    def _stand(self, snapshot):
        me = self.me(snapshot)
        self._position = (me.epoch, me.last_tid)
        self._publish(me)            # _info reads the new position

    def _take_over(self, snapshot):
        fresh, action, sentence = self._decide_fresh(ha.Action.TAKE_OVER)
        if action is not ha.Action.TAKE_OVER:
            self._wake.set()
            return
        state = fresh.state.next_primary(self.name)
        try:
            self.zk.set(self.view.path, state.to_bytes(),
                        version=fresh.state_version)
        except BadVersionError:
            logger.info("the cluster state changed before %s could take "
                        "over; deciding again", self.name)
            self._wake.set()
            return
        history.record_later(self.zk, self.view.path, fresh.state, state)
        logger.warning("%s is primary in epoch %d (was %s in epoch %d)",
                       self.name, state.epoch, fresh.state.primary,
                       fresh.state.epoch)
        self.view.refresh()
        self._wake.set()

    def _abandon_intent(self, snapshot):
        fresh = self.view.refresh()
        if fresh.state.primary != self.name or fresh.state.intent is None:
            return
        try:
            self.zk.set(self.view.path,
                        fresh.state.with_(intent=None).to_bytes(),
                        version=fresh.state_version)
        except BadVersionError:
            pass                   # the switchover moved on meanwhile
        self.view.refresh()
        self._wake.set()


# Logged by their handler, once a fresh read confirms them.
CONFIRMED_FRESH = (ha.Action.UNFENCE, ha.Action.TAKE_OVER)

ACTIONS = {
    ha.Action.PROMOTE: Controller._promote,
    ha.Action.DEMOTE: Controller._demote,
    ha.Action.FENCE: Controller._fence,
    ha.Action.UNFENCE: Controller._unfence,
    ha.Action.FOLLOW: Controller._follow,
    ha.Action.STAND: Controller._stand,
    ha.Action.TAKE_OVER: Controller._take_over,
    ha.Action.ABANDON_INTENT: Controller._abandon_intent,
}
