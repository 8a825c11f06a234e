"""Adversarial schedules of issue 9, each against real zkrunzeo processes:
a primary paused past its session timeout, elections after a kill, a
commit waiting for its acknowledgement while the primary is replaced, and
configurations refused before anything is claimed."""
import json
import os
import subprocess
import threading

import transaction
import ZEO
from persistent.mapping import PersistentMapping

from tests.support import PYTHON, wait_for
from tests.test_failover import commit, last_tid
from tests.zk_servers import address_of

FAILOVER = {"auto-failover": 1.0}
SYNC = {"sync-replicas": 1, "sync-timeout": 60, "sync-block": "true"}


def state_version(tree):
    return tree.zk.get(tree.path)[1].version


def writable_primary(tree, name, epoch):
    info = tree.by_name().get(name, {})
    return (tree.state()["primary"] == name and
            tree.state()["epoch"] == epoch and info.get("writable"))


class Writer:
    """A thread committing key i=i in a loop through ``db``; ``acked``
    holds every i whose commit returned."""

    def __init__(self, db, prefix="k"):
        self.db = db
        self.prefix = prefix
        self.acked = []
        self.errors = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        i = 0
        while not self._stop.is_set():
            i += 1
            try:
                with self.db.transaction() as conn:
                    conn.root.data[f"{self.prefix}{i}"] = i
                self.acked.append(i)
            except Exception:
                self.errors += 1
                transaction.abort()

    def stop(self):
        self._stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "the writer is stuck"


def missing(db, writer):
    with db.transaction() as conn:
        data = conn.root.data
        return [i for i in writer.acked
                if data.get(f"{writer.prefix}{i}") != i]


def test_a_paused_primary_acknowledges_nothing_after_it_was_replaced(
        cluster, tree, zk_url):
    """Issue 9, item 1: SIGSTOP the primary past its session timeout; a
    secondary takes over; on SIGCONT the old primary must not acknowledge
    the commits its client had sent meanwhile (the client talks to it
    directly, the worst case)."""
    s1 = cluster("s1", zookeeper_options=FAILOVER, replication_options=SYNC)
    cluster("s2", zookeeper_options=FAILOVER, replication_options=SYNC)
    # Fallback, so that its commits fail at once once s1 is a secondary.
    db = ZEO.DB(address_of(tree, "s1"), wait_timeout=60,
                read_only_fallback=True)
    try:
        with db.transaction() as conn:
            conn.root.data = PersistentMapping()
        wait_for(lambda: tree.by_name()["s2"]["replication_state"] ==
                 "following", "s2 to follow")
        writer = Writer(db)
        wait_for(lambda: len(writer.acked) > 20, "commits before the pause")
        s1.pause()
        try:
            wait_for(lambda: writable_primary(tree, "s2", 2),
                     "s2 to take over while s1 is paused")
        finally:
            s1.resume()
        wait_for(lambda: tree.by_name().get("s1", {}).get("role") ==
                 "secondary", "s1 to step down after it resumed")
        writer.stop()
        new = zkzeo_db(tree, zk_url)
        try:
            lost = missing(new, writer)
        finally:
            new.close()
        assert not lost, (f"{len(lost)} of {len(writer.acked)} acknowledged "
                          f"commits were lost: {lost[:10]}")
        assert "steps down" in s1.output()
    finally:
        db.close()


def zkzeo_db(tree, zk_url):
    import zkzeo
    return zkzeo.DB(zk_url, wait_timeout=60)


def test_one_election_per_failover(cluster, tree, zk_url):
    """Issue 9, items 2 and 5: kill the primary of three; exactly one new
    epoch, won by a candidate, and the loser follows the winner."""
    s1 = cluster("s1", zookeeper_options=FAILOVER)
    cluster("s2", zookeeper_options=FAILOVER)
    cluster("s3", zookeeper_options=FAILOVER)
    db = zkzeo_db(tree, zk_url)
    commit(db, x=1)
    db.close()
    wait_for(lambda: all(v.get("replication_state") == "following"
                         for k, v in tree.by_name().items() if k != "s1"),
             "both secondaries to follow")
    before = state_version(tree)
    s1.kill()
    wait_for(lambda: tree.state()["epoch"] == 2, "a new primary")
    winner = tree.state()["primary"]
    loser = ({"s2", "s3"} - {winner}).pop()
    wait_for(lambda: writable_primary(tree, winner, 2),
             f"{winner} to accept writes")
    wait_for(lambda: tree.by_name()[loser].get("epoch") == 2 and
             tree.by_name()[loser].get("replication_state") == "following",
             f"{loser} to follow {winner} in epoch 2")
    # From here no server can see the primary missing: had two elections
    # happened, the version would have moved twice.
    assert state_version(tree) == before + 1
    assert tree.state()["epoch"] == 2


