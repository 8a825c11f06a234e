"""zkzeo check (a Nagios plugin) and zkzeo metrics (a Prometheus exporter)
against real servers and a real ZooKeeper: killed, hung, lagging and
diverged servers are reported, and both answer in bounded time when
ZooKeeper or a server hangs."""
import json
import re
import signal
import time
import urllib.request

from prometheus_client.openmetrics.parser import \
    text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import \
    text_string_to_metric_families as prometheus_families

from tests.support import wait_for
from zkzeo import cli
from zkzeo.discovery import Snapshot
from zkzeo.layout import ClusterState
from zkzeo.monitoring import (CRITICAL, OK, UNKNOWN, WARNING, Pictures,
                              evaluate, registry, start_exporter)
from zkzeo.zkserver import ZooKeeperServer, free_port


def check(url, *options, capsys):
    try:
        status = cli.main(["check", url, *options])
    except SystemExit as e:            # argparse's way out
        status = e.code
    return status, capsys.readouterr().out


def samples(families, name):
    """{server name (or path): value} of the samples called ``name``."""
    return {s.labels.get("name", s.labels.get("path")): s.value
            for f in families for s in f.samples if s.name == name}


def scrape(address, openmetrics=True):
    request = urllib.request.Request(f"http://{address[0]}:{address[1]}"
                                     "/metrics")
    if openmetrics:
        request.add_header("Accept", "application/openmetrics-text; "
                           "version=1.0.0")
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.headers["Content-Type"], response.read().decode()


def all_following(tree, *names):
    servers = tree.by_name()
    return all(servers.get(n, {}).get("replication_state") == "following"
               for n in names)


def test_check_and_metrics_report_a_killed_secondary(
        cluster, tree, zk_url, zk_path, zookeeper, capsys):
    import zkzeo
    cluster("s1")
    s2 = cluster("s2")
    cluster("s3")
    db = zkzeo.DB(zk_url, wait_timeout=60)
    with db.transaction() as conn:
        conn.root.x = 1
    db.close()
    wait_for(lambda: all_following(tree, "s2", "s3"), "s2 and s3 to follow")
    status, out = check(zk_url, "--min-secondaries", "2",
                        "--secondaries-warning", "2", capsys=capsys)
    assert status == OK, out
    assert out.startswith("ZKZEO OK - primary s1, epoch 1, 2 secondaries")
    # Nagios range syntax: alert below 2 ("2:"), above 5 s ("5").
    assert "secondaries=2;2:;2:;0;" in out
    assert re.search(r"lag_s2=\d+\.\d{3}s;5;60;0; ", out)

    c = cli.Cluster(zk_url)
    try:
        server, thread = start_exporter(c, "127.0.0.1", 0, 10.0,
                                        min_secondaries=2)
        try:
            content_type, text = scrape(server.server_address)
        finally:
            server.shutdown()
            server.server_close()
    finally:
        c.close()
    assert content_type.startswith("application/openmetrics-text")
    families = list(openmetrics_families(text))       # the parser accepts it
    names = [f.name for f in families]
    assert len(names) == len(set(names)), "families are grouped"
    assert samples(families, "zkzeo_zookeeper_up") == {zk_path: 1}
    assert samples(families, "zkzeo_primary") == {"s1": 1, "s2": 0, "s3": 0}
    assert samples(families, "zkzeo_up") == {"s1": 1, "s2": 1, "s3": 1}
    assert samples(families, "zkzeo_secondaries") == {zk_path: 2}
    assert samples(families, "zkzeo_commits_total")["s1"] >= 1
    assert set(samples(families, "zkzeo_loads_total")) == {"s1", "s2", "s3"}
    following = {s.labels["name"] for f in families for s in f.samples
                 if s.name == "zkzeo_replication_state" and s.value == 1}
    assert following == {"s2", "s3"}
    for f in families:
        for s in f.samples:
            # Stable labels: the OS-chosen port is only in the info metric.
            assert "address" not in s.labels or \
                s.name == "zkzeo_server_info", s

    s2.kill()
    wait_for(lambda: "s2" not in tree.by_name(), "s2's node to expire")
    status, out = check(zk_url, "--min-secondaries", "2", capsys=capsys)
    assert status == CRITICAL, out
    assert "1 of 2 expected secondaries missing (not registered)" in out
    assert cli.main(["metrics", zk_url, "--once", "--min-secondaries",
                     "2"]) == 0
    families = list(prometheus_families(capsys.readouterr().out))
    assert samples(families, "zkzeo_secondaries_missing") == {zk_path: 1}
    assert "s2" not in samples(families, "zkzeo_up")
    assert cli.main(["status", zk_url, "--min-secondaries", "2"]) == 0
    assert "WARNING: 1 of 2 expected secondaries are not registered" in \
        capsys.readouterr().out
    status, out = check(zk_url, "--secondaries-warning", "2", capsys=capsys)
    assert status == WARNING, out        # the old options keep working
    assert "1 live secondaries (warning below 2)" in out


