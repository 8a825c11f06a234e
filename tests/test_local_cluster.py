"""The README's local cluster: zdaemon-run ZooKeeper and zkrunzeo servers,
a narrated failover, and a stop that leaves no process behind."""
import os
import shutil
import subprocess
import sys

import pytest


def processes_under(directory):
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
        except OSError:
            continue
        if str(directory) in cmdline:
            found.append((pid, cmdline.replace("\0", " ")))
    return found


def assert_private(url, auth_file):
    from kazoo.client import KazooClient
    from kazoo.exceptions import NoAuthError

    from zkzeo.layout import parse_url
    hosts, path = parse_url(url)
    for auth in (None, [("digest", auth_file.read_text().strip())]):
        client = KazooClient(hosts=hosts, auth_data=auth)
        client.start(timeout=30)
        try:
            if auth is None:
                with pytest.raises(NoAuthError):
                    client.get_children(path)
            else:
                assert len(client.get_children(path)) == 3
        finally:
            client.stop()
            client.close()


def run(*args):
    return subprocess.run(
        [sys.executable, "-m", "zkzeo.local", *args], capture_output=True,
        text=True, timeout=300,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))


def test_start_demo_stop(tmp_path):
    directory = tmp_path / "cluster"
    try:
        result = run("start", str(directory))
        assert result.returncode == 0, result.stderr + result.stdout
        out = result.stdout
        assert "applications use: zk://127.0.0.1:" in out
        assert "primary s1, epoch 1" in out
        table = [line.split() for line in out.splitlines()
                 if line.startswith("s") and "127.0.0.1:" in line]
        assert sorted(row[2] for row in table) == [
            "primary", "secondary", "secondary"]
        assert [row[-2] for row in table] == ["0.000s"] * 3   # caught up
        # Secure by default: a private credential, nodes only it may read.
        auth_file = directory / "zookeeper.auth"
        assert f"zookeeper_auth_file={str(auth_file)!r}" in out
        assert f"export ZKZEO_AUTH_FILE={auth_file}" in out
        assert auth_file.stat().st_mode & 0o077 == 0
        assert_private(out.split("applications use: ")[1].split()[0],
                       auth_file)
        # Replication needs a shared secret too (the demo below fails over,
        # so the secondaries really replicate with it).
        secret = directory / "replication.secret"
        assert secret.stat().st_mode & 0o077 == 0
        assert f"secret-file {secret}" in (directory / "s1" /
                                           "zeo.conf").read_text()
        # and TLS with the cluster's own CA, where openssl is installed.
        if shutil.which("openssl"):
            conf = (directory / "s2" / "zeo.conf").read_text()
            assert "<replication-ssl>" in conf
            assert (directory / "tls" / "ca.key").stat().st_mode & 0o077 == 0
        assert "Traceback" not in result.stdout + result.stderr
        for name in ("s1", "s2", "s3"):
            status = subprocess.run(
                [sys.executable, "-m", "zdaemon", "-C",
                 str(directory / name / "zdaemon.conf"), "status"],
                capture_output=True, text=True)
            assert "program running" in status.stdout
        result = run("demo", str(directory))
        assert result.returncode == 0, result.stderr + result.stdout
        assert "the same client writes again" in result.stdout
        assert "epoch 2" in result.stdout
    finally:
        run("stop", str(directory))
    assert processes_under(directory) == []
