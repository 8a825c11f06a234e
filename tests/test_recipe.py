"""The zc.buildout recipe: a real buildout, offline, with the packages of
this environment; the generated control script runs a registered server."""
import os
import subprocess
import sys

from tests.support import Process, wait_for
from tests.zk_servers import Tree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_buildout_lays_out_a_server_that_zdaemon_runs(tmp_path, zookeeper,
                                                     zk_path):
    auth_file = tmp_path / "zookeeper.auth"
    auth_file.write_text("db1:secret\n")
    auth_file.chmod(0o600)
    (tmp_path / "buildout.cfg").write_text(f"""
[buildout]
develop = {ROOT}
parts = db1 test
offline = true

[test]
recipe = zkzeo:test
tests = {ROOT}/tests/test_layout.py

[db1]
recipe = zkzeo:server
zookeeper = {zookeeper.address}
zookeeper-path = {zk_path}
sync-replicas = 0
auto-failover = 5
zookeeper-auth-file = {auth_file}
zookeeper-check-hostname = off
zookeeper-acl = world-read
""")
    buildout = os.path.join(os.path.dirname(sys.executable), "buildout")
    result = subprocess.run([buildout, "-c", str(tmp_path / "buildout.cfg")],
                            cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    tests = subprocess.run([str(tmp_path / "bin" / "test"), "-q"],
                           capture_output=True, text=True, timeout=300)
    assert tests.returncode == 0 and " passed" in tests.stdout, \
        tests.stdout + tests.stderr
    conf = (tmp_path / "parts" / "db1" / "zeo.conf").read_text()
    assert f"path {zk_path}" in conf and "auto-failover 5" in conf
    assert f"auth-file {auth_file}" in conf and "acl world-read" in conf
    assert "secret" not in conf
    control = str(tmp_path / "bin" / "db1")
    tree = Tree(zookeeper.address, zk_path)
    try:
        started = subprocess.run([control, "start"], capture_output=True,
                                 text=True, timeout=120)
        assert started.returncode == 0, started.stdout + started.stderr
        wait_for(lambda: tree.by_name().get("db1", {}).get("role") ==
                 "primary", "the buildout's server to register as primary")
        status = subprocess.run([control, "status"], capture_output=True,
                                text=True, timeout=60)
        assert "program running" in status.stdout
        acls, _ = tree.zk.get_acls(zk_path)      # protected by the credential
        assert {a.id.scheme for a in acls} == {"digest", "world"}
        # logtail follows the server's log (plone.recipe.zeoserver's habit)
        logtail = Process([control, "logtail"], tmp_path / "logtail.out")
        try:
            wait_for(lambda: "db1" in logtail.output(),
                     "logtail to show the server's log")
        finally:
            logtail.kill()
        zeopack = tmp_path / "bin" / "db1-zeopack"
        assert f"'--auth-file', '{auth_file}', '--no-check-hostname'" \
            in zeopack.read_text()
        packed = subprocess.run([str(zeopack)],
                                capture_output=True, text=True, timeout=120)
        assert packed.returncode == 0, packed.stdout + packed.stderr
    finally:
        subprocess.run([control, "stop"], capture_output=True, timeout=120)
    assert "db1" not in tree.by_name()         # stopped cleanly
    tree.close()


def run_buildout(tmp_path, cfg):
    (tmp_path / "buildout.cfg").write_text(cfg)
    buildout = os.path.join(os.path.dirname(sys.executable), "buildout")
    result = subprocess.run([buildout, "-c", str(tmp_path / "buildout.cfg")],
                            cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def realize(conf):
    """The options zkrunzeo would run with: its own schema parses the
    generated file (no server is started)."""
    from zkzeo.server import ZKZEOOptions
    options = ZKZEOOptions()
    options.realize(["-C", str(conf)])
    return options


def test_every_zkzeo_setting_is_a_recipe_option(tmp_path):
    secret = tmp_path / "replication.secret"
    secret.write_text("s" * 32 + "\n")
    secret.chmod(0o600)
    resolver = tmp_path / "resolver"            # conflict-resolution code
    (resolver / "resolver").mkdir(parents=True)
    (resolver / "resolver" / "__init__.py").write_text("")
    (resolver / "setup.py").write_text(
        "from setuptools import setup\n"
        "setup(name='resolver', version='1', packages=['resolver'])\n")
    output = run_buildout(tmp_path, f"""
[buildout]
develop = {ROOT} {resolver}
parts = db1
offline = true

[db1]
recipe = zkzeo:server
zookeeper = 127.0.0.1:2181
zookeeper-path = /databases/main
sync-replicas = 1
sync-timeout = 3.5
sync-block = true
rewind-divergent = true
replicate-blobs = false
keep-alive-delay = 2.5
reconnect-max-delay = 7
secret-file = {secret}
max-connections = 9
handshake-timeout = 4
advertise-host = db1.example.com
auto-failover = 5
session-timeout = 12
log-level = DEBUG
log-max-size = 1MB
log-old-files = 3
effective-user = zope
eggs = resolver
pack-days = 7
pack-gc = false
zeo-conf-additional =
    %define EXTRA 1
""")
    assert "Unused option" not in output, output
    var = tmp_path / "var"
    part = tmp_path / "parts" / "db1"
    options = realize(part / "zeo.conf")
    replication = options.storages[0].config
    assert (replication.sync_replicas, replication.sync_timeout,
            replication.sync_block, replication.rewind_divergent,
            replication.replicate_blobs, replication.keep_alive_delay,
            replication.reconnect_max_delay, replication.secret_file,
            replication.max_connections, replication.handshake_timeout) == (
                1, 3.5, True, True, False, 2.5, 7.0, str(secret), 9, 4.0)
    assert replication.base.config.path == str(
        var / "filestorage" / "db1" / "Data.fs")
    assert replication.base.config.blob_dir == str(var / "blobstorage" / "db1")
    assert replication.base.config.pack_gc is False
    zookeeper = options.zookeeper
    assert (zookeeper.auto_failover, zookeeper.session_timeout,
            zookeeper.advertise_host) == (5.0, 12.0, "db1.example.com")
    conf = (part / "zeo.conf").read_text()
    assert "level DEBUG" in conf and "max-size 1MB" in conf
    assert "old-files 3" in conf and conf.rstrip().endswith("%define EXTRA 1")
    assert "user zope" in (part / "zdaemon.conf").read_text()
    server = (tmp_path / "bin" / "db1-server").read_text()
    assert str(resolver) in server           # eggs on the server's path
    zeopack = (tmp_path / "bin" / "db1-zeopack").read_text()
    assert "'pack', 'zk://127.0.0.1:2181/databases/main', '--days', '7'" \
        in zeopack
    assert (tmp_path / "bin" / "repozo").exists()


def test_a_plone_recipe_zeoserver_part_is_mapped_or_warned(tmp_path):
    output = run_buildout(tmp_path, f"""
[buildout]
develop = {ROOT}
parts = zeoserver
offline = true

[zeoserver]
recipe = zkzeo:server
zookeeper = 127.0.0.1:2181
zookeeper-path = /databases/plone
zeo-address = 127.0.0.1:8100
zeo-log = {tmp_path}/var/log/zeoserver.log
zeo-log-level = WARNING
zeo-log-max-size = 2MB
zeo-log-old-files = 4
blob-storage = {tmp_path}/var/blobs
pack-days = 3
monitor-address = 8101
authentication-database = {tmp_path}/auth
invalidation-queue-size = 1000
""")
    for plone, advice in (("monitor-address", "zkzeo metrics"),
                          ("authentication-database", "secret-file"),
                          ("invalidation-queue-size", "not supported")):
        assert f"{plone} (plone.recipe.zeoserver) is ignored" in output \
            and advice in output, output
    assert "Unused option" not in output, output
    options = realize(tmp_path / "parts" / "zeoserver" / "zeo.conf")
    assert options.address[1] == 8100
    replication = options.storages[0].config
    assert replication.base.config.blob_dir == str(tmp_path / "var" / "blobs")
    assert replication.base.config.path == str(
        tmp_path / "var" / "filestorage" / "zeoserver" / "Data.fs")
    conf = (tmp_path / "parts" / "zeoserver" / "zeo.conf").read_text()
    assert f"path {tmp_path}/var/log/zeoserver.log" in conf
    assert "level WARNING" in conf and "max-size 2MB" in conf
    assert "old-files 4" in conf
    assert "'--days', '3'" in (tmp_path / "bin" / "zeoserver-zeopack").read_text()
