#!/usr/bin/env python3
"""Benchmark zkzeo replication and print figures an operator can read.

One run measures:

1. Catch-up, in this process, of a primary's Data.fs of about --size-mb
   (many small-object transactions, like a CMS):

   (a) ``cp`` + fsync of the file, the yardstick;
   (b) a new, *empty* secondary: it receives a byte copy of the primary's
       Data.fs (a "snapshot") and installs it;
   (c) a secondary that already has the first transactions (so no byte
       copy): it restores and fsyncs the rest transaction by transaction.

2. Commit -> visible lag.  The primary is a ZODB.DB on a PrimaryStorage in
   this process; "visible" means:

   (a) a secondary ZEO server in its *own process* (``python -m
       replication.runzeo``) replicates the commit and a read-only ZEO
       client of that server (in this process) receives the invalidation
       for the transaction -- what an application reading from the
       secondary sees;
   (b) for reference, a secondary in this process calls the listener
       registered on it (everything shares one GIL).

   Both paced (100 commits/s) and back to back; p50/p99/max.

3. Small-commit throughput, with every secondary in its own process:

   (a) ZODB.DB in this process on a plain FileStorage, on a PrimaryStorage
       without secondaries, with one secondary, and with one secondary and
       sync_replicas=1;
   (b) through ZEO, every ZEO server a runzeo process and the client in this
       process: a plain FileStorage server against a primary server with one
       secondary server (asynchronous, and sync-replicas 1).

Every server process is stopped at the end, also on Ctrl-C or SIGTERM (and,
on Linux, when this process dies: they get SIGTERM through
PR_SET_PDEATHSIG).

Usage::

    PYTHONPATH=. python benchmarks/replication_bench.py            # ~200 MB
    PYTHONPATH=. python benchmarks/replication_bench.py --quick    # ~20 MB
    PYTHONPATH=. python benchmarks/replication_bench.py --size-mb 1000 \\
        --workdir /srv/scratch          # measure on the disk that matters

Progress goes to stderr, figures to stdout.  All processes share one
machine and one disk, so the replication figures are pessimistic compared
with a secondary on its own machine.
"""
import argparse
import ast
import filecmp
import logging
import math
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import transaction
import ZODB
import ZEO
from BTrees.OOBTree import OOBTree
from persistent.mapping import PersistentMapping
from ZEO.ClientStorage import ClientStorage
from ZODB.FileStorage import FileStorage

try:
    from importlib.metadata import version as _dist_version
except ImportError:  # pragma: no cover
    _dist_version = None

import replication

MB = 1024 * 1024
FOLDERS = 64                 # containers (OOBTrees) that documents live in
PACE_RATE = 100              # commits per second for the paced lag test
LAG_POLL = 0                 # time.sleep(0): releases the GIL, no delay
CATCHUP_POLL = 0.005         # poll interval while a secondary catches up
STALL_TIMEOUT = 120.0        # give up when a secondary makes no progress
SERVER_START_TIMEOUT = 60.0  # for a ZEO server process to listen
PRIMARY_TXNS = 2             # transactions (c) starts from: root and site

log = logging.getLogger("replication_bench")


# --- output helpers --------------------------------------------------------

def progress(text, end="\n"):
    sys.stderr.write(text + end)
    sys.stderr.flush()


def out(text=""):
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def heading(text):
    out()
    out(text)
    out("-" * len(text))


def fmt_s(seconds):
    return f"{seconds:.2f} s" if seconds >= 0.1 else \
        f"{seconds * 1000:.1f} ms"


def percentile(values, q):
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    xs = sorted(values)
    k = max(0, min(len(xs) - 1, math.ceil(q / 100.0 * len(xs)) - 1))
    return xs[k]


class WarningCounter(logging.Handler):
    """Remembers warnings and errors: the replication package's in this
    process (as log records) and the server processes' (as log lines)."""

    def __init__(self):
        logging.Handler.__init__(self, logging.WARNING)
        self.records = []          # (source, text)

    def emit(self, record):
        self.records.append(
            (record.name, f"{record.levelname} {record.getMessage()}"))

    def add_line(self, source, line):
        self.records.append((source, line))


WARNINGS = WarningCounter()


# --- a CMS-like workload ---------------------------------------------------

_WORDS = ("the of and to in is for on that with as by this from at be are "
          "page news article editor content image section update draft "
          "publish review site folder document title summary author tag "
          "event press release product service contact about team policy "
          "report annual meeting minutes agenda project budget").split()


