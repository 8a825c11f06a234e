"""ZooKeeper digest authentication and ACLs, with real zkrunzeo processes
and the documented settings: a process without the credential changes
nothing under the cluster's path; with it, servers, clients and every
command of the CLI work.  Then the settings themselves, as tables: what
kazoo is given, bad values, where credentials come from, who may change a
path."""
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
from zkzeo import zk as zkutil

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
    wrong = tmp_path / "wrong.auth"
    wrong.write_text("zkzeo:not-the-password\n")
    wrong.chmod(0o600)
    for name, options, says in (
            ("s8", {}, "no credential was given"),
            ("s9", {"auth-file": str(wrong)},
             "the credential of user 'zkzeo' may not change")):
        stranger = ZKServer(tmp_path, name, zookeeper.address, zk_path,
                            zookeeper_options=options)
        stranger.launch()
        try:
            wait_for(lambda: not stranger.process.alive(),
                     f"the server with {options or 'no credential'} to exit")
            out = stranger.output()
            assert "NoAuth" in out and says in out, out
            assert "auth-file" in out and "Traceback" not in out, out
            assert "not-the-password" not in out
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
    for args in (["pause", zk_url],
                 ["switchover", zk_url, "--yes", "--to", "s2"],
                 ["promote", zk_url, "--force", "--yes", "--to", "s2"]):
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
    status, out, err = zkzeo_command("switchover", zk_url, "--yes",
                                     "--to", "s2", env=with_file)
    assert status == 0, out + err
    assert tree.state()["primary"] == "s2"
    wait_for(lambda: tree.by_name().get("s1", {}).get(
        "replication_state") == "following", "s1 to follow s2")
    status, out, err = zkzeo_command("promote", zk_url, "--force", "--yes",
                                     "--to", "s1",
                                     env={"ZKZEO_AUTH": CREDENTIAL})
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

    from zkzeo.zk import CredentialsError
    # Told which credential to give, not a bare NoAuthError.
    with pytest.raises(CredentialsError, match="NoAuth.*zookeeper_auth_file"):
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


# --- the settings, as tables ---------------------------------------------

def _has_puresasl():
    try:
        import puresasl  # noqa: F401
        return True
    except ImportError:
        return False


def test_settings_become_kazoo_arguments(tmp_path):
    auth_file = tmp_path / "auth"
    auth_file.write_text("u:p\n")
    auth_file.chmod(0o600)
    table = [
        (zkutil.Settings(), {}),
        (zkutil.settings(auth_file=str(auth_file)),
         {"auth_data": [("digest", "u:p")]}),
        (zkutil.Settings(use_ssl=True, ca="ca.pem"),
         {"use_ssl": True, "ca": "ca.pem", "verify_certs": True,
          "check_hostname": True}),
        (zkutil.Settings(use_ssl=True, certfile="c.pem", keyfile="c.key",
                         verify_certs=False),
         {"use_ssl": True, "certfile": "c.pem", "keyfile": "c.key",
          "verify_certs": False, "check_hostname": False}),
        (zkutil.Settings(use_ssl=True, check_hostname=False),
         {"use_ssl": True, "verify_certs": True, "check_hostname": False}),
    ]
    for settings, expected in table:
        assert settings.kazoo_arguments() == expected, settings
    acl = zkutil.Settings(auth="u:p", acl="world-read").kazoo_arguments()
    assert [(a.id.scheme, a.perms) for a in acl["default_acl"]] == [
        ("digest", 31), ("world", 1)]
    acl = zkutil.Settings(auth="u:p", acl="private").kazoo_arguments()
    assert [a.id.scheme for a in acl["default_acl"]] == ["digest"]
    if _has_puresasl():
        sasl = zkutil.Settings(auth="u:p", acl="world-read",
                               sasl_mechanism="digest-md5")
        args = sasl.kazoo_arguments()
        assert args["sasl_options"] == {"mechanism": "DIGEST-MD5",
                                        "username": "u", "password": "p"}
        assert "auth_data" not in args
        assert [(a.id.scheme, a.id.id) for a in args["default_acl"]] == [
            ("sasl", "u"), ("world", "anyone")]
    # The password stays out of reprs (and so out of logs).
    assert "p'" not in repr(zkutil.Settings(auth="u:p", acl="true"))


