"""``zkzeo``: the operator's command.

    zkzeo status URL [--json] [--min-secondaries N]
    zkzeo history URL [--json]                  (epochs and their primaries)
    zkzeo promote URL [--to NAME] [--force] [--yes] [--timeout SECONDS]
    zkzeo switchover URL [--to NAME] [--yes] [--timeout SECONDS]
    zkzeo pause URL / zkzeo resume URL          (automatic failover)
    zkzeo check URL [-t SECONDS] [--min-secondaries N] ...   (Nagios)
    zkzeo metrics URL [--port PORT | --once]                 (Prometheus)

Every command takes ZooKeeper's credential (--auth-file FILE, else
$ZKZEO_AUTH_FILE, else $ZKZEO_AUTH) and TLS options (--use-ssl, --ca, ...).
It reads the cluster straight from ZooKeeper and asks the servers for their
positions (ZEO's server_status).  Transitions are written to ZooKeeper as
an *intent* in the cluster state (a compare-and-set); the servers carry it
out with the same decision code they always run (zkzeo.ha): the command
never picks a target itself.  It reports their progress and waits until
they are done, or withdraws the intent, says why, and exits non-zero.
"""
import argparse
import importlib.metadata
import json
import os
import sys
import time

from kazoo.exceptions import BadVersionError, NoAuthError
from ZODB.TimeStamp import TimeStamp

from . import ha, history, probe, zk
from .discovery import ClusterView
from .layout import (PROMOTE, PRIMARY, SECONDARY, SWITCHOVER, Intent,
                     LayoutError, parse_url)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
Z64 = "0" * 16


class CommandError(Exception):
    """What went wrong, in a sentence for the operator; exit status 1."""


class NoCluster(CommandError):
    """The path holds no zkzeo cluster (a wrong path, most likely)."""


def require_cluster(snapshot):
    """NoCluster unless ``snapshot``'s path holds a cluster: a state or a
    registered server (servers that may not bootstrap register before any
    state exists)."""
    if not snapshot.exists:
        raise NoCluster(f"{snapshot.path} holds no zkzeo cluster: there is "
                        "no such node in ZooKeeper (is the path right?)")
    if snapshot.state.primary is None and snapshot.state.epoch == 0 and \
            not snapshot.servers:
        raise NoCluster(f"{snapshot.path} holds no zkzeo cluster: no "
                        "cluster state, and no server is registered")


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

    def __init__(self, url, timeout=10.0, settings=None):
        hosts, self.path = parse_url(url)
        self.url = url
        self.zk = zk.start(zk.make_client(hosts, settings=settings), timeout)
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

    def close(self, timeout=5.0):
        self.view.stop()
        zk.stop(self.zk, timeout)


# --- status ------------------------------------------------------------------

ZEO_COUNTS = ("loads", "stores", "commits", "aborts", "conflicts",
              "conflicts_resolved", "active_txns", "waiting")


def status_rows(cluster, probe_timeout=5.0):
    snapshot = cluster.snapshot()
    positions = cluster.positions(snapshot, probe_timeout)
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
            # ZEO's own counters since the server started (server_status)
            "zeo": {k: status[k] for k in ZEO_COUNTS
                    if isinstance(status.get(k), int)} if status else None,
            "frozen": "frozen_tid" in server.extra,
            # As the server says it: "accepting commits" for a primary,
            # its replication state for a secondary.
            "state": server_state(server),
        })
    return snapshot, rows


STATE_ADVICE = {
    "diverged": "its history differs from the primary's; see "
                "docs/failover.md (rewind-divergent) before it can follow",
    "stopped": "it does not replicate; its log says why (restart it once "
               "the cause is fixed)",
    "not accepting commits": "it is fenced (ZooKeeper unreachable, or a "
                             "switchover under way)",
}


def server_state(server):
    if server.role == PRIMARY:
        return "accepting commits" if server.writable else \
            "not accepting commits"
    return server.replication_state or "unknown"


def missing_secondaries(rows, expected):
    """How many of ``expected`` secondaries are not registered at all (a
    server whose session expired leaves no node behind)."""
    registered = sum(1 for r in rows if r["role"] == SECONDARY)
    return max(0, (expected or 0) - registered)


