"""The HA core's decisions, as tables of snapshots: no ZooKeeper, no mocks."""
import pytest

from zkzeo import ha
from zkzeo.discovery import Snapshot
from zkzeo.layout import (PROMOTE, SWITCHOVER, ClusterState, Intent,
                          ServerInfo)

A = ha.Action
T1, T2, T3 = "00000000000000a1", "00000000000000a2", "00000000000000a3"


def server(name, role="secondary", epoch=1, state="following", port=None,
           followed=1, position=None, writable=False, **extra):
    if followed is not None:
        extra["followed_epoch"] = followed
    if position is not None:
        extra["position"] = list(position)
    return ServerInfo(name, role, ("127.0.0.1", port or 9000 + int(name[1:])),
                      epoch, 1, f"127.0.0.1:{8000 + int(name[1:])}",
                      writable, None if role == "primary" else state, extra)


def primary(name="s1", epoch=1, writable=True, **extra):
    return server(name, "primary", epoch, followed=None, writable=writable,
                  **extra)


def snap(*servers, primary="s1", epoch=1, intent=None, paused=False):
    return Snapshot("/db", True, ClusterState(primary, epoch, intent, paused),
                    3, tuple(servers))


def me(name="s2", role="secondary", epoch=1, **kw):
    kw.setdefault("replication_state",
                  None if role == "primary" else "following")
    kw.setdefault("followed_epoch", None if role == "primary" else 1)
    kw.setdefault("following", "127.0.0.1:8001")
    return ha.Me(name=name, role=role, epoch=epoch, **kw)


