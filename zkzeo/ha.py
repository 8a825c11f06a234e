"""Role decisions: pure functions from a cluster snapshot to an action.

Each returns ``(action, sentence)``; the caller performs the action (with
compare-and-set writes) and logs the sentence.  Tests build snapshots and
check the sentences; nothing here talks to ZooKeeper.
"""
from .layout import ClusterState

BOOTSTRAP = "bootstrap"
RUN_PRIMARY = "primary"
RUN_SECONDARY = "secondary"


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