class Workload:
    """Documents (PersistentMappings, 100-800 byte pickles) in folders
    (OOBTrees).  A transaction creates a few documents and edits others."""

    def __init__(self, conn, rng):
        self.conn = conn
        self.rng = rng
        self.doc_oids = []
        self.serial = 0
        root = conn.root()
        if "folders" not in root:
            root["folders"] = PersistentMapping(
                (f"folder-{i:03d}", OOBTree()) for i in range(FOLDERS))
            transaction.get().note("Create site")
            transaction.commit()
        self.folders = list(root["folders"].values())
        self._text = " ".join(rng.choice(_WORDS) for _ in range(40000))

    def text(self, n):
        start = self.rng.randrange(0, len(self._text) - n)
        return self._text[start:start + n]

    def new_doc(self):
        self.serial += 1
        rng = self.rng
        doc = PersistentMapping()
        doc["id"] = f"doc-{self.serial}"
        doc["title"] = self.text(rng.randint(20, 60))
        doc["body"] = self.text(rng.randint(40, 600))
        doc["author"] = rng.choice(("alice", "bob", "carol", "dave"))
        doc["modified"] = time.time()
        doc["tags"] = [rng.choice(_WORDS) for _ in range(rng.randint(0, 4))]
        rng.choice(self.folders)[doc["id"]] = doc
        return doc

    def edit_doc(self, oid):
        doc = self.conn.get(oid)
        doc["body"] = self.text(self.rng.randint(40, 600))
        doc["modified"] = time.time()

    def transaction(self, n_objects, new_fraction=0.25):
        """One transaction touching about n_objects objects."""
        rng = self.rng
        n_new = max(1, int(n_objects * new_fraction))
        n_edit = min(len(self.doc_oids), max(0, n_objects - 2 * n_new))
        new = [self.new_doc() for _ in range(n_new)]
        for oid in rng.sample(self.doc_oids, n_edit):
            self.edit_doc(oid)
        txn = transaction.get()
        txn.note(f"Edit {n_edit} and add {n_new} documents")
        txn.user = "/acl " + rng.choice(("alice", "bob", "carol", "dave"))
        txn.commit()
        self.doc_oids.extend(d._p_oid for d in new)

    def small_transaction(self):
        """A small commit: one new document and two edits (~4 objects)."""
        self.transaction(4, new_fraction=0.25)

    def seed(self, n_docs):
        while len(self.doc_oids) < n_docs:
            self.transaction(40, new_fraction=1.0)


class FsyncOff:
    """Disable FileStorage's per-commit fsync while building a fixture."""

    def __enter__(self):
        self.module = sys.modules["ZODB.FileStorage.FileStorage"]
        self.saved = self.module.fsync
        self.module.fsync = None

    def __exit__(self, *exc):
        self.module.fsync = self.saved


def create_site(path, rng):
    """A Data.fs with just the first PRIMARY_TXNS transactions."""
    with FsyncOff():
        db = ZODB.DB(FileStorage(path))
        try:
            conn = db.open()
            Workload(conn, rng)
            conn.close()
        finally:
            db.close()


def build_datafs(path, size_mb, rng):
    """Grow the Data.fs at path to about size_mb MB (creating it, or going
    on after create_site); return (transactions, seconds)."""
    target = size_mb * MB
    start = time.perf_counter()
    with FsyncOff():
        db = ZODB.DB(FileStorage(path), cache_size=2000)
        try:
            conn = db.open()
            work = Workload(conn, rng)
            storage = db.storage
            txns = PRIMARY_TXNS     # the root and the site
            last_report = 0.0
            while storage.getSize() < target:
                work.transaction(rng.randint(20, 50))
                txns += 1
                now = time.perf_counter()
                if now - last_report >= 1.0:
                    last_report = now
                    size = storage.getSize()
                    progress(f"\r  building Data.fs: {size / MB:7.1f} / "
                             f"{size_mb} MB, {txns} transactions, "
                             f"{size / MB / (now - start):5.1f} MB/s",
                             end="")
            conn.close()
        finally:
            db.close()
    with open(path, "rb") as f:
        os.fsync(f.fileno())
    seconds = time.perf_counter() - start
    progress(f"\r  built Data.fs: {os.path.getsize(path) / MB:.1f} MB, "
             f"{txns} transactions in {seconds:.1f} s" + " " * 20)
    return txns, seconds


# --- ZEO server processes ----------------------------------------------------

# The child runs replication.runzeo's main (what `python -m
# replication.runzeo -C zeo.conf` runs) after asking Linux to SIGTERM it
# when this process goes away, so no server outlives the benchmark.
LAUNCHER = """\
import ctypes, os, runpy, signal, sys
parent = int(sys.argv.pop(1))
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))
except (OSError, AttributeError):
    pass                    # not Linux: Ctrl-C and SIGTERM handling remain
if os.getppid() != parent:
    sys.exit("the benchmark process is gone")
runpy.run_module("replication.runzeo", run_name="__main__", alter_sys=True)
"""

SERVER_CONFIG = """\
{imports}
<zeo>
  address 127.0.0.1:0
</zeo>
{storage}
<eventlog>
  level INFO
  <logfile>
    path {log}
    format %(asctime)s %(levelname)s %(name)s %(message)s
  </logfile>
</eventlog>
"""


def storage_section(path, replicate_from=None, replicate_to=None,
                    sync_replicas=0, extra=""):
    """A ZConfig storage section: a filestorage, wrapped in <replication>
    when replicate_from or replicate_to is given; ``extra``: more of the
    <replication> section (keys, a <replication-ssl> section)."""
    fs = f"<filestorage>\n  path {path}\n</filestorage>"
    if not (replicate_from or replicate_to):
        return fs
    keys = []
    if replicate_from:
        keys.append(f"replicate-from {replicate_from}")
    if replicate_to:
        keys.append(f"replicate-to {replicate_to}")
    if sync_replicas:
        keys.append(f"sync-replicas {sync_replicas}")
    keys.extend(extra.splitlines())
    inner = "\n".join("  " + line for line in keys + fs.splitlines())
    return f"<replication 1>\n{inner}\n</replication>"


def addr_text(address):
    host, port = address[:2]
    return f"{host}:{port}"


