"""``zkzeo pack URL [--days N]``: pack a cluster, by its URL.

ZEO's ``zeopack`` needs a HOST:PORT, which OS-chosen ports make unknown in
advance.  This command finds the primary in ZooKeeper and packs it through
ZEO, as ``zeopack`` would; the primary's replicated storage then has each
secondary pack alike, to the same time (``replication/packs.py``).  It
waits until every registered secondary follows again at the primary's last
transaction, and says so.
"""
import argparse
import time

from ZEO.ClientStorage import ClientStorage
from ZEO.Exceptions import ClientDisconnected

from .layout import SECONDARY

DAY = 86400


def add_command(sub):
    pack = sub.add_parser(
        "pack", help="pack the primary; every secondary packs alike",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Pack the cluster's primary through ZEO (like zeopack) "
        "to DAYS days ago; its secondaries pack to the same time.")
    pack.add_argument("url", help="the cluster: zk://HOST:PORT[,...]/path or zk:/path")
    pack.add_argument("--days", type=float, default=0.0,
                      help="keep the history of the last DAYS days")
    pack.add_argument("--storage", default="1",
                      help="the ZEO storage name")
    pack.add_argument("--timeout", type=float, default=3600.0,
                      help="seconds to wait for the pack and for the "
                      "secondaries to follow again")
    pack.set_defaults(func=cmd_pack)


def cmd_pack(cluster, args):
    from .cli import CommandError, EXIT_OK, say, status_rows
    if args.days < 0:
        raise CommandError("--days cannot be negative")
    snapshot = cluster.snapshot()
    primary = snapshot.primary
    if primary is None:
        raise CommandError(
            f"no primary is registered at {snapshot.path}; nothing was "
            "packed (see 'zkzeo status')")
    t = time.time() - args.days * DAY
    try:
        client = ClientStorage(primary.address, storage=args.storage,
                               wait_timeout=min(args.timeout, 30.0),
                               name="zkzeo-pack")
    except (ClientDisconnected, OSError) as e:
        raise CommandError(f"cannot reach the primary {primary.name} at "
                           f"{primary.child}: {e}") from None
    try:
        if client.isReadOnly():
            raise CommandError(f"the primary {primary.name} does not "
                               "accept writes now; nothing was packed")
        say(f"packing {primary.name} ({primary.child}) to "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(t))} UTC")
        client.pack(t, wait=True)
    finally:
        client.close()
    say(f"packed {primary.name}; waiting for the secondaries to pack alike")
    deadline = time.monotonic() + args.timeout
    while True:
        snapshot, rows = status_rows(cluster)
        by_name = {r["name"]: r for r in rows}
        head = by_name.get(primary.name, {}).get("last_tid")
        behind = [r["name"] for r in rows if r["role"] == SECONDARY and (
            r["state"] != "following" or head is None or
            (r["last_tid"] or "") < head)]
        if not behind:
            names = [r["name"] for r in rows if r["role"] == SECONDARY]
            say("every secondary follows again" + (
                f" ({', '.join(names)})" if names else " (none registered)"))
            return EXIT_OK
        if time.monotonic() > deadline:
            raise CommandError(
                f"the primary was packed, but {', '.join(behind)} did not "
                f"follow again within {args.timeout:g}s; see 'zkzeo status'")
        time.sleep(0.5)
