"""Monitoring: ``zkzeo check`` (Nagios plugin) and ``zkzeo metrics``
(Prometheus exporter).

Both take one picture of the cluster per run or scrape, the same one
``zkzeo status`` shows (``cli.status_rows``): ZooKeeper for who is where
and what each server says of itself (role, accepting commits, replication
state), the servers themselves (ZEO's server_status) for positions and
counts.  Both answer within a bounded time whatever ZooKeeper or a server
does: the picture is taken in a daemon thread, and a picture that is not
ready in time is reported as such (UNKNOWN; ``zkzeo_zookeeper_up 0``).
"""
import json
import logging
import threading
import time

from prometheus_client.core import (CollectorRegistry, CounterMetricFamily,
                                    GaugeMetricFamily, InfoMetricFamily)
from prometheus_client.exposition import generate_latest, start_http_server

from kazoo.exceptions import NoAuthError

from . import zk
from .cli import (EXIT_OK, CommandError, connection_settings,
                  missing_secondaries, require_cluster, say, status_rows,
                  tid_time)
from .layout import REPLICATION_STATES

logger = logging.getLogger(__name__)

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL",
         UNKNOWN: "UNKNOWN"}
# Kept for answering and exiting, out of a plugin's timeout.
MARGIN = 0.3


# --- check ---------------------------------------------------------------------

def evaluate(snapshot, rows, lag_warning, lag_critical, secondaries_warning,
             secondaries_critical, min_secondaries=0):
    """(status, summary, perfdata) for a snapshot and its status rows.

    Live secondaries are those that answer and say they follow.  Fewer
    than ``secondaries_critical`` or ``min_secondaries`` (whichever is
    higher) is CRITICAL, fewer than ``secondaries_warning`` WARNING; a lag
    above ``lag_warning`` / ``lag_critical`` seconds likewise."""
    problems = []              # (level, sentence)
    state = snapshot.state
    by_name = {r["name"]: r for r in rows}
    if state.primary is None:
        problems.append((CRITICAL, f"{snapshot.path} names no primary"))
    elif state.primary not in by_name:
        problems.append((CRITICAL, f"primary {state.primary} is not "
                                   "registered"))
    elif not by_name[state.primary]["reachable"]:
        problems.append((CRITICAL, f"primary {state.primary} does not "
                                   "answer"))
    elif by_name[state.primary]["state"] != "accepting commits":
        problems.append((WARNING if state.intent else CRITICAL,
                         f"primary {state.primary} does not accept commits"))
    secondaries = [r for r in rows if r["role"] == "secondary"]
    # Only a secondary that says it follows is a live copy.
    live = [r for r in secondaries
            if r["reachable"] and r["state"] == "following"]
    for r in secondaries:
        if not r["reachable"]:
            problems.append((WARNING, f"secondary {r['name']} does not "
                                      "answer"))
        elif r["state"] in ("diverged", "stopped"):
            problems.append((CRITICAL, f"secondary {r['name']} is "
                                       f"{r['state']}: it does not "
                                       "replicate"))
        elif r["state"] != "following":
            problems.append((WARNING, f"secondary {r['name']} is "
                                      f"{r['state']}"))
    missing = missing_secondaries(rows, min_secondaries)
    if missing:
        problems.append((CRITICAL, f"{missing} of {min_secondaries} expected "
                                   "secondaries missing (not registered)"))
    critical_below = max(secondaries_critical, min_secondaries)
    if len(live) < critical_below:
        problems.append((CRITICAL, f"{len(live)} live secondaries "
                                   f"(critical below {critical_below})"))
    elif len(live) < secondaries_warning:
        problems.append((WARNING, f"{len(live)} live secondaries "
                                  f"(warning below {secondaries_warning})"))
    # Nagios ranges: "N:" alerts below N, "N" alerts above N.
    perfdata = [perf("secondaries", len(live), "",
                     f"{secondaries_warning}:", f"{critical_below}:", 0)]
    for r in live:
        lag = r["lag_seconds"]
        if lag is None:
            continue
        perfdata.append(perf(f"lag_{r['name']}", f"{lag:.3f}", "s",
                             f"{lag_warning:g}", f"{lag_critical:g}", 0))
        if lag > lag_critical:
            problems.append((CRITICAL, f"{r['name']} is {lag:.1f}s behind"))
        elif lag > lag_warning:
            problems.append((WARNING, f"{r['name']} is {lag:.1f}s behind"))
    status = max((level for level, _ in problems), default=OK)
    if problems:
        summary = "; ".join(s for level, s in problems if level == status)
    else:
        lags = [r["lag_seconds"] for r in live if r["lag_seconds"] is not None]
        summary = (f"primary {state.primary}, epoch {state.epoch}, "
                   f"{len(live)} secondaries, max lag "
                   f"{max(lags, default=0.0):.3f}s")
    return status, summary, " ".join(perfdata)


