#!/usr/bin/env python3
"""Crash-and-freeze: does failover keep its promises under faults?

A real ZooKeeper and three ``zkrunzeo`` servers (s1 starts as primary)
with a short session timeout, automatic failover, ``rewind-divergent`` and
synchronous replication (``sync-replicas 1`` and ``sync-block true``: a
commit that no secondary acknowledged within ``sync-timeout`` fails rather
than succeed asynchronously, so "acknowledged" means "on two servers").
Writer processes (``chaos_writer.py``) commit small transactions in a loop
through ``zkzeo.DB(url, read_only_fallback=True)`` and log every commit
whose ``transaction.commit()`` returned.

Each cycle applies one fault, chosen by a seeded RNG (``--seed``; or the
list given with ``--faults``), then waits (with a timeout) until the cluster
has healed: the cluster state names a primary that is registered as such
and says it accepts writes, every server is registered, every secondary
says it follows and has caught up with the primary's last transaction (as
the servers themselves answer), and every writer has had a commit
acknowledged since.  Faults:

  primary-kill     SIGKILL of the primary; restarted once another server
                   is primary (it rejoins as a secondary)
  primary-stop     SIGSTOP of the primary for longer than the session
                   timeout plus the failover grace, then SIGCONT
  secondary-kill   SIGKILL of a secondary, restarted after a moment
  secondary-stop   SIGSTOP of a secondary for a moment, then SIGCONT
  zookeeper-kill   SIGKILL of ZooKeeper, restarted on its data after a
                   moment
  zookeeper-stop   SIGSTOP of ZooKeeper for a moment, then SIGCONT

At the end the writers stop, the cluster settles, every acknowledged value
is read back from the final primary, the servers stop, and every server's
Data.fs (and every ``Data.fs.divergent-*`` a rewind kept) is read
transaction by transaction.  Printed (the ones marked "must be 0" set the
exit status):

- acknowledged commits, and lost ones (must be 0): a value not readable
  from the final primary, or a tid not in its history;
- late acknowledgements (must be 0): acknowledged tids found only in a
  divergent tail, i.e. acknowledged by a server whose history was then
  abandoned (it wrote after it was replaced, or its sync guarantee failed);
- double elections (must be 0): more than one change of primary after one
  fault (epochs grow by one per change, so the count is exact), from a
  kazoo client polling the cluster state; and elections after faults that
  needed none (reported);
- servers stuck (must be 0): a server that did not rejoin and catch up
  within --heal-timeout, counted once per episode;
- clients stuck (must be 0): writers with no acknowledged commit within
  --stuck-after seconds of the moment a primary was ready for them (another
  one accepting writes after a primary fault, the primary accepting writes
  again after a ZooKeeper fault, at once after a secondary fault), counted
  per fault and writer;
- whether the servers' Data.fs files hold identical transactions (must);
- seconds from each fault to the first acknowledged commit made after it
  (by its tid's time), to one by every writer, and from the moment a
  primary was ready to one by every writer (median, max), per kind.

Usage::

    PYTHONPATH=. .venv/bin/python benchmarks/chaos.py --cycles 100
    PYTHONPATH=. .venv/bin/python benchmarks/chaos.py --cycles 4 \\
        --faults primary-kill,primary-stop --seed 7 --keep

Progress goes to stderr, the summary to stdout (and with --json to a
file).  Every process is stopped at the end, also on Ctrl-C; children
also get SIGKILL from Linux when this process dies.  The work directory
(logs, Data.fs files, writer logs, events.json) is kept when a figure is
wrong or with --keep.
"""
import argparse
import json
import logging
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from chaos_support import (Child, HarnessError, Server,  # noqa: E402
                           Watch, Writer, ZooKeeper, compare_histories,
                           read_history, wait_until)
from chaos_report import report  # noqa: E402

FAULTS = {                 # kind: weight of the random choice
    "primary-kill": 3,
    "primary-stop": 2,
    "secondary-kill": 1,
    "secondary-stop": 1,
    "zookeeper-kill": 1,
    "zookeeper-stop": 1,
}
NAMES = ("s1", "s2", "s3")
PATH = "/databases/chaos"


def address(node):
    """The (host, port) of a server's node."""
    host, port = node["address"].rsplit(":", 1)
    return host, int(port)


