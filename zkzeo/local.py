"""``zkzeo-cluster``: a local cluster in one command, run by zdaemon.

    zkzeo-cluster start [DIR] [--servers 3] [--zookeeper HOST:PORT]
    zkzeo-cluster status [DIR]
    zkzeo-cluster stop [DIR]
    zkzeo-cluster demo [DIR]      a failover, narrated, on the running cluster

``start`` lays out DIR (default ``var/cluster``): a standalone ZooKeeper
(unless one is given) and N zkrunzeo servers, each with a generated zeo.conf
and zdaemon.conf, each process run by zdaemon (so ``zdaemon -C
DIR/s1/zdaemon.conf status|stop|start|restart`` work too).  Server logs go to
DIR/NAME/server.log, rotated by ZConfig's logfile handler.  It then prints
the zk: URL for applications and the status table.  The cluster's
ZooKeeper nodes are private: ``start`` writes a fresh credential to
DIR/zookeeper.auth (mode 600), gives it to the servers (``auth-file``, ``acl
private``) and prints how applications and the zkzeo command use it.  ``stop`` stops every
process it started.
"""
import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time

from . import cli, localtls, zk
from .conffiles import server_config, zdaemon_config
from .zkserver import ZooKeeperServer, free_port

DEFAULT_DIR = os.path.join("var", "cluster")
PATH = "/databases/main"

def say(text):
    print(text, flush=True)