class ServerProcess:
    """A ZEO server in its own process (replication.runzeo, i.e. ZEO's
    runzeo), its Data.fs in workdir/name.  ``address`` is its ZEO address;
    for a primary, ``replication_address`` is where it serves replication.
    """

    running = []                # started and not stopped yet

    def __init__(self, workdir, name, replicate_from=None, replicate_to=None,
                 sync_replicas=0, extra=""):
        self.name = name
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.path = os.path.join(self.dir, "Data.fs")
        self.log_path = os.path.join(self.dir, "zeo.log")
        section = storage_section(self.path, replicate_from, replicate_to,
                                  sync_replicas, extra)
        config = os.path.join(self.dir, "zeo.conf")
        with open(config, "w") as f:
            f.write(SERVER_CONFIG.format(
                imports="%import replication" if "<replication" in section
                else "", storage=section, log=self.log_path))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        self._output = open(os.path.join(self.dir, "output.txt"), "wb")
        self.popen = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, str(os.getpid()), "-C", config],
            stdout=self._output, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=env,
            start_new_session=True)     # Ctrl-C is ours to handle
        ServerProcess.running.append(self)
        self.replication_address = None
        try:
            m = self.wait_for_log(
                r"ZEO server listening on (\('[^']*', \d+\))",
                SERVER_START_TIMEOUT, "to listen")
            self.address = ast.literal_eval(m.group(1))
            if replicate_to:
                m = self.wait_for_log(r"serving replication of \S+ on (\S+)",
                                      SERVER_START_TIMEOUT,
                                      "to serve replication")
                host, _, port = m.group(1).rpartition(":")
                self.replication_address = (host.strip("[]"), int(port))
        except BaseException:
            self.stop()
            raise

    def log_text(self):
        try:
            with open(self.log_path, encoding="utf-8",
                      errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def wait_for_log(self, pattern, timeout, what):
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.log_text())
            if m:
                return m
            if self.popen.poll() is not None:
                raise RuntimeError(
                    f"ZEO server {self.name} exited "
                    f"({self.popen.returncode}):\n{self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"ZEO server {self.name}: waited "
                                   f"{timeout:.0f}s {what}:\n{self.tail()}")
            time.sleep(0.02)

    def tail(self, lines=20):
        with open(os.path.join(self.dir, "output.txt"), errors="replace") \
                as f:
            output = f.read()
        return "\n".join((self.log_text() + output).splitlines()[-lines:])

    def stop(self):
        """SIGTERM (runzeo closes its storages), SIGKILL after 30 s."""
        if self not in ServerProcess.running:
            return
        try:
            if self.popen.poll() is None:
                self.popen.terminate()
                try:
                    self.popen.wait(30)
                except subprocess.TimeoutExpired:
                    self.popen.kill()
                    self.popen.wait()
        finally:
            ServerProcess.running.remove(self)
            self._output.close()
        for line in self.log_text().splitlines():
            if re.search(r" (WARNING|ERROR|CRITICAL) ", line):
                WARNINGS.add_line(f"server {self.name}", line)

    @classmethod
    def stop_all(cls):
        for server in list(reversed(cls.running)):
            try:
                server.stop()
            except BaseException:
                # keep going: every other server must be stopped too
                log.exception("could not stop server %s (pid %s)",
                              server.name, server.popen.pid)


# A secondary that costs next to nothing: it speaks the protocol, reads the
# stream (TXN..END or FILE_TXN per transaction) and ACKs the last one as a
# Follower does -- at once if WELCOME says ACK_EACH, else at most every
# ACK_INTERVAL, and every keep-alive otherwise -- but stores nothing.  It
# separates the primary's own cost from the CPU and disk a real secondary
# on the same machine takes.
SINK = """\
import socket, sys, time
from replication import protocol
from replication.protocol import (Ack, Auth, Challenge, End, FileTxn, Hello,
                                  Proof, Welcome, Z64, NO_DIGEST)
KEEP_ALIVE = 1.0
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])))
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
sock.sendall(protocol.preamble() + Auth(bytes(32)).encode())
reader = protocol.FrameReader()
buf = b""
def receive():
    data = sock.recv(65536)
    if not data:
        sys.exit("sink: the source closed the connection")
    return data
while len(buf) < protocol.PREAMBLE_SIZE:
    buf += receive()
protocol.parse_preamble(buf[:protocol.PREAMBLE_SIZE])
reader.feed(buf[protocol.PREAMBLE_SIZE:])
while (challenge := reader.next()) is None:
    reader.feed(receive())
if not isinstance(challenge, Challenge):
    sys.exit(f"sink: expected CHALLENGE, got {challenge!r}")
# A source without a shared secret: no proof needed.
sock.sendall(Proof(bytes(32)).encode() +
             Hello(0, Z64, NO_DIGEST, 0, "sink").encode())
while (welcome := reader.next()) is None:
    reader.feed(receive())
if not isinstance(welcome, Welcome):
    sys.exit(f"sink: expected WELCOME, got {welcome!r}")
ack_delay = 0.0 if welcome.flags & protocol.ACK_EACH else \\
    protocol.ACK_INTERVAL
last = acked = Z64
sent = time.monotonic()
while True:
    message = reader.next()
    if message is not None:
        if isinstance(message, (End, FileTxn)):
            last = message.tid
        continue
    now = time.monotonic()
    delay = ack_delay if last != acked else KEEP_ALIVE
    if now - sent >= delay:
        sock.sendall(Ack(last).encode())
        acked, sent, delay = last, now, KEEP_ALIVE
    sock.settimeout(max(sent + delay - now, 0.001))
    try:
        data = sock.recv(1 << 20)
    except socket.timeout:
        continue
    if not data:
        break
    reader.feed(data)
"""


class SinkProcess:
    """Stands in for a ServerProcess (popen, stop(), path=None)."""

    path = None
    name = "sink"

    def __init__(self, address):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        self.popen = subprocess.Popen(
            [sys.executable, "-c", SINK, address[0], str(address[1])],
            env=env, stdin=subprocess.DEVNULL, start_new_session=True)
        ServerProcess.running.append(self)

    def stop(self):
        if self in ServerProcess.running:
            ServerProcess.running.remove(self)
            self.popen.terminate()
            self.popen.wait(30)


