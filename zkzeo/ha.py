"""The HA core: pure functions from a cluster snapshot to one action.

Every role change of a running server goes through ``decide(snapshot,
me) -> (Action, sentence)``; the controller (``controller.py``) performs the
action, with compare-and-set writes where ZooKeeper changes, and logs the
sentence.  Operators' commands write an *intent* into the cluster state
(``layout.Intent``) and the servers carry it out through this same code.
Nothing here talks to ZooKeeper or to a storage: tests build snapshots and
check actions and sentences.

The rules, in the order ``decide`` applies them:

* A server without a live ZooKeeper session changes nothing; a primary in
  that state stops accepting commits at once (FENCE).
* The server the state names primary becomes primary (PROMOTE), stops
  accepting commits while an intent would replace it (FENCE; ABANDON_INTENT
  of one that did not finish in time), and otherwise accepts
  commits again only after the controller re-read the state (UNFENCE; the
  write lease checks it once more on every renewal).
* Any other primary steps down and follows the named one (DEMOTE).
* A secondary follows the named primary's replication address (FOLLOW).
* An election (a promote intent; or, with automatic failover on and not
  paused, a primary that has been missing for the grace period) is held
  among *candidates*: secondaries of the current epoch that have followed
  the primary in it and have not diverged or stopped (for an operator's
  promotion, one that restarted since and could not follow yet counts).  Each says where it
  stands (STAND: its last tid, for this epoch); once every candidate has,
  all of them compute the same winner (``elect``: a named target, else the
  newest last tid, ties to the smallest name), and the winner alone writes
  the next epoch with a compare-and-set on the version it decided on
  (TAKE_OVER).  One election per epoch: the compare-and-set fails for
  anyone deciding on an older state, and the grace timer belongs to one
  primary in one epoch (the controller restarts it when either changes).
* In a switchover the named (or any) candidate takes over once it has
  every transaction up to the tid where the frozen primary stopped.
"""
import enum
from dataclasses import dataclass

from .layout import (CONNECTING, FOLLOWING, PRIMARY, PROMOTE, SECONDARY,
                     SWITCHOVER, ClusterState)


class Start(enum.Enum):
    BOOTSTRAP = "bootstrap"
    PRIMARY = "primary"
    SECONDARY = "secondary"


class Action(enum.Enum):
    NOTHING = "nothing"
    PROMOTE = "promote"               # the state names me: become primary
    DEMOTE = "demote"                 # another is named: step down
    FENCE = "fence"                   # stop accepting commits
    UNFENCE = "unfence"               # accept commits again (fresh read)
    FOLLOW = "follow"                 # replicate from the named primary
    STAND = "stand"                   # publish my position for an election
    TAKE_OVER = "take-over"           # compare-and-set: I am primary next
    ABANDON_INTENT = "abandon-intent"  # give up an unfinished switchover


HANDOVER_TIMEOUT = 30.0

# Replication states in which a secondary that followed in this epoch is
# still a candidate: when the primary dies its stream ends, and every
# secondary goes back to connecting.
CANDIDATE_STATES = (FOLLOWING, CONNECTING)


