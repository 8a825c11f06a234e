#!/usr/bin/env python3
"""Benchmark zkzeo storage replication and print figures an operator can read.

One run measures:

1. Catch-up: how long a new, empty secondary takes to copy a primary's
   Data.fs of about --size-mb (many small-object transactions, like a CMS),
   compared with ``cp`` + fsync of the same file.
2. Commit-to-visible lag: time from ``transaction.commit()`` returning on the
   primary until the transaction is the secondary's last transaction, for
   paced commits (100/s) and for back-to-back commits.
3. Commit throughput: small commits per second through ZODB.DB on a plain
   FileStorage, a PrimaryStorage without secondaries and a PrimaryStorage with
   one secondary (asynchronous, and with sync_replicas=1); then plain
   FileStorage against PrimaryStorage + 1 secondary behind an (in-process)
   ZEO server.

Back-to-back lag is stamped twice: by a listener registered on the secondary
(what a ZEO server on the secondary is told, no extra thread) and by a thread
polling ``lastTransaction()``, which competes for the GIL and inflates the lag.

Everything runs in this one process: the primary, its secondary (on the
replication hub thread), and the ZEO server and client.  They share one
machine, one disk and one GIL, so the replication figures are pessimistic
compared with a secondary on its own machine.

Usage::

    PYTHONPATH=. python benchmarks/replication_bench.py            # ~200 MB
    PYTHONPATH=. python benchmarks/replication_bench.py --quick    # ~20 MB
    PYTHONPATH=. python benchmarks/replication_bench.py --size-mb 1000 \\
        --workdir /srv/scratch          # measure on the disk that matters

Progress goes to stderr, figures to stdout.
"""
import argparse
import bisect
import filecmp
import logging
import math
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time