def perf(label, value, unit, warn, crit, minimum="", maximum=""):
    """One Nagios perfdata item: 'label'=value[unit];warn;crit;min;max."""
    if any(c in label for c in " '=;"):
        label = "'" + label.replace("'", "''") + "'"
    return f"{label}={value}{unit};{warn};{crit};{minimum};{maximum}"


def check_once(args, connect, deadline, opened):
    """(status, summary, perfdata) of one check, within ``deadline``."""
    remaining = deadline - time.monotonic()
    # ZooKeeper gets most of the time; the servers what is left.
    cluster = connect(args, round(max(0.1, remaining * 0.6), 1))
    opened.append(cluster)
    snapshot = cluster.snapshot()
    require_cluster(snapshot)
    opened.append(None)          # ZooKeeper answered: the servers now
    probe_timeout = min(5.0, max(0.1, deadline - time.monotonic() - 0.2))
    snapshot, rows = status_rows(cluster, probe_timeout)
    return evaluate(snapshot, rows, args.lag_warning, args.lag_critical,
                    args.secondaries_warning, args.secondaries_critical,
                    args.min_secondaries)


def run_check(args, connect, started):
    """``zkzeo check``: one line (or JSON) and a Nagios exit status, within
    ``-t`` seconds of ``started`` whatever ZooKeeper or a server does."""
    deadline = started + args.timeout - MARGIN
    result, opened = {}, []
    # The plugin's one line says what went wrong; kazoo's own lines about
    # each failed connection attempt would only add noise.
    kazoo_logger = logging.getLogger("kazoo")
    kazoo_level = kazoo_logger.level
    kazoo_logger.setLevel(logging.CRITICAL)
    try:
        return _check_within(args, connect, deadline, result, opened)
    finally:
        kazoo_logger.setLevel(kazoo_level)


def _check_within(args, connect, deadline, result, opened):

    def work():
        try:
            result["value"] = check_once(args, connect, deadline, opened)
        except (ValueError, zk.ZooKeeperUnreachable, CommandError) as e:
            # LayoutError is a ValueError, as are bad credential settings.
            result["value"] = (UNKNOWN, str(e), "")
        except NoAuthError:
            result["value"] = (UNKNOWN, zk.no_auth_message(
                None, args.url, "read", connection_settings(args)), "")
        except Exception as e:       # a plugin answers, whatever happens
            logger.debug("check failed", exc_info=True)
            result["value"] = (UNKNOWN, f"{e.__class__.__name__}: {e}", "")
    thread = threading.Thread(target=work, daemon=True, name="zkzeo-check")
    thread.start()
    thread.join(max(0.0, deadline - time.monotonic()))
    if "value" in result:
        status, summary, perfdata = result["value"]
    else:
        status, summary, perfdata = UNKNOWN, (
            f"no answer within {args.timeout:g}s "
            f"({'the servers' if None in opened else 'ZooKeeper'} did not "
            "answer in time)"), ""
    if args.json:
        print(json.dumps({"status": NAMES[status], "code": status,
                          "summary": summary,
                          "perfdata": perfdata.split()}, indent=2),
              flush=True)
    else:
        say(f"ZKZEO {NAMES[status]} - {summary}" +
            (f" | {perfdata}" if perfdata else ""))
    for cluster in opened:
        if cluster is not None:
            cluster.close(timeout=0.1 if thread.is_alive() else 0.5)
    return status


# --- metrics -------------------------------------------------------------------

class Pictures:
    """Takes the cluster's picture for a scrape, within a time limit.

    At most one picture is being taken at a time: a scrape that comes while
    an earlier one is still stuck (ZooKeeper hung) does not start another
    thread, it waits for the same one, so a long outage cannot pile up
    threads."""

    def __init__(self, cluster, timeout):
        self.cluster = cluster
        self.timeout = timeout
        self._lock = threading.Lock()
        self._running = None          # (thread, result dict)

    def take(self):
        """(snapshot, rows), or None if ZooKeeper did not answer in time."""
        deadline = time.monotonic() + self.timeout
        if not self.cluster.zk.connected:
            return None            # kazoo is reconnecting: don't wait
        with self._lock:
            if self._running is None:
                result = {}
                probe_timeout = max(0.1, min(5.0, self.timeout / 2))

                def work():
                    try:
                        result["value"] = status_rows(self.cluster,
                                                      probe_timeout)
                    except Exception as e:
                        logger.info("could not take the picture of %s: %s",
                                    self.cluster.path, e)
                        result["value"] = None
                thread = threading.Thread(target=work, daemon=True,
                                          name="zkzeo-metrics-picture")
                thread.start()
                self._running = (thread, result)
            thread, result = self._running
        thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            if not thread.is_alive() and self._running is not None and \
                    self._running[0] is thread:
                self._running = None
        return result.get("value")