CASES = [
    # (id, snapshot, me, action, words in the sentence)
    ("primary runs",
     snap(primary(), server("s2")), me("s1", "primary"), A.NOTHING,
     "s1 is primary"),
    ("a primary without a session fences at once",
     snap(primary(), server("s2")), me("s1", "primary", session_ok=False),
     A.FENCE, "lost its ZooKeeper session"),
    ("a fenced primary without a session waits",
     snap(primary()), me("s1", "primary", fenced=True, session_ok=False),
     A.NOTHING, "waits for ZooKeeper"),
    ("a secondary without a session never elects",
     snap(server("s2"), primary="s1"),
     me(session_ok=False, auto_failover=1.0, primary_gone_for=99),
     A.NOTHING, "waits for ZooKeeper"),
    ("a fenced primary the state still names unfences",
     snap(primary(writable=False)), me("s1", "primary", fenced=True),
     A.UNFENCE, "accepting commits again"),
    ("resumed after a pause: another is primary, it steps down",
     snap(primary("s2", 2), server("s1", epoch=1), epoch=2, primary="s2"),
     me("s1", "primary", 1), A.DEMOTE, "s2 is primary in epoch 2: s1 steps down"),
    ("resumed with a fresh session but fenced: still steps down",
     snap(primary("s2", 2), epoch=2, primary="s2"),
     me("s1", "primary", 1, fenced=True), A.DEMOTE, "steps down"),
    ("named secondary promotes itself",
     snap(server("s2"), primary="s2", epoch=2), me(), A.PROMOTE,
     "names s2 primary in epoch 2"),
    ("secondary follows the named primary",
     snap(primary(), server("s2")), me(following="127.0.0.1:1"), A.FOLLOW,
     "follows it there"),
    ("secondary already follows",
     snap(primary(), server("s2")), me(following="127.0.0.1:8001"),
     A.NOTHING, "s2 follows s1"),
    ("no primary named",
     snap(server("s2"), primary=None, epoch=0), me(), A.NOTHING,
     "names no primary"),
    ("primary gone, grace not over",
     snap(server("s2")), me(auto_failover=1.0, primary_gone_for=0.5),
     A.NOTHING, "not registered"),
    ("primary gone, failover off",
     snap(server("s2")), me(primary_gone_for=99), A.NOTHING,
     "automatic failover is off"),
    ("primary gone, failover paused",
     snap(server("s2"), paused=True), me(auto_failover=1.0,
                                         primary_gone_for=99),
     A.NOTHING, "paused"),
    ("primary gone: stand first",
     snap(server("s2"), server("s3")),
     me(auto_failover=1.0, primary_gone_for=2, last_tid=T2), A.STAND,
     "s2 stands for epoch 2 at " + T2),
    ("primary gone: wait for the other candidate's position",
     snap(server("s2", position=(1, T2)), server("s3")),
     me(auto_failover=1.0, primary_gone_for=2, last_tid=T2,
        position=(1, T2)), A.NOTHING, "waiting for s3"),
    ("primary gone: the newest wins",
     snap(server("s2", position=(1, T3)), server("s3", position=(1, T2))),
     me(auto_failover=1.0, primary_gone_for=2, last_tid=T3,
        position=(1, T3)), A.TAKE_OVER, "s2 takes over as primary in epoch 2"),
    ("primary gone: an older one does not take over",
     snap(server("s2", position=(1, T2)), server("s3", position=(1, T3))),
     me(auto_failover=1.0, primary_gone_for=2, last_tid=T2,
        position=(1, T2)), A.NOTHING, "s3 is the most up-to-date"),
    ("primary gone: a tie goes to the smallest name",
     snap(server("s2", position=(1, T2)), server("s3", position=(1, T2))),
     me("s3", auto_failover=1.0, primary_gone_for=2, last_tid=T2,
        position=(1, T2)), A.NOTHING, "s2 is the most up-to-date"),
    ("a stale position (older epoch) is waited for",
     snap(server("s2", position=(1, T2)), server("s3", position=(0, T3))),
     me(auto_failover=1.0, primary_gone_for=2, last_tid=T2,
        position=(1, T2)), A.NOTHING, "waiting for s3"),
    ("my tid moved since I stood: stand again",
     snap(server("s2", position=(1, T2))),
     me(auto_failover=1.0, primary_gone_for=2, last_tid=T3,
        position=(1, T2)), A.STAND, "stands for epoch 2 at " + T3),
    ("a diverged server is not a candidate",
     snap(server("s2", state="diverged")),
     me(auto_failover=1.0, primary_gone_for=2, replication_state="diverged"),
     A.NOTHING, "not a candidate (it is diverged)"),
    ("a stopped server (torn history) is not a candidate",
     snap(server("s2", state="stopped")),
     me(auto_failover=1.0, primary_gone_for=2, replication_state="stopped"),
     A.NOTHING, "it is stopped"),
    ("a server still catching up is not a candidate",
     snap(server("s2", state="catching-up")),
     me(auto_failover=1.0, primary_gone_for=2,
        replication_state="catching-up"), A.NOTHING, "catching-up"),
    ("one that never followed in this epoch is not elected automatically",
     snap(server("s2", followed=None)),
     me(auto_failover=1.0, primary_gone_for=2, followed_epoch=None),
     A.NOTHING, "has not caught up in epoch 1"),
    ("one of an older epoch is not a candidate",
     snap(server("s2", epoch=1), epoch=2),
     me(epoch=1, auto_failover=1.0, primary_gone_for=2),
     A.NOTHING, "it is in epoch 1"),
    ("a diverged server with the newest tid does not win",
     snap(server("s2", position=(1, T2)),
          server("s3", state="diverged", position=(1, T3))),
     me(auto_failover=1.0, primary_gone_for=2, last_tid=T2,
        position=(1, T2)), A.TAKE_OVER, "s2 is the most up-to-date"),
    ("asked promotion: the named target takes over",
     snap(server("s2", position=(1, T2)), server("s3", position=(1, T3)),
          intent=Intent(PROMOTE, "s2")),
     me(last_tid=T2, position=(1, T2)), A.TAKE_OVER, "s2 was asked for"),
    ("asked promotion: others do not",
     snap(server("s2", position=(1, T2)), server("s3", position=(1, T3)),
          intent=Intent(PROMOTE, "s2")),
     me("s3", last_tid=T3, position=(1, T3)), A.NOTHING, "s2 was asked for"),
    ("asked promotion of a restarted secondary is allowed",
     snap(server("s2", followed=None, position=(1, T2)),
          intent=Intent(PROMOTE)),
     me(followed_epoch=None, last_tid=T2, position=(1, T2)), A.TAKE_OVER,
     "takes over"),
    ("asked promotion without force waits while the primary is there",
     snap(primary(), server("s2"), intent=Intent(PROMOTE)), me(),
     A.NOTHING, "without force"),
    ("forced promotion: the live primary fences",
     snap(primary(), server("s2"), intent=Intent(PROMOTE, "s2", True)),
     me("s1", "primary"), A.FENCE, "stops accepting commits"),
    ("forced promotion: the secondary stands even with the primary there",
     snap(primary(), server("s2"), intent=Intent(PROMOTE, "s2", True)),
     me(last_tid=T2), A.STAND, "stands"),
    ("switchover: the primary fences",
     snap(primary(), server("s2"), intent=Intent(SWITCHOVER, "s2")),
     me("s1", "primary"), A.FENCE, "switchover to s2: s1 stops"),
    ("switchover: the frozen primary waits",
     snap(primary(), server("s2"), intent=Intent(SWITCHOVER, "s2")),
     me("s1", "primary", fenced=True, fenced_for=3), A.NOTHING,
     "waits for the switchover"),
    ("switchover that does not finish is abandoned",
     snap(primary(), server("s2"), intent=Intent(SWITCHOVER, "s2")),
     me("s1", "primary", fenced=True, fenced_for=31), A.ABANDON_INTENT,
     "did not finish"),
    ("a forced promotion that does not finish is abandoned too",
     snap(primary(), server("s2"), intent=Intent(PROMOTE, "s2", True)),
     me("s1", "primary", fenced=True, fenced_for=31), A.ABANDON_INTENT,
     "did not finish"),
    ("switchover: target waits for the frozen tid to be published",
     snap(primary(), server("s2"), intent=Intent(SWITCHOVER, "s2")),
     me(last_tid=T1), A.NOTHING, "waiting for s1 to stop"),
    ("switchover: target catches up",
     snap(primary(frozen_tid=T3), server("s2"),
          intent=Intent(SWITCHOVER, "s2")),
     me(last_tid=T2), A.NOTHING, "catches up"),
    ("switchover: target caught up takes over",
     snap(primary(frozen_tid=T3), server("s2"),
          intent=Intent(SWITCHOVER, "s2")),
     me(last_tid=T3), A.TAKE_OVER, "has every transaction up to " + T3),
    ("switchover to another: I only follow",
     snap(primary(frozen_tid=T3), server("s2"), server("s3"),
          intent=Intent(SWITCHOVER, "s3")),
     me(last_tid=T3), A.NOTHING, "switchover to s3"),
    ("switchover to any: a caught-up follower takes over",
     snap(primary(frozen_tid=T3), server("s2"), intent=Intent(SWITCHOVER)),
     me(last_tid=T3), A.TAKE_OVER, "takes over"),
    ("switchover: a target that only reconnects does not take over",
     snap(primary(frozen_tid=T3), server("s2", state="connecting"),
          intent=Intent(SWITCHOVER, "s2")),
     me(last_tid=T3, replication_state="connecting"), A.NOTHING,
     "not a candidate"),
]


