"""Pure logic: zkzeo URLs, node data, role decisions (no ZooKeeper)."""
import pytest

from zkzeo import ha
from zkzeo.discovery import Snapshot
from zkzeo.layout import (ClusterState, LayoutError, ServerInfo, parse_url,
                          parse_address)


@pytest.mark.parametrize("url, env, expected", [
    ("zk://zk1:2181,zk2:2181/databases/main", {},
     ("zk1:2181,zk2:2181", "/databases/main")),
    ("zkzeo://zk1:2181/db", {}, ("zk1:2181", "/db")),
    ("zk:/databases/main", {"ZOOKEEPER": "zk9:2182"},
     ("zk9:2182", "/databases/main")),
    ("zk:/databases/main", {}, ("127.0.0.1:2181", "/databases/main")),
    ("zk://127.0.0.1:2181/a/b?read_only=1", {}, ("127.0.0.1:2181", "/a/b")),
])
def test_urls(url, env, expected):
    assert parse_url(url, env) == expected


@pytest.mark.parametrize("url, complaint", [
    ("zeo://127.0.0.1:8100", "expected zk://"),
    ("zk://", "no ZooKeeper hosts"),
    ("zk://zk1:2181", "name the database's node"),
    ("zk://zk1:2181/", "name the database's node"),
    ("zk:databases/main", "must start with /"),
    ("zk://zk 1:2181/db", "bad ZooKeeper host list"),
    ("zk://zk1:2181/db/../x", "bad ZooKeeper path"),
    (None, "is a string"),
])
def test_bad_urls_say_what_is_wrong(url, complaint):
    with pytest.raises(LayoutError, match=complaint):
        parse_url(url, {})


def test_server_info_round_trip_and_bad_nodes():
    info = ServerInfo("s1", "primary", ("10.0.0.1", 8100), 3, 42,
                      "10.0.0.1:8101")
    assert ServerInfo.from_node("10.0.0.1:8100", info.to_bytes()) == info
    assert ServerInfo.from_node("[::1]:8100", info.to_bytes()).address == \
        ("::1", 8100)
    for child, data, complaint in [
            ("not-an-address", info.to_bytes(), "not HOST:PORT"),
            ("h:99999", info.to_bytes(), "not HOST:PORT"),
            ("h:1", b'{"pid": 12}', "no zkzeo data"),
            ("h:1", b"", "no zkzeo data"),
            ("h:1", b"\xff", "no zkzeo data"),
            ("h:1", b'{"name": "x", "role": "boss"}', "unknown role")]:
        with pytest.raises(LayoutError, match=complaint):
            ServerInfo.from_node(child, data)
    assert parse_address("host.example:1") == ("host.example", 1)


def test_cluster_state():
    assert ClusterState.from_bytes(b"") == ClusterState()
    state = ClusterState("s1", 7)
    assert ClusterState.from_bytes(state.to_bytes()) == state
    with pytest.raises(LayoutError, match="not zkzeo's cluster state"):
        ClusterState.from_bytes(b"hello")


def snapshot(primary=None, epoch=0, servers=()):
    return Snapshot("/db", True, ClusterState(primary, epoch), 0,
                    tuple(servers))


def test_start_decisions_read_as_sentences():
    assert ha.decide_start(snapshot(), "s1", True) == (
        ha.Start.BOOTSTRAP, "/db names no primary: s1 claims the primary role "
        "(epoch 1)")
    assert ha.decide_start(snapshot(), "s1", False)[0] is ha.Start.SECONDARY
    assert ha.decide_start(snapshot("s1", 4), "s1", True) == (
        ha.Start.PRIMARY, "/db names s1 primary in epoch 4: starting as "
        "primary")
    assert ha.decide_start(snapshot("s1", 4), "s2", True) == (
        ha.Start.SECONDARY, "s1 is primary in epoch 4: s2 starts as its "
        "secondary")