def secondary_process(workdir, name, source_address):
    """A secondary ZEO server process replicating from source_address."""
    return ServerProcess(workdir, name,
                         replicate_from=addr_text(source_address))


class VisibilityListener:
    """Registered like a DB on a storage: stamps each invalidation.

    On a SecondaryStorage it is called right after a replicated commit;
    on a ZEO ClientStorage when the server's invalidation arrives (on the
    client's I/O thread).  ``wait_for(tid)`` blocks until tid was seen.
    """

    def __init__(self):
        self.stamps = {}            # tid -> perf_counter
        self.last = b"\0" * 8
        self.cache_invalidations = 0
        self._cond = threading.Condition()

    def invalidate(self, tid, oids):
        now = time.perf_counter()
        with self._cond:
            self.stamps[tid] = now
            if tid > self.last:
                self.last = tid
            self._cond.notify_all()

    def invalidateCache(self):
        self.cache_invalidations += 1

    def transform_record_data(self, data):
        return data

    def untransform_record_data(self, data):
        return data

    def wait_for(self, tid, timeout=STALL_TIMEOUT):
        """Wait until an invalidation for tid (or a later one) arrived."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.last < tid:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RuntimeError(
                        f"transaction {tid.hex()} never became visible "
                        f"(last seen {self.last.hex()})")
                self._cond.wait(remaining)


class SecondaryClient:
    """A read-only ZEO client of a secondary server, with a listener."""

    def __init__(self, address):
        self.listener = VisibilityListener()
        self.storage = ClientStorage(address, read_only=True,
                                     wait_timeout=SERVER_START_TIMEOUT)
        self.storage.registerDB(self.listener)

    def wait_for(self, tid, timeout=STALL_TIMEOUT):
        """Wait until the server's last transaction is at least tid."""
        if self.storage.lastTransaction() >= tid:
            return
        self.listener.wait_for(tid, timeout)

    def close(self):
        self.storage.close()


def wait_secondary_server(server, tid, timeout=STALL_TIMEOUT):
    """Wait until the secondary server's last transaction is tid."""
    client = SecondaryClient(server.address)
    try:
        client.wait_for(tid, timeout)
    finally:
        client.close()


# --- helpers for in-process primaries and secondaries ------------------------

def wait_caught_up(primary, secondary, what, show_progress=False,
                   total_bytes=None, poll=CATCHUP_POLL, copy_path=None):
    """Wait until the secondary's last transaction is the primary's.

    Returns the seconds waited.  Raises RuntimeError when the secondary
    makes no progress (neither transactions nor bytes) for STALL_TIMEOUT
    seconds.  copy_path: where a byte copy would arrive (for progress).
    """
    start = time.perf_counter()
    target = primary.lastTransaction()

    def done_bytes():
        size = secondary.getSize()
        if copy_path and size <= 4:
            try:
                size = os.path.getsize(copy_path)
            except OSError:
                pass
        return size

    last_seen = (secondary.lastTransaction(), done_bytes())
    last_change = start
    last_report = start
    while True:
        current = secondary.lastTransaction()
        if current >= target:
            if show_progress:
                progress("\r" + " " * 78 + "\r", end="")
            return time.perf_counter() - start
        now = time.perf_counter()
        done = done_bytes()
        if (current, done) != last_seen:
            last_seen, last_change = (current, done), now
        elif now - last_change > STALL_TIMEOUT:
            raise RuntimeError(
                f"{what}: the secondary made no progress for "
                f"{STALL_TIMEOUT:.0f}s; status: "
                f"{secondary.replication_status()}")
        if show_progress and now - last_report >= 1.0:
            last_report = now
            frac = f" / {total_bytes / MB:.1f} MB" if total_bytes else " MB"
            progress(f"\r  {what}: {done / MB:7.1f}{frac}, "
                     f"{done / MB / (now - start):5.1f} MB/s", end="")
        time.sleep(poll)


def wait_connected(primary, timeout=30.0):
    """Wait until a secondary has connected to the primary."""
    deadline = time.monotonic() + timeout
    while not primary.source.status():
        if time.monotonic() > deadline:
            raise RuntimeError("no secondary connected to the primary")
        time.sleep(0.005)


def remove_storage_files(workdir, name):
    for fn in os.listdir(workdir):
        if fn.startswith(name):
            path = os.path.join(workdir, fn)
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)


# --- 1. catch-up -------------------------------------------------------------

def timed_catchup(primary, dst, what, size):
    """Start a SecondaryStorage on dst; return (seconds, its size)."""
    secondary = None
    try:
        start = time.perf_counter()
        secondary = replication.SecondaryStorage(
            FileStorage(dst), primary.replication_address)
        wait_caught_up(primary, secondary, what, show_progress=True,
                       total_bytes=size, copy_path=dst + ".snapshot")
        seconds = time.perf_counter() - start
        return seconds, secondary.getSize()
    finally:
        if secondary is not None:
            secondary.close()


