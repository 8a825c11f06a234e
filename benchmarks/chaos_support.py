"""Processes, observation and checks for the crash-and-freeze suite
(``chaos.py``).

- ``Child``: a process the harness started, its output in a log file.  It
  asks Linux for SIGKILL when the harness dies (PR_SET_PDEATHSIG), so not
  even a SIGKILLed harness leaves servers behind; ``stop_all()`` stops every
  child in a ``finally``.
- ``ZooKeeper`` and ``Server``: a real standalone ZooKeeper and a real
  ``zkrunzeo``, each killed (SIGKILL), frozen (SIGSTOP) and restarted.
- ``Watch``: a kazoo client in a thread that records every change of the
  cluster state (who is primary, in which epoch) and the servers' nodes.
- ``Writer``: a ``chaos_writer.py`` process and its log of acknowledged
  commits.
- ``read_history``: a Data.fs, transaction by transaction, as comparable
  digests (for replicas and for the ``Data.fs.divergent-*`` files).
"""
import bisect
import glob
import hashlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time

from kazoo.client import KazooClient
from kazoo.retry import KazooRetry

from zkzeo.conffiles import server_config
from zkzeo.zkserver import ZooKeeperServer

log = logging.getLogger("chaos")
HERE = os.path.dirname(os.path.abspath(__file__))

# A child asks for SIGKILL when the harness dies, then runs its program.
LAUNCHER = """\
import ctypes, os, runpy, signal, sys
parent = int(sys.argv.pop(1))
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))
except (OSError, AttributeError):
    pass
if os.getppid() != parent:
    sys.exit("the chaos harness is gone")
what = sys.argv.pop(1)
if what.endswith(".py"):
    sys.argv[0] = what
    runpy.run_path(what, run_name="__main__")
else:
    sys.argv[0] = what
    runpy.run_module(what, run_name="__main__", alter_sys=True)
"""


class HarnessError(Exception):
    """The harness could not go on; the sentence says why."""


def wait_until(condition, what, timeout, interval=0.05):
    """The first true value of condition(), or HarnessError after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise HarnessError(f"timed out after {timeout:g}s waiting for "
                               f"{what}")
        time.sleep(interval)


class Child:
    """A child process; its stdout and stderr go to ``log_path``."""

    running = []

    def __init__(self, args, log_path, python=True):
        self.log_path = log_path
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        if python:
            args = [sys.executable, "-c", LAUNCHER, str(os.getpid())] + args
        with open(log_path, "ab") as out:
            self.popen = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=env,
                start_new_session=True,       # Ctrl-C is the harness's
                preexec_fn=None if python else _die_with_parent)
        self.paused = False
        Child.running.append(self)

    @property
    def pid(self):
        return self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def signal(self, signum):
        if self.alive():
            os.kill(self.pid, signum)

    def kill(self):
        """SIGKILL and reap: when this returns, it answers no one."""
        self.signal(signal.SIGKILL)
        self.popen.wait()
        self.paused = False
        self._forget()

    def pause(self):
        self.signal(signal.SIGSTOP)
        self.paused = True

    def resume(self):
        self.signal(signal.SIGCONT)
        self.paused = False

    def stop(self, timeout=20.0):
        """SIGTERM (a clean stop), SIGKILL after ``timeout``; True if it
        stopped by itself."""
        clean = True
        if self.alive():
            self.resume()
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                clean = False
                self.popen.kill()
                self.popen.wait()
        self._forget()
        return clean

    def _forget(self):
        if self in Child.running:
            Child.running.remove(self)

    @classmethod
    def stop_all(cls):
        for child in list(reversed(cls.running)):
            try:
                child.stop(timeout=10)
            except BaseException:
                log.exception("could not stop pid %s", child.pid)


def _die_with_parent():
    import ctypes
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))
    except (OSError, AttributeError):
        pass


def read_text(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


class ZooKeeper:
    """A standalone ZooKeeper on a fixed port, restartable on its data."""

    def __init__(self, directory):
        self.config = ZooKeeperServer(directory)
        self.address = self.config.address
        self.child = None

    def start(self, timeout=60):
        self.child = Child(self.config.command(), self.config.log_path,
                           python=False)
        wait_until(lambda: self._answers_or_raise(),
                   f"ZooKeeper to answer on {self.address}", timeout)

    def _answers_or_raise(self):
        if not self.child.alive():
            raise HarnessError("ZooKeeper exited; its log:\n" +
                               self.config.log_text()[-3000:])
        return self.config.answers()

    def __getattr__(self, name):        # kill, pause, resume, stop, alive
        return getattr(self.child, name)


class Server:
    """A zkrunzeo process in ``directory/name`` (Data.fs, logs, zeo.conf);
    each start logs to a new file ``server-N.log``."""

    def __init__(self, directory, name, zookeeper, path, session_timeout,
                 zookeeper_options, replication_options):
        self.name = name
        self.dir = os.path.join(directory, name)
        os.makedirs(self.dir, exist_ok=True)
        self.data_fs = os.path.join(self.dir, "Data.fs")
        self.config = os.path.join(self.dir, "zeo.conf")
        with open(self.config, "w") as f:
            f.write(server_config(
                zookeeper, path, name, self.data_fs,
                session_timeout=session_timeout,
                zookeeper_options=zookeeper_options,
                replication_options=replication_options))
        self.starts = 0
        self.child = None

    def start(self):
        self.starts += 1
        self.child = Child(
            ["zkzeo.server", "-C", self.config],
            os.path.join(self.dir, f"server-{self.starts}.log"))
        return self

    def logs(self):
        """[(start number, text)] of every start's log."""
        return [(n, read_text(os.path.join(self.dir, f"server-{n}.log")))
                for n in range(1, self.starts + 1)]

    def divergent_files(self):
        return sorted(glob.glob(self.data_fs + ".divergent-*"))

    def __getattr__(self, name):        # kill, pause, resume, stop, alive
        return getattr(self.child, name)


