#!/usr/bin/env python3
"""Where does a replicating primary spend its time on small commits?

A ZODB.DB in this process on a PrimaryStorage, one secondary ZEO server in
its own process (``replication.runzeo``, as in replication_bench.py), and
the benchmark's small CMS-like commits (~4 objects).  Passes:

1. timing, no profiler: wall µs per commit, CPU µs (user/system) of the
   committing thread, of the replication hub thread and of the secondary
   process, and context switches, for: a plain FileStorage; a
   PrimaryStorage alone; with one secondary process; with a "sink" (a
   process that reads the stream and ACKs but stores nothing: the primary's
   own cost without a secondary competing for CPU and disk), also ACKing at
   most every 50 ms; with the secondary's Data.fs on tmpfs; and
   *experiments* -- the Source of one primary patched in this process
   (replication/ is not changed) the way the suggestions say:
   the hub reads the last tid without FileStorage's _lock; the hub's
   iterator continues at the known end of the last transaction it read
   (no open(), no search, no lock; reads bounded by the committed end); and
   the new bytes read with one pread().  Each secondary's Data.fs is
   checked to be byte-identical to its primary's afterwards;
2. counting: how often the replication functions run per commit;
3. optionally (--strace) system calls per commit of each thread, and
   (--profile-plain) py-spy of a plain FileStorage for comparison;
4. py-spy sampling of this process (all threads): wall clock (``--idle``)
   and GIL holder (``--gil``), as µs per commit for the functions of
   replication/*.py and the top hotspots of the replication hub thread.

Usage::

    PYTHONPATH=. python benchmarks/profile_primary.py [--commits 5000]
        [--rounds 3] [--strace] [--profile-plain] [--timing-only]
        [--keep DIR]                    # --keep: leave the raw py-spy files

py-spy must be on PATH or next to this Python (``pip install py-spy``); it
attaches to this process, which needs ptrace permission (root, or
kernel.yama.ptrace_scope=0).  Timing figures on a small machine move by
+-50 µs between runs: compare rows of one run.
"""
import argparse
import collections
import filecmp
import functools
import os
import random
import resource
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ZODB  # noqa: E402
from ZODB.FileStorage import FileStorage  # noqa: E402
from ZODB.FileStorage.FileStorage import FileIterator  # noqa: E402

import replication  # noqa: E402
import replication.records  # noqa: E402
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
        sys.exit("py-spy not found (pip install py-spy)")
    return found


class Setup:
    """ZODB.DB on a FileStorage, or on a PrimaryStorage with one secondary
    server process; seeded and warmed up."""

    identical = None    # secondary's Data.fs == primary's, after close()

    def __init__(self, workdir, name, replicate, rng, warmup=200,
                 secondary_dir=None, secondaries=None, patch=None,
                 sink=False):
        if secondaries is None:
            secondaries = 1 if replicate else 0
        secondaries = 0 if sink else secondaries
        self.server = None
        storage = FileStorage(os.path.join(workdir, f"{name}.fs"))
        if replicate:
            storage = replication.PrimaryStorage(storage, "127.0.0.1:0")
            if patch is not None:
                patch(storage)
        self.storage = storage
        try:
            if sink:
                self.server = SinkProcess(
                    storage.replication_address,
                    0.05 if sink == "sink, ACK every 50 ms" else 0.0)
                rb.wait_connected(storage)
            elif secondaries:
                self.server = rb.secondary_process(
                    secondary_dir or workdir, f"{name}-secondary",
                    storage.replication_address)
                rb.wait_connected(storage)
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
        "cswch": context switches of this process}."""
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = thread_cpu()
        s0 = self.server_cpu()
        seconds = self.commits(n)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        t1 = thread_cpu()
        s1 = self.server_cpu()
        result = {"wall": seconds, "secondary": s1 - s0,
                  "cswch": (r1.ru_nvcsw + r1.ru_nivcsw)
                  - (r0.ru_nvcsw + r0.ru_nivcsw)}
        for key, value in t1.items():
            result[key] = value - t0.get(key, 0.0)
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
            if isinstance(self.server, SinkProcess):
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


# A secondary that costs next to nothing: it speaks the protocol, reads the
# stream and ACKs the last END when nothing more is buffered (as a Follower
# does), but stores nothing.  It separates the primary's own cost from the
# CPU and disk a real secondary on the same machine takes.
SINK = """\
import socket, sys, time
from replication import protocol
from replication.protocol import Ack, End, Hello, Z64, NO_DIGEST
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])))
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
sock.sendall(protocol.preamble() + Hello(0, Z64, NO_DIGEST, 0,
                                         "sink").encode())