def test_check_table():
    def row(name, role, lag, reachable=True, state=None):
        return {"name": name, "role": role, "reachable": reachable,
                "lag_seconds": lag,
                "state": state or ("accepting commits" if role == "primary"
                                   else "following")}
    snap = Snapshot("/db", True, ClusterState("s1", 4), 0, ())
    rows = [row("s1", "primary", 0.0), row("s2", "secondary", 7.5),
            row("s3", "secondary", 0.2)]
    status, summary, perf = evaluate(snap, rows, 5, 60, 1, 0)
    assert status == WARNING and summary == "s2 is 7.5s behind"
    assert "lag_s2=7.500s;5;60;0;" in perf
    assert "secondaries=2;1:;0:;0;" in perf
    rows[1]["lag_seconds"] = 90.0
    assert evaluate(snap, rows, 5, 60, 1, 0)[:2] == (
        CRITICAL, "s2 is 90.0s behind")
    status, summary, _ = evaluate(snap, rows[1:], 5, 60, 1, 0)
    assert status == CRITICAL
    assert summary.startswith("primary s1 is not registered")
    # What each secondary says of itself, and how many are expected.
    table = [
        (("following", "following"), 2, OK, None),
        (("following", "catching-up"), 0, WARNING, "s3 is catching-up"),
        (("following", "connecting"), 0, WARNING, "s3 is connecting"),
        (("following", "diverged"), 0, CRITICAL,
         "s3 is diverged: it does not replicate"),
        (("following", "stopped"), 0, CRITICAL,
         "s3 is stopped: it does not replicate"),
        (("following", "following"), 3, CRITICAL,
         "1 of 3 expected secondaries missing"),
        (("following", "catching-up"), 2, CRITICAL,
         "1 live secondaries (critical below 2)"),
    ]
    for states, expected, status, sentence in table:
        rows = [row("s1", "primary", 0.0),
                row("s2", "secondary", 0.0, state=states[0]),
                row("s3", "secondary", 0.0, state=states[1])]
        got, summary, perf = evaluate(snap, rows, 5, 60, 1, 0, expected)
        assert got == status, (states, expected, summary)
        if sentence:
            assert sentence in summary, (states, expected, summary)


def test_check_usage_errors_are_unknown(capsys):
    assert check("zk:/db", "--no-such-option", capsys=capsys)[0] == UNKNOWN
    assert check("zk:/db", "-t", "soon", capsys=capsys)[0] == UNKNOWN
    status, out = check("zk:/db", "--lag-warning", capsys=capsys)
    assert status == UNKNOWN and out.startswith("ZKZEO UNKNOWN - usage")
    status, out = check("zkk:/db", capsys=capsys)
    assert status == UNKNOWN and "bad zkzeo URL" in out


def test_check_answers_within_its_timeout_when_zookeeper_is_down(capsys):
    start = time.monotonic()
    status, out = check(f"zk://127.0.0.1:{free_port()}/db", "-t", "3",
                        capsys=capsys)
    assert time.monotonic() - start < 3
    assert status == UNKNOWN
    assert out.startswith("ZKZEO UNKNOWN - could not reach ZooKeeper")


def test_check_answers_within_its_timeout_when_a_server_hangs(
        cluster, zk_url, capsys):
    cluster("s1")
    s2 = cluster("s2")
    s2.pause()                      # SIGSTOP: it accepts TCP, never answers
    start = time.monotonic()
    status, out = check(zk_url, "-t", "4", capsys=capsys)
    assert time.monotonic() - start < 4
    # Registered but silent, or already expired: no live secondary.
    assert status == WARNING, out
    assert "0 live secondaries" in out or "s2 does not answer" in out


def test_check_json(cluster, tree, zk_url, capsys):
    cluster("s1")
    wait_for(lambda: tree.by_name()["s1"]["writable"], "s1 to accept commits")
    status, out = check(zk_url, "--json", "--secondaries-warning", "0",
                        capsys=capsys)
    value = json.loads(out)
    assert status == OK == value["code"] and value["status"] == "OK"
    assert value["summary"].startswith("primary s1, epoch 1")
    assert value["perfdata"] == ["secondaries=0;0:;0:;0;"]


def test_hung_or_dead_zookeeper_bounds_scrapes_and_checks(tmp_path, capsys):
    """A ZooKeeper of our own, frozen then killed: each scrape answers
    within the exporter's timeout with zkzeo_zookeeper_up 0, and the check
    within its -t."""
    server = ZooKeeperServer(str(tmp_path / "zookeeper"))
    server.start()
    url = f"zk://{server.address}/db"
    c = None
    try:
        c = cli.Cluster(url)
        c.zk.ensure_path("/db")
        reg = registry(c, timeout=2.0)

        def scrape_once():
            start = time.monotonic()
            families = list(prometheus_families(
                __import__("prometheus_client").generate_latest(reg)
                .decode()))
            return time.monotonic() - start, samples(families,
                                                     "zkzeo_zookeeper_up")
        assert scrape_once()[1] == {"/db": 1}
        server.process.send_signal(signal.SIGSTOP)
        try:
            for _ in range(3):           # stuck pictures do not pile up
                took, up = scrape_once()
                assert took < 3.5 and up == {"/db": 0}
            start = time.monotonic()
            status, out = check(url, "-t", "3", capsys=capsys)
            assert time.monotonic() - start < 3
            assert status == UNKNOWN, out
        finally:
            server.process.send_signal(signal.SIGCONT)
        server.stop()
        wait_for(lambda: not c.zk.connected, "kazoo to see ZooKeeper gone")
        took, up = scrape_once()
        assert took < 0.5 and up == {"/db": 0}
    finally:
        if c is not None:
            c.close(timeout=1.0)
        server.stop()


def test_pictures_take_one_at_a_time():
    class Stuck:                   # a cluster whose ZooKeeper never answers
        path = "/db"
        zk = type("Connected", (), {"connected": True})()

        def snapshot(self):
            time.sleep(3600)
    pictures = Pictures(Stuck(), timeout=0.2)
    assert pictures.take() is None
    first = pictures._running
    assert pictures.take() is None and pictures._running is first


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
    families = list(prometheus_families(capsys.readouterr().out))
    assert samples(families, "zkzeo_lag_seconds")["s1"] >= 0.5
    states = {s.labels["state"]: s.value for f in families
              for s in f.samples if s.name == "zkzeo_replication_state"
              and s.labels["name"] == "s1"}
    assert states["diverged"] == 1 and states["following"] == 0
