"""ZooKeeper digest authentication and ACLs, with real zkrunzeo processes
and the documented settings: a process without the credential changes
nothing under the cluster's path; with it, servers, clients and every
command of the CLI work."""
import json
import os
import subprocess
import sys

import pytest
import transaction
import zodburi
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError
from kazoo.security import ACL, Id, Permissions

import zkzeo
from tests.support import wait_for

CREDENTIAL = "zkzeo:s3cret-pass"


@pytest.fixture
def auth_file(tmp_path):
    path = tmp_path / "zookeeper.auth"
    path.write_text(f"# the cluster's ZooKeeper credential\n{CREDENTIAL}\n")
    path.chmod(0o600)
    return str(path)


@pytest.fixture
def anonymous(zookeeper):
    """A kazoo client without credentials."""
    client = KazooClient(hosts=zookeeper.address, timeout=5)
    client.start(timeout=30)
    yield client
    client.stop()
    client.close()


def protected_cluster(cluster, auth_file, acl, names=("s1", "s2")):
    options = {"auth-file": auth_file, "acl": acl}
    servers = [cluster(name, zookeeper_options=options) for name in names]
    return servers


def zkzeo_command(*args, env=None):
    """The zkzeo command as a process: its status, output and errors."""
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    for name in ("ZKZEO_AUTH", "ZKZEO_AUTH_FILE"):
        full_env.pop(name, None)
    full_env.update(env or {})
    result = subprocess.run([sys.executable, "-m", "zkzeo.cli", *args],
                            capture_output=True, text=True, env=full_env,
                            timeout=120)
    return result.returncode, result.stdout, result.stderr


def assert_one_line_no_auth(err):
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "NoAuth" in lines[0] and "--auth-file" in lines[0], err


def test_without_the_credential_nothing_changes(cluster, zookeeper, zk_path,
                                                auth_file, anonymous):
    protected_cluster(cluster, auth_file, "world-read")
    db_path = zk_path
    children = anonymous.get_children(db_path)
    assert len(children) == 2
    state, stat = anonymous.get(db_path)            # world-read: readable
    assert json.loads(state)["primary"] == "s1"
    node = f"{db_path}/{children[0]}"
    data, _ = anonymous.get(node)

    forged = json.dumps({"primary": "s2", "epoch": 99}).encode()
    with pytest.raises(NoAuthError):
        anonymous.set(db_path, forged)
    with pytest.raises(NoAuthError):
        anonymous.delete(node)
    with pytest.raises(NoAuthError):
        anonymous.create(f"{db_path}/127.0.0.1:1", data, ephemeral=True)
    with pytest.raises(NoAuthError):
        anonymous.create(f"{db_path}/anything", b"")
    with pytest.raises(NoAuthError):
        anonymous.set(node, b"{}")
    with pytest.raises(NoAuthError):
        anonymous.set_acls(db_path, [ACL(Permissions.ALL,
                                         Id("world", "anyone"))])
    assert anonymous.get(db_path)[0] == state
    assert sorted(anonymous.get_children(db_path)) == sorted(children)
    # Only the credential may change them; everyone may read.
    acls, _ = anonymous.get_acls(db_path)
    assert {(a.id.scheme, a.perms) for a in acls} == {
        ("digest", Permissions.ALL), ("world", Permissions.READ)}
    assert {(a.id.scheme, a.perms) for a in anonymous.get_acls(node)[0]} \
        == {("digest", Permissions.ALL), ("world", Permissions.READ)}

    # A client with no credential reads and writes through the servers
    # (world-read lets it find them).
    db = zkzeo.DB(f"zk://{zookeeper.address}{db_path}", wait_timeout=60)
    try:
        with db.transaction() as conn:
            conn.root.x = 1
    finally:
        db.close()


def test_missing_parents_get_the_acl_and_an_open_path_is_closed(
        cluster, zookeeper, zk_path, auth_file, anonymous, tmp_path):
    from tests.zk_servers import ZKServer
    # The path's parents do not exist: the server creates them, with the
    # ACL, so nobody can delete the (stopped) cluster and recreate it.
    deep = f"{zk_path}/databases/main"
    server = ZKServer(tmp_path, "s1", zookeeper.address, deep,
                      zookeeper_options={"auth-file": auth_file,
                                         "acl": "private"})
    try:
        server.start()
        for node in (zk_path, f"{zk_path}/databases", deep):
            with pytest.raises(NoAuthError):
                anonymous.get_children(node)
            with pytest.raises(NoAuthError):
                anonymous.create(f"{node}/x", b"")
        with pytest.raises(NoAuthError):
            anonymous.get(deep)
    finally:
        server.stop()

    # A path somebody created open before ACLs were on is closed at start.
    open_path = f"{zk_path}-open/main"
    anonymous.create(open_path, b"", makepath=True)
    server = ZKServer(tmp_path, "s2", zookeeper.address, open_path,
                      zookeeper_options={"auth-file": auth_file,
                                         "acl": "world-read"})
    try:
        server.start()
        assert "let anyone read/write/create/delete/administer" in \
            server.output()
        with pytest.raises(NoAuthError):
            anonymous.create(f"{open_path}/x", b"")
    finally:
        server.stop()