def cmd_status(cluster, args):
    require_cluster(cluster.snapshot())
    snapshot, rows = status_rows(cluster)
    state = snapshot.state
    missing = missing_secondaries(rows, args.min_secondaries)
    if args.json:
        print(json.dumps({"path": snapshot.path, "primary": state.primary,
                          "epoch": state.epoch,
                          "intent": state.intent.to_json() if state.intent
                          else None, "paused": state.paused,
                          "missing_secondaries": missing,
                          "servers": rows}, indent=2))
        return EXIT_OK
    say(f"{snapshot.path}: primary {state.primary or '(none)'}, epoch "
        f"{state.epoch}" + (
            f", {state.intent.action} to {state.intent.to or 'any candidate'}"
            " under way" if state.intent else "") +
        (", automatic failover paused" if state.paused else ""))
    if not rows:
        say("no server is registered")
        if missing:
            say(f"WARNING: {missing} expected secondaries are missing")
        return EXIT_OK
    header = ("NAME", "ADDRESS", "ROLE", "STATE", "EPOCH",
              "LAST TRANSACTION (UTC)", "LAG", "CLIENTS")
    table = [header] + [(
        r["name"], r["address"], r["role"] + (" (frozen)" if r["frozen"]
                                              else ""),
        r["state"], str(r["epoch"]),
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
    for r in rows:
        advice = STATE_ADVICE.get(r["state"])
        if advice:
            say(f"WARNING: {r['name']} is {r['state']}: {advice}")
    if missing:
        say(f"WARNING: {missing} of {args.min_secondaries} expected "
            "secondaries are not registered (stopped, or their ZooKeeper "
            "session expired)")
    return EXIT_OK


# --- history -----------------------------------------------------------------

def history_entries(cluster, snapshot):
    """The recorded epochs, plus the current one if it was not recorded
    (a cluster older than the history, or a recording that failed)."""
    entries = [dict(e, recorded=True)
               for e in history.read(cluster.zk, cluster.path)]
    state = snapshot.state
    if state.primary is not None and \
            not any(e["epoch"] == state.epoch for e in entries):
        entries.append({"epoch": state.epoch, "primary": state.primary,
                        "since": None, "previous": None, "recorded": False})
    return sorted(entries, key=lambda e: e["epoch"])


def cmd_history(cluster, args):
    snapshot = cluster.snapshot()
    require_cluster(snapshot)
    entries = history_entries(cluster, snapshot)
    if args.json:
        print(json.dumps({"path": snapshot.path,
                          "epoch": snapshot.state.epoch,
                          "epochs": entries}, indent=2))
        return EXIT_OK
    if not entries:
        say(f"{snapshot.path}: no primary was ever named")
        return EXIT_OK
    table = [("EPOCH", "PRIMARY", "SINCE (UTC)", "AFTER")] + [
        (str(e["epoch"]), str(e["primary"]),
         format_time(e["since"]) if e["since"] is not None
         else "(not recorded)", e["previous"] or "-") for e in entries]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    for row in table:
        say("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return EXIT_OK


# --- confirmation ------------------------------------------------------------

def confirm(args, question):
    """Ask the operator (``--yes`` answers for them); CommandError unless
    they said yes.  Without a terminal nobody can answer: that is an
    error that says to pass --yes, never a silent yes."""
    if args.yes:
        return
    try:
        interactive = sys.stdin is not None and sys.stdin.isatty()
    except (ValueError, OSError):
        interactive = False
    if not interactive:
        raise CommandError(f"{question} Standard input is not a terminal, "
                           "so nobody can confirm: pass --yes to go ahead")
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        answer = ""
    if answer.strip().lower() not in ("y", "yes"):
        raise CommandError("not confirmed; nothing was changed")


# --- transitions: intents the servers carry out -------------------------------

def wait_writable(cluster, name, epoch, timeout):
    # What the server says: it says writable only under its write lease.
    # (Not a ZEO probe of our own, which cannot speak to servers that
    # require TLS client certificates.)
    def ready():
        server = cluster.snapshot().by_name(name)
        return server is not None and server.role == PRIMARY and \
            server.epoch >= epoch and server.writable
    cluster.wait(ready, f"{name} accepting writes as primary", timeout)


def carry_out(cluster, snapshot, intent, timeout):
    """Write ``intent`` into the cluster state, then report the servers'
    progress until a server holds the next epoch; on failure the intent is
    withdrawn (if it is still there) and CommandError says why."""
    state = snapshot.state
    if state.intent is not None:
        raise CommandError(
            f"a {state.intent.action} is already under way (to "
            f"{state.intent.to or 'any candidate'}); wait for it, or see "
            "'zkzeo status'")
    written = cluster.set_state(state.with_(intent=intent),
                                snapshot.state_version)
    start = time.monotonic()
    said = set()

    def progress():
        current = cluster.snapshot()
        if current.state.epoch > state.epoch:
            return current
        if current.state.intent != intent:
            raise CommandError("the request was withdrawn (the primary gave "
                               "up the switchover, or another operator); "
                               "see 'zkzeo status'")
        sentence = describe_progress(current)
        if sentence not in said:
            said.add(sentence)
            say(sentence)
        return None
    try:
        done = cluster.wait(progress, f"the {intent.action}", timeout)
    except BaseException:
        withdraw(cluster, intent, written.version)
        raise
    new = done.state
    say(f"cluster state: primary {new.primary}, epoch {new.epoch} (was "
        f"{state.primary}, epoch {state.epoch})")
    remaining = max(5.0, timeout - (time.monotonic() - start))
    wait_writable(cluster, new.primary, new.epoch, remaining)
    say(f"{new.primary} is primary and accepts writes "
        f"({time.monotonic() - start:.2f}s after the request)")
    return EXIT_OK


def describe_progress(snapshot):
    state = snapshot.state
    intent = state.intent
    if intent.action == SWITCHOVER:
        primary = snapshot.primary
        frozen = primary.extra.get("frozen_tid") if primary else None
        if frozen is None:
            return f"waiting for {state.primary} to stop accepting commits"
        return (f"{state.primary} stopped accepting commits at {frozen}; "
                f"waiting for {intent.to or 'a secondary'} to catch up")
    _, sentence = ha.elect(snapshot)
    return f"election: {sentence}"


def withdraw(cluster, intent, version):
    try:
        current = cluster.snapshot()
        if current.state.intent == intent and \
                current.state_version == version:
            cluster.set_state(current.state.with_(intent=None), version)
            say(f"the {intent.action} request was withdrawn")
    except Exception as e:
        say(f"could not withdraw the {intent.action} request: {e}")


def check_target(snapshot, name, now=True):
    """CommandError unless ``name`` (if given) is a live secondary that
    could take over (``now``), or will once it has caught up."""
    if name is None:
        return
    server = snapshot.by_name(name)
    if server is None or server.role != SECONDARY:
        live = ", ".join(s.name for s in snapshot.servers
                         if s.role == SECONDARY) or "none"
        raise CommandError(f"{name} is not a live secondary of "
                           f"{snapshot.path} (live: {live})")
    if now and not ha.is_candidate(server, snapshot.state.epoch, True):
        raise CommandError(
            f"{name} cannot become primary now: it is "
            f"{server.replication_state or 'not replicating'} and has not "
            f"followed the primary in epoch {snapshot.state.epoch}")


def cmd_promote(cluster, args):
    snapshot = cluster.snapshot()
    require_cluster(snapshot)
    old = snapshot.primary
    if old is not None and not args.force:
        raise CommandError(
            f"primary {old.name} is still registered at {old.child}; for a "
            f"planned change use 'zkzeo switchover', or add --force if it "
            "is really dead or hung (a live old primary stops accepting "
            "commits, and the new one waits out its write lease)")
    check_target(snapshot, args.to)
    if args.force:
        where = f" at {old.child}" if old is not None else ""
        confirm(args, f"Promote {args.to or 'the most up-to-date secondary'}"
                f" of {snapshot.path} although primary {snapshot.state.primary}"
                f" may still be running{where}?")
    say(f"asking the servers to promote {args.to or 'the most up-to-date secondary'}")
    return carry_out(cluster, snapshot,
                     Intent(PROMOTE, args.to, force=args.force),
                     args.timeout)


def cmd_switchover(cluster, args):
    snapshot = cluster.snapshot()
    require_cluster(snapshot)
    state = snapshot.state
    if snapshot.primary is None:
        raise CommandError(f"primary {state.primary} is not registered: a "
                           "switchover needs a live primary; use "
                           "'zkzeo promote'")
    check_target(snapshot, args.to, now=False)
    confirm(args, f"Switch the primary of {snapshot.path} over from "
            f"{state.primary} to {args.to or 'a caught-up secondary'}?")
    say(f"asking {state.primary} to hand over to "
        f"{args.to or 'a caught-up secondary'}")
    return carry_out(cluster, snapshot, Intent(SWITCHOVER, args.to),
                     args.timeout)


def cmd_pause(cluster, args):
    return set_paused(cluster, True)


def cmd_resume(cluster, args):
    return set_paused(cluster, False)


def set_paused(cluster, paused):
    snapshot = cluster.snapshot()
    require_cluster(snapshot)
    if snapshot.state.paused != paused:
        cluster.set_state(snapshot.state.with_(paused=paused),
                          snapshot.state_version)
    say(f"automatic failover of {snapshot.path} is "
        f"{'paused' if paused else 'on (where servers enable it)'}")
    return EXIT_OK


# --- main --------------------------------------------------------------------

URL_HELP = "zk://HOST:PORT[,...]/path, or zk:/path with $ZOOKEEPER"


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with the exit status of a usage error per command: a
    monitoring plugin's is UNKNOWN (3), never 2, which Nagios reads as
    CRITICAL."""

    usage_status = EXIT_USAGE

    def error(self, message):
        if self.usage_status != EXIT_USAGE:
            print(f"ZKZEO UNKNOWN - usage error: {message}", flush=True)
        self.print_usage(sys.stderr)
        self.exit(self.usage_status, f"{self.prog}: error: {message}\n")


def version():
    try:
        return importlib.metadata.version("zkzeo")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def add_command(sub, name, func, help, **defaults):
    command = sub.add_parser(
        name, help=help, description=help[:1].upper() + help[1:] + ".",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    command.add_argument("url", help=URL_HELP)
    command.set_defaults(func=func, **defaults)
    return command


def add_json(command):
    command.add_argument("--json", action="store_true",
                         help="print JSON for scripts instead of text")


def add_min_secondaries(command):
    command.add_argument(
        "--min-secondaries", type=int, default=0, metavar="N",
        help="expect N secondaries: fewer following is CRITICAL (check), "
        "and secondaries that are not even registered are reported as "
        "missing")


def add_yes(command):
    command.add_argument("-y", "--yes", action="store_true",
                         help="do not ask for confirmation (needed when "
                         "standard input is not a terminal)")


def parser():
    p = ArgumentParser(
        prog="zkzeo", description="Look after a zkzeo cluster.  Each "
        "command's --help lists its options with their defaults.")
    p.add_argument("--version", action="version",
                   version=f"%(prog)s {version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    status = add_command(sub, "status", cmd_status,
                         "the servers, their roles, states and positions")
    add_json(status)
    add_min_secondaries(status)
    history_ = add_command(sub, "history", cmd_history,
                           "the epochs: which server was primary, since when")
    add_json(history_)
    promote = add_command(sub, "promote", cmd_promote,
                          "make a secondary the primary (the primary is "
                          "dead)")
    promote.add_argument("--to", metavar="NAME",
                         help="the server to promote (default: the most "
                         "up-to-date candidate)")
    promote.add_argument("--force", action="store_true",
                         help="even though the primary is registered (it "
                         "is hung or cut off); asks for confirmation")
    add_yes(promote)
    promote.add_argument("--timeout", type=float, default=60.0,
                         metavar="SECONDS",
                         help="give up (and withdraw the request) after this")
    switchover = add_command(sub, "switchover", cmd_switchover,
                             "planned, loss-free change of primary; asks "
                             "for confirmation")
    switchover.add_argument("--to", metavar="NAME",
                            help="the server to hand over to (default: a "
                            "caught-up secondary)")
    add_yes(switchover)
    switchover.add_argument("--timeout", type=float, default=20.0,
                            metavar="SECONDS",
                            help="give up (and give the primary back) after "
                            "this; below the primary's own 30 s limit")
    add_command(sub, "pause", cmd_pause, "pause automatic failover")
    add_command(sub, "resume", cmd_resume, "resume automatic failover")
    from .monitoring import add_commands
    add_commands(sub)
    from . import pack
    pack.add_command(sub)
    add_connection_options(p, None)
    for command in sub.choices.values():
        # Before or after the command; a command's own copy must not
        # overwrite a value given before it, hence SUPPRESS.
        add_connection_options(command, argparse.SUPPRESS)
    return p


def add_connection_options(p, default):
    def option(*names, **kw):
        kw.setdefault("default", default)
        p.add_argument(*names, **kw)
    group = p.add_argument_group(
        "ZooKeeper credentials and TLS",
        "Credentials: --auth-file, else $ZKZEO_AUTH_FILE, else $ZKZEO_AUTH "
        "(USER:PASSWORD); --auth puts the password in the process list "
        "and shell history, avoid it.")
    p = group
    option("--auth-file", metavar="FILE",
           help="a file whose first line is USER:PASSWORD (digest "
           "authentication)")
    option("--auth", metavar="USER:PASSWORD", help="the credential itself "
           "(visible to other users in the process list: prefer "
           "--auth-file)")
    option("--use-ssl", action="store_true", help="connect to ZooKeeper "
           "with TLS")
    option("--ca", metavar="PEM", help="CA certificate(s) of the ZooKeeper "
           "servers' certificates")
    option("--certfile", metavar="PEM", help="this client's certificate")
    option("--keyfile", metavar="PEM", help="its private key")
    option("--no-verify-certs", dest="verify_certs", action="store_false",
           help="do not check the ZooKeeper servers' certificates")
    option("--sasl-mechanism", metavar="DIGEST-MD5", help="authenticate "
           "with SASL (the credential's USER:PASSWORD) instead of digest")
    option("--no-check-hostname", dest="check_hostname",
           action="store_false", help="do not check that a certificate "
           "names its server's host")


def connection_settings(args, environ=None):
    """zk.Settings from the command line, else the environment."""
    credential = {}
    if args.auth_file or args.auth:
        credential = {"auth_file": args.auth_file, "auth": args.auth}
    else:
        credential = zk.settings_from_environment(
            os.environ if environ is None else environ)
    return zk.settings(
        use_ssl=args.use_ssl, ca=args.ca, certfile=args.certfile,
        keyfile=args.keyfile,
        verify_certs=True if args.verify_certs is None
        else args.verify_certs,
        check_hostname=True if args.check_hostname is None
        else args.check_hostname, sasl_mechanism=args.sasl_mechanism,
        **credential)


def parse_args(p, argv):
    args, extra = p.parse_known_args(argv)
    if extra:
        # Reported by the command's own rules (check: UNKNOWN).
        p.usage_status = getattr(args, "usage_status", EXIT_USAGE)
        p.error("unrecognized arguments: " + " ".join(extra))
    return args


def connect(args, timeout=10.0):
    """The command's Cluster: ZooKeeper connected within ``timeout``, with
    the credential and TLS settings of the command line or environment
    (ValueError if they are wrong)."""
    return Cluster(args.url, timeout, settings=connection_settings(args))


def main(argv=None):
    started = time.monotonic()
    args = parse_args(parser(), argv)
    if getattr(args, "plugin", None) is not None:
        # A monitoring plugin answers within its timeout, whatever happens.
        return args.plugin(args, connect, started)
    try:
        settings = connection_settings(args)
    except ValueError as e:
        print(f"zkzeo: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        cluster = Cluster(args.url, settings=settings)
    except NoAuthError:
        message = zk.no_auth_message(None, args.url, "read", settings)
        print(f"zkzeo: {message}", file=sys.stderr)
        return EXIT_FAILED
    except (LayoutError, zk.ZooKeeperUnreachable) as e:
        print(f"zkzeo: {e}", file=sys.stderr)
        return EXIT_USAGE if isinstance(e, LayoutError) else EXIT_FAILED
    try:
        return args.func(cluster, args)
    except CommandError as e:
        print(f"zkzeo {args.command}: {e}", file=sys.stderr)
        return EXIT_FAILED
    except NoAuthError:
        print(f"zkzeo {args.command}: "
              f"{zk.no_auth_message(cluster.zk, cluster.path)}",
              file=sys.stderr)
        return EXIT_FAILED
    finally:
        cluster.close()


if __name__ == "__main__":
    sys.exit(main())