def bench_catchup(workdir, size_mb, rng):
    heading(f"1. Catch-up of a secondary (Data.fs of ~{size_mb} MB, "
            "in-process)")
    src = os.path.join(workdir, "catchup.fs")
    old = os.path.join(workdir, "catchup-old-secondary.fs")
    new = os.path.join(workdir, "catchup-new-secondary.fs")

    # A secondary that has the first transactions: it takes a byte copy
    # while the primary is that small, then goes away while the primary
    # grows.
    progress(f"  creating a secondary with the first {PRIMARY_TXNS} "
             "transactions ...")
    create_site(src, rng)
    primary = replication.PrimaryStorage(FileStorage(src), "127.0.0.1:0")
    try:
        secondary = replication.SecondaryStorage(
            FileStorage(old), primary.replication_address)
        try:
            wait_caught_up(primary, secondary, "small secondary")
        finally:
            secondary.close()
    finally:
        primary.close()
    old_size = os.path.getsize(old)

    txns, build_seconds = build_datafs(src, size_mb, rng)
    size = os.path.getsize(src)
    out(f"  Data.fs: {size / MB:.1f} MB, {txns:,} transactions "
        f"(~{size / txns / 1024:.1f} KB each), built in "
        f"{build_seconds:.1f} s")

    # (a) cp + fsync
    copy = os.path.join(workdir, "catchup-copy.fs")
    progress("  copying Data.fs (cp + fsync) ...")
    start = time.perf_counter()
    shutil.copyfile(src, copy)
    with open(copy, "rb") as f:
        os.fsync(f.fileno())
    cp_seconds = time.perf_counter() - start
    os.remove(copy)
    out(f"  (a) cp + fsync:                       {cp_seconds:8.2f} s  "
        f"{size / MB / cp_seconds:7.1f} MB/s")

    progress("  opening the primary ...")
    primary = replication.PrimaryStorage(FileStorage(src), "127.0.0.1:0")
    try:
        # (b) a new, empty secondary: byte copy
        progress("  starting an empty secondary (byte copy) ...")
        snap_seconds, snap_size = timed_catchup(
            primary, new, "empty secondary catching up", size)
        snap_identical = filecmp.cmp(src, new, shallow=False)
        out(f"  (b) new empty secondary (byte copy):  {snap_seconds:8.2f} s  "
            f"{size / MB / snap_seconds:7.1f} MB/s  "
            f"{txns / snap_seconds:8.0f} txn/s  "
            f"= {snap_seconds / cp_seconds:.1f} x cp time")
        out(f"      Data.fs {snap_size / MB:.1f} MB, byte-identical to the "
            f"primary's: {'yes' if snap_identical else 'NO'}")

        # (c) a secondary with the first transactions: one by one
        rest = size - old_size
        rest_txns = txns - PRIMARY_TXNS
        progress(f"  restarting the secondary that has {PRIMARY_TXNS} "
                 "transactions (transaction-by-transaction catch-up) ...")
        txn_seconds, txn_size = timed_catchup(
            primary, old, "transaction-by-transaction catch-up", size)
        txn_identical = filecmp.cmp(src, old, shallow=False)
        out(f"  (c) transaction-by-transaction catch-up "
            f"(secondary had the first {PRIMARY_TXNS}):")
        out(f"                                        {txn_seconds:8.2f} s  "
            f"{rest / MB / txn_seconds:7.1f} MB/s  "
            f"{rest_txns / txn_seconds:8.0f} txn/s  "
            f"= {txn_seconds / cp_seconds:.1f} x cp time")
        out(f"      restores, and fsyncs, each of the {rest_txns:,} "
            "transactions on its own")
        out(f"      Data.fs {txn_size / MB:.1f} MB, byte-identical to the "
            f"primary's: {'yes' if txn_identical else 'NO'}")
    finally:
        primary.close()
        remove_storage_files(workdir, "catchup")
    return {"size": size, "txns": txns, "cp": cp_seconds,
            "snapshot": snap_seconds, "snapshot_identical": snap_identical,
            "by_txn": txn_seconds, "by_txn_bytes": rest,
            "by_txn_txns": rest_txns, "by_txn_identical": txn_identical}


# --- 2. commit-to-visible lag -------------------------------------------------

def lag_stats(lags_ms):
    return {"n": len(lags_ms), "p50": percentile(lags_ms, 50),
            "p99": percentile(lags_ms, 99), "max": max(lags_ms)}


def fmt_lag(s):
    return (f"p50 {s['p50']:7.2f} ms   p99 {s['p99']:7.2f} ms   "
            f"max {s['max']:7.2f} ms")


def paced_lag(work, primary, wait_visible, n):
    """One commit every 1/PACE_RATE s; wait until each is visible."""
    interval = 1.0 / PACE_RATE
    lags = []
    next_at = time.perf_counter()
    started = next_at
    for _ in range(n):
        now = time.perf_counter()
        if now < next_at:
            time.sleep(next_at - now)
        next_at = max(next_at + interval, time.perf_counter())
        work.small_transaction()
        committed = time.perf_counter()
        visible = wait_visible(primary.lastTransaction())
        lags.append((visible - committed) * 1000.0)
    stats = lag_stats(lags)
    stats["rate"] = n / (time.perf_counter() - started)
    return stats


def burst_lag(work, primary, listener, n):
    """Commit n small transactions back to back; lags from the stamps of
    the listener."""
    commits = []                    # (tid, perf_counter after commit)
    started = time.perf_counter()
    for _ in range(n):
        work.small_transaction()
        commits.append((primary.lastTransaction(), time.perf_counter()))
    seconds = time.perf_counter() - started
    listener.wait_for(commits[-1][0])
    drain = time.perf_counter() - started - seconds
    lags = []
    early = 0
    for tid, committed in commits:
        stamp = listener.stamps.get(tid)
        if stamp is None:
            raise RuntimeError(f"no invalidation for transaction "
                               f"{tid.hex()} arrived")
        lag = stamp - committed
        if lag < 0:
            early += 1              # visible before commit() returned
            lag = 0.0
        lags.append(lag * 1000.0)
    stats = lag_stats(lags)
    stats.update(rate=n / seconds, drain=drain, early=early)
    return stats


