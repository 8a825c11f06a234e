"""zkzeo check and zkzeo metrics against real servers: a killed secondary
and a lagging one are reported."""
import re


from tests.support import wait_for
from tests.zk_servers import Tree
from zkzeo import cli
from zkzeo.discovery import Snapshot
from zkzeo.layout import ClusterState
from zkzeo.monitoring import CRITICAL, OK, WARNING, evaluate






def check(url, *options, capsys):
    status = cli.main(["check", url, *options])
    return status, capsys.readouterr().out


def test_check_reports_a_killed_secondary(cluster, zk_url, zk_path,
                                          zookeeper, capsys):
    cluster("s1")
    s2 = cluster("s2")
    cluster("s3")
    tree = Tree(zookeeper.address, zk_path)
    wait_for(lambda: [v.get("replication_state") for v in
                      tree.by_name().values()].count("following") == 2,
             "both secondaries to follow")
    tree.close()
    status, out = check(zk_url, "--secondaries-warning", "2", capsys=capsys)
    assert status == OK, out
    assert out.startswith("ZKZEO OK - primary s1, epoch 1, 2 secondaries")
    assert "secondaries=2;2;0;0" in out
    metrics = cli.main(["metrics", zk_url, "--once"])
    assert metrics == 0
    text = capsys.readouterr().out
    assert re.search(r'zkzeo_primary\{.*name="s1".*\} 1', text)
    assert re.search(r'zkzeo_up\{.*name="s2".*\} 1', text)
    assert re.search(r'zkzeo_secondaries\{.*\} 2', text)
    assert re.search(r'zkzeo_commits_total\{.*name="s1".*\} \d+', text)
    s2.kill()
    tree = Tree(zookeeper.address, zk_path)
    wait_for(lambda: "s2" not in tree.by_name(), "s2's node to expire")
    tree.close()
    status, out = check(zk_url, "--secondaries-warning", "2", capsys=capsys)
    assert status == WARNING, out
    assert "1 live secondaries (warning below 2)" in out


def test_check_reports_a_lagging_secondary_and_a_missing_primary():
    def row(name, role, lag, reachable=True):
        return {"name": name, "role": role, "reachable": reachable,
                "lag_seconds": lag,
                "state": "accepting commits" if role == "primary"
                else "following"}
    snap = Snapshot("/db", True, ClusterState("s1", 4), 0, ())
    rows = [row("s1", "primary", 0.0), row("s2", "secondary", 7.5),
            row("s3", "secondary", 0.2)]
    status, summary, perf = evaluate(snap, rows, 5, 60, 1, 0)
    assert status == WARNING and summary == "s2 is 7.5s behind"
    assert "lag_s2=7.500s;5;60;0" in perf
    rows[1]["lag_seconds"] = 90.0
    assert evaluate(snap, rows, 5, 60, 1, 0)[:2] == (
        CRITICAL, "s2 is 90.0s behind")
    status, summary, _ = evaluate(snap, rows[1:], 5, 60, 1, 0)
    assert status == CRITICAL
    assert summary.startswith("primary s1 is not registered")


def test_check_unknown_when_zookeeper_is_unreachable(capsys):
    from zkzeo.zkserver import free_port
    status = cli.main(["check", f"zk://127.0.0.1:{free_port()}/db"])
    assert status == 3
    assert capsys.readouterr().out.startswith("ZKZEO UNKNOWN - could not "
                                              "reach ZooKeeper")


def test_check_and_metrics_report_a_diverged_secondary(
        cluster, tree, zk_url, tmp_path, capsys):
    # A diverged old primary keeps serving its old data: a secondary that
    # is registered and answers, but does not replicate: CRITICAL, never
    # "OK, lag 0".
    from tests.test_failover import lossy_failover
    s1, s2, cache, lost = lossy_failover(cluster, tree, zk_url, tmp_path,
                                         capsys)
    s1.start()
    wait_for(lambda: "divergent history" in s1.output(),
             "the old primary to stop as a diverged secondary")
    wait_for(lambda: tree.by_name()["s1"]["replication_state"] ==
             "diverged", "s1 to say it diverged")
    import zkzeo
    db = zkzeo.DB(zk_url, wait_timeout=60)
    with db.transaction() as conn:
        conn.root.after = 1
    db.close()
    status, out = check(zk_url, "--lag-warning", "0.5", "--lag-critical",
                        "600", capsys=capsys)
    assert status == CRITICAL, out
    assert "secondary s1 is diverged: it does not replicate" in out
    assert cli.main(["status", zk_url]) == 0
    assert "WARNING: s1 is diverged" in capsys.readouterr().out
    assert cli.main(["metrics", zk_url, "--once"]) == 0
    text = capsys.readouterr().out
    lag = float(re.search(r'zkzeo_lag_seconds\{[^}]*name="s1"[^}]*\} '
                          r'([0-9.]+)', text).group(1))
    assert lag >= 0.5