@pytest.mark.parametrize("snapshot, me, action, words",
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decide(snapshot, me, action, words):
    got, sentence = ha.decide(snapshot, me)
    assert (got, words in sentence) == (action, True), sentence


def test_every_action_is_decided_somewhere():
    decided = {c[3] for c in CASES}
    assert decided == set(ha.Action)


def test_every_action_has_a_handler():
    from zkzeo.controller import ACTIONS
    assert set(ACTIONS) | {ha.Action.NOTHING} == set(ha.Action)


@pytest.mark.parametrize("state, me_name, may_bootstrap, start", [
    (ClusterState(), "s1", True, ha.Start.BOOTSTRAP),
    (ClusterState(), "s1", False, ha.Start.SECONDARY),
    (ClusterState("s1", 3), "s1", True, ha.Start.PRIMARY),
    (ClusterState("s2", 3), "s1", True, ha.Start.SECONDARY),
])
def test_decide_start(state, me_name, may_bootstrap, start):
    snapshot = Snapshot("/db", True, state, 0, ())
    assert ha.decide_start(snapshot, me_name, may_bootstrap)[0] is start


def test_elect_with_no_candidate_says_so():
    winner, sentence = ha.elect(snap(server("s2", state="diverged")))
    assert winner is None and "no candidate for epoch 2" in sentence


def test_elect_refuses_a_target_that_is_not_a_candidate():
    winner, sentence = ha.elect(snap(server("s2", state="catching-up"),
                                     intent=Intent(PROMOTE, "s2")))
    assert winner is None and "s2 is not a candidate" in sentence
