"""The cluster's history: which server held each epoch, and since when.

Kept as JSON in a persistent *sibling* of the database's node,
``PATH.history`` (``/databases/main.history``), because the children of
PATH must stay exactly the servers' HOST:PORT nodes (zc.zkzeo clients read
them) and the cluster state is rewritten whole by every compare-and-set::

    {"epochs": [{"epoch": 1, "primary": "s1", "since": 1764380000.123,
                 "previous": null}, ...]}

Whoever changes the primary (a server bootstrapping or taking over) calls
``record`` (or, from a loop that must not wait on ZooKeeper,
``record_later``) after its compare-and-set succeeded.  Recording is best effort:
history is for operators, so a failure is logged and never stops a
takeover.  Only the last ``KEEP`` epochs are kept (a znode holds 1 MB).
"""
import json
import logging
import threading
import time

from kazoo.exceptions import (BadVersionError, KazooException,
                              NodeExistsError, NoNodeError)

logger = logging.getLogger(__name__)

KEEP = 200
ATTEMPTS = 5


def history_path(path):
    return path + ".history"


def parse(data):
    """The list of epoch entries in a history node's data ([] if none or
    unreadable: history never stops anything)."""
    if not data:
        return []
    try:
        value = json.loads(data.decode("utf-8"))
        entries = value["epochs"]
        return [e for e in entries if isinstance(e, dict) and
                isinstance(e.get("epoch"), int)]
    except (ValueError, KeyError, TypeError, AttributeError):
        return []


def read(zk, path):
    """The recorded epochs of the cluster at ``path``, oldest first."""
    try:
        data, _ = zk.retry(zk.get, history_path(path))
    except NoNodeError:
        return []
    return parse(data)


def record(zk, path, old_state, new_state, now=None):
    """Add ``new_state``'s epoch (its primary, now) to the history of the
    cluster at ``path``, after a successful change from ``old_state``
    (either may be a ClusterState; ``old_state`` None at bootstrap).
    Idempotent per epoch; returns True if recorded."""
    if new_state is None or new_state.primary is None:
        return False
    entry = {"epoch": new_state.epoch, "primary": new_state.primary,
             "since": round(time.time() if now is None else now, 3),
             "previous": old_state.primary if old_state is not None
             else None}
    node = history_path(path)
    try:
        for _ in range(ATTEMPTS):
            try:
                data, stat = zk.retry(zk.get, node)
            except NoNodeError:
                try:
                    zk.retry(zk.create, node, _dump([entry]))
                    return True
                except NodeExistsError:
                    continue
            entries = parse(data)
            if any(e["epoch"] == entry["epoch"] for e in entries):
                return False
            entries = sorted(entries + [entry], key=lambda e: e["epoch"])
            try:
                zk.retry(zk.set, node, _dump(entries[-KEEP:]),
                         version=stat.version)
                return True
            except BadVersionError:
                continue
        logger.warning("could not record epoch %d of %s in its history: "
                       "the history node kept changing", new_state.epoch,
                       path)
    except KazooException as e:
        logger.warning("could not record epoch %d of %s in its history "
                       "(%s)", new_state.epoch, path, e.__class__.__name__)
    return False


def record_later(zk, path, old_state, new_state):
    """``record`` in a daemon thread: a server that just took over never
    waits for its history (the time is taken now)."""
    now = time.time()
    thread = threading.Thread(
        target=record, args=(zk, path, old_state, new_state, now),
        name="zkzeo-history", daemon=True)
    thread.start()
    return thread


def _dump(entries):
    return json.dumps({"epochs": entries}, sort_keys=True).encode()
