"""Client routing, a pure function: snapshots in, addresses and a sentence
out (no ZooKeeper, no mocks)."""
import pytest

from zkzeo.discovery import Snapshot
from zkzeo.layout import (CATCHING_UP, CONNECTING, DIVERGED, FOLLOWING,
                          STOPPED, ClusterState, ServerInfo)
from zkzeo.routing import (FALLBACK, READ, WRITE, Connection, Route, route,
                           writable_primary)

A1, A2, A3, A4 = ("h", 1), ("h", 2), ("h", 3), ("h", 4)


def primary(name, address, epoch=3, writable=True):
    return ServerInfo(name, "primary", address, epoch, writable=writable)


def secondary(name, address, state=FOLLOWING, epoch=3):
    return ServerInfo(name, "secondary", address, epoch,
                      replication_state=state)


def snap(named, epoch, *servers):
    return Snapshot("/db", True, ClusterState(named, epoch), 5,
                    tuple(sorted(servers, key=lambda s: s.address)))


HEALTHY = snap("s1", 3, primary("s1", A1), secondary("s2", A2),
               secondary("s3", A3))
FENCED = snap("s1", 3, primary("s1", A1, writable=False),
              secondary("s2", A2), secondary("s3", A3))
OLD_EPOCH = snap("s1", 4, primary("s1", A1, epoch=3), secondary("s2", A2))
# s2 was just named primary; s1, hung, still says it is primary (epoch 3)
PROMOTING = snap("s2", 4, primary("s1", A1, epoch=3),
                 secondary("s2", A2, CONNECTING), secondary("s3", A3))
PROMOTED = snap("s2", 4, primary("s1", A1, epoch=3), primary("s2", A2, 4),
                secondary("s3", A3, CONNECTING))
# s1's node is gone, s2 is named but is not yet primary
REPLACED = snap("s2", 4, secondary("s2", A2, CONNECTING))
NO_STATE = snap(None, 0, secondary("s2", A2), secondary("s3", A3))
GONE = snap("s1", 3, secondary("s2", A2), secondary("s3", A3))
# the primary died: its secondaries lost their stream
ORPHANS = snap("s1", 3, secondary("s2", A2, CONNECTING),
               secondary("s3", A3, CATCHING_UP),
               secondary("s4", A4, DIVERGED))
DEAD_PRIMARY = snap("s1", 3, primary("s1", A1),
                    secondary("s2", A2, CONNECTING))
LAGGING = snap("s1", 3, primary("s1", A1), secondary("s2", A2, CATCHING_UP),
               secondary("s3", A3, CONNECTING), secondary("s4", A4, STOPPED))
EMPTY = Snapshot("/db")

RO = {a: Connection(a, True) for a in (A1, A2, A3, A4)}
RW = {a: Connection(a, False) for a in (A1, A2, A3, A4)}