def print_lags(paced, burst, n_paced, n_burst):
    out(f"  paced, {n_paced} commits at {paced['rate']:.0f}/s:")
    out(f"      {fmt_lag(paced)}")
    out(f"  back to back, {n_burst} commits at {burst['rate']:.0f}/s:")
    out(f"      {fmt_lag(burst)}")
    out(f"      caught up {fmt_s(burst['drain'])} after the last commit")
    if burst["early"]:
        out(f"      ({burst['early']} commits were visible before "
            "commit() returned: counted as 0 ms)")


def bench_lag_process(workdir, n_paced, n_burst, rng, apply_rate=None):
    heading("2a. Commit -> visible to a ZEO client of a secondary server "
            "process")
    out("    ZODB.DB on a PrimaryStorage here; secondary: runzeo process;")
    out("    visible = the invalidation reaches a read-only ZEO client of "
        "it (here)")
    primary = replication.PrimaryStorage(
        FileStorage(os.path.join(workdir, "lagp-primary.fs")), "127.0.0.1:0")
    server = client = db = None
    try:
        progress("  starting the secondary server process ...")
        server = secondary_process(workdir, "lagp-secondary",
                                   primary.replication_address)
        wait_connected(primary)
        db = ZODB.DB(primary)
        client = SecondaryClient(server.address)
        conn = db.open()
        work = Workload(conn, rng)
        work.seed(200)
        client.wait_for(primary.lastTransaction())
        listener = client.listener

        def wait_visible(tid):
            listener.wait_for(tid)
            return listener.stamps[tid]

        progress(f"  paced lag: {n_paced} commits at {PACE_RATE}/s ...")
        paced = paced_lag(work, primary, wait_visible, n_paced)
        progress(f"  back-to-back lag: {n_burst} commits ...")
        burst = burst_lag(work, primary, listener, n_burst)
        print_lags(paced, burst, n_paced, n_burst)
        if apply_rate:
            out(f"      (a secondary applies ~{apply_rate:.0f} txn/s, see "
                "1c: back-to-back commits faster")
            out("      than that queue up, and the lag grows with the "
                "burst's length)")
        if listener.cache_invalidations:
            out(f"      (the client was told to drop its cache "
                f"{listener.cache_invalidations} time(s))")
        conn.close()
    finally:
        if client is not None:
            client.close()
        if server is not None:
            server.stop()
        if db is not None:
            db.close()
        else:
            primary.close()
        remove_storage_files(workdir, "lagp")
    return {"paced": paced, "burst": burst}


def bench_lag_inprocess(workdir, n_paced, n_burst, rng):
    heading("2b. Commit -> visible on an in-process secondary (reference)")
    out("    primary, secondary and probe in this process, one GIL; "
        "visible = the")
    out("    secondary calls the listener registered on it after its "
        "commit")
    primary = replication.PrimaryStorage(
        FileStorage(os.path.join(workdir, "lagi-primary.fs")), "127.0.0.1:0")
    secondary = replication.SecondaryStorage(
        FileStorage(os.path.join(workdir, "lagi-secondary.fs")),
        primary.replication_address)
    db = None
    try:
        wait_connected(primary)
        db = ZODB.DB(primary)
        listener = VisibilityListener()
        secondary.registerDB(listener)
        conn = db.open()
        work = Workload(conn, rng)
        work.seed(200)
        wait_caught_up(primary, secondary, "initial catch-up")

        def wait_visible(tid):
            deadline = time.perf_counter() + STALL_TIMEOUT
            while secondary.lastTransaction() < tid:
                if time.perf_counter() > deadline:
                    raise RuntimeError("paced lag: a commit never became "
                                       "visible on the secondary")
                time.sleep(LAG_POLL)
            return time.perf_counter()

        progress(f"  in-process paced lag: {n_paced} commits at "
                 f"{PACE_RATE}/s ...")
        paced = paced_lag(work, primary, wait_visible, n_paced)
        progress(f"  in-process back-to-back lag: {n_burst} commits ...")
        burst = burst_lag(work, primary, listener, n_burst)
        print_lags(paced, burst, n_paced, n_burst)
        conn.close()
    finally:
        secondary.close()
        if db is not None:
            db.close()
        else:
            primary.close()
        remove_storage_files(workdir, "lagi")
    return {"paced": paced, "burst": burst}


# --- 3. commit throughput ------------------------------------------------------

def run_commits(db, n, rng, warmup=20):
    """Commit n small transactions; return commits per second."""
    conn = db.open()
    try:
        work = Workload(conn, rng)
        work.seed(200)
        for _ in range(warmup):
            work.small_transaction()
        start = time.perf_counter()
        for _ in range(n):
            work.small_transaction()
        return n / (time.perf_counter() - start)
    finally:
        conn.close()