class ClusterCollector:
    """A prometheus_client collector: one picture of the cluster per
    scrape.  Labels are stable (path and server name); a server's address,
    which the OS may choose anew at each start, is only in zkzeo_server_info.
    """

    def __init__(self, pictures, path, min_secondaries=0):
        self.pictures = pictures
        self.path = path
        self.min_secondaries = min_secondaries

    def describe(self):
        return []                  # families depend on the picture

    def collect(self):
        started = time.monotonic()
        picture = self.pictures.take()
        path = [self.path]
        zookeeper_up = GaugeMetricFamily(
            "zkzeo_zookeeper_up", "1 if ZooKeeper answered for this scrape "
            "(within the exporter's --timeout).", labels=["path"])
        zookeeper_up.add_metric(path, 1 if picture is not None else 0)
        yield zookeeper_up
        if picture is not None:
            yield from self._cluster(*picture)
        duration = GaugeMetricFamily(
            "zkzeo_picture_duration_seconds", "How long this scrape's "
            "picture of the cluster took.", labels=["path"])
        duration.add_metric(path, time.monotonic() - started)
        yield duration

    def _cluster(self, snapshot, rows):
        path = [self.path]
        state = snapshot.state
        families = {}

        def family(kind, name, documentation, labels=("path", "name")):
            families[name] = kind(name, documentation, labels=list(labels))
            return families[name]
        family(GaugeMetricFamily, "zkzeo_cluster_epoch",
               "The cluster state's epoch.", ["path"]).add_metric(
            path, state.epoch)
        family(GaugeMetricFamily, "zkzeo_failover_paused",
               "1 while automatic failover is paused.", ["path"]).add_metric(
            path, int(state.paused))
        family(GaugeMetricFamily, "zkzeo_intent_pending",
               "1 while a promote or switchover is under way.",
               ["path"]).add_metric(path, int(state.intent is not None))
        secondaries = [r for r in rows if r["role"] == "secondary"]
        family(GaugeMetricFamily, "zkzeo_secondaries",
               "Secondaries that answer and follow the primary.",
               ["path"]).add_metric(path, sum(
                   1 for r in secondaries
                   if r["reachable"] and r["state"] == "following"))
        family(GaugeMetricFamily, "zkzeo_secondaries_registered",
               "Secondaries registered in ZooKeeper.", ["path"]).add_metric(
            path, len(secondaries))
        family(GaugeMetricFamily, "zkzeo_secondaries_missing",
               "Expected secondaries (--min-secondaries) not registered.",
               ["path"]).add_metric(path, missing_secondaries(
                   rows, self.min_secondaries))
        info = family(InfoMetricFamily, "zkzeo_server",
                      "Where each server is and what it is.",
                      ["path", "name", "address", "role"])
        up = family(GaugeMetricFamily, "zkzeo_up",
                    "1 if the server answered ZEO's server_status.")
        primary = family(GaugeMetricFamily, "zkzeo_primary",
                         "1 for the primary, 0 for a secondary.")
        epoch = family(GaugeMetricFamily, "zkzeo_epoch",
                       "The epoch the server registered with.")
        writable = family(GaugeMetricFamily, "zkzeo_accepting_commits",
                          "1 while a primary says it accepts commits.")
        replication = family(
            GaugeMetricFamily, "zkzeo_replication_state",
            "A secondary's replication state as it says it: 1 for the "
            "current one.", ["path", "name", "state"])
        last = family(GaugeMetricFamily,
                      "zkzeo_last_transaction_timestamp_seconds",
                      "Time of the server's last transaction.")
        lag = family(GaugeMetricFamily, "zkzeo_lag_seconds",
                     "How far the server's last transaction is behind the "
                     "primary's.")
        clients = family(GaugeMetricFamily, "zkzeo_clients",
                         "ZEO client connections (not counting the probe).")
        active = family(GaugeMetricFamily, "zkzeo_active_transactions",
                        "Transactions in progress on the ZEO server.")
        waiting = family(GaugeMetricFamily, "zkzeo_waiting_transactions",
                         "Transactions waiting for the commit lock.")
        counters = {key: family(CounterMetricFamily, f"zkzeo_{name}",
                                f"ZEO {name.replace('_', ' ')} since the "
                                "server started.")
                    for key, name in (("loads", "loads"), ("stores", "stores"),
                                      ("commits", "commits"),
                                      ("aborts", "aborts"),
                                      ("conflicts", "conflicts"),
                                      ("conflicts_resolved",
                                       "conflicts_resolved"))}
        for r in rows:
            labels = [self.path, r["name"]]
            info.add_metric([self.path, r["name"], r["address"], r["role"]],
                            {})
            up.add_metric(labels, int(r["reachable"]))
            primary.add_metric(labels, int(r["role"] == "primary"))
            epoch.add_metric(labels, r["epoch"])
            if r["role"] == "primary":
                writable.add_metric(labels,
                                    int(r["state"] == "accepting commits"))
            else:
                for name in REPLICATION_STATES + ("unknown",):
                    replication.add_metric(labels + [name],
                                           int(r["state"] == name))
            if r["last_tid"]:
                last.add_metric(labels, tid_time(r["last_tid"]) or 0.0)
            if r["lag_seconds"] is not None:
                lag.add_metric(labels, r["lag_seconds"])
            if r["clients"] is not None:
                clients.add_metric(labels, r["clients"])
            zeo = r.get("zeo") or {}
            for key, counter in counters.items():
                if key in zeo:
                    counter.add_metric(labels, zeo[key])
            if "active_txns" in zeo:
                active.add_metric(labels, zeo["active_txns"])
            if "waiting" in zeo:
                waiting.add_metric(labels, zeo["waiting"])
        yield from families.values()