def test_a_commit_waiting_for_its_ack_fails_when_the_primary_is_replaced(
        cluster, tree, zk_url):
    """Issue 9, item 3: with sync-replicas 1 a commit waits for the
    secondary's ACK; the secondary is frozen; the cluster state names
    another primary: the commit must fail, not succeed at the timeout."""
    s1 = cluster("s1", replication_options=SYNC)
    s2 = cluster("s2", replication_options=SYNC)
    # Fallback, so that the failed commit's abort finds a server at once.
    db = ZEO.DB(address_of(tree, "s1"), wait_timeout=60,
                read_only_fallback=True)
    outcome = []
    try:
        with db.transaction() as conn:
            conn.root.data = PersistentMapping()
        wait_for(lambda: tree.by_name()["s2"]["replication_state"] ==
                 "following", "s2 to follow")
        s2.pause()
        before = last_tid(s1)

        def commit_one():
            try:
                with db.transaction() as conn:
                    conn.root.data["late"] = 1
                outcome.append("acknowledged")
            except Exception as e:
                transaction.abort()
                outcome.append(e)
        thread = threading.Thread(target=commit_one, daemon=True)
        thread.start()
        # In s1's file, not acknowledged: it waits for s2's ACK.
        wait_for(lambda: last_tid(s1) > before,
                 "the commit to wait for its acknowledgement")
        assert not outcome
        state = tree.state()
        tree.zk.set(tree.path, json.dumps(
            {"primary": "s2", "epoch": state["epoch"] + 1}).encode())
        wait_for(lambda: outcome, "the commit to end")
        assert outcome[0] != "acknowledged", \
            "a replaced primary acknowledged a commit"
    finally:
        s2.resume()
        db.close()


def test_refused_configurations_claim_nothing(tmp_path, zookeeper, zk_path,
                                              tree):
    """Issue 9, item 9: a zc.zrs-style fixed role, or a unix-socket
    replicate-to, is refused before the server claims or registers."""
    for name, replication in [
            ("fixed", "replicate-from 127.0.0.1:1\n  replicate-to :0"),
            ("unix", f"replicate-from zk:\n  replicate-to {tmp_path}/r.sock"),
            ("noto", "replicate-from zk:")]:
        conf = tmp_path / f"{name}.conf"
        conf.write_text(f"""\
%import replication
<zeo>
  address 127.0.0.1:0
</zeo>
<zookeeper>
  connection {zookeeper.address}
  path {zk_path}
  name {name}
</zookeeper>
<replication 1>
  {replication}
  <filestorage>
    path {tmp_path}/{name}.fs
  </filestorage>
</replication>
""")
        run = subprocess.run(
            [PYTHON, "-m", "zkzeo.server", "-C", str(conf)],
            capture_output=True, text=True, timeout=120,
            env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                __import__("sys").path)))
        assert run.returncode != 0, run.stdout + run.stderr
        said = run.stdout + run.stderr
        assert {"fixed": "must say 'replicate-from zk:'",
                "unix": "is a unix socket",
                "noto": "needs replicate-to"}[name] in said, said
        assert "Traceback" not in said, said
    assert not tree.zk.exists(zk_path) or tree.state() is None, \
        "a refused server claimed the primary role"
    assert tree.servers() == {}


def test_a_diverged_server_is_never_elected(cluster, tree, zk_url, tmp_path,
                                            capsys):
    """Issue 9, item 5: the old primary comes back holding a transaction
    the cluster lost (so it has the newest last tid) and stops as
    diverged; when the new primary dies, the election must pass it over."""
    from tests.test_failover import lossy_failover
    s1, s2, cache, lost = lossy_failover(cluster, tree, zk_url, tmp_path,
                                         capsys)
    s3 = cluster("s3", zookeeper_options=FAILOVER)
    s1.start()
    wait_for(lambda: tree.by_name()["s1"]["replication_state"] == "diverged",
             "the old primary to stop as diverged")
    wait_for(lambda: tree.by_name()["s3"]["replication_state"] ==
             "following", "s3 to follow s2")
    assert last_tid(s1) > last_tid(s3)     # the newest, but diverged
    s2.kill()
    wait_for(lambda: tree.state()["epoch"] == 3, "an election")
    assert tree.state()["primary"] == "s3"
    assert tree.by_name()["s1"]["role"] == "secondary"

