"""The zc.buildout recipe: a real buildout, offline, with the packages of
this environment; the generated control script runs a registered server."""
import os
import subprocess
import sys

from tests.support import wait_for
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
    finally:
        subprocess.run([control, "stop"], capture_output=True, timeout=120)
    assert "db1" not in tree.by_name()         # stopped cleanly
    tree.close()
