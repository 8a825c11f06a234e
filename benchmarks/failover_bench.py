#!/usr/bin/env python3
"""Benchmark zkzeo failover and print figures an operator can read.

Every round starts a fresh cluster on this machine: a real ZooKeeper (one
for the whole run), and three ``zkrunzeo`` processes -- s1, which claims the
primary role, and the secondaries s2 and s3 -- under a fresh ZooKeeper path.
Clients run in this process (``zkzeo.DB(url, read_only_fallback=True)``).

Measured, each over --rounds rounds (median and max, in seconds):

1. Reads after a crash: SIGKILL of the primary -> the first successful
   read by a fallback client from a live server (its storage reconnected,
   then ``loadBefore`` of an object this client never loaded, so the read
   really goes to a server).
2. Writes after ``zkzeo promote``: the command is run in this process
   (``zkzeo.cli.main``) once the dead primary's ZooKeeper node is gone (the
   command refuses before); time from the command's start to the first
   successful commit of a fallback client that was running all along (it
   commits in a loop).  The time from the kill is shown too: it adds the
   ZooKeeper session timeout, which the operator waits for.
3. Write pause of ``zkzeo switchover``: a writer thread commits small
   transactions back to back; the longest gap between two successful
   commits around the command.
4. Automatic failover (``auto-failover`` in <zookeeper>): SIGKILL of the
   primary -> the first successful commit of a fallback client.  It is
   bounded below by the session timeout plus the grace period.

Scenarios 1 and 2 share a round (one kill); 3 and 4 get their own.

Usage::

    PYTHONPATH=. python benchmarks/failover_bench.py            # 5 rounds
    PYTHONPATH=. python benchmarks/failover_bench.py --quick    # 2 rounds
    PYTHONPATH=. python benchmarks/failover_bench.py --rounds 10 --keep

Progress goes to stderr, figures to stdout.  Every process is stopped at the
end, also on Ctrl-C or SIGTERM (the servers also get SIGTERM from Linux when
this process dies: PR_SET_PDEATHSIG; the ZooKeeper process does not, should
this process be SIGKILLed).  Server logs are searched for ERROR,
CRITICAL and Traceback; the work directory is kept when they hold any.
"""
import argparse
import contextlib
import io
import json
import logging
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback

import transaction
from persistent.mapping import PersistentMapping

import zkzeo
from zkzeo import cli, probe
from zkzeo import zk as zkutil
from zkzeo.zkserver import ZooKeeperServer

SERVER_START_TIMEOUT = 60.0
STEP_TIMEOUT = 60.0          # any single wait in a round
WRITE_TIMEOUT = 30.0         # for the first write after a change of primary
RETRY_PAUSE = 0.005          # between failed reads / commits
MAXTID = b"\xff" * 8
SETTLE_AFTER_SWITCHOVER = 1.0   # writer keeps going this long after it

TARGETS = {
    "read": 1.0,
    "promote": 2.0,
    "switchover": 2.0,
    "auto": None,
}

log = logging.getLogger("failover_bench")


# --- output ------------------------------------------------------------------

def progress(text):
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def out(text=""):
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def fmt(seconds):
    return "-" if seconds is None else f"{seconds:.3f}"


class WarningCounter(logging.Handler):
    """Warnings and errors logged in this process (the clients')."""

    def __init__(self):
        logging.Handler.__init__(self, logging.WARNING)
        self.counts = {}

    def emit(self, record):
        key = (record.levelname, record.name,
               re.sub(r"\d+", "N", record.getMessage())[:100])
        self.counts[key] = self.counts.get(key, 0) + 1


CLIENT_WARNINGS = WarningCounter()


# --- server processes --------------------------------------------------------

# The child asks Linux for SIGTERM when this process dies, then runs
# zkrunzeo's main (what `zkrunzeo -C zeo.conf` and
# `python -m zkzeo.server -C zeo.conf` run).
LAUNCHER = """\
import ctypes, os, runpy, signal, sys
parent = int(sys.argv.pop(1))
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))
except (OSError, AttributeError):
    pass
if os.getppid() != parent:
    sys.exit("the benchmark process is gone")
runpy.run_module("zkzeo.server", run_name="__main__", alter_sys=True)
"""

SERVER_CONFIG = """\
<zeo>
  address 127.0.0.1:0
</zeo>
<zookeeper>
  connection {connection}
  path {path}
  name {name}
  session-timeout {session_timeout:g}
{auto_failover}
</zookeeper>
<replication 1>
  replicate-from zk:
  replicate-to 127.0.0.1:0
  keep-alive-delay 0.5
  reconnect-max-delay 0.3
  <filestorage>
    path {dir}/Data.fs
    blob-dir {dir}/blobs
  </filestorage>
</replication>
<eventlog>
  level INFO
  <logfile>
    path {dir}/server.log
    format %(asctime)s %(levelname)s %(name)s %(message)s
  </logfile>
</eventlog>
"""


