"""The short form of the crash-and-freeze suite (benchmarks/chaos.py).

Four cycles, one of each kind that has broken promises before: SIGKILL of
the primary, SIGSTOP of the primary past its session timeout, SIGKILL of a
secondary, SIGKILL of ZooKeeper; under sync-replicas 1 with sync-block.
The harness runs as a child process (it kills and freezes its own
ZooKeeper, so it cannot share the session's); its figures come back as
JSON, and its printed summary is shown when a figure is wrong.
"""
import json
import os
import signal
import subprocess
import sys


HERE = os.path.dirname(os.path.abspath(__file__))
CHAOS = os.path.join(os.path.dirname(HERE), "benchmarks", "chaos.py")
FAULTS = "primary-kill,primary-stop,secondary-kill,zookeeper-kill"
RUN_TIMEOUT = 240


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


# --- the instrument's own checks ----------------------------------------------

def _chaos_support():
    sys.path.insert(0, os.path.dirname(CHAOS))
    try:
        import chaos_support
    finally:
        sys.path.remove(os.path.dirname(CHAOS))
    return chaos_support


def _commit(path, **values):
    import ZODB
    import transaction
    db = ZODB.DB(path)
    try:
        with db.transaction() as conn:
            conn.root().update(values)
    finally:
        db.close()
        transaction.abort()


def test_replica_comparison_sees_every_kind_of_difference(tmp_path):
    import shutil
    support = _chaos_support()
    a, b = str(tmp_path / "a.fs"), str(tmp_path / "b.fs")
    _commit(a, x=1)
    shutil.copyfile(a, b)
    same = {"a": support.read_history(a), "b": support.read_history(b)}
    assert len(same["a"]) == 2          # the root's creation, then x
    assert support.compare_histories(same) is None

    _commit(a, y=2)                     # a has one transaction more
    longer = {"a": support.read_history(a), "b": support.read_history(b)}
    assert support.compare_histories(longer) == (
        "a has 3 transactions, b 2 (the first 2 agree)")

    _commit(b, y=3)                     # same count, another transaction
    forked = {"a": support.read_history(a), "b": support.read_history(b)}
    assert support.compare_histories(forked).startswith(
        "a and b differ at transaction #2: different transactions")

    history = support.read_history(a)
    tid, _ = history[-1]                # same tid, other records
    changed = {"a": history, "b": history[:-1] + [(tid, "0" * 32)]}
    assert support.compare_histories(changed).startswith(
        "a and b differ at transaction #2: different contents")
