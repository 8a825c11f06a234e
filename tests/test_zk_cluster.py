"""ZooKeeper registration and discovery with real zkrunzeo processes."""
import logging

import pytest
import transaction
import zodburi
import ZODB.config
from ZEO.Exceptions import ClientDisconnected
from ZODB.FileStorage import FileStorage

import zkzeo
from tests.replication_support import assert_same_history
from tests.support import replica_db, wait_for
from tests.zk_servers import ZKServer
from zkzeo.layout import LayoutError
from zkzeo.zk import ZooKeeperUnreachable
from zkzeo.zkserver import ZooKeeperServer, free_port






def connected_address(storage):
    protocol = storage._server.client.protocol
    return protocol and protocol.addr


def value_on(conn, key):
    transaction.begin()
    return getattr(conn.root, key, None)


def test_cluster_registers_discovers_and_follows(cluster, tree, zk_url,
                                                 tmp_path):
    s1 = cluster("s1")
    s2 = cluster("s2")
    s3 = cluster("s3")
    # The tree shows exactly the running servers, with correct roles.
    assert tree.state() == {"primary": "s1", "epoch": 1}
    roles = {name: v["role"] for name, v in tree.by_name().items()}
    assert roles == {"s1": "primary", "s2": "secondary", "s3": "secondary"}
    servers = tree.by_name()
    assert servers["s1"]["replication"] and servers["s1"]["pid"]

    # A zk: client writes through the primary...
    db = zkzeo.DB(zk_url, wait_timeout=60,
                  blob_dir=str(tmp_path / "rw-blobs"))
    assert "%s:%s" % connected_address(db.storage) == \
        servers["s1"]["address"]
    with db.transaction() as conn:
        conn.root.x = 1
    # ...and a read-only one reads through a secondary.
    reader = replica_db(zkzeo.client(zk_url, read_only=True,
                                     wait_timeout=60,
                                     blob_dir=str(tmp_path / "ro-blobs")))
    rconn = reader.open()
    assert "%s:%s" % connected_address(reader.storage) in (
        servers["s2"]["address"], servers["s3"]["address"])
    wait_for(lambda: value_on(rconn, "x") == 1,
             "the write to reach the read-only client of a secondary")

    # A secondary restarted gets a new OS-assigned port; clients see it.
    old = servers["s2"]["address"]
    s2.stop()
    assert "s2" not in tree.by_name()        # gone at once on SIGTERM
    s2.start()
    new = tree.by_name()["s2"]["address"]
    assert new != old
    wait_for(lambda: ("%s:%s" % (new.rsplit(":", 1)[0],
                                 new.rsplit(":", 1)[1])) in
             ["%s:%s" % a for a in reader.storage._zk_addresses],
             "the running read-only client to learn s2's new address")

    # The primary restarted on a new port: clients and secondaries find it.
    s1.stop()
    s1.start()
    assert tree.by_name()["s1"]["role"] == "primary"
    wait_for(lambda: db.storage.is_connected() and
             connected_address(db.storage)[1] ==
             int(tree.by_name()["s1"]["address"].rsplit(":", 1)[1]),
             "the running client to connect to the restarted primary")
    with db.transaction() as conn:
        conn.root.x = 2
    wait_for(lambda: value_on(rconn, "x") == 2,
             "a write after the primary's restart to reach a secondary")
    rconn.close()
    reader.close()
    db.close()
    for s in (s1, s2, s3):
        s.stop()
    storages = [FileStorage(s.path, blob_dir=s.blobs, read_only=True)
                for s in (s1, s2, s3)]
    try:
        assert_same_history(storages[0], storages[1])
        assert_same_history(storages[0], storages[2])
    finally:
        for s in storages:
            s.close()


def test_session_expiry_re_registers(cluster, tree):
    s1 = cluster("s1", session_timeout=1.0)
    owner = tree.by_name()["s1"]["owner"]
    s1.pause()                     # no heartbeats: ZooKeeper expires it
    wait_for(lambda: "s1" not in tree.by_name(),
             "the paused server's session to expire")
    s1.resume()
    wait_for(lambda: "s1" in tree.by_name(),
             "the server to register again after its session expired")
    assert tree.by_name()["s1"]["owner"] != owner
    assert "will be registered again" in s1.output()


def test_server_waits_for_an_unreachable_zookeeper(tmp_path, zk_path):
    port = free_port()
    server = ZKServer(tmp_path, "patient", f"127.0.0.1:{port}", zk_path)
    server.start(wait=False)
    zookeeper = None
    try:
        wait_for(lambda: "is unreachable (attempt 1); still trying"
                 in server.output(), "the server to say it is waiting")
        assert "Traceback" not in server.output()
        zookeeper = ZooKeeperServer(str(tmp_path / "late-zk"),
                                    port=port).start()
        wait_for(lambda: "registered" in server.output(),
                 "the server to register once ZooKeeper is up")
    finally:
        server.stop()
        if zookeeper is not None:
            zookeeper.stop()