class Watch:
    """Records the cluster state and the servers' nodes, polling ZooKeeper
    every ``interval`` seconds from a thread (each call with a timeout, so
    a dead or frozen ZooKeeper only makes it miss a beat).  Epochs grow by
    one per change of primary, so ``states`` counts elections exactly even
    when a poll misses an intermediate state."""

    def __init__(self, address, path, interval=0.05):
        self.path = path
        self.interval = interval
        # Reconnect at once after a ZooKeeper fault (kazoo's default
        # backoff reaches a minute, which would make healing look slow).
        self.zk = KazooClient(hosts=address, timeout=10.0,
                              connection_retry=KazooRetry(
                                  max_tries=-1, delay=0.1, backoff=1.5,
                                  max_delay=0.5))
        self.zk.start(timeout=30)
        self.states = []           # (time, primary, epoch), on each change
        self.nodes = {}            # name -> node data (dict), last seen
        self.nodes_at = 0.0        # when self.nodes was last read
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="chaos-watch")
        self._thread.start()

    def _get(self, path, timeout=1.0):
        return self.zk.get_async(path).get(timeout=timeout)

    def _poll(self):
        data, _ = self._get(self.path)
        state = json.loads(data) if data else {}
        value = (state.get("primary"), int(state.get("epoch") or 0))
        if not self.states or self.states[-1][1:] != value:
            self.states.append((time.time(),) + value)
        children = self.zk.get_children_async(self.path).get(timeout=1.0)
        nodes = {}
        for child in children:
            try:
                data, _ = self._get(f"{self.path}/{child}")
            except Exception:
                continue                # gone meanwhile
            info = json.loads(data)
            info["address"] = child
            nodes[info["name"]] = info
        self.nodes = nodes
        self.nodes_at = time.time()

    def _run(self):
        while not self._stopping.wait(self.interval):
            try:
                self._poll()
            except Exception:
                pass                    # ZooKeeper away: try again

    def state(self):
        return self.states[-1] if self.states else (0.0, None, 0)

    def close(self):
        self._stopping.set()
        self._thread.join(5)
        stopper = threading.Thread(target=lambda: (self.zk.stop(),
                                                   self.zk.close()),
                                   daemon=True)
        stopper.start()
        stopper.join(10)


