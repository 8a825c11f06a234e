"""The figures of a crash-and-freeze run (``chaos.py``), and what the
server and writer logs say about it."""
import bisect
import re
import statistics
import sys
from collections import Counter

# Server log lines worth counting (pattern, label): each is a failure mode
# seen before or a role change.
NOTABLE = [
    (r"made itself primary|takes over as primary", "elections won (log)"),
    (r"steps down", "primaries stepping down (log)"),
    (r"accepting (writes|commits) again", "primaries unfencing (log)"),
    (r"rewound .* to transaction", "rewinds of a divergent tail (log)"),
    (r"cannot read own transaction", "'cannot read own transaction'"),
    (r"was torn by a crash", "torn transactions recovered"),
    (r"not acknowledged by \d+ secondaries", "sync-replicas timeouts"),
    (r"continuing asynchronously", "commits degraded to asynchronous"),
    (r"POSKeyError", "POSKeyError in a server log"),
    (r"Traceback", "tracebacks"),
]
LEVELS = re.compile(r"^\S+ \S+ (ERROR|CRITICAL) (.*)$")


def out(text=""):
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _normal(text):
    text = re.sub(r"\b[0-9a-f]{16}\b", "TID", text)
    text = re.sub(r"\d+(\.\d+)?", "N", text)
    return text[:160]


def log_findings(chaos):
    """{"counts": {label: n}, "errors": [(n, message, example)]} from the
    servers' logs (ERROR and CRITICAL lines, grouped)."""
    counts = Counter()
    errors = Counter()
    examples = {}
    for name, server in chaos.servers.items():
        for start, text in server.logs():
            for line in text.splitlines():
                for pattern, label in NOTABLE:
                    if re.search(pattern, line):
                        counts[label] += 1
                m = LEVELS.match(line)
                if m:
                    key = _normal(m.group(2))
                    errors[key] += 1
                    examples.setdefault(key, f"{name}/server-{start}.log: "
                                             f"{line[:300]}")
    return {"counts": dict(counts),
            "errors": [(n, key, examples[key])
                       for key, n in errors.most_common(15)]}


def _where(tid, chaos):
    """Files (server Data.fs or divergent file) holding ``tid``."""
    places = []
    for name, history in chaos.final.get("histories", {}).items():
        if tid in {t for t, _ in history}:
            places.append(f"{name}/Data.fs")
    for path, history in chaos.final.get("divergent", {}).items():
        if tid in {t for t, _ in history}:
            places.append(path)
    return places


def _epoch_at(states, t):
    """(primary, epoch) the watch saw at time ``t``."""
    times = [s[0] for s in states]
    i = bisect.bisect_right(times, t) - 1
    return states[i][1:] if i >= 0 else (None, 0)


def _median_max(values):
    if not values:
        return None, None
    return statistics.median(values), max(values)