def test_a_server_without_the_credential_says_which_to_give(
        cluster, zookeeper, zk_path, auth_file, tmp_path):
    from tests.zk_servers import ZKServer
    cluster("s1", zookeeper_options={"auth-file": auth_file,
                                     "acl": "world-read"})
    stranger = ZKServer(tmp_path, "s9", zookeeper.address, zk_path)
    stranger.launch()
    try:
        wait_for(lambda: not stranger.process.alive(),
                 "the server without the credential to exit")
        out = stranger.output()
        assert "NoAuth" in out and "auth-file" in out, out
        assert "Traceback" not in out, out
    finally:
        stranger.stop()


def test_every_cli_command_works_with_acls(cluster, zookeeper, zk_path,
                                           zk_url, auth_file, tree):
    protected_cluster(cluster, auth_file, "world-read")
    wait_for(lambda: tree.by_name().get("s2", {}).get(
        "replication_state") == "following", "s2 to follow s1")
    with_file = {"ZKZEO_AUTH_FILE": auth_file}

    # Reading needs no credential with world-read.
    for args in (["status", zk_url], ["check", zk_url],
                 ["metrics", zk_url, "--once"]):
        status, out, err = zkzeo_command(*args)
        assert status == 0, err
    # Changing does: a one-line error saying what to give, nothing changed.
    for args in (["pause", zk_url], ["switchover", zk_url, "--to", "s2"],
                 ["promote", zk_url, "--force", "--to", "s2"]):
        status, out, err = zkzeo_command(*args)
        assert status == 1, (args, out, err)
        assert_one_line_no_auth(err)
    assert tree.state()["primary"] == "s1"
    assert tree.state()["epoch"] == 1

    # With the credential (file option, environment), all of them work.
    status, out, err = zkzeo_command("--auth-file", auth_file, "pause",
                                     zk_url)
    assert status == 0, err
    assert tree.state()["paused"]
    status, out, err = zkzeo_command("resume", zk_url)
    assert status == 1
    assert_one_line_no_auth(err)
    status, out, err = zkzeo_command("resume", zk_url, "--auth-file",
                                     auth_file)
    assert status == 0, err
    assert not tree.state().get("paused")
    status, out, err = zkzeo_command("switchover", zk_url, "--to", "s2",
                                     env=with_file)
    assert status == 0, out + err
    assert tree.state()["primary"] == "s2"
    wait_for(lambda: tree.by_name().get("s1", {}).get(
        "replication_state") == "following", "s1 to follow s2")
    status, out, err = zkzeo_command("promote", zk_url, "--force", "--to",
                                     "s1", env={"ZKZEO_AUTH": CREDENTIAL})
    assert status == 0, out + err
    assert tree.state()["primary"] == "s1"
    for args in (["status", zk_url], ["check", zk_url],
                 ["metrics", zk_url, "--once"]):
        status, out, err = zkzeo_command(*args, env=with_file)
        assert status == 0, err


def test_private_acl_clients_need_the_credential(cluster, zookeeper,
                                                 zk_path, zk_url, auth_file,
                                                 tmp_path):
    protected_cluster(cluster, auth_file, "private", names=("s1",))
    # Not even readable without the credential: the CLI says so.
    for args in (["status", zk_url], ["check", zk_url]):
        status, out, err = zkzeo_command(*args)
        assert status in (1, 3), (out, err)
        text = err if status == 1 else out
        assert "NoAuth" in text and "Traceback" not in text + err, text
    status, out, err = zkzeo_command("status", zk_url,
                                     env={"ZKZEO_AUTH_FILE": auth_file})
    assert status == 0 and "primary s1" in out, err

    with pytest.raises(NoAuthError):
        zkzeo.client(zk_url, wait_timeout=5)
    db = zkzeo.DB(zk_url, zookeeper_auth_file=auth_file, wait_timeout=60)
    try:
        with db.transaction() as conn:
            conn.root.x = 1
    finally:
        db.close()

    # zodburi: the credentials file as a query argument, never a password.
    factory, _ = zodburi.resolve_uri(
        f"{zk_url}?zookeeper_auth_file={auth_file}&wait_timeout=60")
    storage = factory()
    try:
        assert storage.is_connected()
    finally:
        storage.close()
    with pytest.raises(ValueError, match="credentials file"):
        zodburi.resolve_uri(f"{zk_url}?zookeeper_auth={CREDENTIAL}")

    # <zkzeoclient> with zookeeper-auth-file.
    import ZODB.config
    db = ZODB.config.databaseFromString(f"""
%import zkzeo
<zodb>
  <zkzeoclient>
    zookeeper {zookeeper.address}
    server {zk_path}
    zookeeper-auth-file {auth_file}
    wait-timeout 60
  </zkzeoclient>
</zodb>
""")
    try:
        with db.transaction() as conn:
            assert conn.root.x == 1
    finally:
        db.close()
    transaction.abort()
