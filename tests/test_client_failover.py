"""zkzeo clients through failovers, with real zkrunzeo processes and a real
ZooKeeper: where they connect, and what they do when the primary changes."""
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import transaction
from persistent.mapping import PersistentMapping
from ZEO.Exceptions import ClientDisconnected
from ZODB.POSException import ConflictError, ReadOnlyError

import zkzeo
from tests.support import PYTHON, wait_for
from tests.test_failover import commit, last_tid
from tests.zk_servers import Tree, address_of
from zkzeo.zkserver import ZooKeeperServer

RETRIABLE = (ClientDisconnected, ReadOnlyError, ConflictError)


def connected_address(storage):
    protocol = storage._server.client.protocol
    return protocol and protocol.addr


def read(db, function):
    with db.transaction() as conn:
        return function(conn.root)


def try_commit(db, **values):
    try:
        commit(db, **values)
        return True
    except RETRIABLE:
        transaction.abort()
        return False


def commit_within(seconds, db, **values):
    """try_commit, failing the test if the commit waits longer than
    ``seconds`` (ZEO has no request timeout: a hung server holds it)."""
    result = []
    thread = threading.Thread(
        target=lambda: result.append(try_commit(db, **values)), daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise AssertionError(f"a commit still waits after {seconds}s")
    return result[0]


def name_primary(tree, name):
    """Write the cluster state as a promotion does: ``name`` is primary in
    the next epoch (compare-and-set)."""
    data, stat = tree.zk.get(tree.path)
    state = json.loads(data)
    state.update(primary=name, epoch=state["epoch"] + 1)
    state.pop("handover", None)
    tree.zk.set(tree.path, json.dumps(state).encode(), version=stat.version)
    return state["epoch"]


def since_writable(tree, name):
    """Seconds since ``name``'s node last changed (ZooKeeper's mtime; the
    same machine's clock): after a promotion, since it said writable."""
    node = f"{tree.path}/{tree.by_name()[name]['address']}"
    return time.time() - tree.zk.get(node)[1].mtime / 1000.0


def paused(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


def test_client_waiting_for_its_first_connection_survives_list_changes(
        cluster, tree, zk_url):
    """A client created before any server registers waits through every
    change of the list (ZEO's new_addrs used to cancel its wait)."""
    outcome = []

    def open_client():
        try:
            outcome.append(zkzeo.DB(zk_url, read_only_fallback=True,
                                    wait_timeout=120))
        except Exception as e:
            outcome.append(e)
    opener = threading.Thread(target=open_client, daemon=True)
    opener.start()
    try:
        cluster("s1")                  # the list: none, then s1
        s2 = cluster("s2")             # a secondary: changes nothing for it
        s2.stop()
        opener.join(120)
        assert len(outcome) == 1 and not isinstance(outcome[0], Exception), \
            outcome
        db = outcome[0]
        commit(db, x=1)
        assert connected_address(db.storage) == address_of(tree, "s1")
    finally:
        for db in outcome:
            if not isinstance(db, Exception):
                db.close()


def test_a_client_connects_once_at_start(cluster, tree, zk_url, caplog):
    cluster("s1")
    wait_for(lambda: tree.by_name()["s1"]["writable"], "s1 to accept writes")
    caplog.set_level(logging.INFO, logger="ZEO.asyncio.base")
    storage = zkzeo.client(zk_url, wait_timeout=60)
    try:
        connects = [r for r in caplog.records if r.name == "ZEO.asyncio.base"
                    and r.getMessage().startswith("Connected")]
        assert len(connects) == 1, [r.getMessage() for r in connects]
    finally:
        storage.close()


def test_write_client_waits_for_the_new_primary_not_on_secondaries(
        cluster, tree, zk_url, caplog):
    """While no primary accepts writes, a write client is given no server:
    a secondary would refuse its read-write registration, and ZEO would
    wait some 9 s before it tried again."""
    extra = {"auto-failover": 1.0}
    s1 = cluster("s1", zookeeper_options=extra)
    cluster("s2", zookeeper_options=extra)
    cluster("s3", zookeeper_options=extra)
    db = zkzeo.DB(zk_url, wait_timeout=60)
    try:
        commit(db, x=1)
        caplog.set_level(logging.INFO)
        killed = time.monotonic()
        s1.kill()
        wait_for(lambda: try_commit(db, x=2),
                 "the write client to write on the elected primary")
        seconds = time.monotonic() - killed
        print(f"kill to first write (automatic failover): {seconds:.2f}s")
        assert tree.state()["epoch"] == 2
        assert "Registration or cache validation failed" not in caplog.text
    finally:
        db.close()


def set_writable(tree, name, writable):
    """Change what a server says of itself, in place (as a primary does
    when it starts or stops accepting writes)."""
    node = f"{tree.path}/{tree.by_name()[name]['address']}"
    data, stat = tree.zk.get(node)
    value = json.loads(data)
    value["writable"] = writable
    tree.zk.set(node, json.dumps(value).encode(), version=stat.version)


def test_fallback_client_writes_once_the_primary_says_it_accepts_writes(
        cluster, tree, zk_url):
    """Same address, same epoch: only the primary's "writable" changes.
    ZEO never retries a read-only connection by itself; the client is told
    and upgrades."""
    s1, s2 = cluster("s1"), cluster("s2")
    first = zkzeo.DB(zk_url, wait_timeout=60)      # creates the root
    first.close()
    wait_for(lambda: last_tid(s2) == last_tid(s1), "s2 to have the root")
    set_writable(tree, "s1", False)
    db = zkzeo.DB(zk_url, read_only_fallback=True, wait_timeout=60)
    try:
        assert db.storage.isReadOnly()
        assert connected_address(db.storage) == address_of(tree, "s2")
        state = tree.state()
        writable = time.monotonic()
        set_writable(tree, "s1", True)
        wait_for(lambda: try_commit(db, x=1),
                 "the fallback client to write on s1", timeout=30)
        print(f"writable to first write: {time.monotonic() - writable:.2f}s")
        assert connected_address(db.storage) == address_of(tree, "s1")
        assert tree.state() == state
    finally:
        db.close()


def test_fallback_client_writes_on_the_promoted_secondary(cluster, tree,
                                                          zk_url):
    """The fallback client reads on one secondary after the primary dies;
    the other is promoted: the client writes there."""
    s1 = cluster("s1")
    cluster("s2"), cluster("s3")
    db = zkzeo.DB(zk_url, read_only_fallback=True, wait_timeout=60)
    try:
        commit(db, x=1)
        primary = address_of(tree, "s1")
        s1.kill()
        wait_for(lambda: db.storage.is_connected() and
                 db.storage.isReadOnly() and
                 connected_address(db.storage) != primary,
                 "the fallback client to read on a secondary")
        reading_on = connected_address(db.storage)
        other = "s3" if reading_on == address_of(tree, "s2") else "s2"
        wait_for(lambda: "s1" not in tree.by_name(), "s1's node to expire")
        promoted = time.monotonic()
        name_primary(tree, other)
        wait_for(lambda: try_commit(db, x=2),
                 f"the fallback client to write on {other}", timeout=30)
        seconds = time.monotonic() - promoted
        print(f"promotion to first write: {seconds:.2f}s "
              f"({since_writable(tree, other):.2f}s after it said writable)")
        assert connected_address(db.storage) == address_of(tree, other)
    finally:
        db.close()


def test_clients_leave_a_hung_primary_once_another_is_named(
        cluster, tree, zk_url):
    """ZEO has no request timeout: a client would wait on a SIGSTOPped
    primary for as long as it is stopped.  Once ZooKeeper names another
    primary, the client closes that connection itself."""
    s1, s2 = cluster("s1"), cluster("s2")
    writer = zkzeo.DB(zk_url, wait_timeout=60)
    fallback = zkzeo.DB(zk_url, read_only_fallback=True, wait_timeout=60)
    try:
        for db in (writer, fallback):
            wait_for(lambda: try_commit(db, y=1), "a first commit")
        wait_for(lambda: tree.by_name()["s2"].get("replication_state") ==
                 "following", "s2 to follow s1")
        s1.pause()
        hung = threading.Thread(target=try_commit, args=(writer,),
                                kwargs={"x": 2}, daemon=True)
        hung.start()                   # waits on the hung s1
        promoted = time.monotonic()
        name_primary(tree, "s2")       # as `zkzeo promote --force` would
        for db in (writer, fallback):
            wait_for(lambda: commit_within(30, db, z=3),
                     "the client to write on s2 while s1 is stopped")
        seconds = time.monotonic() - promoted
        after = since_writable(tree, "s2")
        hung.join(30)
        assert not hung.is_alive(), "a commit still waits on the hung s1"
        assert paused(s1.process.pid)
        for db in (writer, fallback):
            assert connected_address(db.storage) == address_of(tree, "s2")
        print(f"promotion to first write, primary hung: {seconds:.2f}s "
              f"({after:.2f}s after s2 said writable)")
    finally:
        s1.resume()
        writer.close()
        fallback.close()


def test_new_oids_come_from_the_new_primary(cluster, tree, zk_url):
    """A client keeps a block of new oids from the old primary; the new
    primary hands the same oids out again.  The client must not use them
    (ConflictErrors on objects nobody touched)."""
    s1, s2 = cluster("s1"), cluster("s2")
    old = zkzeo.DB(zk_url, wait_timeout=60)
    try:
        with old.transaction() as conn:
            conn.root.old = PersistentMapping(n=0)   # takes a block of oids
        last = old.storage.lastTransaction()
        wait_for(lambda: last_tid(s2) == last, "s2 to have it")
        s1.kill()
        wait_for(lambda: "s1" not in tree.by_name(), "s1's node to expire")
        name_primary(tree, "s2")
        wait_for(lambda: old.storage.is_connected() and
                 connected_address(old.storage) == address_of(tree, "s2"),
                 "the old client to connect to s2")
        new = zkzeo.DB(zk_url, wait_timeout=60)
        try:
            with new.transaction() as conn:   # s2 hands out its next oids
                conn.root.new = [PersistentMapping(by="new", i=i)
                                 for i in range(5)]
            assert new.storage.lastTransaction() > last

            errors = []

            def add_more():
                # Only this client writes root.old: a ConflictError (or a
                # POSKeyError) here is on new objects nobody else touched.
                try:
                    with old.transaction() as conn:
                        conn.root.old["more"] = [
                            PersistentMapping(by="old", i=i)
                            for i in range(5)]
                    return True
                except (ClientDisconnected, ReadOnlyError):
                    pass
                except Exception as e:
                    errors.append(e)
                transaction.abort()
                return False
            wait_for(add_more, "the old client to write on s2")
            assert not errors
            wait_for(lambda: read(new, lambda root: "more" in root.old),
                     "the new client to see the old client's commit")
            with new.transaction() as conn:
                made = conn.root.new + conn.root.old["more"]
                assert [m["by"] for m in made] == ["new"] * 5 + ["old"] * 5
                assert len({m._p_oid for m in made}) == 10
            assert "POSKeyError" not in s2.output()
        finally:
            new.close()
    finally:
        old.close()


UNCLOSED_CLIENT = r"""
import sys, threading, zkzeo
from kazoo.recipe.watchers import DataWatch

url, trigger = sys.argv[1:]
storage = zkzeo.client(url, wait=False)       # never closed
zk = storage._zk

def stuck(data, stat):
    # A watch callback caught in a ZooKeeper call when ZooKeeper goes
    # away: it never returns (kazoo reconnects for ever).
    if data == b"hang":
        while zk.connected:
            threading.Event().wait(0.05)
        print("calling ZooKeeper", flush=True)
        zk.get("/")

DataWatch(zk, trigger, stuck)
print("ready", flush=True)
sys.stdin.readline()
print("main thread returns", flush=True)
"""


def test_an_unclosed_client_lets_its_process_exit_without_zookeeper(
        tmp_path):
    zookeeper = ZooKeeperServer(str(tmp_path / "zk")).start()
    path = "/exit/db"
    tree = Tree(zookeeper.address, path)
    process = None
    try:
        tree.zk.ensure_path(path)
        tree.zk.create(path + "-trigger", b"")
        log = open(tmp_path / "client.log", "wb")
        process = subprocess.Popen(
            [PYTHON, "-c", UNCLOSED_CLIENT,
             f"zk://{zookeeper.address}{path}", path + "-trigger"],
            stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
        log.close()

        def output():
            return (tmp_path / "client.log").read_text()
        wait_for(lambda: "ready" in output(), "the client to start")
        tree.zk.set(path + "-trigger", b"hang")
        tree.close()
        zookeeper.stop()
        wait_for(lambda: "calling ZooKeeper" in output(),
                 "a kazoo callback to block on the stopped ZooKeeper")
        process.stdin.write(b"\n")
        process.stdin.flush()
        wait_for(lambda: "main thread returns" in output(),
                 "the main thread to return")
        returned = time.monotonic()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            raise AssertionError("the process did not exit within 15s after "
                                 "its main thread returned:\n" + output())
        print(f"exit {time.monotonic() - returned:.2f}s after main returned")
    finally:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()
        tree.close()
        zookeeper.stop()


LIVE_CLIENT = r"""
import sys, time, transaction, zkzeo
from ZEO.Exceptions import ClientDisconnected

db = zkzeo.DB(sys.argv[1], wait_timeout=60, zookeeper_session_timeout=60)

def box():
    deadline = time.monotonic() + 60
    while True:
        try:
            with db.transaction() as conn:
                return conn.root.box["v"]
        except ClientDisconnected:
            transaction.abort()
            if time.monotonic() > deadline:
                raise
            db.storage.is_connected() or time.sleep(0.1)

print("box", box(), flush=True)
for line in sys.stdin:
    if line.strip() == "write":
        with db.transaction() as conn:
            conn.root.box["v"] = 2
        print("box", box(), "written", flush=True)
    elif line.strip() == "read":
        print("box", box(), "after the failover", flush=True)
db.close()
"""


def test_a_live_client_drops_what_a_lossy_failover_lost(cluster, tree,
                                                        zk_url, tmp_path):
    """A client that cached the data of transaction T, which the new
    primary never got, reads the new history after the failover, although
    the new history grew past T's tid meanwhile (quick verification from T
    would pass over T's changes: our servers answer it only for a tid of
    their own history)."""
    s1, s2 = cluster("s1"), cluster("s2")
    writer = zkzeo.DB(zk_url, wait_timeout=60)
    commit(writer, box=PersistentMapping(v=1))
    writer.close()
    wait_for(lambda: last_tid(s2) == last_tid(s1), "s2 to have v=1")
    log = open(tmp_path / "live.log", "wb")
    client = subprocess.Popen(
        [PYTHON, "-c", LIVE_CLIENT, zk_url], stdin=subprocess.PIPE,
        stdout=log, stderr=subprocess.STDOUT,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    log.close()

    def output():
        return (tmp_path / "live.log").read_text()

    def say(line):
        client.stdin.write(line.encode() + b"\n")
        client.stdin.flush()
    try:
        wait_for(lambda: "box 1" in output(), "the client to read v=1")
        s2.stop()                              # s2 misses what follows
        say("write")
        wait_for(lambda: "box 2 written" in output(),
                 "the client to write and cache v=2 (transaction T)")
        lost = last_tid(s1)
        client.send_signal(signal.SIGSTOP)     # it sleeps through it all
        s1.kill()
        wait_for(lambda: "s1" not in tree.by_name(), "s1's node to expire")
        s2.start()
        name_primary(tree, "s2")
        other = zkzeo.DB(zk_url, wait_timeout=60)
        commit(other, unrelated=1)
        other.close()
        assert last_tid(s2) > lost             # the new history passed T
        client.send_signal(signal.SIGCONT)
        # Until it notices the failover, the client reads its cache (it
        # has no reason to ask a server); the check is what it does next.
        wait_for(lambda: "dropping stale cache" in output(),
                 "the client to drop its cache on reconnecting")
        say("read")
        wait_for(lambda: "after the failover" in output(),
                 "the client to read after the failover")
        assert "box 1 after the failover" in output(), output()
        assert "not in the history" in s2.output()
    finally:
        if client.poll() is None:
            client.send_signal(signal.SIGCONT)
            client.stdin.close()
            try:
                client.wait(30)
            except subprocess.TimeoutExpired:
                client.kill()
                client.wait()