class InProcess:
    """ZODB.DB in this process on a FileStorage or a PrimaryStorage, and
    optionally one secondary server process replicating from it."""

    def __init__(self, workdir, name, replicate=False, secondaries=0,
                 sync_replicas=0, sink=False):
        self.workdir, self.name = workdir, name
        self.replicate = replicate
        self.secondaries = secondaries
        self.sync_replicas = sync_replicas
        self.sink = sink

    def run(self, n, rng):
        path = os.path.join(self.workdir, f"{self.name}.fs")
        storage = FileStorage(path)
        if self.replicate:
            storage = replication.PrimaryStorage(
                storage, "127.0.0.1:0", sync_replicas=self.sync_replicas)
        server = db = None
        try:
            if self.sink:
                server = SinkProcess(storage.replication_address)
                wait_connected(storage)
            elif self.secondaries:
                server = secondary_process(self.workdir,
                                           f"{self.name}-secondary",
                                           storage.replication_address)
                wait_connected(storage)
            db = ZODB.DB(storage)
            rate = run_commits(db, n, rng)
            if server is not None and not self.sink:
                wait_secondary_server(server, storage.lastTransaction())
            return rate
        finally:
            if server is not None:
                server.stop()
            if db is not None:
                db.close()          # closes the storage too
            else:
                storage.close()


class ThroughZEO:
    """A ZEO client here; the ZEO server a runzeo process (plain
    FileStorage, or a primary with one secondary server process)."""

    def __init__(self, workdir, name, secondaries=0, sync_replicas=0):
        self.workdir, self.name = workdir, name
        self.secondaries = secondaries
        self.sync_replicas = sync_replicas

    def run(self, n, rng):
        primary = secondary = db = None
        try:
            primary = ServerProcess(
                self.workdir, f"{self.name}-primary",
                replicate_to="127.0.0.1:0" if self.secondaries else None,
                sync_replicas=self.sync_replicas)
            if self.secondaries:
                secondary = secondary_process(
                    self.workdir, f"{self.name}-secondary",
                    primary.replication_address)
                primary.wait_for_log("secondary connected from tid",
                                     SERVER_START_TIMEOUT,
                                     "for its secondary")
            db = ZEO.DB(primary.address)
            rate = run_commits(db, n, rng)
            if secondary is not None:
                wait_secondary_server(secondary,
                                      db.storage.lastTransaction())
            return rate
        finally:
            if db is not None:
                db.close()
            if secondary is not None:
                secondary.stop()
            if primary is not None:
                primary.stop()


def settle():
    """Write out what earlier runs left dirty in the page cache, so that
    their writeback does not land in the next run's fsyncs."""
    os.sync()


def compare(workdir, configs, n, rounds, rng):
    """Run every config `rounds` times, interleaved; print and return
    [(label, median commits/s, min, max)], the first config the baseline."""
    rates = {label: [] for label, _ in configs}
    for r in range(rounds):
        for i, (label, make) in enumerate(configs):
            progress(f"  round {r + 1}/{rounds}: {label} ...")
            name = f"tp-{i}-{r}"
            settle()
            try:
                rates[label].append(make(workdir, name).run(n, rng))
            finally:
                remove_storage_files(workdir, name)
    results = []
    for label, _ in configs:
        xs = rates[label]
        results.append((label, statistics.median(xs), min(xs), max(xs)))
    base = results[0][1]
    for label, rate, low, high in results:
        spread = f"  (range {low:.0f}-{high:.0f})" if rounds > 1 else ""
        out(f"  {label:<48} {rate:6.0f} commits/s  {rate / base:5.2f} x"
            f"{spread}")
    return results


def bench_throughput(workdir, n, rounds, rng):
    heading(f"3a. Commit throughput, ZODB.DB in this process: {n} small "
            "commits (~4 objects)")
    out(f"    secondaries are runzeo processes; median of {rounds} "
        "round(s); ratios to plain FileStorage")
    configs = [
        ("plain FileStorage",
         lambda w, name: InProcess(w, name)),
        ("PrimaryStorage, no secondary",
         lambda w, name: InProcess(w, name, replicate=True)),
        ("PrimaryStorage + 1 secondary process",
         lambda w, name: InProcess(w, name, replicate=True, secondaries=1)),
        ("PrimaryStorage + 1 secondary, sync_replicas=1",
         lambda w, name: InProcess(w, name, replicate=True, secondaries=1,
                                   sync_replicas=1)),
        ("PrimaryStorage + 1 sink (ACKs, stores nothing)",
         lambda w, name: InProcess(w, name, replicate=True, sink=True)),
    ]
    results = compare(workdir, configs, n, rounds, rng)
    out("    the sink is a process that speaks the protocol and stores "
        "nothing: the primary's")
    out("    own cost, without a secondary competing for the same 2 "
        "CPUs and disk")
    return results


def bench_zeo(workdir, n, rounds, rng):
    heading(f"3b. Commit throughput through ZEO: {n} small commits "
            "(~4 objects)")
    out("    every ZEO server a runzeo process, the client in this process; "
        f"median of {rounds}")
    out("    round(s); ratios to the plain FileStorage server")
    configs = [
        ("ZEO server, plain FileStorage",
         lambda w, name: ThroughZEO(w, name)),
        ("ZEO primary + 1 secondary server",
         lambda w, name: ThroughZEO(w, name, secondaries=1)),
        ("ZEO primary + 1 secondary, sync-replicas 1",
         lambda w, name: ThroughZEO(w, name, secondaries=1,
                                    sync_replicas=1)),
    ]
    return compare(workdir, configs, n, rounds, rng)


# --- main --------------------------------------------------------------------

def environment(workdir):
    def v(name):
        try:
            return _dist_version(name)
        except Exception:
            return "?"
    return (f"Python {platform.python_version()}, ZODB {v('ZODB')}, "
            f"ZEO {v('ZEO')}, gevent {v('gevent')}; {os.cpu_count()} CPUs; "
            f"workdir {workdir}")


