"""Packing a running zkzeo cluster, as an operator would: `zkzeo pack URL`
and ZEO's own `zeopack` on the primary, with a secondary following and one
offline; afterwards every server holds the same packed history."""
import json
import os
import subprocess
import sys

from ZODB.FileStorage import FileStorage

import zkzeo
from tests.replication_support import assert_same_history, blob
from tests.support import wait_for
from zkzeo import cli


def zkzeo_command(capsys, *args):
    status = cli.main(list(args))
    return status, capsys.readouterr()


def churn(db, rounds, start=0):
    for i in range(start, start + rounds):
        with db.transaction() as conn:
            conn.root.counter = i
            conn.root.doc = blob(b"version %d" % i)
            conn.root.spare = blob(b"x" * (i % 3)) if i % 2 else None


def states(capsys, url):
    status, out = zkzeo_command(capsys, "status", url, "--json")
    assert status == 0, out.err
    return {s["name"]: s["state"] for s in json.loads(out.out)["servers"]}


def all_following(capsys, url, names):
    now = states(capsys, url)
    return all(now.get(n) == "following" for n in names) and now


def assert_all_same(servers, fewer_than):
    for s in servers:
        s.stop()
    storages = [FileStorage(s.path, blob_dir=s.blobs, read_only=True)
                for s in servers]
    try:
        for other in storages[1:]:
            assert_same_history(storages[0], other)
        # and packed: transactions before the pack time are gone
        assert len(list(storages[0].iterator())) < fewer_than
    finally:
        for fs in storages:
            fs.close()


def cluster_db(zk_url, tmp_path):
    return zkzeo.DB(zk_url, wait_timeout=60,
                    blob_dir=str(tmp_path / "client-blobs"),
                    shared_blob_dir=False)


def test_zkzeo_pack_by_url_with_one_secondary_following_one_offline(
        cluster, zk_url, tmp_path, capsys):
    s1 = cluster("s1")
    s2 = cluster("s2")
    s3 = cluster("s3")
    db = cluster_db(zk_url, tmp_path)
    try:
        churn(db, 8)
        wait_for(lambda: all_following(capsys, zk_url, ["s2", "s3"]),
                 "both secondaries to follow")
        s3.stop()                       # offline during the pack
        churn(db, 4, start=8)
        status, out = zkzeo_command(capsys, "pack", zk_url, "--days", "0",
                                    "--timeout", "120")
        assert status == 0, out.err
        assert "packing s1" in out.out
        assert "every secondary follows again (s2)" in out.out
        churn(db, 2, start=12)
        s3.start()                      # its position was packed away
        wait_for(lambda: all_following(capsys, zk_url, ["s2", "s3"]),
                 "both secondaries to follow again")
        assert "was packed away" in s3.output()
        assert "divergent" not in s3.output()
        assert "packing alike" in s2.output()
        churn(db, 2, start=14)
        last = db.storage.lastTransaction()
        for s in (s2, s3):
            wait_for(lambda: _last_tid(capsys, zk_url, s.name) == last.hex(),
                     f"{s.name} to have the last commit")
    finally:
        db.close()
    assert_all_same([s1, s2, s3], fewer_than=10)   # of 17


def test_stock_zeopack_on_the_primary_address(cluster, tree, zk_url,
                                              tmp_path, capsys):
    s1 = cluster("s1")
    s2 = cluster("s2")
    db = cluster_db(zk_url, tmp_path)
    try:
        churn(db, 6)
        address = tree.by_name()["s1"]["address"]
        zeopack = os.path.join(os.path.dirname(sys.executable), "zeopack")
        # ZEO's zeopack cannot read a cluster URL: hence `zkzeo pack`.
        bad = subprocess.run([zeopack, "-d", "0", zk_url],
                             capture_output=True, text=True, timeout=60)
        assert bad.returncode != 0
        done = subprocess.run([zeopack, "-d", "0", address],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        wait_for(lambda: "packing alike" in s2.output(),
                 "s2 to pack alike")
        churn(db, 2, start=6)
        last = db.storage.lastTransaction()
        wait_for(lambda: all_following(capsys, zk_url, ["s2"]) and
                 _last_tid(capsys, zk_url, "s2") == last.hex(),
                 "s2 to follow with the last commit")
    finally:
        db.close()
    assert_all_same([s1, s2], fewer_than=5)        # of 9


def _last_tid(capsys, url, name):
    status, out = zkzeo_command(capsys, "status", url, "--json")
    for s in json.loads(out.out)["servers"]:
        if s["name"] == name:
            return s["last_tid"]
    return None


def test_zkzeo_pack_without_a_registered_primary_fails_clearly(
        cluster, zk_url, capsys):
    s1 = cluster("s1")
    cluster("s2")
    s1.stop()
    status, out = zkzeo_command(capsys, "pack", zk_url, "--days", "1")
    assert status == 1
    assert "no primary is registered" in out.err
    assert "nothing was packed" in out.err


def test_zkzeo_pack_while_a_secondary_is_behind(cluster, zk_url, tmp_path,
                                                capsys):
    # s2 is connected but behind when the primary packs: paused (SIGSTOP)
    # while the primary commits, so its stream waits in its socket.
    s1 = cluster("s1")
    s2 = cluster("s2")
    db = cluster_db(zk_url, tmp_path)
    try:
        churn(db, 4)
        wait_for(lambda: all_following(capsys, zk_url, ["s2"]),
                 "s2 to follow")
        s2.pause()
        try:
            churn(db, 6, start=4)
            status, out = zkzeo_command(capsys, "pack", zk_url, "--days",
                                        "0", "--timeout", "1")
            # It cannot follow again while paused: the command says so.
            assert status == 1
            assert "s2 did not follow again" in out.err
        finally:
            s2.resume()
        wait_for(lambda: all_following(capsys, zk_url, ["s2"]),
                 "s2 to follow again")
        assert "divergent" not in s2.output()
        churn(db, 2, start=10)
        last = db.storage.lastTransaction()
        wait_for(lambda: _last_tid(capsys, zk_url, "s2") == last.hex(),
                 "s2 to have the last commit")
    finally:
        db.close()
    assert_all_same([s1, s2], fewer_than=5)        # of 13