def progress(text):
    sys.stderr.write(time.strftime("%H:%M:%S ") + text + "\n")
    sys.stderr.flush()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cycles", type=int, default=20)
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the random choices (default: from time)")
    p.add_argument("--faults", default=None,
                   help="comma-separated kinds, applied in turn instead of "
                        "random choices: " + ", ".join(FAULTS))
    p.add_argument("--writers", type=int, default=4)
    p.add_argument("--pause", type=float, default=0.01,
                   help="seconds a writer waits between its commits")
    p.add_argument("--session-timeout", type=float, default=3.0)
    p.add_argument("--auto-failover", type=float, default=1.0)
    p.add_argument("--sync-replicas", type=int, default=1)
    p.add_argument("--sync-block", choices=("true", "false"),
                   default="true")
    p.add_argument("--sync-timeout", type=float, default=5.0)
    p.add_argument("--heal-timeout", type=float, default=60.0,
                   help="seconds a cycle waits for the servers to heal")
    p.add_argument("--stuck-after", type=float, default=5.0,
                   help="seconds within which every writer must commit "
                        "again once a primary is ready for it")
    p.add_argument("--run-between", type=float, default=2.0,
                   help="the writers run 1 to this many seconds between "
                        "faults")
    p.add_argument("--directory", default=None,
                   help="work directory (default: a new temporary one)")
    p.add_argument("--keep", action="store_true",
                   help="keep the work directory even when all is well")
    p.add_argument("--json", default=None,
                   help="also write the figures to this file")
    args = p.parse_args(argv)
    if args.seed is None:
        args.seed = int(time.time()) % 100000
    if args.faults:
        args.faults = args.faults.split(",")
        unknown = set(args.faults) - set(FAULTS)
        if unknown:
            p.error(f"unknown faults {sorted(unknown)}; known: "
                    f"{', '.join(FAULTS)}")
    return args