@pytest.mark.parametrize("kw, message", [
    ({"acl": "private"}, "acl private needs a credential"),
    ({"acl": "bogus", "auth": "u:p"}, "expected one of off, world-read"),
    ({"auth": "nopassword"}, "USER:PASSWORD"),
    ({"auth": "u:p", "auth_file": "/x"}, "not both"),
    ({"auth_file": "/no/such/file"}, "cannot read the ZooKeeper "
                                      "credentials file /no/such/file"),
    ({"ca": "ca.pem"}, "TLS is off"),
    ({"use_ssl": True, "keyfile": "k"}, "without its certificate"),
    ({"sasl_mechanism": "GSSAPI", "auth": "u:p"}, "only DIGEST-MD5"),
    ({"sasl_mechanism": "DIGEST-MD5"}, "needs a credential"),
])
def test_bad_settings_say_what_is_wrong(kw, message):
    with pytest.raises(ValueError, match=message):
        zkutil.settings(**kw)


def test_credentials_from_the_environment_and_keywords(tmp_path,
                                                       monkeypatch):
    auth_file = tmp_path / "auth"
    auth_file.write_text("env:file\n")
    auth_file.chmod(0o600)
    monkeypatch.setenv("ZKZEO_AUTH_FILE", str(auth_file))
    monkeypatch.setenv("ZKZEO_AUTH", "env:direct")
    kw = {"zookeeper_use_ssl": True, "read_only": True}
    assert zkutil.settings_from_kwargs(kw).auth == "env:file"
    assert kw == {"read_only": True}
    kw = {"zookeeper_auth": "kw:given"}
    assert zkutil.settings_from_kwargs(kw).auth == "kw:given"
    monkeypatch.delenv("ZKZEO_AUTH_FILE")
    assert zkutil.settings_from_kwargs({}).auth == "env:direct"
    assert zkutil.settings_from_kwargs(
        {"zookeeper_settings": zkutil.Settings(use_ssl=True)}).auth == \
        "env:direct"
    from zkzeo import cli
    args = cli.parser().parse_args(["status", "zk:/x", "--use-ssl",
                                    "--ca", "ca.pem"])
    settings = cli.connection_settings(args, environ={})
    assert settings.auth is None and settings.use_ssl
    assert settings.ca == "ca.pem" and settings.check_hostname
    args = cli.parser().parse_args(["--auth-file", str(auth_file),
                                    "--no-check-hostname", "--use-ssl",
                                    "status", "zk:/x"])
    settings = cli.connection_settings(args, environ={"ZKZEO_AUTH": "a:b"})
    assert settings.auth == "env:file" and not settings.check_hostname


def test_zookeeper_section_keys(tmp_path):
    import ZConfig
    from zkzeo.server import ZKZEOOptions
    auth_file = tmp_path / "auth"
    auth_file.write_text("u:p\n")
    auth_file.chmod(0o600)
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    schema = ZConfig.loadSchema(os.path.join(
        ZKZEOOptions.schemadir, "schema.xml"))
    conf = f"""
<zeo>
  address 127.0.0.1:0
</zeo>
<zookeeper>
  connection 127.0.0.1:2281
  path /db
  auth-file {auth_file}
  acl private
  use-ssl true
  ca {ca}
  check-hostname false
</zookeeper>
<filestorage>
  path {tmp_path}/Data.fs
</filestorage>
"""
    config, _ = ZConfig.loadConfigFile(schema, __import__("io").StringIO(
        conf))
    settings = config.zookeeper.settings
    assert settings.auth == "u:p" and settings.acl == "private"
    assert settings.kazoo_arguments()["ca"] == str(ca)
    assert settings.kazoo_arguments()["check_hostname"] is False
    bad = conf.replace("  auth-file", "  # auth-file")
    with pytest.raises(ZConfig.ConfigurationError,
                       match="acl private needs a credential"):
        ZConfig.loadConfigFile(schema, __import__("io").StringIO(bad))


def test_who_may_change_a_path():
    from kazoo.security import make_digest_acl
    me = zkutil.Settings(auth="me:pw")
    mine = make_digest_acl("me", "pw", all=True)
    other = make_digest_acl("other", "pw", all=True)
    world = ACL(Permissions.ALL, Id("world", "anyone"))
    world_read = ACL(Permissions.READ, Id("world", "anyone"))
    x509 = ACL(Permissions.ALL, Id("x509", "CN=admin"))
    table = [
        ([world], zkutil.NO_SETTINGS, True),
        ([world_read], zkutil.NO_SETTINGS, False),
        ([mine, world_read], me, True),
        ([mine, world_read], zkutil.NO_SETTINGS, False),
        ([other, world_read], me, False),
        ([x509, mine], me, True),
        ([x509, other], me, None),          # ZooKeeper decides
    ]
    for acls, settings, expected in table:
        assert zkutil._may_change(acls, settings) is expected, (acls,
                                                                 settings)

