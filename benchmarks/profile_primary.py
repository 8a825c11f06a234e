#!/usr/bin/env python3
"""Where does a replicating primary spend its time on small commits?

A ZODB.DB in this process on a PrimaryStorage, secondaries in processes of
their own (``replication.runzeo``, as in replication_bench.py), and the
benchmark's small CMS-like commits (~4 objects).  The committing thread
encodes each new transaction itself (``Source._deliver``) and writes it to
the sockets of the secondaries that follow live; the replication hub thread
only takes over for catch-up, blobs and backlogs.

1. Timing, no profiler, rounds interleaved, median of the rounds: per
   commit, wall µs; CPU µs (user/system) of the committing thread, of the
   hub thread and of the secondary process; context switches of this
   process; µs spent in ``Source._deliver`` (wrapped in this process only)
   and how often it returned False, i.e. woke the hub.  Rows:

   plain FileStorage           ZODB's own cost: the baseline
   PrimaryStorage, no second.  the proxy and a Source nobody listens to
   + 1 secondary process       the real thing, on the same machine
   + 1 sink                    a process that speaks the protocol and ACKs
                               (at most every 50 ms, as a secondary does)
                               but stores nothing: the primary's own cost,
                               without a secondary's CPU and fsyncs
   + 1 secondary on /dev/shm   its Data.fs on another filesystem: no
                               shared ext4 journal, no competing fsyncs
   + 1 secondary, pinned       this process on CPU 0, every thread of the
                               secondary on CPU 1: the scheduler's
                               placement (needs 2 CPUs)

   Each secondary's Data.fs is checked to be byte-identical to its
   primary's afterwards.
2. Unless --timing-only, py-spy samples this process (all threads) with
   one secondary process: wall clock (``--idle``) and GIL holder
   (``--gil``), as µs per commit for the functions of replication/*.py and
   the top hotspots of the committing thread and of the hub thread;
   optionally (--strace) system calls per commit of each thread, and
   (--profile-plain) the same for a plain FileStorage.

Usage::

    PYTHONPATH=. python benchmarks/profile_primary.py [--commits 5000]
        [--rounds 3] [--timing-only] [--strace] [--profile-plain]
        [--keep DIR]                    # --keep: leave the raw py-spy files

py-spy must be on PATH or next to this Python (``pip install py-spy``); it
attaches to this process, which needs ptrace permission (root, or
kernel.yama.ptrace_scope=0).  Timing figures on a small machine move by
+-50 µs between runs: compare rows of one run.
"""
import argparse
import collections
import filecmp
import os
import random
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ZODB  # noqa: E402
from ZODB.FileStorage import FileStorage  # noqa: E402

import replication  # noqa: E402
import replication.source  # noqa: E402
import replication_bench as rb  # noqa: E402


def progress(text):
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def find_py_spy():
    here = os.path.join(os.path.dirname(sys.executable), "py-spy")
    if os.path.exists(here):
        return here
    found = shutil.which("py-spy")
    if not found:
        sys.exit("py-spy not found (pip install py-spy, or --timing-only)")
    return found


# (kind, label) of the timing rows
ROWS = [("plain", "plain FileStorage"),
        ("primary", "PrimaryStorage, no secondary"),
        ("secondary", "+ 1 secondary process"),
        ("sink", "+ 1 sink (ACKs, stores nothing)"),
        ("shm", "+ 1 secondary, its Data.fs on {shm}"),
        ("pinned", "+ 1 secondary; us on CPU {0}, it on CPU {1}")]