def test_zconfig_client_and_zodburi(cluster, zookeeper, zk_path, tmp_path):
    cluster("s1")
    db = ZODB.config.databaseFromString(f"""
%import zkzeo
<zodb>
  <zkzeoclient>
    zookeeper {zookeeper.address}
    server {zk_path}
    wait-timeout 60
    blob-dir {tmp_path}/blobs
  </zkzeoclient>
</zodb>
""")
    with db.transaction() as conn:
        conn.root.via = "zconfig"
    db.close()
    factory, dbkw = zodburi.resolve_uri(
        f"zk://{zookeeper.address}{zk_path}?wait_timeout=60"
        "&connection_cache_size=1234")
    assert dbkw["cache_size"] == 1234
    db = ZODB.DB(factory(), **dbkw)
    with db.transaction() as conn:
        assert conn.root.via == "zconfig"
    db.close()


def test_zk_url_from_the_environment(cluster, zookeeper, zk_path,
                                     monkeypatch):
    cluster("s1")
    monkeypatch.setenv("ZOOKEEPER", zookeeper.address)
    conn = zkzeo.connection(f"zk:{zk_path}", wait_timeout=60)
    conn.root.env = 1
    transaction.commit()
    conn.close()


def test_no_server_registered_gives_a_warning_then_disconnected(
        zookeeper, zk_url, caplog):
    with pytest.raises(ClientDisconnected):
        zkzeo.client(zk_url, wait_timeout=1)
    assert f"{zk_url}: the path" in caplog.text
    assert "does not exist" in caplog.text


def test_server_appearing_later_is_used(cluster, zk_url, caplog):
    storage = zkzeo.client(zk_url, wait=False)
    try:
        cluster("late")
        wait_for(storage.is_connected,
                 "the client to connect to a server that started later")
        # zkzeo clients use a cache without ZEO 6's same-tid bug
        from zkzeo._zeo_compat import ClientCache as _ClientCache
        assert type(storage._cache) is _ClientCache
    finally:
        storage.close()


def test_client_cache_survives_an_invalidation_with_its_own_tid(tmp_path,
                                                                 caplog):
    """ZEO 6's cache forgets a current record on such an invalidation and
    then writes a second one: the file is refused at the next start."""
    from ZEO.cache import ClientCache
    from ZODB.utils import p64
    from zkzeo._zeo_compat import ClientCache as _ClientCache
    oid, t1, t2 = p64(1), p64(10), p64(20)

    def exercise(cache_class, path):
        cache = cache_class(str(path), 1 << 20)
        cache.setLastTid(t1)
        cache.store(oid, t1, None, b"one")
        cache.invalidate(oid, t1)          # e.g. our own commit's, again
        cache.store(oid, t1, None, b"one")
        cache.setLastTid(t2)
        cache.close()
        cache = ClientCache(str(path), 1 << 20)
        try:
            return cache.load(oid)
        finally:
            cache.close()

    assert exercise(_ClientCache, tmp_path / "ours.zec") == (b"one", t1)
    assert "bad cache file" not in caplog.text
    # The ZEO bug this works around (if ZEO fixes it, drop _ClientCache):
    assert exercise(ClientCache, tmp_path / "zeo.zec") is None
    assert "Moving bad cache file" in caplog.text


def test_bad_urls_and_unreachable_ensembles_fail_clearly():
    with pytest.raises(LayoutError, match="expected zk://"):
        zkzeo.client("zeo://127.0.0.1:1")
    with pytest.raises(ZooKeeperUnreachable,
                       match=r"could not reach ZooKeeper at 127.0.0.1:\d+"):
        zkzeo.client(f"zk://127.0.0.1:{free_port()}/db",
                     zookeeper_timeout=1)


def test_foreign_nodes_are_skipped_with_a_warning(cluster, tree, zk_url,
                                                  zk_path, caplog):
    cluster("s1")
    tree.zk.create(f"{zk_path}/not-an-address", b"")
    tree.zk.create(f"{zk_path}/127.0.0.1:1", b'{"pid": 1}', ephemeral=True)
    caplog.set_level(logging.WARNING)
    db = zkzeo.DB(zk_url, wait_timeout=60)
    assert len(db.storage._zk_addresses) == 1
    with db.transaction() as conn:
        conn.root.ok = True
    db.close()
    assert "'not-an-address' is not HOST:PORT; skipped" in caplog.text
    assert "has no zkzeo data" in caplog.text