reader = protocol.FrameReader()
buf = b""
while len(buf) < protocol.PREAMBLE_SIZE:
    buf += sock.recv(65536)
reader.feed(buf[protocol.PREAMBLE_SIZE:])
ack_every = float(sys.argv[3])
last = acked = Z64
acked_at = 0.0
sock.settimeout(ack_every or None)
while True:
    message = reader.next()
    if message is None:
        if last != acked and time.monotonic() - acked_at >= ack_every:
            sock.sendall(Ack(last).encode())
            acked, acked_at = last, time.monotonic()
        try:
            data = sock.recv(1 << 20)
        except socket.timeout:
            continue
        if not data:
            break
        reader.feed(data)
    elif isinstance(message, End):
        last = message.tid
"""


class SinkProcess:
    """Stands in for a ServerProcess (popen, stop(), path=None)."""

    path = None

    def __init__(self, address, ack_every=0.0):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        self.popen = subprocess.Popen(
            [sys.executable, "-c", SINK, address[0], str(address[1]),
             str(ack_every)],
            env=env, stdin=subprocess.DEVNULL, start_new_session=True)
        rb.ServerProcess.running.append(self)
        self.name = "sink"

    def stop(self):
        if self in rb.ServerProcess.running:
            rb.ServerProcess.running.remove(self)
            self.popen.terminate()
            self.popen.wait(30)


# --- experiments: what the suggestions would save ------------------------
# Applied to one Source in this process (replication/ is not changed).

class LockFreeTid:
    """A Source's view of its FileStorage whose lastTransaction() reads
    the last tid without taking the storage's _lock (which FileStorage
    holds through the committing thread's fsync)."""

    def __init__(self, base):
        self._exp_base = base
        self._exp_positions = {}    # next tid -> file position

    def __getattr__(self, name):
        return getattr(self._exp_base, name)

    def lastTransaction(self):
        return self._exp_base._ltid


class RecordingIterator:
    """Remembers where the transaction after each one starts."""

    def __init__(self, it, positions):
        self.it, self.positions = it, positions

    def __iter__(self):
        return self

    def __next__(self):
        txn = next(self.it)
        self.positions.clear()
        self.positions[replication.records.next_tid(txn.tid)] = self.it._pos
        return txn

    def close(self):
        self.it.close()


class BoundedFile:
    """File-like reads of the Data.fs that never go past ``end``, the
    committed end (FileStorage's _pos): the next transaction is being
    copied into the file during its tpc_vote, so a header there may be
    half-written.  With prefetch, [start, end) is read with one pread()."""

    def __init__(self, fd, start, end, name, prefetch):
        self.fd, self.start, self.end, self.name = fd, start, end, name
        self.data = os.pread(fd, end - start, start) if prefetch else None
        self.pos = start

    def seek(self, pos, whence=0):
        if whence == 1:
            pos += self.pos
        elif whence == 2:
            pos += self.end
        self.pos = pos
        return pos

    def tell(self):
        return self.pos

    def read(self, n=-1):
        pos = self.pos
        n = self.end - pos if n < 0 else min(n, self.end - pos)
        if n <= 0:
            return b""
        if self.data is not None and pos >= self.start:
            data = self.data[pos - self.start:pos - self.start + n]
        else:
            data = os.pread(self.fd, n, pos)
        self.pos = pos + len(data)
        return data

    def close(self):
        pass


class BoundedIterator(FileIterator):
    """ZODB's FileIterator from a known position up to the committed end:
    no open(), no search for the start, no storage lock."""

    def __init__(self, fd, name, pos, end, stop, prefetch):
        self._file = BoundedFile(fd, pos, end, name, prefetch)
        self._file_name = name
        self._file_size = end
        self._pos = pos
        self._start = None
        self._stop = stop


_open_iterator = replication.source.open_iterator


def open_iterator_from_position(storage, start=None, stop=None):
    """Continue where the previous iteration ended: a FileIterator at a
    known position needs neither the storage lock nor a search."""
    positions = getattr(storage, "_exp_positions", None)
    if positions is None:
        return _open_iterator(storage, start, stop)
    pos = positions.get(start) if start else None
    if pos is None:
        it = _open_iterator(storage, start, stop)
    else:
        base = storage._exp_base
        if getattr(storage, "_exp_fd", None) is None:
            storage._exp_fd = os.open(base._file_name, os.O_RDONLY)
        # Bytes before _pos are committed, and _pos is set before _ltid:
        # read after `stop` was, it covers that transaction at least.
        it = BoundedIterator(storage._exp_fd, base._file_name, pos,
                             base._pos, stop, storage._exp_pread)
    return RecordingIterator(it, positions)