class LocalCluster:

    def __init__(self, directory):
        self.directory = os.path.abspath(directory)
        self.state_file = os.path.join(self.directory, "cluster.json")

    # --- layout -------------------------------------------------------------

    def load(self):
        if not os.path.exists(self.state_file):
            raise SystemExit(f"no cluster in {self.directory}; "
                             "run 'zkzeo-cluster start' first")
        with open(self.state_file) as f:
            return json.load(f)

    def save(self, state):
        os.makedirs(self.directory, exist_ok=True)
        with open(self.state_file, "w") as f:
            json.dump(state, f, indent=2)

    def url(self, state):
        return f"zk://{state['zookeeper']}{state['path']}"

    def daemon_dir(self, name):
        return os.path.join(self.directory, name)

    def write_daemon(self, name, program):
        directory = self.daemon_dir(name)
        os.makedirs(directory, exist_ok=True)
        conf = os.path.join(directory, "zdaemon.conf")
        with open(conf, "w") as f:
            f.write(zdaemon_config(" ".join(program), directory))
        return conf

    def zdaemon(self, name, *command):
        conf = os.path.join(self.daemon_dir(name), "zdaemon.conf")
        return subprocess.run(
            [sys.executable, "-m", "zdaemon", "-C", conf, *command],
            capture_output=True, text=True)

    def running(self, name):
        return "program running" in self.zdaemon(name, "status").stdout

    # --- commands -------------------------------------------------------------

    def start(self, servers=3, zookeeper=None):
        if os.path.exists(self.state_file):
            state = self.load()
        else:
            state = {"zookeeper": zookeeper, "path": PATH,
                     "servers": [f"s{i}" for i in range(1, servers + 1)],
                     "own_zookeeper": zookeeper is None}
            if zookeeper is None:
                state["zookeeper"] = f"127.0.0.1:{free_port()}"
            state["auth_file"] = self.write_credential()
            state["replication_secret"] = self.write_replication_secret()
            state["tls"] = self.make_certificates()
            self.save(state)
        if state["own_zookeeper"]:
            self.start_zookeeper(state)
        for name in state["servers"]:
            self.start_server(state, name)
        say(f"applications use: {self.url(state)}")
        if state.get("auth_file"):
            say(f"with the ZooKeeper credential in {state['auth_file']} "
                "(only its holder may read or change the cluster's nodes): "
                f"zkzeo.DB(url, zookeeper_auth_file={state['auth_file']!r}),"
                f" or export ZKZEO_AUTH_FILE={state['auth_file']} (also for "
                "the zkzeo command)")
        self.create_root(state)
        self.wait_caught_up(state)
        return cli.main(self.cli_options(state) + ["status", self.url(state)])

    def write_credential(self):
        """A fresh ZooKeeper credential, readable by this user only."""
        path = os.path.join(self.directory, "zookeeper.auth")
        os.makedirs(self.directory, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"zkzeo:{secrets.token_urlsafe(24)}\n")
        return path

    def write_replication_secret(self):
        """A fresh shared secret for replication (secondaries and their
        source prove they know it; it never crosses the network)."""
        path = os.path.join(self.directory, "replication.secret")
        os.makedirs(self.directory, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
        return path

    def make_certificates(self):
        """The cluster's CA for replication TLS, or None (with a sentence)
        where the openssl command is missing: then the shared secret alone
        protects replication."""
        directory = os.path.join(self.directory, "tls")
        try:
            localtls.make_authority(directory)
        except localtls.CertificatesUnavailable as e:
            say(f"replication without TLS ({e}); its shared secret still "
                "keeps strangers out")
            return None
        return directory

    def cli_options(self, state):
        auth_file = state.get("auth_file")
        return ["--auth-file", auth_file] if auth_file else []

    def settings(self, state):
        return zk.settings(auth_file=state.get("auth_file"))

    def client_options(self, state):
        auth_file = state.get("auth_file")
        return {"zookeeper_auth_file": auth_file} if auth_file else {}

    def start_zookeeper(self, state):
        host, port = state["zookeeper"].rsplit(":", 1)
        server = ZooKeeperServer(self.daemon_dir("zookeeper"), host,
                                 int(port))
        os.makedirs(server.data_dir, exist_ok=True)
        self.write_daemon("zookeeper", server.command())
        if not self.running("zookeeper"):
            self.check(self.zdaemon("zookeeper", "start"), "zookeeper")
        self.wait(server.answers, f"ZooKeeper on {state['zookeeper']}")
        say(f"ZooKeeper on {state['zookeeper']} (data in "
            f"{server.data_dir})")

    def start_server(self, state, name):
        directory = self.daemon_dir(name)
        os.makedirs(directory, exist_ok=True)
        conf = os.path.join(directory, "zeo.conf")
        with open(conf, "w") as f:
            f.write(server_config(
                state["zookeeper"], state["path"], name,
                file_storage=os.path.join(directory, "Data.fs"),
                blob_dir=os.path.join(directory, "blobs"),
                log_file=os.path.join(directory, "server.log"),
                session_timeout=4,
                zookeeper_options={"auth-file": state["auth_file"],
                                   "acl": "private"}
                if state.get("auth_file") else None,
                replication_options=dict(
                    {"reconnect-max-delay": 1},
                    **({"secret-file": state["replication_secret"]}
                       if state.get("replication_secret") else {})),
                replication_sections=localtls.replication_ssl_section(
                    state["tls"], name) if state.get("tls") else ""))
        self.write_daemon(name, [sys.executable, "-m", "zkzeo.server",
                                 "-C", conf])
        if not self.running(name):
            self.check(self.zdaemon(name, "start"), name)
        log = os.path.join(directory, "server.log")
        self.wait(lambda: os.path.exists(log) and
                  "registered" in open(log).read(), f"{name} to register")
        say(f"{name} running under zdaemon ({directory})")

    def create_root(self, state):
        """Open the database once: a new one gets its root object (its
        first transaction), which the secondaries then replicate."""
        import zkzeo
        zkzeo.DB(self.url(state), wait_timeout=60,
                 **self.client_options(state)).close()

    def wait_caught_up(self, state, timeout=120):
        cluster = cli.Cluster(self.url(state), settings=self.settings(state))
        try:
            def caught_up():
                _, rows = cli.status_rows(cluster)
                return len(rows) == len(state["servers"]) and all(
                    r["reachable"] for r in rows) and len(
                    {r["last_tid"] for r in rows}) == 1
            self.wait(caught_up, "the secondaries to catch up", timeout)
        finally:
            cluster.close()

    def stop(self):
        state = self.load()
        names = list(reversed(state["servers"]))
        if state["own_zookeeper"]:
            names.append("zookeeper")
        for name in names:
            if os.path.exists(os.path.join(self.daemon_dir(name),
                                           "zdaemon.conf")):
                self.zdaemon(name, "stop")
                say(f"stopped {name}")
        return 0

    def status(self):
        state = self.load()
        return cli.main(self.cli_options(state) + ["status", self.url(state)])

    def demo(self):
        """A failover, narrated: kill the primary, promote, recover."""
        import transaction
        import zkzeo
        state = self.load()
        url = self.url(state)
        cluster = cli.Cluster(url, settings=self.settings(state))
        try:
            return self._demo(state, url, cluster, zkzeo, transaction)
        finally:
            cluster.close()

    def _demo(self, state, url, cluster, zkzeo, transaction):
        import logging
        # ZEO logs each refused read-write registration during the failover
        # at ERROR; the narration says what happens instead.
        logging.getLogger("ZEO").setLevel(logging.CRITICAL)
        primary = cluster.snapshot().state.primary
        say(f"1. a client opens {url} with read_only_fallback and writes")
        db = zkzeo.DB(url, read_only_fallback=True, wait_timeout=60,
                      **self.client_options(state))
        with db.transaction() as conn:
            conn.root.demo = getattr(conn.root, "demo", 0) + 1
            value = conn.root.demo
        say(f"   wrote demo={value} through primary {primary}")
        # Replication is asynchronous: a crash right after a commit may lose
        # it.  The demo shows failover, not that, so it lets it arrive.
        self.wait_caught_up(state)
        say("   the secondaries have it too (replication is asynchronous: "
            "a crash right after a commit could lose it)")
        say(f"2. SIGKILL of the primary {primary} (and of its zdaemon, "
            "which would restart it at once)")
        self.kill(primary)
        start = time.monotonic()
        self.wait(lambda: db.storage.is_connected() and
                  db.storage.isReadOnly(), "a read-only reconnection")
        conn = db.open()
        transaction.begin()
        say(f"   {time.monotonic() - start:.2f}s later the client reads "
            f"demo={conn.root.demo} from a secondary (writes fail for now)")
        conn.close()
        say("3. zkzeo promote, once the dead primary's ZooKeeper session "
            "has expired")
        self.wait(lambda: cluster.snapshot().primary is None,
                  "the dead primary's node to expire", 60)
        cli.main(self.cli_options(state) + ["promote", url])
        self.wait(lambda: db.storage.is_connected() and
                  not db.storage.isReadOnly(), "a read-write reconnection")
        with db.transaction() as conn:
            conn.root.demo += 1
            say(f"4. the same client writes again: demo={conn.root.demo}")
        db.close()
        say(f"5. {primary} comes back and follows the new primary")
        self.start_server(state, primary)
        self.wait_caught_up(state)
        return cli.main(self.cli_options(state) + ["status", url])

    def kill(self, name):
        """SIGKILL a server and its zdaemon (a crash zdaemon won't mend)."""
        conf = os.path.join(self.daemon_dir(name), "zeo.conf")
        daemon_conf = os.path.join(self.daemon_dir(name), "zdaemon.conf")
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    args = f.read().decode(errors="replace").split("\0")
            except OSError:
                continue
            if daemon_conf in args or conf in args:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for leftover in ("zdaemon.sock",):
            path = os.path.join(self.daemon_dir(name), leftover)
            if os.path.exists(path):
                os.remove(path)

    # --- helpers ----------------------------------------------------------------

    def check(self, result, name):
        if result.returncode != 0:
            raise SystemExit(f"zdaemon failed for {name}: "
                             f"{result.stdout}{result.stderr}")

    def wait(self, condition, what, timeout=60):
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise SystemExit(f"gave up waiting for {what} after "
                                 f"{timeout}s; see the logs in "
                                 f"{self.directory}")
            time.sleep(0.1)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="zkzeo-cluster",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("command",
                        choices=["start", "stop", "status", "demo"])
    parser.add_argument("directory", nargs="?", default=DEFAULT_DIR)
    parser.add_argument("--servers", type=int, default=3)
    parser.add_argument("--zookeeper", metavar="HOST:PORT",
                        help="use this ZooKeeper instead of starting one")
    args = parser.parse_args(argv)
    local = LocalCluster(args.directory)
    if args.command == "start":
        return local.start(args.servers, args.zookeeper)
    return getattr(local, args.command)()


if __name__ == "__main__":
    sys.exit(main())