class Chaos:
    """One run: the cluster, the writers, the cycles, the checks."""

    def __init__(self, args, directory):
        self.args = args
        self.directory = directory
        self.rng = random.Random(args.seed)
        self.zookeeper = None
        self.servers = {}
        self.writers = []
        self.watch = None
        self.url = None
        self.faults = []           # one dict per cycle (events.json)
        self.stuck_servers = {}    # name -> cycle of the open episode
        self.server_episodes = []  # (cycle, name, what)
        self.client_episodes = []  # (cycle, key, bound), per fault
        self.final = {}
        self._since = 0.0          # problems() trusts reads after this

    # --- the cluster ------------------------------------------------------

    def start(self):
        a = self.args
        self.zookeeper = ZooKeeper(os.path.join(self.directory, "zookeeper"))
        os.makedirs(self.zookeeper.config.data_dir, exist_ok=True)
        self.zookeeper.start()
        self.url = f"zk://{self.zookeeper.address}{PATH}"
        progress(f"ZooKeeper on {self.zookeeper.address}; cluster {self.url}")
        for name in NAMES:
            self.servers[name] = Server(
                self.directory, name, self.zookeeper.address, PATH,
                session_timeout=a.session_timeout,
                zookeeper_options={"auto-failover": a.auto_failover},
                replication_options={
                    "keep-alive-delay": 0.5, "reconnect-max-delay": 0.3,
                    "rewind-divergent": "true",
                    "sync-replicas": a.sync_replicas,
                    "sync-timeout": a.sync_timeout,
                    "sync-block": a.sync_block})
        self.watch = Watch(self.zookeeper.address, PATH)
        self.servers["s1"].start()
        wait_until(lambda: self.primary_node() is not None,
                   "s1 to register as primary", 60)
        for name in NAMES[1:]:
            self.servers[name].start()
        self.wait_cluster("the cluster to start", 90)
        self.create_data()
        for i in range(a.writers):
            self.writers.append(Writer(self.directory, f"w{i + 1}",
                                       self.url, a.pause))
        start = time.time()
        wait_until(lambda: self.all_wrote_after(start),
                   "every writer's first commit", 90)
        progress(f"{a.writers} writers commit; cycles begin")

    def create_data(self):
        import transaction
        from BTrees.IOBTree import IOBTree
        from persistent.mapping import PersistentMapping

        import zkzeo
        db = zkzeo.DB(self.url, wait_timeout=30)
        try:
            with db.transaction() as conn:
                conn.root()["chaos"] = chaos = PersistentMapping()
                for i in range(self.args.writers):
                    chaos[f"w{i + 1}"] = PersistentMapping(
                        values=IOBTree(), seq=0)
        finally:
            db.close()
            transaction.abort()

    def primary_node(self):
        """The node of the server the cluster state names, when it is
        registered as primary in the state's epoch and says it accepts
        writes."""
        _, primary, epoch = self.watch.state()
        node = self.watch.nodes.get(primary)
        if node and node.get("role") == "primary" and \
                int(node.get("epoch") or 0) == epoch and \
                node.get("writable") is True:
            return node
        return None

    def problems(self, target=None, skip=()):
        """{who: sentence} of what keeps the cluster from being whole (who
        is a server's name, or "cluster"): a primary registered in the
        current epoch; every server alive, running, registered and, if it
        is a secondary, following; with ``target`` (a tid), every
        secondary at ``target`` or later (asked of the servers).  Servers
        in ``skip`` are left out."""
        if self.watch.nodes_at < self._since:
            return {"cluster": "ZooKeeper was not read since the wait began"}
        out = {}
        _, primary, epoch = self.watch.state()
        if self.primary_node() is None:
            out["cluster"] = (f"no registered primary (state: {primary} in "
                              f"epoch {epoch})")
        nodes = self.watch.nodes
        for name, server in self.servers.items():
            node = nodes.get(name)
            if name in skip:
                continue
            if not server.alive():
                out[name] = f"{name} exited"
            elif server.child.paused:
                out[name] = f"{name} is paused"
            elif node is None:
                out[name] = f"{name} is not registered"
            elif name != primary:
                state = node.get("replication_state")
                if node.get("role") != "secondary" or state != "following":
                    out[name] = (f"{name} is {node.get('role')} ({state}), "
                                 "not a following secondary")
        if target is None or out:
            return out
        from zkzeo import probe
        for name in NAMES:
            if name == primary or name in skip:
                continue
            status = probe.server_status(address(nodes[name]), 2.0)
            tid = bytes.fromhex(status["last-transaction"]) if status \
                else None
            if tid is None or tid < target:
                out[name] = (f"{name} is at "
                             f"{tid.hex() if tid else 'an unknown tid'}, "
                             f"behind the primary's {target.hex()}")
        return out

    def primary_tid(self):
        from zkzeo import probe
        node = self.primary_node()
        status = probe.server_status(address(node), 2.0) if node else None
        return bytes.fromhex(status["last-transaction"]) if status else None

    def wait_cluster(self, what, timeout, skip=()):
        """Wait until the cluster is whole and the secondaries have caught
        up with the primary's last transaction as it was when the rest was
        whole; HarnessError (with ``broken``: who) says what is wrong."""
        deadline = time.monotonic() + timeout
        self._since = time.time()
        last = {}

        def whole(target=None):
            last.clear()
            last.update(self.problems(target, skip))
            return not last
        try:
            wait_until(whole, what, timeout)
            target = wait_until(self.primary_tid, "the primary's last tid",
                                max(1, deadline - time.monotonic()))
            wait_until(lambda: whole(target), what,
                       max(1, deadline - time.monotonic()), interval=0.5)
        except HarnessError as e:
            error = HarnessError(f"{e} ({'; '.join(last.values())})")
            error.broken = set(last)
            raise error

    # --- cycles -----------------------------------------------------------

    def choose(self, cycle):
        if self.args.faults:
            return self.args.faults[(cycle - 1) % len(self.args.faults)]
        kinds = sorted(FAULTS)
        return self.rng.choices(kinds, [FAULTS[k] for k in kinds])[0]

    def cycle(self, number):
        a = self.args
        kind = self.choose(number)
        _, primary, epoch = self.watch.state()
        secondaries = [n for n in NAMES if n != primary]
        target = (primary if kind.startswith("primary") else
                  self.rng.choice(secondaries) if kind.startswith("secondary")
                  else "zookeeper")
        fault = {"cycle": number, "kind": kind, "target": target,
                 "epoch_before": epoch, "primary_before": primary}
        self.faults.append(fault)
        process = (self.zookeeper if target == "zookeeper" else
                   self.servers[target])
        st = a.session_timeout
        if kind == "primary-stop":   # long enough for a certain failover
            duration = st + a.auto_failover + self.rng.uniform(1.5, 6.0)
        else:
            duration = self.rng.uniform(0.5, st + 2)
        fault["start"] = time.time()
        if kind.startswith("secondary"):
            fault["ready"] = fault["start"]   # writes need no change
        if kind == "primary-kill":
            process.kill()
            progress(f"cycle {number}: SIGKILL of primary {target} "
                     f"(epoch {epoch})")
            try:
                wait_until(lambda: self.note_ready(fault),
                           "another server to become primary",
                           a.heal_timeout)
            except HarnessError as e:
                fault["problem"] = str(e)
                progress(f"  {e}")
            process.start()
        elif kind.endswith("-kill"):
            process.kill()
            progress(f"cycle {number}: SIGKILL of {target}, restarted after "
                     f"{duration:.1f}s")
            self.fault_lasts(fault, duration)
            process.start()
        else:
            process.pause()
            progress(f"cycle {number}: SIGSTOP of {kind.split('-')[0]} "
                     f"{target} for {duration:.1f}s (epoch {epoch})")
            self.fault_lasts(fault, duration)
            process.resume()
        fault["end"] = time.time()
        self.heal(fault)
        _, primary, epoch = self.watch.state()
        fault["epoch_after"] = epoch
        fault["primary_after"] = primary
        between = self.rng.uniform(1.0, max(1.0, a.run_between))
        time.sleep(between)          # the writers write meanwhile
        self.count_elections(fault)

    def fault_lasts(self, fault, seconds):
        """The fault lasts ``seconds``; meanwhile note when another primary
        is ready (after a freeze of the primary)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.note_ready(fault)
            time.sleep(0.05)

    def note_ready(self, fault):
        """Whether writers can write (noted in ``fault["ready"]``): ZooKeeper
        read since the fault, and a running primary registered in the
        current epoch; after a primary fault, another one; after a
        ZooKeeper fault, once ZooKeeper is back."""
        if "ready" in fault:
            return True
        if fault["target"] == "zookeeper":
            since = fault.get("end")
            if since is None:
                return False
        else:
            since = fault["start"]
        if self.watch.nodes_at <= since:
            return False
        node = self.primary_node()
        if node is None:
            return False
        name = node["name"]
        if fault["kind"].startswith("primary") and name == fault["target"]:
            return False
        server = self.servers[name]
        if not server.alive() or server.child.paused:
            return False
        fault["ready"] = time.time()
        return True

    def restart_exited(self, fault):
        """Servers that exited by themselves are failures: counted, and
        started again so the run goes on."""
        for name, server in self.servers.items():
            if server.alive():
                continue
            status = server.child.popen.returncode
            what = f"{name} exited by itself (status {status})"
            progress(f"  {what}; starting it again")
            fault.setdefault("exited", []).append(what)
            self.server_episodes.append((fault["cycle"], name, what))
            server.start()

    def heal(self, fault):
        """Wait until the cluster heals.  A server that does not rejoin in
        time is stuck: counted once, and left out of later waits until it
        is whole again."""
        a = self.args
        self.restart_exited(fault)
        skip = set(self.stuck_servers)
        try:
            wait_until(lambda: self.note_ready(fault),
                       "a primary writers can use", a.heal_timeout)
            self.wait_cluster("the cluster to heal", a.heal_timeout, skip)
        except HarnessError as e:
            fault["problem"] = str(e)
            progress(f"  not healed: {e}")
            for name in sorted(getattr(e, "broken", {"cluster"}) - skip):
                self.stuck_servers[name] = fault["cycle"]
                self.server_episodes.append((fault["cycle"], name, str(e)))
        else:
            fault["healed"] = time.time()
            progress(f"  healed after {fault['healed'] - fault['start']:.1f}"
                     f"s; epoch {self.watch.state()[2]}, primary "
                     f"{self.watch.state()[1]}"
                     + (f" (still stuck: {', '.join(sorted(skip))})"
                        if skip else ""))
        if skip:
            target = self.primary_tid()
            now = self.problems(target) if target else {"cluster": ""}
            for name in skip - set(now):
                progress(f"  {name} is whole again")
                del self.stuck_servers[name]
        self.check_writers(fault)

    def all_wrote_after(self, t):
        """Whether every writer had a commit acknowledged after time t (all
        writer logs are read first)."""
        for w in self.writers:
            w.read()
        return all(w.first_ack_after(t) is not None for w in self.writers)

    def check_writers(self, fault):
        """Every writer must commit within --stuck-after seconds of the
        moment a primary was ready for it."""
        ready = fault.get("ready")
        if ready is None:
            return                  # no primary: the servers are stuck
        bound = self.args.stuck_after
        try:
            wait_until(lambda: self.all_wrote_after(ready),
                       "every writer to commit again",
                       max(0.1, ready + bound - time.time()))
        except HarnessError:
            pass
        late = []
        for w in self.writers:
            first = w.first_ack_after(ready)
            if first is None or first - ready > bound:
                late.append(w.key)
                self.client_episodes.append((fault["cycle"], w.key, bound))
        if late:
            fault["stuck_writers"] = late
            progress(f"  writers {', '.join(late)} did not commit within "
                     f"{bound:g}s after a primary was ready")

    def count_elections(self, fault):
        elections = fault["epoch_after"] - fault["epoch_before"]
        fault["elections"] = elections
        changes = [(round(t - fault["start"], 2), p, e)
                   for t, p, e in self.watch.states
                   if t >= fault["start"]]
        fault["state_changes"] = changes
        if elections > 1:
            progress(f"  {elections} elections after one fault: {changes}")

    # --- the end ----------------------------------------------------------

    def finish(self):
        a = self.args
        progress("stopping the writers")
        for w in self.writers:
            fault_free = w.stop(timeout=15)
            w.read()
            if not fault_free:
                self.final.setdefault("writers_killed", []).append(w.key)
        progress("letting the cluster settle")
        try:
            self.wait_cluster("the cluster to settle", a.heal_timeout)
            self.final["settled"] = True
        except HarnessError as e:
            self.final["settled"] = False
            self.final["settle_problem"] = str(e)
            progress(f"  {e}")
            for name in sorted(e.broken - set(self.stuck_servers)):
                self.server_episodes.append(("end", name, str(e)))
        _, primary, _ = self.watch.state()
        self.final["primary"] = primary
        self.final["readback"] = self.read_back(primary)
        progress("stopping the servers")
        self.watch.close()
        self.watch_closed = True
        for name, server in self.servers.items():
            if not server.stop(timeout=30):
                self.final.setdefault("servers_killed", []).append(name)
        self.zookeeper.stop()
        progress("reading every Data.fs")
        self.final["histories"] = {
            name: read_history(s.data_fs) for name, s in self.servers.items()}
        self.final["divergent"] = {
            os.path.relpath(path, self.directory): read_history(path)
            for s in self.servers.values() for path in s.divergent_files()}
        self.final["compare"] = compare_histories(self.final["histories"])

    def read_back(self, primary):
        """{writer key: {seq: value}} read from the final primary, with the
        seqs of its acknowledged commits only; or {"error": ...}."""
        import ZEO
        node = self.watch.nodes.get(primary)
        if node is None:
            return {"error": f"the final primary {primary} is not "
                             "registered"}
        try:
            db = ZEO.DB(address(node), read_only=True, wait_timeout=30)
        except Exception as e:
            return {"error": f"cannot connect to {primary}: {e!r}"}
        out = {}
        try:
            conn = db.open()
            chaos = conn.root()["chaos"]
            for w in self.writers:
                values = chaos[w.key]["values"]
                out[w.key] = {seq: values.get(seq)
                              for seq, _, _ in w.acks}
            conn.close()
        except Exception as e:
            out["error"] = f"reading from {primary}: {e!r}"
        finally:
            db.close()
        return out

    def stop_everything(self):
        if self.watch is not None and not getattr(self, "watch_closed",
                                                  False):
            self.watch.close()
        Child.stop_all()


def run(args):
    """Run the scenario; returns the figures (a dict)."""
    directory = args.directory or tempfile.mkdtemp(prefix="zkzeo-chaos-")
    os.makedirs(directory, exist_ok=True)
    progress(f"seed {args.seed}, {args.cycles} cycles, work directory "
             f"{directory}")
    chaos = Chaos(args, directory)
    began = time.time()
    interrupted = None
    try:
        chaos.start()
        for number in range(1, args.cycles + 1):
            chaos.cycle(number)
        chaos.finish()
    except KeyboardInterrupt:
        interrupted = "interrupted (Ctrl-C)"
    except HarnessError as e:
        interrupted = str(e)
    except Exception as e:
        traceback.print_exc()
        interrupted = f"the harness failed: {e!r}"
    finally:
        chaos.stop_everything()
    figures = report(chaos, time.time() - began, interrupted)
    with open(os.path.join(directory, "events.json"), "w") as f:
        json.dump({"faults": chaos.faults, "figures": figures,
                   "states": chaos.watch.states if chaos.watch else []},
                  f, indent=1, default=str)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1, default=str)
    if figures["ok"] and not args.keep and not args.directory:
        shutil.rmtree(directory, ignore_errors=True)
    else:
        progress(f"work directory kept: {directory}")
    return figures


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s "
                               "%(message)s")
    # SIGTERM (a CI timeout) stops the run like Ctrl-C: every child stops.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    # The watch's kazoo client reports every ZooKeeper fault; the run's
    # summary says what matters.
    logging.getLogger("kazoo").setLevel(logging.ERROR)
    figures = run(args)
    return 0 if figures["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