ACK = re.compile(r"^A (\d+) ([0-9a-f]{16}) ([0-9.]+)$")
ERROR = re.compile(r"^E ([0-9.]+) (\S+) ?(.*)$")


class Writer:
    """A ``chaos_writer.py`` process committing to ``key`` in a loop; its
    log holds a line per acknowledged commit and per error."""

    def __init__(self, directory, key, url, pause):
        self.key = key
        self.log_path = os.path.join(directory, f"writer-{key}.log")
        self.child = Child(
            [os.path.join(HERE, "chaos_writer.py"), url, key, self.log_path,
             str(pause)],
            os.path.join(directory, f"writer-{key}.out"))
        self._offset = 0
        self._partial = ""
        self.acks = []             # (seq, tid bytes, time)
        self.errors = []           # (time, class name, message)

    def read(self):
        """Take in what the writer logged since the last call."""
        if not os.path.exists(self.log_path):
            return self                 # not started yet
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            f.seek(self._offset)
            text = f.read()
            self._offset = f.tell()
        text = self._partial + text
        lines = text.split("\n")
        self._partial = lines.pop()     # an unfinished line, if any
        for line in lines:
            m = ACK.match(line)
            if m:
                self.acks.append((int(m.group(1)), bytes.fromhex(m.group(2)),
                                  float(m.group(3))))
                continue
            m = ERROR.match(line)
            if m:
                self.errors.append((float(m.group(1)), m.group(2),
                                    m.group(3)))
        return self

    def last_ack_time(self):
        return self.acks[-1][2] if self.acks else 0.0

    def first_ack_after(self, t):
        """When the first commit acknowledged after time ``t`` was, or
        None."""
        i = bisect.bisect_right([a[2] for a in self.acks], t)
        return self.acks[i][2] if i < len(self.acks) else None

    def first_commit_after(self, t):
        """When the first acknowledged commit whose tid (the committing
        server's clock) is after time ``t`` was acknowledged, or None: a
        commit that was only answered after ``t`` does not count."""
        i = bisect.bisect_right([a[2] for a in self.acks], t)
        for seq, tid, acked in self.acks[i:]:
            if tid_time(tid) > t:
                return acked
        return None

    def __getattr__(self, name):        # stop, kill, alive
        return getattr(self.child, name)


def read_history(path):
    """[(tid, digest)] of every transaction in the FileStorage file at
    ``path``, in file order; the digest covers the transaction's status,
    user, description, extension and every record's oid and data."""
    from ZODB.FileStorage import FileIterator
    out = []
    it = FileIterator(path)
    try:
        for txn in it:
            h = hashlib.blake2b(digest_size=16)
            ext = getattr(txn, "extension_bytes", None)
            for part in (txn.status.encode() if isinstance(txn.status, str)
                         else txn.status, txn.user, txn.description,
                         ext if ext is not None else repr(txn.extension)):
                h.update(part if isinstance(part, bytes) else
                         str(part).encode())
                h.update(b"\0")
            for record in txn:
                h.update(record.oid)
                data = record.data
                h.update(data if data is not None else
                         b"backpointer:" + (record.data_txn or b""))
            out.append((txn.tid, h.hexdigest()))
    finally:
        it.close()
    return out


def compare_histories(histories):
    """None if every history (name -> [(tid, digest)]) is the same, else a
    sentence naming the first difference."""
    names = sorted(histories)
    first = names[0]
    for other in names[1:]:
        a, b = histories[first], histories[other]
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                what = ("different transactions" if x[0] != y[0] else
                        "different contents")
                return (f"{first} and {other} differ at transaction #{i}: "
                        f"{what} ({x[0].hex()} vs {y[0].hex()})")
        if len(a) != len(b):
            return (f"{first} has {len(a)} transactions, {other} "
                    f"{len(b)} (the first {min(len(a), len(b))} agree)")
    return None


def tid_time(tid):
    from persistent.TimeStamp import TimeStamp
    return TimeStamp(tid).timeTime()