def summary(env, results):
    width = 78
    out()
    out("=" * width)
    out("SUMMARY -- zkzeo replication benchmark")
    out(env)
    out("=" * width)
    c = results.get("catchup")
    if c:
        size_mb = c["size"] / MB
        out(f"Catch-up, Data.fs {size_mb:.1f} MB, {c['txns']:,} "
            "transactions (in-process)")
        out(f"  cp + fsync                          {c['cp']:8.2f} s  "
            f"{size_mb / c['cp']:7.1f} MB/s")
        out(f"  new empty secondary (byte copy)     {c['snapshot']:8.2f} s  "
            f"{size_mb / c['snapshot']:7.1f} MB/s  "
            f"{c['txns'] / c['snapshot']:7.0f} txn/s  "
            f"{c['snapshot'] / c['cp']:5.1f} x cp")
        out(f"  transaction-by-transaction catch-up {c['by_txn']:8.2f} s  "
            f"{c['by_txn_bytes'] / MB / c['by_txn']:7.1f} MB/s  "
            f"{c['by_txn_txns'] / c['by_txn']:7.0f} txn/s  "
            f"{c['by_txn'] / c['cp']:5.1f} x cp")
        out("  secondaries' Data.fs byte-identical to the primary's: "
            f"{'yes' if c['snapshot_identical'] else 'NO'} (byte copy), "
            f"{'yes' if c['by_txn_identical'] else 'NO'} (by transaction)")
    for key, title in (
            ("lag_process", "Commit -> visible to a ZEO client of a "
             "secondary server process"),
            ("lag_inprocess", "Commit -> visible on an in-process secondary "
             "(one GIL; reference)")):
        lag = results.get(key)
        if lag:
            p, b = lag["paced"], lag["burst"]
            out(title)
            out(f"  paced {p['rate']:4.0f}/s ({p['n']:>5} commits)  "
                f"{fmt_lag(p)}")
            out(f"  back to back ({b['n']:>5}, {b['rate']:4.0f}/s)  "
                f"{fmt_lag(b)}")
            if key == "lag_process" and c:
                out("  (back to back: the lag grows with the burst when "
                    "commits outrun the")
                out(f"   secondary's ~{c['by_txn_txns'] / c['by_txn']:.0f} "
                    "txn/s transaction-by-transaction apply rate)")
    for key, title in (("throughput", "Commit throughput, ZODB.DB "
                        "in-process, secondaries are processes"),
                       ("zeo", "Commit throughput through ZEO, servers are "
                        "processes")):
        rows = results.get(key)
        if rows:
            out(title)
            base = rows[0][1]
            for label, rate, _, _ in rows:
                out(f"  {label:<48} {rate:6.0f} commits/s  "
                    f"{rate / base:5.2f} x")
    out("-" * width)
    if WARNINGS.records:
        out(f"{len(WARNINGS.records)} warning(s)/error(s) were logged; "
            "the first ones:")
        for source, text in WARNINGS.records[:5]:
            out(f"  {source}: {text[:200]}")
    else:
        out("no replication warnings or errors were logged (this process "
            "and the servers)")
    out("=" * width)


def _terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Measure zkzeo replication: catch-up of a secondary, "
        "commit-to-visible lag and commit throughput.")
    parser.add_argument("--size-mb", type=int, default=None,
                        help="size of the Data.fs for the catch-up test "
                        "(default 200, or 20 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="a small run: ~20 MB and fewer commits")
    parser.add_argument("--workdir", default=None,
                        help="directory (filesystem) to work in; a fresh "
                        "subdirectory is created there and removed at the "
                        "end (default: the system temp dir)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds of the throughput comparisons; the "
                        "median is reported (default 3, or 1 with --quick)")
    parser.add_argument("--seed", type=int, default=42,
                        help="random seed of the workload")
    parser.add_argument("--only", default="catchup,lag,throughput,zeo",
                        help="comma-separated parts to run (catchup, lag, "
                        "throughput, zeo; default all)")
    args = parser.parse_args(argv)
    parts = set(args.only.split(","))

    size_mb = args.size_mb or (20 if args.quick else 200)
    n_paced = 200 if args.quick else 1000
    n_burst = 300 if args.quick else 2000
    n_tp = 300 if args.quick else 2000
    rounds = args.rounds or (1 if args.quick else 3)

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    logging.getLogger("replication").addHandler(WARNINGS)
    signal.signal(signal.SIGTERM, _terminate)

    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="replication-bench-", dir=args.workdir)
    rng = random.Random(args.seed)
    env = environment(workdir)
    out(f"zkzeo replication benchmark{' (--quick)' if args.quick else ''}")
    out(env)
    results = {}
    status = 0
    started = time.perf_counter()
    try:
        if "catchup" in parts:
            results["catchup"] = bench_catchup(workdir, size_mb, rng)
        if "lag" in parts:
            settle()
            c = results.get("catchup")
            results["lag_process"] = bench_lag_process(
                workdir, n_paced, n_burst, rng,
                apply_rate=c and c["by_txn_txns"] / c["by_txn"])
            results["lag_inprocess"] = bench_lag_inprocess(
                workdir, n_paced, n_burst, rng)
        if "throughput" in parts:
            results["throughput"] = bench_throughput(workdir, n_tp, rounds,
                                                     rng)
        if "zeo" in parts:
            results["zeo"] = bench_zeo(workdir, n_tp, rounds, rng)
    except KeyboardInterrupt:
        progress("\ninterrupted: stopping the server processes ...")
        status = 130
    except Exception:
        log.exception("benchmark failed")
        status = 1
    finally:
        # Ignore further Ctrl-C / SIGTERM until every server is stopped.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        ServerProcess.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    summary(env, results)
    out(f"total run time {time.perf_counter() - started:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
