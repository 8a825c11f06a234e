"""The short form of the crash-and-freeze suite (benchmarks/chaos.py).

Four cycles, one of each kind that has broken promises before: SIGKILL of
the primary, SIGSTOP of the primary past its session timeout, SIGKILL of a
secondary, SIGSTOP of ZooKeeper; under sync-replicas 1 with sync-block.
The harness runs as a child process (it kills and freezes its own
ZooKeeper, so it cannot share the session's); its figures come back as
JSON, and its printed summary is shown when a figure is wrong.
"""
import json
import os
import signal
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
CHAOS = os.path.join(os.path.dirname(HERE), "benchmarks", "chaos.py")
FAULTS = "primary-kill,primary-stop,secondary-kill,zookeeper-stop"
RUN_TIMEOUT = 240


@pytest.mark.xfail(strict=False, reason=(
    "issue 9: failover does not yet keep its promises under faults (late "
    "acknowledgements after a pause, double elections, servers that never "
    "replicate again after a crash, clients stuck on a frozen primary); "
    "remove this mark once the HA core lands"))
def test_short_chaos_run_keeps_every_promise(tmp_path):
    figures_path = tmp_path / "figures.json"
    command = [sys.executable, CHAOS, "--cycles", "4", "--faults", FAULTS,
               "--seed", "9", "--writers", "3", "--heal-timeout", "20",
               "--stuck-after", "10", "--run-between", "1",
               "--directory", str(tmp_path / "run"),
               "--json", str(figures_path)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path
                                                       if p))
    process = subprocess.Popen(command, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, env=env, text=True)
    try:
        output, _ = process.communicate(timeout=RUN_TIMEOUT)
    finally:
        if process.poll() is None:
            # SIGTERM stops the harness like Ctrl-C: it stops its children.
            process.send_signal(signal.SIGTERM)
            try:
                process.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()      # its children get SIGKILL from Linux
                process.communicate()
    assert figures_path.exists(), f"the harness printed no figures:\n{output}"
    figures = json.loads(figures_path.read_text())
    summary = f"\n{output}"
    assert figures["interrupted"] is None, summary
    assert figures["acknowledged"] > 0, summary
    assert figures["lost"] == 0, summary
    assert figures["late_acks"] == 0, summary
    assert figures["double_elections"] == 0, summary
    assert figures["stuck_servers"] == 0, summary
    assert figures["stuck_clients"] == 0, summary
    assert figures["replicas_identical"] is True, summary
    assert figures["settled"] is True, summary
    assert process.returncode == 0, summary
