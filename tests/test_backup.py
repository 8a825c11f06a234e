"""Backups with repozo taken from a running secondary, restored with
repozo -R, and a new cluster bootstrapped from the restored Data.fs: the
commands docs/operations.md gives, run against zkrunzeo processes."""
import os
import shutil
import subprocess
import sys
import threading
import time

from ZODB.FileStorage import FileStorage

import zkzeo
from tests.replication_support import assert_same_history, blob
from tests.support import wait_for
from tests.zk_servers import Tree, ZKServer

REPOZO = os.path.join(os.path.dirname(sys.executable), "repozo")


def repozo(*args):
    # repozo names its files by the second: never two in the same one.
    second = int(time.time())
    wait_for(lambda: int(time.time()) > second, "the next second")
    done = subprocess.run([REPOZO, *args], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done


def churn(db, rounds, start=0):
    for i in range(start, start + rounds):
        with db.transaction() as conn:
            conn.root.counter = i
            conn.root.doc = blob(b"version %d" % i)
            setattr(conn.root, f"item{i}", "x" * (i * 100))


def caught_up(db, tree, server):
    """The secondary's node says following and its file has db's last
    transaction."""
    last = db.storage.lastTransaction()
    node = tree.by_name().get(server.name)
    return node and node.get("replication_state") == "following" and \
        _last_in_file(server.path) == last


def _last_in_file(path):
    fs = FileStorage(path, read_only=True)
    try:
        return fs.lastTransaction()
    finally:
        fs.close()


def test_repozo_from_a_secondary_and_a_new_cluster_from_the_restore(
        cluster, tree, zookeeper, zk_url, zk_path, tmp_path):
    s1 = cluster("s1")
    s2 = cluster("s2")
    backups = tmp_path / "backups"
    backups.mkdir()
    db = zkzeo.DB(zk_url, wait_timeout=60,
                  blob_dir=str(tmp_path / "client-blobs"))
    try:
        churn(db, 10)
        wait_for(lambda: caught_up(db, tree, s2), "s2 to catch up")
        # A full backup from the secondary while the primary keeps
        # committing (the secondary appends to the file being read).
        stop = threading.Event()
        errors = []

        def write():
            i = 100
            try:
                while not stop.is_set():
                    churn(db, 1, start=i)
                    i += 1
            except Exception as e:        # pragma: no cover - reported
                errors.append(e)
        writer = threading.Thread(target=write)
        writer.start()
        try:
            repozo("-B", "-F", "-z", "-r", str(backups), "-f", s2.path)
            # and an incremental one
            repozo("-B", "-z", "-r", str(backups), "-f", s2.path)
        finally:
            stop.set()
            writer.join(60)
        assert not errors
        # Quiet again: one more incremental, then the blobs (rsync -a).
        churn(db, 3, start=10)
        wait_for(lambda: caught_up(db, tree, s2), "s2 to catch up")
        repozo("-B", "-z", "-r", str(backups), "-f", s2.path)
        assert len(list(backups.glob("*.deltafsz"))) >= 1
        restored = tmp_path / "restored"
        restored.mkdir()
        shutil.copytree(s2.blobs, restored / "blobs")
        last = db.storage.lastTransaction()
    finally:
        db.close()
    repozo("-R", "-r", str(backups), "-o", str(restored / "Data.fs"))

    # The restored file is the primary's history up to the backup.
    s1.stop()
    s2.stop()
    primary = FileStorage(s1.path, blob_dir=s1.blobs, read_only=True)
    copy = FileStorage(str(restored / "Data.fs"),
                       blob_dir=str(restored / "blobs"), read_only=True)
    try:
        assert copy.lastTransaction() == last == primary.lastTransaction()
        assert_same_history(primary, copy)
    finally:
        primary.close()
        copy.close()

    # A new cluster from the restored file, at a fresh ZooKeeper path.
    path = zk_path + "-restored"
    new1 = ZKServer(tmp_path / "new", "n1", zookeeper.address, path)
    new2 = ZKServer(tmp_path / "new", "n2", zookeeper.address, path)
    try:
        shutil.copyfile(restored / "Data.fs", new1.path)
        shutil.copytree(restored / "blobs", new1.blobs)
        new1.start()           # bootstraps: the first server is primary
        new2.start()           # empty: takes a byte copy, then follows
        url = f"zk://{zookeeper.address}{path}"
        new_tree = Tree(zookeeper.address, path)
        try:
            assert new_tree.state() == {"primary": "n1", "epoch": 1}
            db = zkzeo.DB(url, wait_timeout=60,
                          blob_dir=str(tmp_path / "client-blobs-2"))
            try:
                with db.transaction() as conn:
                    assert conn.root.counter == 12
                    assert conn.root.doc.open().read() == b"version 12"
                churn(db, 2, start=20)
                wait_for(lambda: caught_up(db, new_tree, new2),
                         "n2 to follow the restored primary")
            finally:
                db.close()
        finally:
            new_tree.close()
    finally:
        new1.stop()
        new2.stop()
    a = FileStorage(new1.path, blob_dir=new1.blobs, read_only=True)
    b = FileStorage(new2.path, blob_dir=new2.blobs, read_only=True)
    try:
        assert_same_history(a, b)
    finally:
        a.close()
        b.close()