TABLE = [
    # (snapshot, mode, current, lost) -> (addresses, leave, upgrade, sentence)
    (HEALTHY, WRITE, None, None, (A1,), False, False,
     "write client: s1 is the writable primary: s1"),
    (HEALTHY, FALLBACK, None, None, (A1,), False, False,
     "fallback client: s1 is the writable primary: s1"),
    (HEALTHY, READ, None, None, (A2, A3), False, False,
     "read-only client: following secondaries: s2, s3"),
    (HEALTHY, WRITE, RW[A1], None, (A1,), False, False,
     "write client: s1 is the writable primary: s1"),
    (HEALTHY, READ, RO[A1], None, (A2, A3), False, False,
     "read-only client: following secondaries: s2, s3"),
    # a fallback client that lost the primary also tries the secondaries
    (HEALTHY, FALLBACK, None, A1, (A1, A2, A3), False, False,
     "fallback client: the connection to s1 was lost: s1 and following "
     "secondaries: s1, s2, s3"),
    (DEAD_PRIMARY, FALLBACK, None, A1, (A1, A2), False, False,
     "fallback client: the connection to s1 was lost: s1 and no server "
     "follows: secondaries not following yet: s1, s2"),
    (HEALTHY, FALLBACK, None, A2, (A1,), False, False,
     "fallback client: s1 is the writable primary: s1"),
    # connected read-only while a primary accepts writes: try it
    (HEALTHY, FALLBACK, RO[A2], A1, (A1, A2, A3), False, True,
     "fallback client connected read-only while s1 accepts writes in "
     "epoch 3: trying s1, s2, s3"),
    (PROMOTED, FALLBACK, RO[A2], None, (A2,), False, True,
     "fallback client connected read-only while s2 accepts writes in "
     "epoch 4: trying s2"),
    # a primary that does not accept writes gets no clients
    (FENCED, WRITE, None, None, (), False, False,
     "write client: primary s1 (epoch 3) does not accept writes: "
     "no server"),
    (FENCED, FALLBACK, None, None, (A2, A3), False, False,
     "fallback client: primary s1 (epoch 3) does not accept writes; "
     "following secondaries: s2, s3"),
    (FENCED, READ, None, None, (A2, A3), False, False,
     "read-only client: following secondaries: s2, s3"),
    (FENCED, FALLBACK, RO[A2], None, (A2, A3), False, False,
     "fallback client: primary s1 (epoch 3) does not accept writes; "
     "following secondaries: s2, s3"),
    # ...but a writable connection to it stays (the server fences itself)
    (FENCED, WRITE, RW[A1], None, (), False, False,
     "write client: primary s1 (epoch 3) does not accept writes: "
     "no server"),
    (OLD_EPOCH, WRITE, None, None, (), False, False,
     "write client: primary s1 (epoch 4) does not accept writes: "
     "no server"),
    # a hung primary replaced: leave it
    (PROMOTING, WRITE, RW[A1], None, (), True, False,
     "write client: s1 is no longer primary (s2 is, epoch 4): leaving it; "
     "primary s2 (epoch 4) does not accept writes: no server"),
    (PROMOTING, FALLBACK, RW[A1], None, (A3,), True, False,
     "fallback client: s1 is no longer primary (s2 is, epoch 4): leaving "
     "it; primary s2 (epoch 4) does not accept writes; following "
     "secondaries: s3"),
    (PROMOTED, WRITE, RW[A1], None, (A2,), True, False,
     "write client: s1 is no longer primary (s2 is, epoch 4): leaving it; "
     "s2 is the writable primary: s2"),
    (PROMOTED, READ, RO[A1], None, (A2,), True, False,
     "read-only client: s1 is no longer primary (s2 is, epoch 4): leaving "
     "it; no secondary follows: s2"),
    (PROMOTED, READ, RO[A2], None, (A2,), False, False,
     "read-only client: no secondary follows: s2"),
    # a node gone (re-created, or its session expired) is not a new primary
    (GONE, WRITE, RW[A1], None, (), False, False,
     "write client: primary s1 (epoch 3) is not registered: no server"),
    (REPLACED, WRITE, RW[A1], None, (), True, False,
     "write client: h:1 is no longer primary (s2 is, epoch 4): leaving it; "
     "primary s2 (epoch 4) does not accept writes: no server"),
    (GONE, READ, RO[A1], None, (A2, A3), True, False,
     "read-only client: h:1 is no longer registered: leaving it; following "
     "secondaries: s2, s3"),
    (GONE, FALLBACK, None, None, (A2, A3), False, False,
     "fallback client: primary s1 (epoch 3) is not registered; following "
     "secondaries: s2, s3"),
    (NO_STATE, WRITE, None, None, (), False, False,
     "write client: the cluster state names no primary: no server"),
    (NO_STATE, READ, None, None, (A2, A3), False, False,
     "read-only client: following secondaries: s2, s3"),
    (EMPTY, WRITE, None, None, (), False, False,
     "write client: the cluster state names no primary: no server"),
    (EMPTY, READ, None, None, (), False, False,
     "read-only client: the cluster state names no primary; no server "
     "follows: no server"),
    # secondaries that do not follow get no clients...
    (LAGGING, READ, None, None, (A1,), False, False,
     "read-only client: no secondary follows: s1"),
    (LAGGING, FALLBACK, None, None, (A1,), False, False,
     "fallback client: s1 is the writable primary: s1"),
    (LAGGING, READ, RO[A2], None, (A1,), False, False,
     "read-only client: no secondary follows: s1"),
    (LAGGING, READ, RO[A4], None, (A1,), True, False,
     "read-only client: s4 has stopped: leaving it; no secondary follows: "
     "s1"),
    # ...unless nothing else can serve reads (never diverged ones)
    (ORPHANS, READ, None, None, (A2, A3), False, False,
     "read-only client: primary s1 (epoch 3) is not registered; no server "
     "follows: secondaries not following yet: s2, s3"),
    (ORPHANS, FALLBACK, None, None, (A2, A3), False, False,
     "fallback client: primary s1 (epoch 3) is not registered; no server "
     "follows: secondaries not following yet: s2, s3"),
    (ORPHANS, WRITE, None, None, (), False, False,
     "write client: primary s1 (epoch 3) is not registered: no server"),
    (ORPHANS, READ, RO[A4], None, (A2, A3), True, False,
     "read-only client: s4 has diverged: leaving it; primary s1 (epoch 3) "
     "is not registered; no server follows: secondaries not following "
     "yet: s2, s3"),
]


@pytest.mark.parametrize(
    "snapshot, mode, current, lost, addresses, leave, upgrade, sentence",
    TABLE)
def test_route(snapshot, mode, current, lost, addresses, leave, upgrade,
               sentence):
    assert route(snapshot, mode, current, lost) == Route(
        addresses, sentence, leave, upgrade)


def test_writable_primary_needs_name_role_epoch_and_writable():
    assert writable_primary(HEALTHY).name == "s1"
    for snapshot in (FENCED, OLD_EPOCH, PROMOTING, GONE, NO_STATE, EMPTY):
        assert writable_primary(snapshot) is None
    assert writable_primary(PROMOTED).name == "s2"


def test_snapshot_addresses_are_routing_for_a_new_client():
    assert HEALTHY.addresses(WRITE) == [A1]
    assert HEALTHY.addresses(FALLBACK) == [A1]
    assert HEALTHY.addresses(READ) == [A2, A3]
    assert GONE.addresses(WRITE) == []      # waits for a writable primary


def test_unknown_mode():
    with pytest.raises(ValueError, match="unknown client mode 'rw'"):
        route(HEALTHY, "rw")