def decide_start(snapshot, me, may_bootstrap):
    """How a starting server named ``me`` should run."""
    state = snapshot.state
    if state.primary is None:
        if may_bootstrap:
            return Start.BOOTSTRAP, (
                f"{snapshot.path} names no primary: {me} claims the primary "
                "role (epoch 1)")
        return Start.SECONDARY, (f"{snapshot.path} names no primary and "
                                 f"bootstrap is off: {me} starts as a "
                                 "secondary and waits for a primary")
    if state.primary == me:
        return Start.PRIMARY, (f"{snapshot.path} names {me} primary in "
                               f"epoch {state.epoch}: starting as primary")
    return Start.SECONDARY, (f"{state.primary} is primary in epoch "
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
    last_tid: str = "0" * 16     # hex
    replication_state: str = None
    followed_epoch: int = None   # last epoch in which it was following
    position: tuple = None       # (epoch, last_tid) it published


def is_candidate(server, epoch, asked=False):
    """Whether a registered server may be elected in ``epoch``: a
    secondary of that epoch, not diverged, stopped or catching up, that
    has followed the primary in that epoch.  When an operator asked for a
    promotion (``asked``), one that has not (it restarted while the
    primary was down) may be elected too: the newest last tid still wins.
    """
    return (server.role == SECONDARY and server.epoch == epoch and
            server.replication_state in CANDIDATE_STATES and
            (asked or server.extra.get("followed_epoch") == epoch))


def _me_candidate(me, epoch, asked=False):
    return (me.role == SECONDARY and me.epoch == epoch and
            me.replication_state in CANDIDATE_STATES and
            (asked or me.followed_epoch == epoch))


def _asked(state):
    return state.intent is not None and state.intent.action == PROMOTE


def position(server):
    """(epoch, last tid hex) a server published for an election, or None."""
    value = server.extra.get("position")
    if isinstance(value, list) and len(value) == 2:
        return int(value[0]), str(value[1])
    return None


def elect(snapshot):
    """``(winner, sentence)`` of the election in the snapshot's epoch:
    winner is None while some candidate has not said where it stands, or
    when no server can win."""
    state = snapshot.state
    epoch = state.epoch
    asked = _asked(state)
    candidates = [s for s in snapshot.servers
                  if is_candidate(s, epoch, asked)]
    target = state.intent.to if state.intent is not None else None
    if target is not None:
        if target not in [c.name for c in candidates]:
            return None, (f"{target} is not a candidate (a live secondary "
                          f"that followed the primary in epoch {epoch}); "
                          "no election")
    if not candidates:
        return None, (f"no candidate for epoch {epoch + 1}: no live "
                      f"secondary followed the primary in epoch {epoch}")
    waiting = [c.name for c in candidates
               if position(c) is None or position(c)[0] != epoch]
    if waiting:
        return None, (f"waiting for {', '.join(waiting)} to say where "
                      f"{'it stands' if len(waiting) == 1 else 'they stand'}")
    if target is not None:
        return target, f"{target} was asked for"
    newest = max(position(c)[1] for c in candidates)
    winner = min(c.name for c in candidates if position(c)[1] == newest)
    return winner, f"{winner} is the most up-to-date candidate (at {newest})"


def decide(snapshot, me):
    """The one thing a running server should do now, and why."""
    state = snapshot.state
    intent = state.intent
    if not me.session_ok:
        if me.role == PRIMARY and not me.fenced:
            return Action.FENCE, (
                f"{me.name} lost its ZooKeeper session: it refuses commits "
                "until it knows it is still primary")
        return Action.NOTHING, f"{me.name} waits for ZooKeeper"
    if state.primary is None:
        return Action.NOTHING, f"{snapshot.path} names no primary"
    if state.primary == me.name:
        return _decide_named(snapshot, me)
    if me.role == PRIMARY:
        return Action.DEMOTE, (f"{state.primary} is primary in epoch "
                               f"{state.epoch}: {me.name} steps down and "
                               "follows it")
    if intent is not None and intent.action == SWITCHOVER:
        return _decide_switchover_target(snapshot, me)
    primary = snapshot.primary
    if intent is not None and intent.action == PROMOTE:
        if primary is not None and not intent.force:
            return Action.NOTHING, (
                f"promotion asked without force while {state.primary} is "
                "registered: waiting for it to go")
        return _decide_election(snapshot, me, "a promotion was asked for")
    if primary is None:
        if me.auto_failover is None:
            return Action.NOTHING, (f"primary {state.primary} is not "
                                    "registered; automatic failover is off")
        if state.paused:
            return Action.NOTHING, (f"primary {state.primary} is not "
                                    "registered; automatic failover is "
                                    "paused")
        if me.primary_gone_for < me.auto_failover:
            return Action.NOTHING, f"primary {state.primary} is not registered"
        return _decide_election(
            snapshot, me, f"primary {state.primary} has been gone for "
            f"{me.primary_gone_for:.1f}s")
    if primary.replication and primary.replication != me.following:
        return Action.FOLLOW, (f"{state.primary} (epoch {state.epoch}) "
                               "serves replication on "
                               f"{primary.replication}: {me.name} follows "
                               "it there")
    return Action.NOTHING, f"{me.name} follows {state.primary}"


def _decide_named(snapshot, me):
    state = snapshot.state
    intent = state.intent
    if me.role == SECONDARY:
        return Action.PROMOTE, (f"{snapshot.path} names {me.name} primary "
                                f"in epoch {state.epoch}: promoting it")
    if intent is not None:
        what = (f"switchover to {intent.to or 'a caught-up secondary'}"
                if intent.action == SWITCHOVER else
                f"promotion of {intent.to or 'the newest secondary'}")
        if not me.fenced:
            return Action.FENCE, f"{what}: {me.name} stops accepting commits"
        if me.fenced_for > HANDOVER_TIMEOUT:
            return Action.ABANDON_INTENT, (
                f"the {what} did not finish within {HANDOVER_TIMEOUT:.0f}s: "
                f"{me.name} stays primary and accepts commits again")
        return Action.NOTHING, f"{me.name} waits for the {what}"
    if me.fenced:
        return Action.UNFENCE, (f"{snapshot.path} names {me.name} primary "
                                f"in epoch {state.epoch}: accepting commits "
                                "again")
    return Action.NOTHING, f"{me.name} is primary"


def _decide_election(snapshot, me, why):
    epoch = snapshot.state.epoch
    if not _me_candidate(me, epoch, _asked(snapshot.state)):
        return Action.NOTHING, (f"{why}; {me.name} is not a candidate "
                                f"({_not_candidate_reason(me, epoch)})")
    if me.position != (epoch, me.last_tid):
        return Action.STAND, (f"{why}: {me.name} stands for epoch "
                              f"{epoch + 1} at {me.last_tid}")
    winner, sentence = elect(snapshot)
    if winner == me.name:
        return Action.TAKE_OVER, (f"{why}: {sentence}; {me.name} takes over "
                                  f"as primary in epoch {epoch + 1}")
    return Action.NOTHING, f"{why}: {sentence}"


def _not_candidate_reason(me, epoch):
    if me.role != SECONDARY:
        return "not a secondary"
    if me.epoch != epoch:
        return f"it is in epoch {me.epoch}"
    if me.replication_state not in CANDIDATE_STATES:
        return f"it is {me.replication_state or 'not replicating'}"
    return f"it has not caught up in epoch {epoch}"


def _decide_switchover_target(snapshot, me):
    state = snapshot.state
    target = state.intent.to
    if target is not None and target != me.name:
        return Action.NOTHING, f"switchover to {target}: {me.name} follows"
    primary = snapshot.primary
    frozen = primary.extra.get("frozen_tid") if primary else None
    if frozen is None:
        return Action.NOTHING, (f"switchover: waiting for {state.primary} "
                                "to stop accepting commits")
    if not (_me_candidate(me, state.epoch) and
            me.replication_state == FOLLOWING):
        return Action.NOTHING, (
            f"switchover: {me.name} is not a candidate "
            f"({_not_candidate_reason(me, state.epoch)})")
    if me.last_tid < frozen:
        return Action.NOTHING, (f"switchover: {me.name} catches up with "
                                f"{frozen} (at {me.last_tid})")
    return Action.TAKE_OVER, (f"switchover: {me.name} has every transaction "
                              f"up to {frozen}; it takes over as primary "
                              f"in epoch {state.epoch + 1}")