import transaction
import ZODB
import ZEO
import ZEO.StorageServer
from BTrees.OOBTree import OOBTree
from persistent.mapping import PersistentMapping
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
POLLER_SLEEP = 0.0001        # the back-to-back poller thread's interval
CATCHUP_POLL = 0.005         # poll interval while a secondary catches up
STALL_TIMEOUT = 120.0        # give up when a secondary makes no progress

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
    """Remembers the replication package's warnings and errors."""

    def __init__(self):
        logging.Handler.__init__(self, logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(record)


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


def build_datafs(path, size_mb, rng):
    """Write a Data.fs of about size_mb MB; return (transactions, seconds)."""
    target = size_mb * MB
    start = time.perf_counter()
    with FsyncOff():
        db = ZODB.DB(FileStorage(path), cache_size=2000)
        try:
            conn = db.open()
            work = Workload(conn, rng)
            storage = db.storage
            txns = 2            # the root and the site
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


# --- helpers for primaries and secondaries ---------------------------------

def wait_caught_up(primary, secondary, what, show_progress=False,
                   total_bytes=None, poll=CATCHUP_POLL):
    """Wait until the secondary's last transaction is the primary's.

    Returns the seconds waited.  Raises RuntimeError when the secondary
    makes no progress for STALL_TIMEOUT seconds.
    """
    start = time.perf_counter()
    target = primary.lastTransaction()
    last_seen = secondary.lastTransaction()
    last_change = start
    last_report = start
    while True:
        current = secondary.lastTransaction()
        if current >= target:
            if show_progress:
                progress("\r" + " " * 78 + "\r", end="")
            return time.perf_counter() - start
        now = time.perf_counter()
        if current != last_seen:
            last_seen, last_change = current, now
        elif now - last_change > STALL_TIMEOUT:
            raise RuntimeError(
                f"{what}: the secondary made no progress for "
                f"{STALL_TIMEOUT:.0f}s; status: "
                f"{secondary.replication_status()}")
        if show_progress and now - last_report >= 1.0:
            last_report = now
            done = secondary.getSize()
            frac = f" / {total_bytes / MB:.1f} MB" if total_bytes else " MB"
            progress(f"\r  {what}: {done / MB:7.1f}{frac}, "
                     f"{done / MB / (now - start):5.1f} MB/s", end="")
        time.sleep(poll)


def pair(workdir, name, sync_replicas=0):
    """A fresh primary with one secondary attached, both caught up."""
    primary = replication.PrimaryStorage(
        FileStorage(os.path.join(workdir, f"{name}-primary.fs")),
        "127.0.0.1:0", sync_replicas=sync_replicas)
    secondary = replication.SecondaryStorage(
        FileStorage(os.path.join(workdir, f"{name}-secondary.fs")),
        primary.replication_address)
    return primary, secondary


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


# --- 1. catch-up -----------------------------------------------------------

def bench_catchup(workdir, size_mb, rng):
    heading(f"1. Catch-up of a new secondary (Data.fs of ~{size_mb} MB)")
    src = os.path.join(workdir, "catchup.fs")
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
    out(f"  (a) cp + fsync:            {cp_seconds:8.2f} s  "
        f"{size / MB / cp_seconds:8.1f} MB/s")

    # (b) an empty secondary catching up
    progress("  opening the primary ...")
    primary = replication.PrimaryStorage(FileStorage(src), "127.0.0.1:0")
    secondary = None
    dst = os.path.join(workdir, "catchup-secondary.fs")
    try:
        progress("  starting an empty secondary ...")
        start = time.perf_counter()
        secondary = replication.SecondaryStorage(
            FileStorage(dst), primary.replication_address)
        wait_caught_up(primary, secondary, "secondary catching up",
                       show_progress=True, total_bytes=size)
        catchup_seconds = time.perf_counter() - start
        secondary_size = secondary.getSize()
    finally:
        if secondary is not None:
            secondary.close()
        primary.close()
    identical = filecmp.cmp(src, dst, shallow=False)
    out(f"  (b) new secondary catch-up:{catchup_seconds:8.2f} s  "
        f"{size / MB / catchup_seconds:8.1f} MB/s  "
        f"{txns / catchup_seconds:8.0f} txn/s  "
        f"= {catchup_seconds / cp_seconds:.1f} x cp time")
    out(f"      (the secondary commits, and fsyncs, each of the {txns:,} "
        "transactions on its own)")
    out(f"      secondary Data.fs {secondary_size / MB:.1f} MB, "
        f"byte-identical to the primary's: {'yes' if identical else 'NO'}")
    remove_storage_files(workdir, "catchup")
    return {"size": size, "txns": txns, "cp": cp_seconds,
            "catchup": catchup_seconds, "identical": identical}


# --- 2. commit-to-visible lag -------------------------------------------------

def lag_stats(lags_ms):
    return {"n": len(lags_ms), "p50": percentile(lags_ms, 50),
            "p99": percentile(lags_ms, 99), "max": max(lags_ms)}


def fmt_lag(s):
    return (f"p50 {s['p50']:7.2f} ms   p99 {s['p99']:7.2f} ms   "
            f"max {s['max']:7.2f} ms")


class VisibilityListener:
    """Registered on a secondary like a DB: stamps each replicated commit.

    A SecondaryStorage calls ``invalidate(tid, oids)`` on its registered DB
    (a ZEO server, in production) right after the transaction is committed
    to its storage, i.e. when ``lastTransaction()`` starts returning it.
    """

    def __init__(self):
        self.stamps = []            # (tid, perf_counter)
        self.recording = True

    def invalidate(self, tid, oids):
        if self.recording:
            self.stamps.append((tid, time.perf_counter()))

    def invalidateCache(self):
        pass

    def transform_record_data(self, data):
        return data

    def untransform_record_data(self, data):
        return data


def burst_lag(work, primary, secondary, n, probe):
    """Commit n small transactions back to back; return lag statistics.

    probe "listener": stamps from a VisibilityListener on the secondary;
    probe "poll": stamps from a thread polling secondary.lastTransaction().
    """
    stop = threading.Event()
    listener = None
    thread = None
    if probe == "listener":
        listener = VisibilityListener()
        secondary.registerDB(listener)
        stamps = listener.stamps
    else:
        stamps = []                 # (secondary last tid, perf_counter)

        def poller():
            last = secondary.lastTransaction()
            while not stop.is_set():
                current = secondary.lastTransaction()
                if current != last:
                    stamps.append((current, time.perf_counter()))
                    last = current
                time.sleep(POLLER_SLEEP)

        thread = threading.Thread(target=poller, name="lag-poller",
                                  daemon=True)
        thread.start()
    try:
        commits = []                # (tid, perf_counter after commit)
        started = time.perf_counter()
        for _ in range(n):
            work.small_transaction()
            commits.append((primary.lastTransaction(), time.perf_counter()))
        seconds = time.perf_counter() - started
        drain = wait_caught_up(primary, secondary, "back-to-back drain",
                               poll=0.0005)
        time.sleep(0.01)            # let the poller see the last tid
    finally:
        stop.set()
        if thread is not None:
            thread.join()
        if listener is not None:
            listener.recording = False  # (it stays registered: harmless)
    stamps = list(stamps)
    stamp_tids = [t for t, _ in stamps]
    lags = []
    early = 0
    for tid, committed in commits:
        i = bisect.bisect_left(stamp_tids, tid)
        if i == len(stamps):
            raise RuntimeError("back-to-back lag: a commit was never seen "
                               "on the secondary")
        lag = stamps[i][1] - committed
        if lag < 0:
            early += 1              # visible before commit() returned
            lag = 0.0
        lags.append(lag * 1000.0)
    stats = lag_stats(lags)
    stats.update(rate=n / seconds, drain=drain, early=early)
    return stats


def bench_lag(workdir, n_paced, n_burst, rng):
    heading("2. Commit-to-visible lag on a secondary (in-process)")
    primary, secondary = pair(workdir, "lag")
    db = ZODB.DB(primary)
    try:
        conn = db.open()
        work = Workload(conn, rng)
        work.seed(200)
        wait_connected(primary)
        wait_caught_up(primary, secondary, "initial catch-up")

        # (a) paced: one commit every 1/PACE_RATE s, wait until visible
        progress(f"  paced lag: {n_paced} commits at {PACE_RATE}/s ...")
        interval = 1.0 / PACE_RATE
        lags = []
        next_at = time.perf_counter()
        started = next_at
        for _ in range(n_paced):
            now = time.perf_counter()
            if now < next_at:
                time.sleep(next_at - now)
            next_at = max(next_at + interval, time.perf_counter())
            work.small_transaction()
            committed = time.perf_counter()
            tid = primary.lastTransaction()
            deadline = committed + STALL_TIMEOUT
            while secondary.lastTransaction() < tid:
                if time.perf_counter() > deadline:
                    raise RuntimeError("paced lag: a commit never became "
                                       "visible on the secondary")
                time.sleep(LAG_POLL)
            lags.append((time.perf_counter() - committed) * 1000.0)
        rate = n_paced / (time.perf_counter() - started)
        paced = lag_stats(lags)
        paced["rate"] = rate
        out(f"  (a) paced, {n_paced} commits at {rate:.0f}/s:")
        out(f"      {fmt_lag(paced)}")

        # (b) back to back: commit without waiting; stamp when each tid
        # became visible on the secondary, two ways
        progress(f"  back-to-back lag: {n_burst} commits, stamped by an "
                 "invalidation listener ...")
        burst = burst_lag(work, primary, secondary, n_burst, "listener")
        out(f"  (b) back to back, {n_burst} commits at "
            f"{burst['rate']:.0f}/s (stamped by a listener on the")
        out("      secondary, called as each replicated commit finishes):")
        out(f"      {fmt_lag(burst)}")
        out(f"      secondary caught up {fmt_s(burst['drain'])} after the "
            "last commit")
        if burst["early"]:
            out(f"      ({burst['early']} commits were visible before "
                "commit() returned: counted as 0 ms)")
        progress(f"  back-to-back lag: {n_burst} commits, stamped by a "
                 "polling thread ...")
        polled = burst_lag(work, primary, secondary, n_burst, "poll")
        out(f"  (b') the same, {n_burst} commits at {polled['rate']:.0f}/s "
            "(stamped by a thread polling")
        out(f"      lastTransaction() every {POLLER_SLEEP * 1e6:.0f} us, "
            "competing for the GIL):")
        out(f"      {fmt_lag(polled)}")
        out(f"      secondary caught up {fmt_s(polled['drain'])} after the "
            "last commit")
        conn.close()
    finally:
        secondary.close()
        db.close()
        remove_storage_files(workdir, "lag")
    return {"paced": paced, "burst": burst, "polled": polled}


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


class Setup:
    """A storage to commit to, and what to close after the commits.

    ``storage`` is what ZODB.DB (or a ZEO server) gets; ``before_close()``
    runs once the commits are done, before the storage is closed (it stops
    a secondary before its primary goes away).
    """

    def __init__(self, storage, secondary=None):
        self.storage = storage
        self.secondary = secondary
        if secondary is not None:
            wait_connected(storage)

    def before_close(self):
        if self.secondary is not None:
            wait_caught_up(self.storage, self.secondary, "secondary")
            self.secondary.close()
            self.secondary = None


def setup_plain(workdir, name):
    return Setup(FileStorage(os.path.join(workdir, f"{name}.fs")))


def setup_alone(workdir, name):
    return Setup(replication.PrimaryStorage(
        FileStorage(os.path.join(workdir, f"{name}.fs")), "127.0.0.1:0"))


def setup_pair(sync_replicas):
    def setup(workdir, name):
        return Setup(*pair(workdir, name, sync_replicas=sync_replicas))
    return setup


def commit_in_process(setup, n, rng):
    db = ZODB.DB(setup.storage)
    try:
        return run_commits(db, n, rng)
    finally:
        setup.before_close()
        db.close()              # closes the storage too


def commit_through_zeo(setup, n, rng):
    server = ZEO.StorageServer.StorageServer(("127.0.0.1", 0),
                                             {"1": setup.storage})
    server.start_thread()
    try:
        db = ZEO.DB(server.acceptor.addr)
        try:
            return run_commits(db, n, rng)
        finally:
            db.close()
            setup.before_close()
    finally:
        server.close()          # closes the storage too


def compare(workdir, configs, commit, n, rounds, rng):
    """Run every config `rounds` times, interleaved; print and return
    [(label, median commits/s, min, max)], the first config the baseline."""
    rates = {label: [] for label, _ in configs}
    for r in range(rounds):
        for i, (label, make) in enumerate(configs):
            progress(f"  round {r + 1}/{rounds}: {label} ...")
            name = f"tp-{i}-{r}"
            setup = None
            try:
                setup = make(workdir, name)
                rates[label].append(commit(setup, n, rng))
            finally:
                if setup is not None and setup.secondary is not None:
                    setup.secondary.close()
                remove_storage_files(workdir, name)
    results = []
    for label, _ in configs:
        xs = rates[label]
        results.append((label, statistics.median(xs), min(xs), max(xs)))
    base = results[0][1]
    for label, rate, low, high in results:
        spread = f"  (range {low:.0f}-{high:.0f})" if rounds > 1 else ""
        out(f"  {label:<46} {rate:6.0f} commits/s  {rate / base:5.2f} x"
            f"{spread}")
    return results


def bench_throughput(workdir, n, rounds, rng):
    heading(f"3a. Commit throughput in-process: ZODB.DB, {n} small commits "
            "(~4 objects)")
    out(f"    median of {rounds} round(s); ratios to plain FileStorage")
    configs = [
        ("plain FileStorage", setup_plain),
        ("PrimaryStorage, no secondary", setup_alone),
        ("PrimaryStorage + 1 secondary", setup_pair(0)),
        ("PrimaryStorage + 1 secondary, sync_replicas=1", setup_pair(1)),
    ]
    return compare(workdir, configs, commit_in_process, n, rounds, rng)


def bench_zeo(workdir, n, rounds, rng):
    heading(f"3b. Commit throughput through ZEO: {n} small commits "
            "(~4 objects)")
    out(f"    ZEO server and client in this process; median of {rounds} "
        "round(s)")
    configs = [
        ("ZEO + plain FileStorage", setup_plain),
        ("ZEO + PrimaryStorage + 1 secondary", setup_pair(0)),
    ]
    return compare(workdir, configs, commit_through_zeo, n, rounds, rng)


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


def summary(env, catchup, lag, tp, zeo, warnings):
    width = 78
    out()
    out("=" * width)
    out("SUMMARY -- zkzeo replication benchmark")
    out(env)
    out("=" * width)
    if catchup:
        c = catchup
        size_mb = c["size"] / MB
        out(f"Catch-up of an empty secondary, Data.fs {size_mb:.1f} MB, "
            f"{c['txns']:,} transactions")
        out(f"  cp + fsync                  {c['cp']:8.2f} s  "
            f"{size_mb / c['cp']:7.1f} MB/s")
        out(f"  secondary catch-up          {c['catchup']:8.2f} s  "
            f"{size_mb / c['catchup']:7.1f} MB/s  "
            f"{c['txns'] / c['catchup']:6.0f} txn/s  "
            f"{c['catchup'] / c['cp']:6.1f} x cp")
        out("  secondary's Data.fs byte-identical to the primary's: "
            f"{'yes' if c['identical'] else 'NO'}")
    if lag:
        p, b = lag["paced"], lag["burst"]
        out("Commit -> visible on the secondary (in-process)")
        out(f"  paced {p['rate']:4.0f}/s ({p['n']:>5} commits)  "
            f"{fmt_lag(p)}")
        out(f"  back to back ({b['n']:>5}, {b['rate']:4.0f}/s)  "
            f"{fmt_lag(b)}")
        b = lag["polled"]
        out(f"  same, polled ({b['n']:>5}, {b['rate']:4.0f}/s)  "
            f"{fmt_lag(b)}")
    for title, rows in (("Commit throughput, ZODB.DB in-process "
                         "(small commits)", tp),
                        ("Commit throughput through ZEO (small commits)",
                         zeo)):
        if rows:
            out(title)
            base = rows[0][1]
            for label, rate, _, _ in rows:
                out(f"  {label:<46} {rate:6.0f} commits/s  "
                    f"{rate / base:5.2f} x")
    out("-" * width)
    if warnings.records:
        out(f"replication logged {len(warnings.records)} warning(s)/"
            "error(s); the first ones:")
        for record in warnings.records[:5]:
            out(f"  {record.levelname} {record.name}: "
                f"{record.getMessage()[:200]}")
    else:
        out("replication logged no warnings or errors")
    out("=" * width)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Measure zkzeo replication: catch-up of a new "
        "secondary, commit-to-visible lag and commit throughput.")
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
    args = parser.parse_args(argv)

    size_mb = args.size_mb or (20 if args.quick else 200)
    n_paced = 200 if args.quick else 1000
    n_burst = 300 if args.quick else 2000
    n_tp = 300 if args.quick else 2000
    rounds = args.rounds or (1 if args.quick else 3)

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    warnings = WarningCounter()
    logging.getLogger("replication").addHandler(warnings)

    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="replication-bench-", dir=args.workdir)
    rng = random.Random(args.seed)
    env = environment(workdir)
    out(f"zkzeo replication benchmark{' (--quick)' if args.quick else ''}")
    out(env)
    catchup = lag = tp = zeo = None
    status = 0
    started = time.perf_counter()
    try:
        catchup = bench_catchup(workdir, size_mb, rng)
        lag = bench_lag(workdir, n_paced, n_burst, rng)
        tp = bench_throughput(workdir, n_tp, rounds, rng)
        zeo = bench_zeo(workdir, n_tp, rounds, rng)
    except Exception:
        log.exception("benchmark failed")
        status = 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    summary(env, catchup, lag, tp, zeo, warnings)
    out(f"total run time {time.perf_counter() - started:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
