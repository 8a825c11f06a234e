"""TLS between applications and servers through zk: URLs: ZEO servers that
require client certificates, clients that verify the server's, and a
failover in the middle."""
import ssl

import pytest
from ZEO.Exceptions import ClientDisconnected

import zkzeo
from tests.certificates import Authority
from tests.support import wait_for
from tests.test_failover import commit

FAILOVER = {"auto-failover": 1.0}


def zeo_ssl(authority, name):
    certificate, key = authority.issue(name)
    return (f"  <ssl>\n    certificate {certificate}\n    key {key}\n"
            f"    authenticate {authority.certificate}\n  </ssl>\n")


def client_context(authority, name="app"):
    context = ssl.create_default_context(cafile=authority.certificate)
    context.load_cert_chain(*authority.issue(name))
    return context


def test_tls_clients_read_and_write_across_a_failover(cluster, tree, zk_url,
                                                      tmp_path):
    authority = Authority(tmp_path / "ca")
    s1 = cluster("s1", zookeeper_options=FAILOVER,
                 zeo_extra=zeo_ssl(authority, "s1"))
    cluster("s2", zookeeper_options=FAILOVER,
            zeo_extra=zeo_ssl(authority, "s2"))
    db = zkzeo.DB(zk_url, ssl=client_context(authority),
                  ssl_server_hostname="localhost", read_only_fallback=True,
                  wait_timeout=60)
    try:
        commit(db, x=1)
        wait_for(lambda: tree.by_name()["s2"]["replication_state"] ==
                 "following", "s2 to follow")
        s1.kill()
        wait_for(lambda: tree.state()["epoch"] == 2 and
                 tree.by_name()["s2"].get("writable"),
                 "s2 to take over")
        wait_for(lambda: db.storage.is_connected() and
                 not db.storage.isReadOnly(),
                 "the client to write on s2, over TLS")
        commit(db, x=2)
        with db.transaction() as conn:
            assert (conn.root.x) == 2
    finally:
        db.close()


def test_a_client_without_a_certificate_gets_nothing(cluster, tree, zk_url,
                                                     tmp_path):
    authority = Authority(tmp_path / "ca")
    cluster("s1", zeo_extra=zeo_ssl(authority, "s1"))
    wait_for(lambda: tree.by_name()["s1"]["writable"], "s1 to accept writes")
    # The server's certificate is trusted; the client has none to show.
    context = ssl.create_default_context(cafile=authority.certificate)
    with pytest.raises(ClientDisconnected):
        zkzeo.client(zk_url, ssl=context, ssl_server_hostname="localhost",
                     wait_timeout=3)
