"""Monitoring: ``zkzeo check`` (Nagios plugin) and ``zkzeo metrics``
(Prometheus exporter).

Both take one picture of the cluster per run or scrape, the same one
``zkzeo status`` shows (``cli.status_rows``): ZooKeeper for who is where,
the servers themselves (ZEO's server_status) for positions and counts.
"""
import http.server
import logging

from .cli import EXIT_OK, say, status_rows, tid_time

logger = logging.getLogger(__name__)

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL",
         UNKNOWN: "UNKNOWN"}


def evaluate(snapshot, rows, lag_warning, lag_critical, secondaries_warning,
             secondaries_critical):
    """(status, summary, perfdata) for a snapshot and its status rows."""
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
    if len(live) < secondaries_critical:
        problems.append((CRITICAL, f"{len(live)} live secondaries "
                                   f"(critical below {secondaries_critical})"))
    elif len(live) < secondaries_warning:
        problems.append((WARNING, f"{len(live)} live secondaries "
                                  f"(warning below {secondaries_warning})"))
    perfdata = [f"secondaries={len(live)};{secondaries_warning};"
                f"{secondaries_critical};0"]
    for r in live:
        lag = r["lag_seconds"]
        if lag is None:
            continue
        perfdata.append(f"lag_{r['name']}={lag:.3f}s;{lag_warning};"
                        f"{lag_critical};0")
        if lag >= lag_critical:
            problems.append((CRITICAL, f"{r['name']} is {lag:.1f}s behind"))
        elif lag >= lag_warning:
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


def cmd_check(cluster, args):
    snapshot, rows = status_rows(cluster)
    status, summary, perfdata = evaluate(
        snapshot, rows, args.lag_warning, args.lag_critical,
        args.secondaries_warning, args.secondaries_critical)
    say(f"ZKZEO {NAMES[status]} - {summary} | {perfdata}")
    return status


def metrics_text(cluster):
    """The cluster in Prometheus' text format."""
    snapshot, rows = status_rows(cluster)
    lines = [
        "# HELP zkzeo_up 1 if the server answered ZEO's server_status.",
        "# TYPE zkzeo_up gauge",
        "# HELP zkzeo_primary 1 for the primary, 0 for a secondary.",
        "# TYPE zkzeo_primary gauge",
        "# HELP zkzeo_epoch The epoch the server registered with.",
        "# TYPE zkzeo_epoch gauge",
        "# HELP zkzeo_last_transaction_timestamp_seconds Time of the last "
        "transaction.",
        "# TYPE zkzeo_last_transaction_timestamp_seconds gauge",
        "# HELP zkzeo_lag_seconds How far behind the primary.",
        "# TYPE zkzeo_lag_seconds gauge",
        "# HELP zkzeo_clients ZEO client connections.",
        "# TYPE zkzeo_clients gauge",
        "# HELP zkzeo_commits_total Commits through this ZEO server since "
        "it started.",
        "# TYPE zkzeo_commits_total counter",
        "# HELP zkzeo_cluster_epoch The cluster state's epoch.",
        "# TYPE zkzeo_cluster_epoch gauge",
        f'zkzeo_cluster_epoch{{path="{snapshot.path}"}} '
        f"{snapshot.state.epoch}",
        "# HELP zkzeo_secondaries Live secondaries (registered, answering).",
        "# TYPE zkzeo_secondaries gauge",
        f'zkzeo_secondaries{{path="{snapshot.path}"}} '
        f"{sum(1 for r in rows if r['role'] == 'secondary' and r['reachable'])}",
    ]
    for r in rows:
        labels = (f'path="{snapshot.path}",name="{r["name"]}",'
                  f'address="{r["address"]}"')
        lines.append(f"zkzeo_up{{{labels}}} {int(r['reachable'])}")
        lines.append(f"zkzeo_primary{{{labels}}} "
                     f"{int(r['role'] == 'primary')}")
        lines.append(f"zkzeo_epoch{{{labels}}} {r['epoch']}")
        if r["last_tid"]:
            lines.append(f"zkzeo_last_transaction_timestamp_seconds"
                         f"{{{labels}}} {tid_time(r['last_tid']) or 0:.3f}")
        if r["lag_seconds"] is not None:
            lines.append(f"zkzeo_lag_seconds{{{labels}}} "
                         f"{r['lag_seconds']:.3f}")
        if r["clients"] is not None:
            lines.append(f"zkzeo_clients{{{labels}}} {r['clients']}")
        if r["commits"] is not None:
            lines.append(f"zkzeo_commits_total{{{labels}}} {r['commits']}")
    return "\n".join(lines) + "\n"


def cmd_metrics(cluster, args):
    if args.once:
        print(metrics_text(cluster), end="")
        return EXIT_OK

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path not in ("/", "/metrics"):
                self.send_error(404)
                return
            body = metrics_text(cluster).encode()
            self.send_response(200)
            self.send_header("Content-Type",
                             "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):
            logger.debug(format, *args)

    server = http.server.ThreadingHTTPServer((args.host, args.port), Handler)
    say(f"serving metrics of {cluster.url} on "
        f"http://{args.host}:{server.server_address[1]}/metrics")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return EXIT_OK


def add_commands(sub):
    check = sub.add_parser("check", help="Nagios-style health check")
    check.add_argument("url")
    check.add_argument("--lag-warning", type=float, default=5.0,
                       metavar="SECONDS")
    check.add_argument("--lag-critical", type=float, default=60.0,
                       metavar="SECONDS")
    check.add_argument("--secondaries-warning", type=int, default=1,
                       metavar="N", help="warn below N live secondaries")
    check.add_argument("--secondaries-critical", type=int, default=0,
                       metavar="N")
    check.set_defaults(func=cmd_check, unknown_status=UNKNOWN)
    metrics = sub.add_parser("metrics", help="Prometheus exporter")
    metrics.add_argument("url")
    metrics.add_argument("--host", default="127.0.0.1")
    metrics.add_argument("--port", type=int, default=9732)
    metrics.add_argument("--once", action="store_true",
                         help="print the metrics once and exit")
    metrics.set_defaults(func=cmd_metrics)