def report(chaos, elapsed, interrupted):
    a = chaos.args
    final = chaos.final
    figures = {"seed": a.seed, "cycles": len(chaos.faults),
               "seconds": round(elapsed, 1), "interrupted": interrupted}
    for w in chaos.writers:
        try:
            w.read()
        except OSError:
            pass
    acks = [(w.key, seq, tid, t) for w in chaos.writers
            for seq, tid, t in w.acks]
    figures["acknowledged"] = len(acks)

    # Lost and late acknowledgements.
    primary = final.get("primary")
    histories = final.get("histories", {})
    readback = final.get("readback", {})
    lost, late = [], []
    if primary in histories and "error" not in readback:
        final_tids = {tid for tid, _ in histories[primary]}
        divergent_tids = {tid for h in final.get("divergent", {}).values()
                          for tid, _ in h} - final_tids
        states = chaos.watch.states if chaos.watch else []
        for key, seq, tid, t in acks:
            value = readback.get(key, {}).get(seq)
            if value == f"{key}:{seq}" and tid in final_tids:
                continue
            at = _epoch_at(states, t)
            entry = {"writer": key, "seq": seq, "tid": tid.hex(),
                     "acked_at": t, "value": value,
                     "state_at_ack": f"{at[0]} in epoch {at[1]}",
                     "found_in": _where(tid, chaos)}
            lost.append(entry)
            if tid in divergent_tids:
                late.append(entry)
        figures["lost"] = len(lost)
        figures["late_acks"] = len(late)
    else:
        figures["lost"] = figures["late_acks"] = None
        figures["readback_error"] = readback.get("error") or \
            "no final history"
    figures["lost_detail"] = lost[:50]

    # Elections.
    faults = chaos.faults
    counted = [f for f in faults if "elections" in f]
    figures["elections"] = sum(f["elections"] for f in counted)
    figures["double_elections"] = sum(max(0, f["elections"] - 1)
                                      for f in counted)
    figures["primary_faults_without_failover"] = [
        f["cycle"] for f in counted
        if f["kind"].startswith("primary") and f["elections"] == 0]
    figures["needless_elections"] = [
        f["cycle"] for f in counted
        if not f["kind"].startswith("primary") and f["elections"] > 0]

    figures["stuck_servers"] = len(chaos.server_episodes)
    figures["stuck_server_detail"] = [
        f"cycle {c}: {name} ({what})" for c, name, what in
        chaos.server_episodes]
    figures["stuck_clients"] = len(chaos.client_episodes)
    stuck = {}
    for c, key, bound in chaos.client_episodes:
        stuck.setdefault(c, []).append(key)
    figures["stuck_client_detail"] = [
        f"cycle {c}: writers {', '.join(keys)} did not commit within "
        f"{a.stuck_after:g}s after a primary was ready"
        for c, keys in stuck.items()]
    figures["unhealed_cycles"] = [f["cycle"] for f in faults
                                  if "problem" in f]
    figures["writers_killed_at_end"] = final.get("writers_killed", [])
    figures["servers_killed_at_end"] = final.get("servers_killed", [])
    figures["settled"] = final.get("settled")

    if histories:
        figures["transactions"] = {n: len(h) for n, h in histories.items()}
        figures["replicas_identical"] = final.get("compare") is None
        figures["replica_difference"] = final.get("compare")
        # transactions only in the divergent tail of each kept file
        final_tids = {tid for tid, _ in histories.get(primary, [])}
        figures["divergent_tails"] = {
            p: sum(1 for tid, _ in h if tid not in final_tids)
            for p, h in final.get("divergent", {}).items()}
    else:
        figures["replicas_identical"] = None

    # From each fault to the first acknowledged commit (of any writer),
    # and until every writer committed again.
    recovery = {}
    for f in faults:
        firsts = [w.first_commit_after(f["start"]) for w in chaos.writers]
        if not firsts:
            continue
        any_ = [t for t in firsts if t is not None]
        f["first_write"] = min(any_) - f["start"] if any_ else None
        f["all_writers"] = (max(firsts) - f["start"]
                            if None not in firsts else None)
        ready = f.get("ready")
        after = [w.first_ack_after(ready) for w in chaos.writers] \
            if ready else [None]
        f["all_writers_after_ready"] = (max(after) - ready
                                        if None not in after else None)
        recovery.setdefault(f["kind"], []).append(f)
    figures["recovery"] = {}
    for kind, fs in sorted(recovery.items()):
        first = [f["first_write"] for f in fs if f["first_write"] is not None]
        every = [f["all_writers"] for f in fs if f["all_writers"] is not None]
        after = [f["all_writers_after_ready"] for f in fs
                 if f["all_writers_after_ready"] is not None]
        figures["recovery"][kind] = {
            "faults": len(fs), "first_write": _median_max(first),
            "every_writer": _median_max(every),
            "every_writer_after_ready": _median_max(after),
            "never": len(fs) - len(first)}

    errors = Counter(cls for w in chaos.writers for _, cls, _ in w.errors)
    figures["writer_errors"] = dict(errors.most_common())

    must_be_zero = ("lost", "late_acks", "double_elections", "stuck_servers",
                    "stuck_clients")
    figures["ok"] = (not interrupted and
                     all(figures[k] == 0 for k in must_be_zero) and
                     figures["replicas_identical"] is True and
                     figures["settled"] is True)
    figures["findings"] = log_findings(chaos)
    print_summary(figures, chaos)
    return figures


def _mm(pair):
    median, maximum = pair
    if median is None:
        return "-"
    return f"{median:.2f} / {maximum:.2f}"