class Setup:
    """ZODB.DB on a FileStorage, or on a PrimaryStorage with nothing, a
    secondary server process or a sink listening; seeded and warmed up.
    kind: one of ROWS; secondary_dir: where the secondary's files go;
    cpus: (ours, its) for "pinned"."""

    identical = None    # secondary's Data.fs == primary's, after close()

    def __init__(self, workdir, name, rng, kind, secondary_dir=None,
                 cpus=None, warmup=200):
        self.server = None
        self.unpin = None
        storage = FileStorage(os.path.join(workdir, f"{name}.fs"))
        if kind != "plain":
            storage = replication.PrimaryStorage(storage, "127.0.0.1:0")
        self.storage = storage
        try:
            if kind == "sink":
                self.server = rb.SinkProcess(storage.replication_address)
            elif kind in ("secondary", "shm", "pinned"):
                self.server = rb.secondary_process(
                    secondary_dir or workdir, f"{name}-secondary",
                    storage.replication_address)
            if self.server is not None:
                rb.wait_connected(storage)
            if kind == "pinned":
                self.unpin = pin(os.getpid(), cpus[0])
                pin(self.server.popen.pid, cpus[1])
            self.db = ZODB.DB(storage)
            self.conn = self.db.open()
            self.work = rb.Workload(self.conn, rng)
            self.work.seed(200)
            for _ in range(warmup):
                self.work.small_transaction()
        except BaseException:
            self.close()
            raise

    def commits(self, n):
        """n small commits; return seconds."""
        start = time.perf_counter()
        for _ in range(n):
            self.work.small_transaction()
        return time.perf_counter() - start

    def measured_commits(self, n):
        """n small commits; return {"wall": seconds, "<thread> user"/
        "<thread> sys": CPU seconds of this process's main and hub
        threads, "secondary": CPU seconds of the secondary process,
        "cswch": context switches of this process, "deliver": seconds in
        Source._deliver, "woke": how many of its calls returned False}."""
        deliver = DeliverTimer()
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = thread_cpu()
        s0 = self.server_cpu()
        with deliver:
            seconds = self.commits(n)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        t1 = thread_cpu()
        s1 = self.server_cpu()
        result = {"wall": seconds, "secondary": s1 - s0,
                  "cswch": (r1.ru_nvcsw + r1.ru_nivcsw)
                  - (r0.ru_nvcsw + r0.ru_nivcsw),
                  "deliver": deliver.seconds, "woke": deliver.woke}
        for key in ("main user", "main sys", "hub user", "hub sys"):
            result[key] = t1[key] - t0[key]
        return result

    def server_cpu(self):
        """CPU seconds used so far by the secondary process (Linux)."""
        if self.server is None:
            return 0.0
        try:
            with open(f"/proc/{self.server.popen.pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            return (int(fields[11]) + int(fields[12])) / \
                os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return 0.0

    def close(self):
        try:
            if isinstance(self.server, rb.SinkProcess):
                deadline = time.monotonic() + 60
                last = self.storage.lastTransaction().hex()
                while not any(st["acked_tid"] >= last
                              for st in self.storage.source.status()):
                    if time.monotonic() > deadline:
                        raise RuntimeError("the sink never caught up")
                    time.sleep(0.01)
            elif self.server is not None:
                rb.wait_secondary_server(self.server,
                                         self.storage.lastTransaction())
        finally:
            if self.unpin is not None:
                self.unpin()
            if self.server is not None:
                self.server.stop()
            db = getattr(self, "db", None)
            if db is not None:
                db.close()
            else:
                self.storage.close()
        if self.server is not None and self.server.path:
            self.identical = filecmp.cmp(self.storage.getName(),
                                         self.server.path, shallow=False)


class DeliverTimer:
    """Within: time Source._deliver (class-wide, in this process) and count
    the calls that returned False, i.e. left work to the hub."""

    def __init__(self):
        self.seconds = 0.0
        self.calls = self.woke = 0

    def __enter__(self):
        original = self.original = replication.source.Source._deliver
        clock = time.perf_counter

        def _deliver(source, tid, end):
            start = clock()
            done = original(source, tid, end)
            self.seconds += clock() - start
            self.calls += 1
            if not done:
                self.woke += 1
            return done
        replication.source.Source._deliver = _deliver
        return self

    def __exit__(self, *exc):
        replication.source.Source._deliver = self.original


def thread_cpu():
    """{"main user": s, "main sys": s, "hub user": ..., ...} (Linux)."""
    names = {t.native_id: ("main" if t is threading.main_thread() else
                           "hub" if t.name == "replication-hub" else "other")
             for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    result = collections.Counter()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        name = names.get(int(tid), "other")
        result[f"{name} user"] += int(fields[11]) / tick
        result[f"{name} sys"] += int(fields[12]) / tick
    return result


def pin(pid, cpu):
    """Pin every thread of process pid to cpu (threads started later
    inherit it from their creator); return a function that gives them all
    the affinity the process had."""
    original = os.sched_getaffinity(pid)

    def each(cpus):
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                os.sched_setaffinity(int(tid), cpus)
            except (ProcessLookupError, FileNotFoundError):
                pass        # the thread ended meanwhile
    each({cpu})
    return lambda: each(original)


# --- 1. timing -------------------------------------------------------------

def timing_pass(workdir, rows, n, rounds, rng):
    """{label: {measure: median per commit}} (µs, context switches and
    hub wake-ups as counts)."""
    per_commit = collections.defaultdict(list)
    count = 0
    for r in range(rounds):
        for kind, label, options in rows:
            progress(f"timing, round {r + 1}/{rounds}: {label} ...")
            count += 1
            s = Setup(workdir, f"t{count}", rng, kind, **options)
            try:
                m = s.measured_commits(n)
            finally:
                s.close()
            if s.identical is False:
                raise RuntimeError(f"{label}: the secondary's Data.fs "
                                   "differs from the primary's")
            per_commit[label].append({
                k: v / n * (1 if k in ("cswch", "woke") else 1e6)
                for k, v in m.items()})
    return {label: {k: statistics.median(m[k] for m in ms)
                    for k in ms[0]}
            for label, ms in per_commit.items()}


def print_timing(results, rounds, notes):
    print(f"\nper commit, no profiler (median of {rounds} rounds): wall "
          "µs (and vs. plain); CPU µs")
    print("(user/system) of this process's committing and hub threads and "
          "of the secondary")
    print("process; context switches of this process; µs in "
          "Source._deliver, and % of")
    print("commits where it woke the hub")
    print(f"  {'':<42} {'wall':>5} {'+':>5} {'main u/s':>9} "
          f"{'hub u/s':>9} {'2nd':>5} {'cswch':>5} {'dlvr':>5} {'woke':>5}")
    base = results[ROWS[0][1]]["wall"]
    for label, m in results.items():
        deliver = f"{m['deliver']:5.1f} {m['woke'] * 100:4.0f}%" \
            if m["deliver"] else f"{'-':>5} {'-':>5}"
        print(f"  {label:<42} {m['wall']:5.0f} {m['wall'] - base:+5.0f} "
              f"{m['main user']:4.0f}/{m['main sys']:<4.0f} "
              f"{m['hub user']:4.0f}/{m['hub sys']:<4.0f} "
              f"{m['secondary']:5.0f} {m['cswch']:5.1f} {deliver}")
    for note in notes:
        print(f"  ({note})")
    print("""
  What the rows isolate:
  - sink vs. no secondary: the primary's own cost of replicating (encoding
    in _deliver, socket writes, ACKs on the hub), with no secondary
    competing for CPU or disk;
  - 1 secondary vs. sink: what a real secondary on the same machine costs
    the primary (its CPU, its fsyncs on the same disk);
  - /dev/shm vs. 1 secondary: the shared disk (journal, fsync) alone;
  - pinned vs. 1 secondary: the scheduler's placement of the two processes
    (one CPU each instead of wherever the scheduler puts them).""")


# --- 2. py-spy ---------------------------------------------------------------

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def parse_raw(path):
    """[(thread id, [(func, file), ...] outermost first, count)]."""
    stacks = []
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            body, _, count = line.rpartition(" ")
            frames = body.split(";")
            parsed = []
            for fr in frames[1:]:
                m = FRAME.match(fr)
                parsed.append((m.group("func"), m.group("file")) if m
                              else (fr, ""))
            stacks.append((frames[0], parsed, int(count)))
    return stacks


def thread_name(text):
    """py-spy 0.4 labels stacks "thread (NATIVE_ID): NAME"."""
    _, sep, name = text.partition("): ")
    return name.strip() if sep else text


def is_idle_hub(frames):
    """A hub-thread sample waiting in the gevent loop (nothing to do)."""
    if not frames:
        return True
    func, path = frames[-1]
    return "gevent" in path and func.split(".")[-1] in (
        "run", "wait", "switch")


def short(path):
    return path.split("site-packages/")[-1]


def record(py_spy, rate, extra, output, work):
    args = [py_spy, "record", "--pid", str(os.getpid()), "--rate",
            str(rate), "--format", "raw", "--threads", "--function",
            "--output", output, "--nonblocking"] + extra
    spy = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
    try:
        time.sleep(1.0)     # py-spy attaches
        if spy.poll() is not None:
            raise RuntimeError("py-spy failed: "
                               + spy.stderr.read().decode(errors="replace"))
        seconds = work()
    finally:
        if spy.poll() is None:
            spy.send_signal(signal.SIGINT)
        try:
            spy.wait(60)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()
    return seconds


def below_commits(frames):
    """The frames under Setup.commits, or None outside it."""
    for i, (func, _) in enumerate(frames):
        if func == "Setup.commits":
            return frames[i + 1:]
    return None


def analyse(stacks, n, seconds, title, rate=None):
    """Print µs per commit; rate: samples per second of one thread (taken
    from the committing thread when None, i.e. in the --idle pass)."""
    print(f"\n{title}")
    print("-" * len(title))
    main, hub = "MainThread", "replication-hub"
    # The committing thread only counts while it commits (py-spy attached
    # a second earlier), and from there down; the hub while not idle.
    kept = []
    for thread, frames, count in stacks:
        thread = thread_name(thread)
        if thread == main:
            frames = below_commits(frames)
            if frames is None:
                continue
        elif thread == hub and is_idle_hub(frames):
            continue
        kept.append((thread, frames, count))
    per_thread = collections.Counter()
    for thread, frames, count in kept:
        per_thread[thread] += count
    if rate is None:
        rate = per_thread[main] / seconds
        print(f"  {per_thread[main]} samples of the committing thread in "
              f"{seconds:.2f} s: {rate:.0f} samples/s")
    scale = 1e6 / rate / n              # µs per commit of one sample
    print(f"  1 sample = {scale:.2f} µs per commit")
    print("  by thread, µs per commit (the hub's idle loop left out):")
    for name, count in per_thread.most_common():
        print(f"    {name:<28} {count * scale:8.1f}")

    def table(thread, label, rows, only_replication=False):
        incl = collections.Counter()
        self_ = collections.Counter()
        for t, frames, count in kept:
            if t != thread:
                continue
            for key in {(func, short(path)) for func, path in frames}:
                incl[key] += count
            if frames:
                func, path = frames[-1]
                self_[(func, short(path))] += count
        keys = [k for k, _ in incl.most_common()
                if not only_replication or k[1].startswith("replication/")]
        if not keys:
            return
        print(f"  {label}:")
        print(f"    {'inclusive':>9} {'self':>7}  µs/commit")
        for key in keys[:rows]:
            print(f"    {incl[key] * scale:9.1f} {self_[key] * scale:7.1f}  "
                  f"{key[0]} ({key[1]})")
        if not only_replication:
            print("    top self time:")
            for (func, path), count in self_.most_common(rows):
                print(f"    {count * scale:9.1f}  {func} ({path})")

    table(main, "committing thread, replication/*.py", 10,
          only_replication=True)
    table(main, "committing thread, all functions", 12)
    table(hub, "replication hub thread, replication/*.py", 10,
          only_replication=True)
    table(hub, "replication hub thread, all functions", 12)
    return rate


def spy_pass(py_spy, args, setup, workdir, label):
    n = args.commits
    rate = None
    for flag, what in (("--idle", "wall clock, all threads (--idle)"),
                       ("--gil", "GIL holder only (--gil)")):
        raw = os.path.join(workdir, f"pyspy-{label.split()[0]}-{flag[2:]}"
                           ".txt")
        progress(f"py-spy {flag}: {label} ...")
        seconds = record(py_spy, args.rate, [flag], raw,
                         lambda: setup.commits(n))
        rate = analyse(parse_raw(raw), n, seconds,
                       f"{label}, py-spy {what}: {n} commits, "
                       f"{seconds / n * 1e6:.0f} µs each while sampled",
                       rate)
        if args.keep:
            os.makedirs(args.keep, exist_ok=True)
            shutil.copy(raw, args.keep)


def strace_pass(setup, n, workdir, label):
    """System calls per commit of the committing and hub threads."""
    out = os.path.join(workdir, "strace.txt")
    progress(f"strace: {label} ...")
    spy = subprocess.Popen(["strace", "-f", "-qq", "-o", out, "-p",
                            str(os.getpid())], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        open(os.path.join(workdir, "strace-start"), "w").close()  # markers
        setup.commits(n)
        open(os.path.join(workdir, "strace-stop"), "w").close()
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(60)
    names = {t.native_id: ("main" if t is threading.main_thread() else
                           t.name) for t in threading.enumerate()}
    counts = collections.Counter()
    inside = False
    with open(out, errors="replace") as f:
        for line in f:
            if "strace-start" in line:
                inside = True
                continue
            if "strace-stop" in line:
                break
            m = re.match(r"(\d+)\s+(\w+)\(", line)
            if inside and m:    # not "<... call resumed>" (counted once)
                counts[(names.get(int(m.group(1)), m.group(1)),
                        m.group(2))] += 1
    title = (f"{label}: system calls per commit (strace, {n} commits; "
             "strace slows everything down)")
    print(f"\n{title}\n" + "-" * len(title))
    for thread in ("main", "replication-hub"):
        rows = sorted(((c, call) for (t, call), c in counts.items()
                       if t == thread), reverse=True)
        total = sum(c for c, _ in rows)
        print(f"  {thread}: {total / n:.1f} per commit: " + ", ".join(
            f"{call} {c / n:.2f}" for c, call in rows[:12]))


def profile(py_spy, args, workdir, rng, kind, label):
    s = Setup(workdir, f"p-{kind}", rng, kind)
    try:
        if args.strace:
            strace_pass(s, min(args.commits, 2000), workdir, label)
        spy_pass(py_spy, args, s, workdir, label)
    finally:
        s.close()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--commits", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3,
                        help="timing rounds, interleaved (the median is "
                        "shown)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--tmpfs", default="/dev/shm",
                        help="another (RAM) filesystem for the secondary's "
                        "Data.fs of one timing row ('' to skip)")
    parser.add_argument("--timing-only", dest="spy", action="store_false",
                        help="only the timing table (no py-spy)")
    parser.add_argument("--rate", type=int, default=2000,
                        help="py-spy samples per second")
    parser.add_argument("--keep", default=None,
                        help="directory to copy the raw py-spy files to")
    parser.add_argument("--strace", action="store_true",
                        help="also count system calls per commit per "
                        "thread (needs strace)")
    parser.add_argument("--profile-plain", action="store_true",
                        help="also profile a plain FileStorage (baseline)")
    args = parser.parse_args(argv)
    py_spy = find_py_spy() if args.spy else None
    if args.strace and not shutil.which("strace"):
        sys.exit("strace not found")
    signal.signal(signal.SIGTERM, rb._terminate)
    rng = random.Random(args.seed)
    workdir = tempfile.mkdtemp(prefix="profile-primary-")
    cleanup = [workdir]
    try:
        print(f"{args.commits} small commits per pass; "
              f"{rb.environment(workdir)}")
        notes = ["CPU times have a 10 ms tick: +-"
                 f"{10000 / args.commits:.0f} µs per commit"]
        rows = []
        for kind, label in ROWS:
            options = {}
            if kind == "shm":
                if not args.tmpfs or not os.path.isdir(args.tmpfs):
                    notes.append(f"no row with the secondary on "
                                 f"{args.tmpfs or 'tmpfs'}: skipped")
                    continue
                options["secondary_dir"] = tempfile.mkdtemp(
                    prefix="profile-secondary-", dir=args.tmpfs)
                cleanup.append(options["secondary_dir"])
                if os.stat(args.tmpfs).st_dev == os.stat(workdir).st_dev:
                    notes.append(f"{args.tmpfs} is the filesystem of "
                                 f"{workdir}: that row isolates nothing")
                label = label.format(shm=args.tmpfs)
            elif kind == "pinned":
                cpus = sorted(os.sched_getaffinity(0))[:2]
                if len(cpus) < 2:
                    notes.append("no pinned row: this process may run on "
                                 "one CPU only")
                    continue
                options["cpus"] = cpus
                label = label.format(*cpus)
            rows.append((kind, label, options))
        results = timing_pass(workdir, rows, args.commits, args.rounds, rng)
        print_timing(results, args.rounds, notes)
        sys.stdout.flush()
        if args.spy:
            if args.profile_plain:
                profile(py_spy, args, workdir, rng, "plain",
                        "BASELINE plain FileStorage")
            profile(py_spy, args, workdir, rng, "secondary",
                    "PrimaryStorage + 1 secondary")
    except KeyboardInterrupt:
        print("interrupted")
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        rb.ServerProcess.stop_all()
        for path in cleanup:
            shutil.rmtree(path, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