class Server:
    """A zkrunzeo process; its files in ``rounddir/name``."""

    running = []

    def __init__(self, rounddir, name, connection, path, session_timeout,
                 auto_failover=None):
        self.name = name
        self.dir = os.path.join(rounddir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.log_path = os.path.join(self.dir, "server.log")
        self.output_path = os.path.join(self.dir, "output.txt")
        self.config = os.path.join(self.dir, "zeo.conf")
        with open(self.config, "w") as f:
            f.write(SERVER_CONFIG.format(
                connection=connection, path=path, name=name,
                session_timeout=session_timeout, dir=self.dir,
                auto_failover=(f"  auto-failover {auto_failover:g}"
                               if auto_failover is not None else "")))
        self.popen = None

    def start(self):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        self._output = open(self.output_path, "ab")
        self.popen = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, str(os.getpid()),
             "-C", self.config],
            stdout=self._output, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=env,
            start_new_session=True)       # Ctrl-C is ours to handle
        Server.running.append(self)
        return self

    @property
    def pid(self):
        return self.popen.pid

    def log_text(self):
        try:
            with open(self.log_path, encoding="utf-8",
                      errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def tail(self, lines=15):
        try:
            with open(self.output_path, encoding="utf-8",
                      errors="replace") as f:
                output = f.read()
        except FileNotFoundError:
            output = ""
        return "\n".join((self.log_text() + output).splitlines()[-lines:])

    def wait_registered(self, timeout=SERVER_START_TIMEOUT):
        deadline = time.monotonic() + timeout
        while "registered" not in self.log_text():
            if self.popen.poll() is not None:
                raise BenchError(f"server {self.name} exited "
                                 f"({self.popen.returncode}):\n{self.tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"server {self.name} did not register "
                                 f"within {timeout:.0f}s:\n{self.tail()}")
            time.sleep(0.02)

    def kill(self):
        """SIGKILL, and reap it: when this returns it answers no one."""
        os.kill(self.popen.pid, signal.SIGKILL)
        self.popen.wait()

    def stop(self):
        """SIGTERM (a clean stop), SIGKILL after 20 s."""
        if self not in Server.running:
            return
        try:
            if self.popen.poll() is None:
                self.popen.terminate()
                try:
                    self.popen.wait(20)
                except subprocess.TimeoutExpired:
                    progress(f"  server {self.name} (pid {self.pid}) did not "
                             "stop within 20 s of SIGTERM: SIGKILL")
                    self.popen.kill()
                    self.popen.wait()
        finally:
            Server.running.remove(self)
            self._output.close()

    @classmethod
    def stop_all(cls):
        for server in list(reversed(cls.running)):
            try:
                server.stop()
            except BaseException:
                log.exception("could not stop server %s (pid %s)",
                              server.name, server.pid)


def cleanup(*steps):
    """Call every step (None: skipped), whatever the others raise."""
    for step in steps:
        if step is None:
            continue
        try:
            step()
        except Exception:
            log.exception("cleaning up: %r failed", step)
            progress(f"  (cleaning up: {step!r} failed; see client.log)")


class BenchError(Exception):
    """A round could not be measured; the sentence says why."""


def wait_until(condition, what, timeout=STEP_TIMEOUT, interval=0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for "
                             f"{what}")
        time.sleep(interval)


# --- a cluster of three ------------------------------------------------------

class Cluster:
    """s1 (primary), s2, s3 under ``path``, plus a kazoo client to look."""

    def __init__(self, rounddir, zk_address, path, session_timeout,
                 auto_failover=None):
        self.zk_address = zk_address
        self.path = path
        self.url = f"zk://{zk_address}{path}"
        self.servers = {
            name: Server(rounddir, name, zk_address, path, session_timeout,
                         auto_failover)
            for name in ("s1", "s2", "s3")}
        self.zk = None

    def start(self):
        self.zk = zkutil.start(zkutil.make_client(self.zk_address), 30)
        s1 = self.servers["s1"].start()
        s1.wait_registered()
        for name in ("s2", "s3"):
            self.servers[name].start()
        for name in ("s2", "s3"):
            self.servers[name].wait_registered()
        wait_until(lambda: sorted(
            (v["name"], v["role"]) for v in self.registered().values()) ==
            [("s1", "primary"), ("s2", "secondary"), ("s3", "secondary")],
            "s1 registered as primary, s2 and s3 as secondaries")
        return self

    def registered(self):
        """{child (HOST:PORT): data dict} of the registered servers."""
        out = {}
        try:
            children = self.zk.get_children(self.path)
        except Exception:
            return out
        for child in children:
            try:
                data, _ = self.zk.get(f"{self.path}/{child}")
                out[child] = json.loads(data)
            except Exception:
                continue
        return out

    def by_name(self):
        return {v["name"]: dict(v, address=k)
                for k, v in self.registered().items()}

    def state(self):
        data, _ = self.zk.get(self.path)
        return json.loads(data) if data else {}

    def address(self, name):
        child = self.by_name()[name]["address"]
        host, _, port = child.rpartition(":")
        return host, int(port)

    def wait_replicated(self, tid, names=("s2", "s3")):
        """Until every named server's last transaction is >= tid."""
        addresses = {n: self.address(n) for n in names}

        def caught_up():
            for address in addresses.values():
                status = probe.server_status(address, 5.0)
                if not status or bytes.fromhex(
                        status["last-transaction"]) < tid:
                    return False
            return True
        wait_until(caught_up, f"{', '.join(names)} to replicate {tid.hex()}",
                   interval=0.05)

    def stop(self):
        for server in reversed(list(self.servers.values())):
            try:
                server.stop()
            except BaseException:
                log.exception("could not stop %s", server.name)
        if self.zk is not None:
            zkutil.stop(self.zk)
            self.zk = None


class Timeline(threading.Thread):
    """Polls ZooKeeper every 20 ms from ``start`` and notes when the old
    primary's node went away, when another server was named primary, and
    when that server registered as primary."""

    def __init__(self, cluster, old="s1"):
        super().__init__(daemon=True, name="timeline")
        self.cluster = cluster
        self.old = old
        self.t0 = None
        self.events = {}
        self._halt = threading.Event()

    def begin(self):
        self.t0 = time.monotonic()
        self.start()

    def _note(self, what):
        self.events.setdefault(what, time.monotonic() - self.t0)

    def run(self):
        while not self._halt.is_set():
            try:
                servers = self.cluster.by_name()
                state = self.cluster.state()
            except Exception:
                servers, state = None, {}
            if servers is not None:
                if self.old not in servers:
                    self._note("old node gone")
                new = state.get("primary")
                if new and new != self.old:
                    self._note("new primary named")
                    if servers.get(new, {}).get("role") == "primary":
                        self._note("new primary registered")
            self._halt.wait(0.02)

    def finish(self):
        self._halt.set()
        if self.is_alive():
            self.join(5)
        return dict(self.events)


# --- clients -----------------------------------------------------------------

def fallback_db(url):
    return zkzeo.DB(url, read_only_fallback=True, wait_timeout=60)


class Committer:
    """Small transactions through one connection of ``db``."""

    def __init__(self, db):
        self.tm = transaction.TransactionManager()
        self.conn = db.open(self.tm)
        self.n = 0
        self.errors = {}

    def commit(self):
        """True on success; False (error counted) otherwise."""
        try:
            self.tm.begin()
            self.n += 1
            self.conn.root()["counter"] = self.n
            self.tm.commit()
            return True
        except Exception as e:
            name = type(e).__name__
            self.errors[name] = self.errors.get(name, 0) + 1
            try:
                self.tm.abort()
            except Exception:
                pass
            return False

    def commit_until_success(self, t0, timeout=STEP_TIMEOUT):
        """Seconds from t0 to the first successful commit."""
        deadline = time.monotonic() + timeout
        while True:
            if self.commit():
                return time.monotonic() - t0
            if time.monotonic() > deadline:
                raise BenchError(f"no successful commit within {timeout:.0f} s"
                                 f" (errors: {fmt_counts(self.errors)})")
            time.sleep(RETRY_PAUSE)

    def close(self):
        try:
            self.tm.abort()
        finally:
            self.conn.close()


def create_probe_object(url, round_no):
    """A new object, written by a separate client (so the measuring client
    has never loaded it, nor stored it in its cache); (oid, tid)."""
    db = zkzeo.DB(url, wait_timeout=60)
    try:
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        tm.begin()
        obj = PersistentMapping(round=round_no, payload="x" * 200)
        conn.root()[f"probe-{round_no}"] = obj
        tm.commit()
        oid, tid = obj._p_oid, obj._p_serial
        conn.close()
        return oid, tid
    finally:
        db.close()


def run_cli(argv):
    """zkzeo.cli.main(argv) with its output captured: (status, output)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(
            buffer):
        try:
            status = cli.main(argv)
        except SystemExit as e:
            status = e.code
        except Exception:
            traceback.print_exc()
            status = "exception"
    return status, buffer.getvalue()


def last_line_matching(text, pattern):
    found = [line for line in text.splitlines() if re.search(pattern, line)]
    return found[-1] if found else None


# --- scenarios ---------------------------------------------------------------

class Bench:

    def __init__(self, args, workdir, zk_address):
        self.args = args
        self.workdir = workdir
        self.zk_address = zk_address
        self.run_id = f"{os.getpid()}-{int(time.time())}"
        self.results = {k: [] for k in TARGETS}
        self.extra = {k: [] for k in TARGETS}   # per-round detail dicts
        self.failures = {k: [] for k in TARGETS}
        self.rounddirs = []

    def cluster(self, label, round_no, auto_failover=None):
        rounddir = os.path.join(self.workdir, f"{label}-{round_no}")
        self.rounddirs.append(rounddir)
        path = f"/bench/{self.run_id}/{label}-{round_no}"
        return Cluster(rounddir, self.zk_address, path,
                       self.args.session_timeout, auto_failover)

    # 1 and 2 ------------------------------------------------------------

    def crash_and_promote(self, round_no):
        cluster = self.cluster("crash-promote", round_no)
        db = None
        committer = None
        timeline = None
        try:
            cluster.start()
            db = fallback_db(cluster.url)
            storage = db.storage
            committer = Committer(db)
            committer.commit_until_success(time.monotonic())
            oid, tid = create_probe_object(cluster.url, round_no)
            cluster.wait_replicated(tid)
            wait_until(lambda: storage.is_connected() and
                       not storage.isReadOnly(),
                       "the fallback client to be connected to the primary")
            timeline = Timeline(cluster)

            # 1: SIGKILL -> first read from a live server.
            t_kill = time.monotonic()
            timeline.begin()
            cluster.servers["s1"].kill()
            read_errors = {}
            deadline = t_kill + STEP_TIMEOUT
            while True:
                if storage.is_connected():
                    try:
                        result = storage.loadBefore(oid, MAXTID)
                    except Exception as e:
                        name = type(e).__name__
                        read_errors[name] = read_errors.get(name, 0) + 1
                    else:
                        if result is None:
                            raise BenchError("the probe object is missing "
                                             "on the server read from")
                        t_read = time.monotonic() - t_kill
                        break
                if time.monotonic() > deadline:
                    raise BenchError("no successful read within "
                                     f"{STEP_TIMEOUT:.0f}s of the kill")
                time.sleep(RETRY_PAUSE)
            read_only = storage.isReadOnly()
            self.results["read"].append(t_read)
            self.extra["read"].append({"errors": read_errors,
                                       "read_only": read_only})
            progress(f"  round {round_no}: read {t_read:.3f} s after the kill"
                     f" (from a {'secondary' if read_only else 'primary?!'})")

            # 2: wait for the old node to go, then promote.
            wait_until(lambda: "s1" not in cluster.by_name(),
                       "the killed primary's node to disappear",
                       interval=0.01)
            t_gone = time.monotonic() - t_kill
            committer.errors = {}
            promote = {}

            def run_promote():
                promote["status"], promote["output"] = run_cli(
                    ["promote", cluster.url])
                promote["returned"] = time.monotonic()
            t_promote = time.monotonic()
            thread = threading.Thread(target=run_promote, daemon=True)
            thread.start()
            try:
                t_write = committer.commit_until_success(t_promote,
                                                         WRITE_TIMEOUT)
            except BenchError:
                t_write = None
            thread.join(STEP_TIMEOUT)
            events = timeline.finish()
            if thread.is_alive():
                raise BenchError("zkzeo promote did not return")
            if promote["status"] != 0:
                raise BenchError(f"zkzeo promote failed "
                                 f"({promote['status']}):\n"
                                 f"{promote['output']}")
            if t_write is None:
                said = last_line_matching(promote["output"], "accepts writes")
                raise BenchError(
                    f"no successful commit within {WRITE_TIMEOUT:.0f} s of "
                    f"'zkzeo promote', which succeeded ({said.strip()}): the "
                    f"fallback client stayed read-only (connected "
                    f"{storage.is_connected()}, read-only "
                    f"{storage.isReadOnly()}; errors "
                    f"{fmt_counts(committer.errors)})")
            self.results["promote"].append(t_write)
            self.extra["promote"].append({
                "from_kill": t_promote - t_kill + t_write,
                "node_gone": t_gone,
                "command": promote["returned"] - t_promote,
                "command_says": last_line_matching(promote["output"],
                                                   r"accepts writes"),
                "errors": dict(committer.errors),
                "events": events})
            progress(f"  round {round_no}: old node gone {t_gone:.2f} s after"
                     f" the kill; write {t_write:.3f} s after promote "
                     f"({t_promote - t_kill + t_write:.2f} s after the kill)")
        finally:
            cleanup(timeline and timeline.finish,
                    committer and committer.close, db and db.close,
                    cluster.stop)

    # 3 --------------------------------------------------------------------

    def switchover(self, round_no):
        cluster = self.cluster("switchover", round_no)
        db = None
        writer = None
        stop = threading.Event()
        try:
            cluster.start()
            db = fallback_db(cluster.url)
            committer = Committer(db)
            committer.commit_until_success(time.monotonic())
            successes = []

            def write():
                try:
                    while not stop.is_set():
                        if committer.commit():
                            successes.append(time.monotonic())
                        else:
                            time.sleep(RETRY_PAUSE)
                finally:
                    committer.close()
            writer = threading.Thread(target=write, daemon=True,
                                      name="writer")
            writer.start()
            wait_until(lambda: len(successes) >= 50,
                       "the writer to commit 50 transactions")
            tid = db.storage.lastTransaction()
            cluster.wait_replicated(tid)
            time.sleep(0.3)
            t0 = time.monotonic()
            status, output = run_cli(["switchover", "--yes", cluster.url])
            t1 = time.monotonic()
            if status != 0:
                raise BenchError(f"zkzeo switchover failed ({status}):\n"
                                 f"{output}")
            wait_until(lambda: successes and successes[-1] > t1,
                       "a commit after the switchover")
            time.sleep(SETTLE_AFTER_SWITCHOVER)
            stop.set()
            writer.join(STEP_TIMEOUT)
            times = list(successes)
            before = [b - a for a, b in zip(times, times[1:]) if b < t0]
            gaps = [(b - a, a) for a, b in zip(times, times[1:]) if b >= t0]
            pause, start = max(gaps)
            state = cluster.state()
            self.results["switchover"].append(pause)
            self.extra["switchover"].append({
                "command": t1 - t0,
                "command_says": last_line_matching(output, r"paused"),
                "pause_began": start - t0,
                "commits": len(times),
                "normal_gap": statistics.median(before) if before else None,
                "errors": dict(committer.errors),
                "new_primary": state.get("primary")})
            progress(f"  round {round_no}: longest gap {pause:.3f} s "
                     f"(command took {t1 - t0:.2f} s; new primary "
                     f"{state.get('primary')}; commit errors "
                     f"{committer.errors or 'none'})")
        finally:
            stop.set()
            cleanup(writer and (lambda: writer.join(STEP_TIMEOUT)),
                    db and db.close, cluster.stop)

    # 4 --------------------------------------------------------------------

    def auto_failover(self, round_no):
        cluster = self.cluster("auto", round_no,
                               auto_failover=self.args.auto_failover)
        db = None
        committer = None
        timeline = None
        try:
            cluster.start()
            db = fallback_db(cluster.url)
            storage = db.storage
            committer = Committer(db)
            committer.commit_until_success(time.monotonic())
            cluster.wait_replicated(storage.lastTransaction())
            wait_until(lambda: storage.is_connected() and
                       not storage.isReadOnly(),
                       "the fallback client to be connected to the primary")
            committer.errors = {}
            timeline = Timeline(cluster)
            t_kill = time.monotonic()
            timeline.begin()
            cluster.servers["s1"].kill()
            try:
                t_write = committer.commit_until_success(
                    t_kill, 10 + WRITE_TIMEOUT)
            except BenchError:
                events = timeline.finish()
                state = cluster.state()
                named = events.get("new primary registered")
                raise BenchError(
                    f"no successful commit within {10 + WRITE_TIMEOUT:.0f} s"
                    f" of the kill, although {state.get('primary')} "
                    + (f"registered as primary {named:.1f} s after it"
                       if named is not None else "was named primary")
                    + f": the fallback client stayed read-only (connected "
                    f"{storage.is_connected()}, read-only "
                    f"{storage.isReadOnly()}; errors "
                    f"{fmt_counts(committer.errors)})") from None
            # let the timeline see the registration if it has not yet
            wait_until(lambda: "new primary registered" in timeline.events,
                       "the new primary to register as primary")
            events = timeline.finish()
            state = cluster.state()
            self.results["auto"].append(t_write)
            self.extra["auto"].append({
                "events": events, "errors": dict(committer.errors),
                "new_primary": state.get("primary"),
                "epoch": state.get("epoch")})
            progress(f"  round {round_no}: write {t_write:.3f} s after the "
                     f"kill (old node gone {fmt(events.get('old node gone'))}"
                     f" s, {state.get('primary')} named primary "
                     f"{fmt(events.get('new primary named'))} s)")
        finally:
            cleanup(timeline and timeline.finish,
                    committer and committer.close, db and db.close,
                    cluster.stop)

    # ----------------------------------------------------------------------

    def run(self):
        plan = [("crash-promote", self.crash_and_promote, ("read", "promote")),
                ("switchover", self.switchover, ("switchover",)),
                ("auto-failover", self.auto_failover, ("auto",))]
        for label, method, keys in plan:
            progress(f"{label}: {self.args.rounds} rounds")
            for round_no in range(1, self.args.rounds + 1):
                try:
                    method(round_no)
                except Exception as e:
                    if isinstance(e, BenchError):
                        text = str(e)
                    else:
                        log.exception("%s round %d", label, round_no)
                        text = f"{type(e).__name__}: {e} (see client.log)"
                    progress(f"  round {round_no}: FAILED: {text}")
                    for key in keys:
                        if len(self.results[key]) + \
                                len(self.failures[key]) < round_no:
                            self.failures[key].append(text)


# --- report ------------------------------------------------------------------

def median_max(values):
    if not values:
        return None, None
    return statistics.median(values), max(values)


def report(bench, args):
    r, x = bench.results, bench.extra
    rows = [
        ("1. read after SIGKILL of the primary", "read",
         "1 s"),
        ("2. write after 'zkzeo promote'", "promote", "2 s"),
        ("3. write pause during 'zkzeo switchover'", "switchover", "2 s"),
        (f"4. write after SIGKILL, auto-failover {args.auto_failover:g} s",
         "auto", "report only"),
    ]
    out()
    out(f"zkzeo failover, {args.rounds} rounds per scenario, 1 primary + 2 "
        f"secondaries on this machine, ZooKeeper session timeout "
        f"{args.session_timeout:g} s")
    out()
    table = [("scenario", "median s", "max s", "target", "verdict",
              "rounds ok")]
    for title, key, target_text in rows:
        values = r[key]
        med, mx = median_max(values)
        target = TARGETS[key]
        n = len(values) + len(bench.failures[key])
        failed = len(bench.failures[key])
        if n == 0:
            verdict = "not run"
        elif not values:
            verdict = "FAILED"
        elif failed:
            verdict = f"FAILED in {failed}/{n}"
        elif target is None:
            verdict = "-"
        elif mx <= target:
            verdict = "ok"
        elif med <= target:
            over = sum(1 for v in values if v > target)
            verdict = f"over in {over}/{len(values)}"
        else:
            verdict = "OVER"
        rounds = f"{len(values)}/{n}"
        table.append((title, fmt(med), fmt(mx), target_text, verdict,
                      rounds))
    widths = [max(len(row[i]) for row in table) for i in range(6)]
    for i, row in enumerate(table):
        out("  ".join(cell.ljust(w) if j == 0 else cell.rjust(w)
                      if j in (1, 2) else cell.ljust(w)
                      for j, (cell, w) in enumerate(zip(row, widths)))
            .rstrip())
        if i == 0:
            out("  ".join("-" * w for w in widths))

    out()
    out("Details")
    if x["read"]:
        ro = sum(1 for d in x["read"] if d["read_only"])
        out(f"- 1: reads served by a secondary (read-only connection): "
            f"{ro}/{len(x['read'])} rounds; the read is loadBefore of an "
            "object the client never loaded, after storage.is_connected().")
    if x["promote"]:
        gone = median_max([d["node_gone"] for d in x["promote"]])
        from_kill = median_max([d["from_kill"] for d in x["promote"]])
        command = median_max([d["command"] for d in x["promote"]])
        out(f"- 2: the killed primary's node disappeared {fmt(gone[0])} s "
            f"(max {fmt(gone[1])}) after the kill: the session timeout "
            f"({args.session_timeout:g} s) the operator must wait before "
            "'zkzeo promote' (it refuses while the node is there).")
        out(f"     first write after the kill, wait included: "
            f"{fmt(from_kill[0])} s median, {fmt(from_kill[1])} s max; "
            f"the promote command itself returned after {fmt(command[0])} s"
            f" median, {fmt(command[1])} s max (run in-process: no "
            "interpreter start-up counted).")
        says = [d["command_says"] for d in x["promote"] if d["command_says"]]
        if says:
            out(f"     it says, e.g.: {says[0].strip()}")
        errors = merge([d["errors"] for d in x["promote"]])
        if errors:
            out(f"     failed commits while waiting (all rounds): "
                f"{fmt_counts(errors)}")
    if x["switchover"]:
        command = median_max([d["command"] for d in x["switchover"]])
        normal = [d["normal_gap"] for d in x["switchover"]
                  if d["normal_gap"] is not None]
        out(f"- 3: the switchover command took {fmt(command[0])} s median, "
            f"{fmt(command[1])} s max; between commits normally "
            f"{statistics.median(normal) * 1000:.1f} ms (median gap before "
            "the switchover)." if normal else
            f"- 3: the switchover command took {fmt(command[0])} s median.")
        says = [d["command_says"] for d in x["switchover"]
                if d["command_says"]]
        if says:
            out(f"     it says, e.g.: {says[0].strip()}")
        errors = merge([d["errors"] for d in x["switchover"]])
        if errors:
            out(f"     failed commits during the pause (all rounds): "
                f"{fmt_counts(errors)}")
    if x["auto"]:
        def ev(name):
            return median_max([d["events"][name] for d in x["auto"]
                               if name in d["events"]])
        gone, named, registered = (ev("old node gone"),
                                   ev("new primary named"),
                                   ev("new primary registered"))
        out(f"- 4: after the kill (median / max): old node gone "
            f"{fmt(gone[0])} / {fmt(gone[1])} s (session timeout "
            f"{args.session_timeout:g} s), new primary named "
            f"{fmt(named[0])} / {fmt(named[1])} s (+ grace "
            f"{args.auto_failover:g} s + election), registered as primary "
            f"{fmt(registered[0])} / {fmt(registered[1])} s, first write "
            f"{fmt(median_max(bench.results['auto'])[0])} / "
            f"{fmt(median_max(bench.results['auto'])[1])} s.")
        winners = merge([{d["new_primary"]: 1} for d in x["auto"]])
        out(f"     new primary: {fmt_counts(winners)}")
        errors = merge([d["errors"] for d in x["auto"]])
        if errors:
            out(f"     failed commits while waiting (all rounds): "
                f"{fmt_counts(errors)}")
    for key, failures in bench.failures.items():
        for failure in failures:
            out(f"- FAILED round ({key}): {failure.splitlines()[0]}")
    out(f"- Everything ran on one machine ({os.cpu_count()} CPUs): "
        "ZooKeeper, three servers and the clients.")


def merge(dicts):
    total = {}
    for d in dicts:
        for k, v in d.items():
            total[k] = total.get(k, 0) + v
    return total


def fmt_counts(counts):
    return ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()))


ENTRY_START = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)? "
                         r"(?P<level>[A-Z]+) (?P<logger>\S+) ?(?P<msg>.*)$")
FLOOD = 50          # a warning seen this often is reported too


def log_entries(lines):
    """(line index, level, logger, message, exception line) per entry: a
    timestamped line and the lines that follow it (a traceback); lines
    outside any entry (output.txt) count as entries of their own."""
    entries = []
    current = None
    for i, line in enumerate(lines):
        m = ENTRY_START.match(line)
        if m:
            current = [i, m.group("level"), m.group("logger"),
                       m.group("msg"), None, False]
            entries.append(current)
        elif current is not None and line.strip():
            if line.startswith("Traceback"):
                current[5] = True
            elif current[5] and not line.startswith((" ", "\t")):
                current[4] = line.strip()      # the exception, last wins
        elif line.strip():
            level = "TRACEBACK" if line.startswith("Traceback") else "OUTPUT"
            current = [i, level, "-", line.strip(), None, line.startswith(
                "Traceback")]
            entries.append(current)
    return [tuple(e[:5]) for e in entries]


def normalize(text):
    text = re.sub(r"/\S*/(?=[^/\s]+)", "", text)      # directories
    text = re.sub(r"0x[0-9a-f]+|[0-9a-f]{16}", "X", text)
    return re.sub(r"\d+", "N", text)


def scan_logs(rounddirs):
    """{(level, logger, message, exception): [(file, line)]} of the
    errors (ERROR, CRITICAL, tracebacks) and {same: [...]} of the
    warnings, in the servers' logs and outputs."""
    errors, warnings = {}, {}
    for rounddir in rounddirs:
        for name in ("s1", "s2", "s3"):
            for fname in ("server.log", "output.txt"):
                path = os.path.join(rounddir, name, fname)
                try:
                    with open(path, encoding="utf-8",
                              errors="replace") as f:
                        lines = f.read().splitlines()
                except FileNotFoundError:
                    continue
                for i, level, logger, msg, exc in log_entries(lines):
                    key = (level, logger, normalize(msg)[:110],
                           normalize(exc)[:110] if exc else None)
                    if level in ("ERROR", "CRITICAL", "TRACEBACK") or exc:
                        errors.setdefault(key, []).append((path, i))
                    elif level == "WARNING":
                        warnings.setdefault(key, []).append((path, i))
    return errors, warnings


def report_logs(bench, workdir):
    errors, warnings = scan_logs(bench.rounddirs)
    floods = {k: v for k, v in warnings.items() if len(v) >= FLOOD}
    out()
    if not errors:
        out("Server logs: no ERROR, CRITICAL or Traceback.")
    else:
        files = {p for where in errors.values() for p, _ in where}
        out(f"Server logs with ERROR, CRITICAL or Traceback: {len(files)} "
            f"files of {3 * len(bench.rounddirs)} servers (kept in "
            f"{workdir}):")
    for title, kinds in (("", errors),
                         (f"Warnings logged {FLOOD} times or more:", floods)):
        if kinds and title:
            out(title)
        for key, where in sorted(kinds.items(), key=lambda kv: -len(kv[1])):
            level, logger, msg, exc = key
            path, i = where[0]
            nfiles = len({p for p, _ in where})
            out(f"- {len(where)}x in {nfiles} file(s), first "
                f"{os.path.relpath(path, workdir)}:{i + 1}")
            with open(path, encoding="utf-8", errors="replace") as f:
                first = f.read().splitlines()[i]
            first = first.replace(workdir + os.sep, "")
            out(f"    {first[:200]}")
            if exc:
                out(f"    ... {exc[:140]}")
    if CLIENT_WARNINGS.counts:
        out()
        out("In this process (the clients; expected while servers die or "
            "change roles; full text in client.log):")
        for (level, name, message), n in sorted(
                CLIENT_WARNINGS.counts.items(), key=lambda kv: -kv[1])[:8]:
            out(f"- {n}x {level} {name}: {message[:110]}")
    return bool(errors or floods)


# --- main --------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5,
                   help="rounds per scenario (default 5)")
    p.add_argument("--quick", action="store_true", help="2 rounds")
    p.add_argument("--session-timeout", type=float, default=2.0,
                   help="the servers' ZooKeeper session timeout, seconds "
                   "(default 2)")
    p.add_argument("--auto-failover", type=float, default=1.0,
                   help="grace period of scenario 4, seconds (default 1)")
    p.add_argument("--workdir", help="where to put the clusters' files "
                   "(default: a new temporary directory)")
    p.add_argument("--keep", action="store_true",
                   help="keep the work directory")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds = 2
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    return args