def registry(cluster, timeout, min_secondaries=0):
    """A CollectorRegistry with only the cluster's collector."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(ClusterCollector(Pictures(cluster, timeout), cluster.path,
                                  min_secondaries))
    return reg


def start_exporter(cluster, host, port, timeout, min_secondaries=0):
    """Serve the metrics at http://host:port/metrics (prometheus_client's
    server, which also speaks OpenMetrics to those who ask); returns
    (server, thread)."""
    return start_http_server(port, addr=host,
                             registry=registry(cluster, timeout,
                                               min_secondaries))


def cmd_metrics(cluster, args):
    if args.once:
        print(generate_latest(registry(cluster, args.timeout,
                                       args.min_secondaries)).decode(),
              end="")
        return EXIT_OK
    server, thread = start_exporter(cluster, args.host, args.port,
                                    args.timeout, args.min_secondaries)
    say(f"serving metrics of {cluster.url} on "
        f"http://{args.host}:{server.server_address[1]}/metrics")
    try:
        thread.join()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()
    return EXIT_OK


def add_commands(sub):
    from .cli import add_command, add_json, add_min_secondaries
    check = add_command(sub, "check", None, "Nagios plugin: the cluster's "
                        "health in one line, with perfdata",
                        plugin=run_check, usage_status=UNKNOWN)
    check.usage_status = UNKNOWN
    check.add_argument("-t", "--timeout", type=float, default=10.0,
                       metavar="SECONDS",
                       help="answer (UNKNOWN if need be) within this")
    check.add_argument("--lag-warning", type=float, default=5.0,
                       metavar="SECONDS",
                       help="WARNING when a secondary is further behind")
    check.add_argument("--lag-critical", type=float, default=60.0,
                       metavar="SECONDS",
                       help="CRITICAL when a secondary is further behind")
    add_min_secondaries(check)
    check.add_argument("--secondaries-warning", type=int, default=1,
                       metavar="N", help="WARNING below N live secondaries")
    check.add_argument("--secondaries-critical", type=int, default=0,
                       metavar="N", help="CRITICAL below N live secondaries "
                       "(--min-secondaries raises it)")
    add_json(check)
    metrics = add_command(sub, "metrics", cmd_metrics, "Prometheus exporter")
    metrics.add_argument("--host", default="127.0.0.1",
                         help="address to listen on")
    metrics.add_argument("--port", type=int, default=9732,
                         help="port to listen on (0: any free port)")
    metrics.add_argument("--once", action="store_true",
                         help="print the metrics once and exit")
    metrics.add_argument("--timeout", type=float, default=5.0,
                         metavar="SECONDS",
                         help="a scrape answers within this; zkzeo_"
                         "zookeeper_up is 0 if ZooKeeper did not")
    add_min_secondaries(metrics)
