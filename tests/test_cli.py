"""The operator's command: version and help, wrong paths, confirmation of
the transitions that can lose data or interrupt writers, and history;
against the real ZooKeeper (and real servers where a transition runs)."""
import argparse
import io
import json

import pytest
from kazoo.client import KazooClient

from tests.support import wait_for
from zkzeo import cli, history
from zkzeo.layout import ClusterState


def run(*argv, capsys):
    try:
        status = cli.main(list(argv))
    except SystemExit as e:            # argparse's way out
        status = e.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture
def kazoo(zookeeper):
    client = KazooClient(hosts=zookeeper.address, timeout=5)
    client.start(timeout=30)
    yield client
    client.stop()
    client.close()


def test_version_and_defaults_in_help(capsys):
    status, out, _ = run("--version", capsys=capsys)
    assert status == 0 and out.startswith("zkzeo ")
    p = cli.parser()
    [sub] = [a for a in p._actions
             if isinstance(a, argparse._SubParsersAction)]
    assert set(sub.choices) >= {"status", "history", "promote", "switchover",
                                "pause", "resume", "check", "metrics"}
    for name, command in sub.choices.items():
        assert command.formatter_class is \
            argparse.ArgumentDefaultsHelpFormatter, name
        for action in command._actions:
            assert action.help, (name, action.dest)
        text = command.format_help()
        for action in command._actions:
            if action.option_strings and action.default not in (
                    None, argparse.SUPPRESS):
                assert f"(default: {action.default})" in \
                    " ".join(text.split()), (name, action.dest)


def test_usage_errors(capsys):
    assert run("status", capsys=capsys)[0] == 2
    assert run("status", "zk:/db", "--bogus", capsys=capsys)[0] == 2
    assert run("check", "zk:/db", "--bogus", capsys=capsys)[0] == 3
    status, out, _ = run("status", "zk:db", capsys=capsys)
    assert status == 2


def test_a_path_without_a_cluster_is_an_error(zookeeper, kazoo, zk_path,
                                              capsys):
    url = f"zk://{zookeeper.address}{zk_path}"
    for command in ("status", "history", "pause", "promote", "switchover"):
        status, out, err = run(command, url, capsys=capsys)
        assert status == 1, (command, out, err)
        assert f"{zk_path} holds no zkzeo cluster: there is no such node" \
            in err, (command, err)
        assert "primary (none)" not in out
    status, out, _ = run("check", url, capsys=capsys)
    assert status == 3 and out.startswith("ZKZEO UNKNOWN - ")
    assert "holds no zkzeo cluster" in out
    kazoo.ensure_path(zk_path)           # a node, but nobody ever used it
    status, out, err = run("status", url, "--json", capsys=capsys)
    assert status == 1
    assert "no cluster state, and no server is registered" in err


def test_history_is_kept_beside_the_servers(zookeeper, kazoo, zk_path,
                                            capsys):
    url = f"zk://{zookeeper.address}{zk_path}"
    first = ClusterState("s1", 1)
    kazoo.create(zk_path, first.to_bytes(), makepath=True)
    # A cluster older than its history shows its current epoch anyway.
    status, out, _ = run("history", url, capsys=capsys)
    assert status == 0
    assert out.split("\n")[1].split() == ["1", "s1", "(not", "recorded)", "-"]
    assert history.record(kazoo, zk_path, None, first, now=1000.0)
    second = first.next_primary("s2")
    kazoo.set(zk_path, second.to_bytes())
    assert history.record(kazoo, zk_path, first, second, now=2000.5)
    assert not history.record(kazoo, zk_path, first, second)  # once
    third = second.next_primary("s1")
    history.record_later(kazoo, zk_path, second, third).join(30)
    assert [e["epoch"] for e in history.read(kazoo, zk_path)] == [1, 2, 3]
    kazoo.set(zk_path, third.to_bytes())
    # The children of the path stay exactly the servers' nodes.
    assert kazoo.get_children(zk_path) == []
    status, out, _ = run("history", url, capsys=capsys)
    assert status == 0
    lines = out.strip().split("\n")
    assert lines[0].split() == ["EPOCH", "PRIMARY", "SINCE", "(UTC)", "AFTER"]
    assert lines[1].split() == ["1", "s1", "1970-01-01", "00:16:40.000", "-"]
    assert lines[2].split() == ["2", "s2", "1970-01-01", "00:33:20.500",
                                "s1"]
    status, out, _ = run("history", url, "--json", capsys=capsys)
    value = json.loads(out)
    assert value["epoch"] == 3
    assert [(e["epoch"], e["primary"], e["since"], e["previous"])
            for e in value["epochs"]][:2] == [(1, "s1", 1000.0, None),
                                              (2, "s2", 2000.5, "s1")]
    assert value["epochs"][2]["primary"] == "s1"
    kazoo.set(history.history_path(zk_path), b"not json")
    assert run("history", url, capsys=capsys)[0] == 0   # never in the way


class Terminal(io.StringIO):
    """Standard input as an operator at a terminal types it."""

    def isatty(self):
        return True


def test_confirmation_before_switchover_and_forced_promotion(
        cluster, tree, zk_url, capsys, monkeypatch):
    cluster("s1")
    cluster("s2")
    wait_for(lambda: tree.by_name()["s2"]["replication_state"] ==
             "following", "s2 to follow")
    before = tree.state()
    # No terminal, no --yes: an error that says what to do.
    for argv in (["switchover", zk_url],
                 ["promote", zk_url, "--force", "--to", "s2"]):
        status, out, err = run(*argv, capsys=capsys)
        assert status == 1, (argv, out, err)
        assert "pass --yes to go ahead" in err
        assert tree.state() == before
    # At a terminal, anything but yes changes nothing.
    monkeypatch.setattr("sys.stdin", Terminal("n\n"))
    status, out, err = run("switchover", zk_url, "--to", "s2", capsys=capsys)
    assert status == 1 and "not confirmed; nothing was changed" in err
    assert "Switch the primary of" in out and "[y/N]" in out
    assert tree.state() == before
    # Yes: it goes ahead and reports its progress as before.
    monkeypatch.setattr("sys.stdin", Terminal("y\n"))
    status, out, err = run("switchover", zk_url, "--to", "s2", capsys=capsys)
    assert status == 0, out + err
    assert "asking s1 to hand over to s2" in out
    assert "s2 is primary and accepts writes" in out
    status, out, _ = run("history", zk_url, "--json", capsys=capsys)
    assert json.loads(out)["epochs"][-1]["primary"] == "s2"

    def recorded():
        _, out, _ = run("history", zk_url, "--json", capsys=capsys)
        return [e["recorded"] for e in json.loads(out)["epochs"]]
    wait_for(lambda: all(recorded()), "both servers to record their epochs")
