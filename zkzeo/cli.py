"""``zkzeo``: the operator's command.

    zkzeo status URL [--json]
    zkzeo promote URL [--to NAME] [--force] [--timeout SECONDS]
    zkzeo switchover URL [--to NAME] [--timeout SECONDS]
    zkzeo check URL [--lag-warning S] [--lag-critical S] ...   (Nagios)
    zkzeo metrics URL [--port PORT | --once]                  (Prometheus)

It reads the cluster straight from ZooKeeper and asks the servers for their
positions (ZEO's server_status).  Transitions are written to ZooKeeper as
compare-and-set changes of the cluster state; the servers carry them out
with the same decision code they always run (zkzeo.ha), and the command
waits until they have, or says why not and exits non-zero.
"""
import argparse
import json
import sys
import time

from kazoo.exceptions import BadVersionError
from ZODB.TimeStamp import TimeStamp

from . import probe, zk
from .discovery import ClusterView
from .layout import PRIMARY, SECONDARY, ClusterState, LayoutError, parse_url

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
Z64 = "0" * 16


class CommandError(Exception):
    """What went wrong, in a sentence for the operator; exit status 1."""


def say(text):
    print(text, flush=True)


def tid_time(hex_tid):
    if not hex_tid or hex_tid == Z64:
        return None
    return TimeStamp(bytes.fromhex(hex_tid)).timeTime()


def format_time(seconds):
    if seconds is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds)) + \
        ".%03d" % (seconds % 1 * 1000)


class Cluster:
    """A command's view of one database: ZooKeeper plus the servers."""

    def __init__(self, url, timeout=10.0):
        hosts, self.path = parse_url(url)
        self.url = url
        self.zk = zk.start(zk.make_client(hosts), timeout)
        self.view = ClusterView(self.zk, self.path)
        self.view.wait_ready(timeout)

    def snapshot(self):
        return self.view.refresh()

    def positions(self, snapshot, timeout=5.0):
        """{name: status dict or None} of the registered servers."""
        by_address = probe.statuses([s.address for s in snapshot.servers],
                                    timeout)
        return {s.name: by_address[s.address] for s in snapshot.servers}

    def set_state(self, state, version):
        try:
            return self.zk.set(self.path, state.to_bytes(), version=version)
        except BadVersionError:
            raise CommandError(
                "the cluster state changed while this command ran (another "
                "operator, or automatic failover?); look at 'zkzeo status' "
                "and try again") from None

    def wait(self, condition, what, timeout):
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                raise CommandError(f"{what} did not happen within "
                                   f"{timeout:g}s")
            time.sleep(0.05)

    def close(self):
        self.view.stop()
        zk.stop(self.zk)


# --- status ------------------------------------------------------------------

def status_rows(cluster):
    snapshot = cluster.snapshot()
    positions = cluster.positions(snapshot)
    primary = snapshot.primary
    primary_time = None
    if primary is not None and positions.get(primary.name):
        primary_time = tid_time(positions[primary.name]["last-transaction"])
    rows = []
    for server in sorted(snapshot.servers, key=lambda s: s.name):
        status = positions.get(server.name)
        last = tid_time(status["last-transaction"]) if status else None
        lag = None
        if last is not None and primary_time is not None:
            lag = max(0.0, primary_time - last)
        rows.append({
            "name": server.name, "address": server.child,
            "role": server.role, "epoch": server.epoch,
            "reachable": status is not None,
            "last_tid": status["last-transaction"] if status else None,
            "last_time": format_time(last) if last else None,
            "lag_seconds": lag,
            # not counting the connection that asked
            "clients": max(0, status["connections"] - 1) if status else None,
            "commits": status.get("commits") if status else None,
            "frozen": "frozen_tid" in server.extra,
        })
    return snapshot, rows


