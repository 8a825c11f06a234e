"""Role decisions: pure functions from a cluster snapshot to one action.

Each returns ``(action, sentence)``; the server's controller performs the
action (with compare-and-set writes where ZooKeeper changes) and logs the
sentence.  Tests build snapshots and check the sentences; nothing here
talks to ZooKeeper or to a storage.
"""
from dataclasses import dataclass

from .layout import PRIMARY, SECONDARY, ClusterState

BOOTSTRAP = "bootstrap"
RUN_PRIMARY = "primary"
RUN_SECONDARY = "secondary"

NOTHING = "nothing"
PROMOTE = "promote"
DEMOTE = "demote"
FENCE = "fence"
UNFENCE = "unfence"
FOLLOW = "follow"
ELECT = "elect"
ABANDON_HANDOVER = "abandon-handover"

HANDOVER_TIMEOUT = 30.0


def decide_start(snapshot, me, may_bootstrap):
    """How a starting server named ``me`` should run."""
    state = snapshot.state
    if state.primary is None:
        if may_bootstrap:
            return BOOTSTRAP, (f"{snapshot.path} names no primary: {me} "
                               "claims the primary role (epoch 1)")
        return RUN_SECONDARY, (f"{snapshot.path} names no primary and "
                               f"bootstrap is off: {me} starts as a "
                               "secondary and waits for a primary")
    if state.primary == me:
        return RUN_PRIMARY, (f"{snapshot.path} names {me} primary in epoch "
                             f"{state.epoch}: starting as primary")
    return RUN_SECONDARY, (f"{state.primary} is primary in epoch "
                           f"{state.epoch}: {me} starts as its secondary")


def bootstrap_state(me):
    return ClusterState(primary=me, epoch=1)


@dataclass(frozen=True)
class Me:
    """What a running server knows about itself."""
    name: str
    role: str
    epoch: int
    fenced: bool = False
    following: str = None        # replication address it follows
    session_ok: bool = True      # ZooKeeper session alive and connected
    fenced_for: float = 0.0      # seconds since it stopped accepting writes
    primary_gone_for: float = 0.0   # seconds the named primary is missing
    auto_failover: float = None  # grace period, or None when off


def decide(snapshot, me):
    """The one thing a running server should do now, and why."""
    state = snapshot.state
    if not me.session_ok:
        if me.role == PRIMARY and not me.fenced:
            return FENCE, (f"{me.name} lost its ZooKeeper session: it "
                           "refuses writes until it knows it is still "
                           "primary")
        return NOTHING, f"{me.name} waits for ZooKeeper"
    if state.primary == me.name:
        if me.role == SECONDARY:
            return PROMOTE, (f"{snapshot.path} names {me.name} primary in "
                             f"epoch {state.epoch}: promoting it")
        if state.handover:
            if not me.fenced:
                return FENCE, (f"switchover to {state.handover}: "
                               f"{me.name} stops accepting commits")
            if me.fenced_for > HANDOVER_TIMEOUT:
                return ABANDON_HANDOVER, (
                    f"the switchover to {state.handover} did not finish "
                    f"within {HANDOVER_TIMEOUT:.0f}s: {me.name} stays "
                    "primary and accepts writes again")
            return NOTHING, f"{me.name} waits for {state.handover}"
        if me.fenced:
            return UNFENCE, (f"{snapshot.path} names {me.name} primary in "
                             f"epoch {state.epoch}: accepting writes again")
        return NOTHING, f"{me.name} is primary"
    if state.primary is None:
        return NOTHING, f"{snapshot.path} names no primary"
    primary = snapshot.primary
    if me.role == PRIMARY:
        return DEMOTE, (f"{state.primary} is primary in epoch "
                        f"{state.epoch}: {me.name} steps down and follows "
                        "it")
    if primary is None:
        if me.auto_failover is not None and \
                me.primary_gone_for >= me.auto_failover:
            return ELECT, (f"primary {state.primary} has been gone for "
                           f"{me.primary_gone_for:.1f}s: {me.name} takes "
                           "part in electing a new one")
        return NOTHING, f"primary {state.primary} is not registered"
    if primary.replication and primary.replication != me.following:
        return FOLLOW, (f"{state.primary} (epoch {state.epoch}) serves "
                        f"replication on {primary.replication}: "
                        f"{me.name} follows it there")
    return NOTHING, f"{me.name} follows {state.primary}"


def elect(candidates, me):
    """Whether ``me`` should promote itself: candidates are (name,
    last_tid) of the live secondaries; the most up-to-date wins, ties go to
    the smallest name."""
    if not candidates:
        return False
    newest = max(tid for _, tid in candidates)
    return min(name for name, tid in candidates if tid == newest) == me