class Experiment:
    """Context: Setups made inside get the patched Source behaviour."""

    def __init__(self, positions, pread=False):
        self.positions = positions
        self.pread = pread

    def patch(self, storage):
        storage.source.storage = view = LockFreeTid(storage.base)
        view._exp_pread = self.pread

    def __enter__(self):
        if self.positions:
            replication.source.open_iterator = open_iterator_from_position
        return self

    def __exit__(self, *exc):
        replication.source.open_iterator = _open_iterator


# --- pass 2: call counts -------------------------------------------------

COUNTED = [
    (replication.storage.PrimaryStorage, "tpc_finish"),
    (replication.source.Source, "notify_commit"),
    (replication.source.Source, "_on_commit"),
    (replication.source.Source, "_extend_recent"),
    (replication.source.Source, "_from_recent"),
    (replication.source.Source, "_send_batch"),
    (replication.source.Source, "wait_for_acks"),
    (replication.source, "open_iterator"),
    (replication.source, "encode_transaction"),
]


def count_calls(setup, n):
    counts = collections.Counter()
    saved = []
    ack_decode = replication.protocol.Ack.__dict__["decode"]

    def wrap(owner, name):
        original = owner.__dict__[name] if isinstance(owner, type) \
            else getattr(owner, name)
        saved.append((owner, name, original))

        @functools.wraps(original)
        def counting(*args, **kw):
            counts[name] += 1
            return original(*args, **kw)
        setattr(owner, name, counting)

    for owner, name in COUNTED:
        wrap(owner, name)

    def decode(cls, payload):
        counts["ACK received"] += 1
        return ack_decode.__func__(cls, payload)
    replication.protocol.Ack.decode = classmethod(decode)
    try:
        setup.commits(n)
        time.sleep(0.2)     # let the last ACKs arrive
    finally:
        replication.protocol.Ack.decode = ack_decode
        for owner, name, original in saved:
            setattr(owner, name, original)
    return counts


# --- pass 3: py-spy -------------------------------------------------------

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
            thread = frames[0]
            parsed = []
            for fr in frames[1:]:
                m = FRAME.match(fr)
                if m:
                    parsed.append((m.group("func"), m.group("file")))
                else:
                    parsed.append((fr, ""))
            stacks.append((thread, parsed, int(count)))
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


def in_commits(frames):
    return any(func == "Setup.commits" for func, _ in frames)