def cmd_status(cluster, args):
    snapshot, rows = status_rows(cluster)
    state = snapshot.state
    if args.json:
        print(json.dumps({"path": snapshot.path, "primary": state.primary,
                          "epoch": state.epoch, "handover": state.handover,
                          "servers": rows}, indent=2))
        return EXIT_OK
    say(f"{snapshot.path}: primary {state.primary or '(none)'}, epoch "
        f"{state.epoch}" + (f", handing over to {state.handover}"
                            if state.handover else ""))
    if not rows:
        say("no server is registered")
        return EXIT_OK
    header = ("NAME", "ADDRESS", "ROLE", "EPOCH", "LAST TRANSACTION (UTC)",
              "LAG", "CLIENTS")
    table = [header] + [(
        r["name"], r["address"], r["role"] + (" (frozen)" if r["frozen"]
                                              else ""),
        str(r["epoch"]),
        r["last_time"] or ("unreachable" if not r["reachable"] else "-"),
        "-" if r["lag_seconds"] is None else f"{r['lag_seconds']:.3f}s",
        "-" if r["clients"] is None else str(r["clients"]))
        for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        say("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    if state.primary and snapshot.primary is None:
        say(f"WARNING: primary {state.primary} is not registered: it is "
            "down or cut off; see 'zkzeo promote'")
    return EXIT_OK


# --- promote -----------------------------------------------------------------

def most_up_to_date(cluster, snapshot, names):
    positions = cluster.positions(snapshot)
    reachable = [(positions[n]["last-transaction"], n) for n in names
                 if positions.get(n)]
    if not reachable:
        raise CommandError("no secondary answers; nothing to promote")
    newest = max(t for t, _ in reachable)
    return min(n for t, n in reachable if t == newest), newest


def wait_writable(cluster, name, epoch, timeout):
    def ready():
        server = cluster.snapshot().by_name(name)
        if server is None or server.role != PRIMARY or server.epoch < epoch:
            return False
        return probe.accepts_writes(server.address, timeout=1.0)
    cluster.wait(ready, f"{name} accepting writes as primary", timeout)


def cmd_promote(cluster, args):
    snapshot = cluster.snapshot()
    state = snapshot.state
    old = snapshot.primary
    if old is not None and not args.force:
        raise CommandError(
            f"primary {old.name} is still registered at {old.child}; for a "
            f"planned change use 'zkzeo switchover', or add --force if it "
            "is really dead (a live old primary steps down)")
    secondaries = [s.name for s in snapshot.servers if s.role == SECONDARY]
    if args.to:
        if args.to not in secondaries:
            raise CommandError(f"{args.to} is not a live secondary of "
                               f"{snapshot.path} (live: "
                               f"{', '.join(secondaries) or 'none'})")
        target, _ = args.to, None
    else:
        target, tid = most_up_to_date(cluster, snapshot, secondaries)
        say(f"{target} is the most up-to-date secondary (at {tid})")
    epoch = state.epoch + 1
    start = time.monotonic()
    cluster.set_state(ClusterState(target, epoch), snapshot.state_version)
    say(f"cluster state: primary {target}, epoch {epoch} (was "
        f"{state.primary}, epoch {state.epoch})")
    wait_writable(cluster, target, epoch, args.timeout)
    say(f"{target} is primary and accepts writes "
        f"({time.monotonic() - start:.2f}s after the state change)")
    return EXIT_OK


# --- switchover ----------------------------------------------------------------

def cmd_switchover(cluster, args):
    snapshot = cluster.snapshot()
    state = snapshot.state
    old = snapshot.primary
    if old is None:
        raise CommandError(f"primary {state.primary} is not registered: a "
                           "switchover needs a live primary; use "
                           "'zkzeo promote'")
    secondaries = [s.name for s in snapshot.servers if s.role == SECONDARY]
    if args.to:
        if args.to not in secondaries:
            raise CommandError(f"{args.to} is not a live secondary")
        target = args.to
    else:
        target, _ = most_up_to_date(cluster, snapshot, secondaries)
    start = time.monotonic()
    handover = cluster.set_state(
        ClusterState(old.name, state.epoch, handover=target),
        snapshot.state_version)
    try:
        say(f"{old.name} stops accepting commits")
        frozen = cluster.wait(
            lambda: (cluster.snapshot().by_name(old.name) or old).extra.get(
                "frozen_tid"),
            f"{old.name} stopping commits", args.timeout)
        say(f"{old.name} stopped at {frozen}; waiting for {target}")
        target_address = snapshot.by_name(target).address
        cluster.wait(
            lambda: (probe.server_status(target_address, 2.0) or {}).get(
                "last-transaction", "") >= frozen,
            f"{target} catching up with {frozen}", args.timeout)
        # Against the handover's own version: if the primary gave up the
        # handover meanwhile (and took writes again), this must fail.
        cluster.set_state(ClusterState(target, state.epoch + 1),
                          handover.version)
    except BaseException:
        current = cluster.snapshot()
        if current.state.handover:
            cluster.set_state(ClusterState(old.name, state.epoch),
                              current.state_version)
            say(f"switchover abandoned: {old.name} stays primary")
        raise
    say(f"cluster state: primary {target}, epoch {state.epoch + 1}")
    wait_writable(cluster, target, state.epoch + 1, args.timeout)
    say(f"{target} is primary and accepts writes; writes paused "
        f"{time.monotonic() - start:.2f}s; {old.name} follows {target}")
    return EXIT_OK


# --- main --------------------------------------------------------------------

def parser():
    p = argparse.ArgumentParser(
        prog="zkzeo", description="Look after a zkzeo cluster.")
    sub = p.add_subparsers(dest="command", required=True)
    status = sub.add_parser("status", help="the servers, their roles and "
                            "positions")
    status.add_argument("url", help="zk://HOST:PORT[,...]/path or zk:/path")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)
    promote = sub.add_parser("promote", help="make a secondary the primary "
                             "(the primary is dead)")
    promote.add_argument("url")
    promote.add_argument("--to", metavar="NAME")
    promote.add_argument("--force", action="store_true",
                         help="even though the primary is registered")
    promote.add_argument("--timeout", type=float, default=60.0)
    promote.set_defaults(func=cmd_promote)
    switchover = sub.add_parser("switchover", help="planned, loss-free "
                                "change of primary")
    switchover.add_argument("url")
    switchover.add_argument("--to", metavar="NAME")
    switchover.add_argument("--timeout", type=float, default=20.0,
                            help="give up (and give the primary back) after "
                            "this; below the primary's own 30 s limit")
    switchover.set_defaults(func=cmd_switchover)
    from .monitoring import add_commands
    add_commands(sub)
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        cluster = Cluster(args.url)
    except (LayoutError, zk.ZooKeeperUnreachable) as e:
        unknown = getattr(args, "unknown_status", None)
        if unknown is not None:        # a monitoring plugin's UNKNOWN
            print(f"ZKZEO UNKNOWN - {e}")
            return unknown
        print(f"zkzeo: {e}", file=sys.stderr)
        return EXIT_USAGE if isinstance(e, LayoutError) else EXIT_FAILED
    try:
        return args.func(cluster, args)
    except CommandError as e:
        print(f"zkzeo {args.command}: {e}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        cluster.close()


if __name__ == "__main__":
    sys.exit(main())