def print_summary(fig, chaos):
    a = chaos.args
    out(f"crash-and-freeze: seed {fig['seed']}, {fig['cycles']} cycles, "
        f"{a.writers} writers, session timeout {a.session_timeout:g}s, "
        f"auto-failover {a.auto_failover:g}s, sync-replicas "
        f"{a.sync_replicas} (sync-block {a.sync_block}, sync-timeout "
        f"{a.sync_timeout:g}s); {fig['seconds']:.0f}s")
    if fig["interrupted"]:
        out(f"  RUN STOPPED EARLY: {fig['interrupted']}")
    kinds = Counter(f["kind"] for f in chaos.faults)
    out("  faults: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))

    def line(label, value, must_be_zero=True):
        flag = "" if not must_be_zero else (
            "   <-- must be 0" if value not in (0, None) else "")
        out(f"  {label:<44} {'-' if value is None else value}{flag}")
    line("acknowledged commits", fig["acknowledged"], False)
    line("lost acknowledged commits", fig["lost"])
    line("acknowledged by a replaced server", fig["late_acks"])
    line("elections", fig["elections"], False)
    line("double elections", fig["double_elections"])
    line("servers stuck", fig["stuck_servers"])
    line("clients stuck", fig["stuck_clients"])
    ident = fig["replicas_identical"]
    out(f"  {'replicas identical, transaction by transaction':<44} "
        f"{'-' if ident is None else 'yes' if ident else 'NO'}"
        + ("" if ident else "   <-- must be yes"))
    if fig.get("transactions"):
        out("    transactions: " + ", ".join(
            f"{n} {c}" for n, c in sorted(fig["transactions"].items())))
    if fig.get("replica_difference"):
        out(f"    {fig['replica_difference']}")
    if fig.get("divergent_tails"):
        out("    rewound tails kept: " + ", ".join(
            f"{p} ({n} transactions)"
            for p, n in sorted(fig["divergent_tails"].items())))
    if fig["settled"] is False:
        out("  the cluster did not settle at the end   <-- must")
    if fig.get("readback_error"):
        out(f"  read-back: {fig['readback_error']}")
    out("  seconds (median / max) from the fault to the first acknowledged "
        "commit made after it, to one by every writer, and from the moment "
        "a primary was ready to one by every writer:")
    for kind, r in fig["recovery"].items():
        never = f", {r['never']} never" if r["never"] else ""
        out(f"    {kind:<16} {r['faults']:>3} faults  first "
            f"{_mm(r['first_write'])}  every writer "
            f"{_mm(r['every_writer'])}  after ready "
            f"{_mm(r['every_writer_after_ready'])}{never}")
    if fig["primary_faults_without_failover"]:
        out("  primary faults without a failover (cycles): "
            f"{fig['primary_faults_without_failover']}")
    if fig["needless_elections"]:
        out("  elections after a fault that needed none (cycles): "
            f"{fig['needless_elections']}")
    if fig["unhealed_cycles"]:
        out(f"  cycles that did not heal in time: {fig['unhealed_cycles']}")
    for d in fig["stuck_server_detail"] + fig["stuck_client_detail"]:
        out(f"    {d}")
    for entry in fig["lost_detail"][:10]:
        out(f"    lost: {entry['writer']}:{entry['seq']} tid {entry['tid']} "
            f"acked while the state said {entry['state_at_ack']}; found in "
            f"{entry['found_in'] or 'no file'}")
    if fig["writers_killed_at_end"]:
        out("  writers that did not stop on SIGTERM: "
            f"{fig['writers_killed_at_end']}")
    if fig["servers_killed_at_end"]:
        out("  servers that did not stop on SIGTERM: "
            f"{fig['servers_killed_at_end']}")
    out("  writer errors: " + (", ".join(
        f"{k} {n}" for k, n in fig["writer_errors"].items()) or "none"))
    findings = fig["findings"]
    if findings["counts"]:
        out("  server logs: " + ", ".join(
            f"{label} {n}" for label, n in sorted(findings["counts"].items())))
    for n, _, example in findings["errors"][:8]:
        out(f"    {n:>5} x {example[:220]}")
    out("  " + ("ALL GOOD" if fig["ok"] else "FAILED"))