def strace_pass(setup, n, workdir, label):
    """System calls per commit of the committing and hub threads."""
    out = os.path.join(workdir, "strace.txt")
    spy = subprocess.Popen(["strace", "-f", "-qq", "-o", out, "-p",
                            str(os.getpid())], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        mark = os.path.join(workdir, "strace-start")
        open(mark, "w").close()         # a marker in the trace
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
            if not inside:
                continue
            m = re.match(r"(\d+)\s+(?:<\.\.\. )?(\w+)", line)
            if not m or "resumed>" in line and "<..." not in line:
                continue
            if line.split(None, 1)[1].startswith("<..."):
                continue            # the end of an interrupted call
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


def analyse(stacks, n, seconds, title, rate=None):
    """Print µs per commit; rate: samples per second of one thread (taken
    from the committing thread when None, i.e. in the --idle pass)."""
    print(f"\n{title}")
    print("-" * len(title))
    main = "MainThread"
    # The committing thread only counts while it commits (py-spy attached
    # a second earlier); the hub's samples outside are idle anyway.
    stacks = [(thread_name(t), frames, count) for t, frames, count in stacks
              if thread_name(t) != main or in_commits(frames)]
    per_thread = collections.Counter()
    for thread, frames, count in stacks:
        per_thread[thread] += count
    if rate is None:
        rate = per_thread[main] / seconds
        print(f"  {per_thread[main]} samples of the committing thread in "
              f"{seconds:.2f} s: {rate:.0f} samples/s")
    scale = 1e6 / rate / n              # µs per commit of one sample
    print(f"  1 sample = {scale:.2f} µs per commit")
    print("  by thread, µs per commit:")
    for name, count in per_thread.most_common():
        print(f"    {name:<28} {count * scale:8.1f}")

    def table(thread, label, rows=12, only_replication=False,
              skip_idle=False):
        incl = collections.Counter()
        self_ = collections.Counter()
        active = 0
        for t, frames, count in stacks:
            if t != thread:
                continue
            if skip_idle and is_idle_hub(frames):
                continue
            active += count
            seen = set()
            for func, path in frames:
                key = (func, short(path))
                if key not in seen:
                    seen.add(key)
                    incl[key] += count
            if frames:
                func, path = frames[-1]
                self_[(func, short(path))] += count
        print(f"  {label}: {active * scale:.1f} µs/commit"
              + (" (not counting the idle loop)" if skip_idle else ""))
        keys = [k for k, _ in incl.most_common()
                if not only_replication or k[1].startswith("replication/")]
        if rows:
            print(f"    {'inclusive':>9} {'self':>7}  µs/commit")
        for key in keys[:rows]:
            print(f"    {incl[key] * scale:9.1f} {self_[key] * scale:7.1f}  "
                  f"{key[0]} ({key[1]})")
        return self_

    table(main, "committing thread, replication/*.py",
          only_replication=True, rows=10)
    table(main, "committing thread, all functions", rows=16)
    if "replication-hub" in per_thread:
        table("replication-hub", "replication hub thread, replication/*.py",
              only_replication=True, skip_idle=True, rows=16)
        self_ = table("replication-hub", "replication hub thread",
                      skip_idle=True, rows=0)
        print("    top self time on the hub (µs/commit):")
        for (func, path), count in self_.most_common(16):
            print(f"    {count * scale:9.1f}  {func} ({path})")
    return rate


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--commits", type=int, default=5000)
    parser.add_argument("--rate", type=int, default=2000,
                        help="py-spy samples per second")
    parser.add_argument("--keep", default=None,
                        help="directory to copy the raw py-spy files to")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--tmpfs", default="/dev/shm",
                        help="a RAM filesystem for one more timing row: the "
                        "secondary's Data.fs there, so its fsyncs do not "
                        "compete with the primary's ('' to skip)")
    parser.add_argument("--no-experiments", dest="experiments",
                        action="store_false",
                        help="skip the timing rows of the patched Source")
    parser.add_argument("--rounds", type=int, default=3,
                        help="timing rounds (the median is shown)")
    parser.add_argument("--timing-only", dest="spy", action="store_false",
                        help="only the timing table (no counts, no py-spy)")
    parser.add_argument("--strace", action="store_true",
                        help="also count system calls per commit per "
                        "thread (needs strace)")
    parser.add_argument("--profile-plain", action="store_true",
                        help="also sample a plain FileStorage (baseline)")
    args = parser.parse_args(argv)
    py_spy = find_py_spy()
    signal.signal(signal.SIGTERM, rb._terminate)
    rng = random.Random(args.seed)
    workdir = tempfile.mkdtemp(prefix="profile-primary-")
    n = args.commits
    setups = []
    cleanup = [workdir]
    try:
        print(f"{n} small commits per pass; {os.cpu_count()} CPUs; "
              f"{rb.environment(workdir)}")
        # 1. timing
        # (label, primary?, secondaries, secondary dir, experiment)
        rows = [("plain FileStorage", False, 0, None, None),
                ("PrimaryStorage, no secondary", True, 0, None, None),
                ("PrimaryStorage + 1 secondary process", True, 1, None, None),
                ("PrimaryStorage + 1 sink (reads and ACKs, stores nothing)",
                 True, "sink", None, None),
                ("  the sink ACKs at most every 50 ms", True,
                 "sink, ACK every 50 ms", None, None)]
        if args.experiments:
            rows += [
                ("  experiment: hub reads last tid without _lock", True, 1,
                 None, Experiment(positions=False)),
                ("  experiment: + iterator from known position", True, 1,
                 None, Experiment(positions=True)),
                ("  experiment: + one pread per batch, parsed in memory",
                 True, 1, None, Experiment(positions=True, pread=True)),
                ("  sink + iterator from known position + pread", True,
                 "sink", None, Experiment(positions=True, pread=True))]
        if args.tmpfs and os.path.isdir(args.tmpfs):
            tmp_secondaries = tempfile.mkdtemp(prefix="profile-secondary-",
                                               dir=args.tmpfs)
            cleanup.append(tmp_secondaries)
            rows.append(("  secondary's Data.fs on " + args.tmpfs,
                         True, 1, tmp_secondaries, None))
        per_commit = {}
        for _ in range(args.rounds):
            for label, primary, secondaries, secondary_dir, exp in rows:
                progress(f"timing: {label.strip()} ...")
                with exp or Experiment(False):
                    s = Setup(workdir, f"t{len(setups)}", primary, rng,
                              secondary_dir=secondary_dir,
                              secondaries=secondaries,
                              patch=exp.patch if exp else None,
                              sink=secondaries if isinstance(
                                  secondaries, str) else False)
                    setups.append(s)
                    try:
                        m = s.measured_commits(n)
                    finally:
                        s.close()
                    if s.identical is False:
                        raise RuntimeError(f"{label.strip()}: the "
                                           "secondary's Data.fs differs")
                per_commit.setdefault(label, []).append(
                    {k: v / n * (1 if k == "cswch" else 1e6)
                     for k, v in m.items()})
        print(f"\nper commit, no profiler (median of {args.rounds} "
              "rounds), µs: wall time; CPU time (user/")
        print("system) of this process's committing and hub threads; CPU of "
              "the secondary")
        print("process; context switches of this process")
        print(f"  {'':<52} {'wall':>6} {'+':>5} {'main u/s':>9} "
              f"{'hub u/s':>9} {'2nd':>5} {'cswch':>5}")
        def median(xs):
            return sorted(xs, key=lambda m: m["wall"])[(len(xs) - 1) // 2]

        base = median(per_commit["plain FileStorage"])["wall"]
        for label, xs in per_commit.items():
            m = median(xs)
            print(f"  {label:<52} {m['wall']:6.0f} {m['wall'] - base:+5.0f} "
                  f"{m.get('main user', 0):4.0f}/{m.get('main sys', 0):<4.0f} "
                  f"{m.get('hub user', 0):4.0f}/{m.get('hub sys', 0):<4.0f} "
                  f"{m['secondary']:5.0f} {m['cswch']:5.1f}")
        print("  (CPU times have a 10 ms tick: +-10000/commits µs)")

        if args.profile_plain:
            s = Setup(workdir, "plain", False, rng)
            setups.append(s)
            try:
                if args.strace and shutil.which("strace"):
                    strace_pass(s, min(n, 2000), workdir,
                                "BASELINE plain FileStorage")
                seconds = record(py_spy, args.rate, ["--idle"],
                                 os.path.join(workdir, "plain-idle.txt"),
                                 lambda: s.commits(n))
                rate = analyse(parse_raw(os.path.join(workdir,
                                                      "plain-idle.txt")),
                               n, seconds, "BASELINE plain FileStorage, "
                               f"py-spy --idle: {seconds / n * 1e6:.0f} µs "
                               "per commit while sampled")
                seconds = record(py_spy, args.rate, ["--gil"],
                                 os.path.join(workdir, "plain-gil.txt"),
                                 lambda: s.commits(n))
                analyse(parse_raw(os.path.join(workdir, "plain-gil.txt")),
                        n, seconds, "BASELINE plain FileStorage, py-spy "
                        "--gil", rate)
            finally:
                s.close()

        if not args.spy:
            return 0
        s = Setup(workdir, "p", True, rng)
        setups.append(s)
        try:
            # 2. counts
            counts = count_calls(s, n)
            print("\ncalls per commit (PrimaryStorage + 1 secondary):")
            for owner, name in COUNTED:
                print(f"  {name:<20} {counts[name] / n:6.3f}")
            print(f"  {'ACK received':<20} {counts['ACK received'] / n:6.3f}")

            if args.strace and shutil.which("strace"):
                strace_pass(s, min(n, 2000), workdir,
                            "PrimaryStorage + 1 secondary")

            # 3. py-spy
            rate = None
            for extra, label in (
                    (["--idle"], "wall clock, all threads (--idle)"),
                    (["--gil"], "GIL holder only (--gil)")):
                raw = os.path.join(workdir, f"pyspy-{extra[0][2:]}.txt")
                seconds = record(py_spy, args.rate, extra, raw,
                                 lambda: s.commits(n))
                rate = analyse(parse_raw(raw), n, seconds,
                               f"py-spy {label}: {n} commits, "
                               f"{seconds / n * 1e6:.0f} µs each while "
                               "sampled", rate)
                if args.keep:
                    os.makedirs(args.keep, exist_ok=True)
                    shutil.copy(raw, args.keep)
        finally:
            s.close()
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
