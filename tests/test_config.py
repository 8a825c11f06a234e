"""ZConfig: the <replication> and <zrs> sections, and bad configurations."""
import os
import re
import subprocess
import sys

import pytest
import ZConfig
import ZODB.config

from replication import Role


def storage(tmp_path, body, section="replication"):
    return ZODB.config.storageFromString(f"""
%import replication
<{section}>
  {body}
  <filestorage>
    path {tmp_path}/Data.fs
  </filestorage>
</{section}>
""")


def test_primary_and_secondary_sections(tmp_path):
    primary = storage(tmp_path, "replicate-to 127.0.0.1:0\n"
                      "sync-replicas 1\nsync-timeout 0.5")
    try:
        assert primary.role is Role.PRIMARY
        assert primary.sync_replicas == 1 and primary.sync_timeout == 0.5
        (tmp_path / "s").mkdir()
        host, port = primary.replication_address
        secondary = storage(tmp_path / "s", f"replicate-from {host}:{port}\n"
                            "keep-alive-delay 0.25", section="zrs")
        assert secondary.role is Role.SECONDARY
        assert secondary.follower.keep_alive_delay == 0.25
        secondary.close()
    finally:
        primary.close()


@pytest.mark.parametrize("body, message", [
    ("", "set replicate-to (a primary) or replicate-from (a secondary)"),
    ("replicate-from 127.0.0.1:1\nsync-replicas 1",
     "sync-replicas is a primary's setting"),
    ("replicate-to 127.0.0.1:notaport", "expected HOST:PORT"),
    ("replicate-to 127.0.0.1:99999", "port out of range"),
    ("replicate-to 127.0.0.1:0\nno-such-key 1", "no-such-key"),
])
def test_bad_configuration_says_what_is_wrong(tmp_path, body, message):
    with pytest.raises(ZConfig.ConfigurationError, match=re.escape(message)):
        storage(tmp_path, body)
    assert not os.path.exists(tmp_path / "Data.fs.lock")


def test_bad_server_configuration_fails_with_a_message(tmp_path):
    conf = tmp_path / "zeo.conf"
    conf.write_text(f"""
%import replication
<zeo>
  address 127.0.0.1:0
</zeo>
<replication 1>
  replicate-too 127.0.0.1:0
  <filestorage>
    path {tmp_path}/Data.fs
  </filestorage>
</replication>
""")
    result = subprocess.run(
        [sys.executable, "-m", "replication.runzeo", "-C", str(conf)],
        capture_output=True, text=True, timeout=60,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert result.returncode != 0
    assert "replicate-too" in result.stderr
    assert not os.path.exists(tmp_path / "Data.fs")


def test_demo_shows_data_replicating(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "replication.demo", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=120,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("the secondary's read-only client saw it") \
        == 5
    assert "blob: 'blob 5'" in result.stdout
