"""TLS and SASL to ZooKeeper, end to end: a real ZooKeeper that listens
with TLS and requires client certificates (ssl.clientAuth=need), a zkrunzeo
server, a client, a <zkzeoclient> and the zkzeo command configured the
documented way, and who it refuses; then a ZooKeeper that takes SASL
DIGEST-MD5 logins."""
import os
import shutil
import subprocess
import sys

import pytest
import ZODB.config

import zkzeo
from tests.zk_servers import ZKServer
from zkzeo import zk as zkutil
from zkzeo.zkserver import TLS, ZooKeeperServer

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None,
                                reason="needs the openssl command")


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True,
                   capture_output=True, timeout=60)


def make_certificates(directory):
    """A CA, a server certificate for 127.0.0.1 and a client
    certificate, all signed by the CA; {name: path}."""
    os.makedirs(directory, exist_ok=True)
    d = str(directory)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=test CA",
            cwd=d)
    with open(os.path.join(d, "san.cnf"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, extra in (("server", ["-extfile", "san.cnf"]),
                        ("client", [])):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout",
                f"{name}.key", "-out", f"{name}.csr", "-subj",
                f"/CN={name}", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem",
                "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
                "-out", f"{name}.pem", *extra, cwd=d)
    paths = {name: os.path.join(d, name) for name in (
        "ca.pem", "server.pem", "server.key", "client.pem", "client.key")}
    keystore = os.path.join(d, "server-keystore.pem")
    with open(keystore, "w") as out:
        for name in ("server.key", "server.pem"):
            with open(paths[name]) as f:
                out.write(f.read())
    paths["keystore"] = keystore
    for name in ("ca.key", "server.key", "client.key"):
        os.chmod(os.path.join(d, name), 0o600)
    return paths


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("certificates"))


@pytest.fixture(scope="module")
def tls_zookeeper(tmp_path_factory, certificates):
    server = ZooKeeperServer(
        str(tmp_path_factory.mktemp("tls-zookeeper")),
        tls=TLS(certificates["keystore"], certificates["ca.pem"], "need"))
    server.start()
    yield server
    server.stop()


def client_tls(certificates):
    return {"use_ssl": True, "ca": certificates["ca.pem"],
            "certfile": certificates["client.pem"],
            "keyfile": certificates["client.key"]}


def test_tls_zookeeper_end_to_end(tls_zookeeper, certificates, tmp_path):
    path = "/tls/databases/main"
    address = tls_zookeeper.secure_address
    url = f"zk://{address}{path}"
    auth_file = tmp_path / "zookeeper.auth"
    auth_file.write_text("zkzeo:tls-secret\n")
    auth_file.chmod(0o600)
    server = ZKServer(tmp_path, "s1", address, path, zookeeper_options={
        "use-ssl": "true", "ca": certificates["ca.pem"],
        "certfile": certificates["client.pem"],
        "keyfile": certificates["client.key"],
        "auth-file": str(auth_file), "acl": "private"})
    try:
        server.start()
        tls = {f"zookeeper_{k}": v for k, v in
               client_tls(certificates).items()}
        db = zkzeo.DB(url, zookeeper_auth_file=str(auth_file),
                      wait_timeout=60, **tls)
        try:
            with db.transaction() as conn:
                conn.root.x = 1
        finally:
            db.close()
        config_db = ZODB.config.databaseFromString(f"""
%import zkzeo
<zodb>
  <zkzeoclient>
    zookeeper {address}
    server {path}
    zookeeper-auth-file {auth_file}
    zookeeper-use-ssl true
    zookeeper-ca {certificates["ca.pem"]}
    zookeeper-certfile {certificates["client.pem"]}
    zookeeper-keyfile {certificates["client.key"]}
    read-only true
    wait-timeout 60
  </zkzeoclient>
</zodb>
""")
        try:
            with config_db.transaction() as conn:
                assert conn.root.x == 1
        finally:
            config_db.close()
        result = subprocess.run(
            [sys.executable, "-m", "zkzeo.cli", "--use-ssl", "--ca",
             certificates["ca.pem"], "--certfile", certificates["client.pem"],
             "--keyfile", certificates["client.key"], "status", url],
            capture_output=True, text=True, timeout=120,
            env=dict(os.environ, ZKZEO_AUTH_FILE=str(auth_file),
                     PYTHONPATH=os.pathsep.join(sys.path)))
        assert result.returncode == 0, result.stderr
        assert "primary s1, epoch 1" in result.stdout
    finally:
        server.stop()


@pytest.mark.parametrize("kw", [
    {},                                               # no TLS at all
    {"use_ssl": True, "ca": "CA"},                    # no client cert
    {"use_ssl": True, "certfile": "CERT", "keyfile": "KEY"},  # CA unknown
])
def test_tls_zookeeper_refuses_the_others(tls_zookeeper, certificates, kw):
    files = {"CA": certificates["ca.pem"], "CERT": certificates["client.pem"],
             "KEY": certificates["client.key"]}
    kw = {k: files.get(v, v) for k, v in kw.items()}
    client = zkutil.make_client(tls_zookeeper.secure_address,
                                settings=zkutil.Settings(**kw))
    with pytest.raises(zkutil.ZooKeeperUnreachable):
        zkutil.start(client, 3)


@pytest.fixture(scope="module")
def sasl_zookeeper(tmp_path_factory):
    pytest.importorskip("puresasl")
    server = ZooKeeperServer(str(tmp_path_factory.mktemp("sasl-zookeeper")),
                             sasl_users={"zkzeo": "sasl-secret"})
    server.start()
    yield server
    server.stop()


def test_sasl_digest_md5_end_to_end(sasl_zookeeper, tmp_path):
    """SASL DIGEST-MD5 (ZooKeeper's JAAS login module) instead of the
    digest scheme: the ACL names the SASL user, and only it gets in."""
    from kazoo.client import KazooClient
    from kazoo.exceptions import NoAuthError
    path = "/sasl/databases/main"
    address = sasl_zookeeper.address
    url = f"zk://{address}{path}"
    auth_file = tmp_path / "zookeeper.auth"
    auth_file.write_text("zkzeo:sasl-secret\n")
    auth_file.chmod(0o600)
    server = ZKServer(tmp_path, "s1", address, path, zookeeper_options={
        "auth-file": str(auth_file), "sasl-mechanism": "DIGEST-MD5",
        "acl": "private"})
    anonymous = KazooClient(hosts=address)
    anonymous.start(timeout=30)
    try:
        server.start()
        with pytest.raises(NoAuthError):
            anonymous.get_children(path)
        with pytest.raises(NoAuthError):
            anonymous.set(path, b"{}")
        db = zkzeo.DB(url, zookeeper_auth_file=str(auth_file),
                      zookeeper_sasl_mechanism="DIGEST-MD5", wait_timeout=60)
        try:
            with db.transaction() as conn:
                conn.root.x = 1
        finally:
            db.close()
        result = subprocess.run(
            [sys.executable, "-m", "zkzeo.cli", "--sasl-mechanism",
             "DIGEST-MD5", "pause", url],
            capture_output=True, text=True, timeout=120,
            env=dict(os.environ, ZKZEO_AUTH_FILE=str(auth_file),
                     PYTHONPATH=os.pathsep.join(sys.path)))
        assert result.returncode == 0, result.stderr
    finally:
        anonymous.stop()
        anonymous.close()
        server.stop()
