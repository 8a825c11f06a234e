#!/usr/bin/env python3
"""Benchmark what securing replication costs: TLS next to plain TCP.

One run, every ZEO server a runzeo process and the ZEO client in this
process (as ``replication_bench.py`` part 3b), each configuration a primary
server with one secondary server:

* plain TCP replication (the default);
* TLS with mutual authentication (``<replication-ssl>``), and a shared
  secret besides (``secret-file``), as docs/security.md recommends;

each asynchronous and with ``sync-replicas 1``.  It prints the commit
throughput of each, as a ratio to plain TCP, and the commit -> visible lag
(paced commits; visible = the invalidation reaches a read-only ZEO client
of the secondary server).  Certificates are made with the ``openssl``
command for the run.

Usage::

    PYTHONPATH=. python benchmarks/tls_bench.py [--quick] [--rounds N]

Over TLS, as over TCP, the committing thread writes a new transaction to
the secondaries itself (it encrypts under the connection's lock, see
``replication/tls.py``).
"""
import argparse
import logging
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time

import ZEO

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from replication_bench import (PACE_RATE, SERVER_START_TIMEOUT,  # noqa: E402
                               WARNINGS, SecondaryClient, ServerProcess,
                               Workload, addr_text, environment, fmt_lag,
                               heading, out, paced_lag, progress,
                               remove_storage_files, run_commits, settle,
                               wait_secondary_server)
from tests.certificates import Authority  # noqa: E402

log = logging.getLogger("tls_bench")


class Secured:
    """The extra <replication> configuration of each mode."""

    def __init__(self, workdir):
        self.ca = Authority(os.path.join(workdir, "ca"))
        self.secret = os.path.join(workdir, "replication.secret")
        with open(self.secret, "w") as f:
            f.write(os.urandom(32).hex())
        os.chmod(self.secret, 0o600)

    def extra(self, mode, name):
        if mode == "tcp":
            return ""
        return f"secret-file {self.secret}\n{self.ca.config(name)}"


def run(workdir, name, mode, sync, secured, n, n_paced, rng):
    """Commits/s through ZEO and paced lag for one configuration."""
    primary = secondary = db = client = None
    try:
        primary = ServerProcess(
            workdir, f"{name}-primary", replicate_to="127.0.0.1:0",
            sync_replicas=sync, extra=secured.extra(mode, f"{name}-p"))
        secondary = ServerProcess(
            workdir, f"{name}-secondary",
            replicate_from=addr_text(primary.replication_address),
            extra=secured.extra(mode, f"{name}-s"))
        primary.wait_for_log("secondary connected from tid",
                             SERVER_START_TIMEOUT, "for its secondary")
        db = ZEO.DB(primary.address)
        rate = run_commits(db, n, rng)
        wait_secondary_server(secondary, db.storage.lastTransaction())
        client = SecondaryClient(secondary.address)
        conn = db.open()
        work = Workload(conn, rng)
        client.wait_for(db.storage.lastTransaction())
        listener = client.listener

        def wait_visible(tid):
            listener.wait_for(tid)
            return listener.stamps.get(tid, time.perf_counter())
        lag = paced_lag(work, db.storage, wait_visible, n_paced)
        conn.close()
        return rate, lag
    finally:
        if client is not None:
            client.close()
        if db is not None:
            db.close()
        for server in (secondary, primary):
            if server is not None:
                server.stop()


CONFIGS = [("plain TCP", "tcp", 0), ("TLS + secret", "tls", 0),
           ("plain TCP, sync-replicas 1", "tcp", 1),
           ("TLS + secret, sync-replicas 1", "tls", 1)]


def bench(workdir, n, n_paced, rounds, rng, modes=("async", "sync")):
    secured = Secured(workdir)
    configs = [c for c in CONFIGS if ("sync" if c[2] else "async") in modes]
    rates = {label: [] for label, _, _ in configs}
    lags = {label: [] for label, _, _ in configs}
    for r in range(rounds):
        for i, (label, mode, sync) in enumerate(configs):
            progress(f"  round {r + 1}/{rounds}: {label} ...")
            name = f"tls-{i}-{r}"
            settle()
            try:
                rate, lag = run(workdir, name, mode, sync, secured, n,
                                n_paced, rng)
            finally:
                remove_storage_files(workdir, name)
            rates[label].append(rate)
            lags[label].append(lag)
    heading(f"Commit throughput through ZEO ({n} small commits) and "
            f"commit -> visible lag")
    out(f"    ({n_paced} commits paced at {PACE_RATE}/s); primary + 1 "
        f"secondary server; median of {rounds} round(s)")
    results = {}
    for label, mode, sync in configs:
        rate = statistics.median(rates[label])
        base_label = "plain TCP, sync-replicas 1" if sync else "plain TCP"
        base = statistics.median(rates[base_label])
        lag = min(lags[label], key=lambda s: s["p50"]) if rounds == 1 \
            else sorted(lags[label], key=lambda s: s["p50"])[rounds // 2]
        results[label] = (rate, rate / base, lag)
        spread = f" ({min(rates[label]):.0f}-{max(rates[label]):.0f})" \
            if rounds > 1 else ""
        out(f"  {label:<31} {rate:6.0f} commits/s{spread} "
            f"{rate / base:5.2f} x")
        out(f"  {'':<31} lag {fmt_lag(lag)}")
    out("    ratios: TLS to plain TCP in the same mode (async or sync); a "
        "negative lag: the")
    out("    secondary's client saw the commit before commit() returned "
        "(sync-replicas)")
    return results


def _terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Replication over TLS (+ shared secret) next to plain "
        "TCP: commit throughput ratio and lag.")
    parser.add_argument("--quick", action="store_true",
                        help="fewer commits, one round")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds (default 3, 1 with --quick); the "
                        "median is reported")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--only", default="async,sync",
                        help="async, sync or both (default)")
    args = parser.parse_args(argv)
    n = 300 if args.quick else 1000
    n_paced = 200 if args.quick else 500
    rounds = args.rounds or (1 if args.quick else 3)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("replication").addHandler(WARNINGS)
    signal.signal(signal.SIGTERM, _terminate)
    workdir = tempfile.mkdtemp(prefix="tls-bench-", dir=args.workdir)
    out("zkzeo replication over TLS vs plain TCP"
        f"{' (--quick)' if args.quick else ''}")
    out(environment(workdir))
    status = 0
    try:
        bench(workdir, n, n_paced, rounds, random.Random(args.seed),
              args.only.split(","))
    except KeyboardInterrupt:
        progress("\ninterrupted: stopping the server processes ...")
        status = 130
    except Exception:
        log.exception("benchmark failed")
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        ServerProcess.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    if WARNINGS.records:
        out(f"{len(WARNINGS.records)} warning(s)/error(s) were logged; "
            "the first ones:")
        for source, text in WARNINGS.records[:5]:
            out(f"  {source}: {text[:200]}")
    return status


if __name__ == "__main__":
    sys.exit(main())