_interrupted = []


def _interrupt(signum, frame):
    """Ctrl-C or SIGTERM: stop the run once; a second signal must not
    interrupt the cleanup that stops the servers."""
    if not _interrupted:
        _interrupted.append(signum)
        raise KeyboardInterrupt


def main(argv=None):
    args = parse_args(argv)
    # also when started in the background, where SIGINT comes ignored
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
        workdir = tempfile.mkdtemp(prefix="failover-bench-",
                                   dir=args.workdir)
    else:
        workdir = tempfile.mkdtemp(prefix="failover-bench-")
    handler = logging.FileHandler(os.path.join(workdir, "client.log"))
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    root.addHandler(CLIENT_WARNINGS)
    progress(f"work directory {workdir}")
    zookeeper = None
    keep = args.keep
    bench = None
    try:
        zookeeper = ZooKeeperServer(os.path.join(workdir, "zookeeper"))
        zookeeper.start()
        progress(f"ZooKeeper on {zookeeper.address}")
        bench = Bench(args, workdir, zookeeper.address)
        bench.run()
        report(bench, args)
    except KeyboardInterrupt:
        progress("interrupted: stopping every process")
        keep = True
        if bench is not None and any(bench.results.values()):
            out("(interrupted: figures of the rounds done so far)")
            report(bench, args)
        return 130
    finally:
        Server.stop_all()
        if zookeeper is not None:
            zookeeper.stop()
        if bench is not None:
            keep = report_logs(bench, workdir) or keep
        root.removeHandler(handler)
        handler.close()
        if keep:
            progress(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    try:
        status = main()
    except SystemExit as e:             # --help, usage errors
        status = e.code if isinstance(e.code, int) else int(e.code is not None)
    except BaseException:
        traceback.print_exc()
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    if any(t.is_alive() and not t.daemon and t is not threading.main_thread()
           for t in threading.enumerate()):
        # a client thread left behind (after an error) must not keep this
        # process alive: every server is stopped already
        os._exit(status)
    sys.exit(status)
