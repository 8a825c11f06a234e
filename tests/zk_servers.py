"""Real zkrunzeo processes for the tests, and a kazoo client to look."""
import json
import os
import signal
import sys

from kazoo.client import KazooClient

from tests.support import Process, wait_for

CONFIG = """\
<zeo>
  address 127.0.0.1:0
</zeo>
<zookeeper>
  connection {connection}
  path {path}
  name {name}
  session-timeout {session_timeout}
  bootstrap {bootstrap}
{zk_extra}
</zookeeper>
<replication 1>
  replicate-from zk:
  replicate-to 127.0.0.1:0
  keep-alive-delay 0.5
  reconnect-max-delay 0.3
{replication_extra}
  <filestorage>
    path {directory}/Data.fs
    blob-dir {directory}/blobs
  </filestorage>
</replication>
<eventlog>
  level INFO
  <logfile>
    path STDOUT
    format %(asctime)s %(levelname)s %(name)s %(message)s
  </logfile>
</eventlog>
"""


class ZKServer:
    """A zkrunzeo process; start() again after stop() or kill()."""

    def __init__(self, directory, name, connection, path,
                 session_timeout=2.0, bootstrap=True, zk_extra="",
                 replication_extra=""):
        self.name = name
        self.directory = os.path.join(str(directory), name)
        os.makedirs(self.directory, exist_ok=True)
        self.path = os.path.join(self.directory, "Data.fs")
        self.blobs = os.path.join(self.directory, "blobs")
        self.connection = connection
        self.zk_path = path
        self.session_timeout = session_timeout
        self.bootstrap = bootstrap
        self.zk_extra = zk_extra
        self.replication_extra = replication_extra
        self.process = None
        self.starts = 0

    def write_config(self):
        conf = os.path.join(self.directory, "zeo.conf")
        with open(conf, "w") as f:
            f.write(CONFIG.format(
                connection=self.connection, path=self.zk_path,
                name=self.name, session_timeout=self.session_timeout,
                bootstrap=str(self.bootstrap).lower(),
                zk_extra=self.zk_extra,
                replication_extra=self.replication_extra,
                directory=self.directory))
        return conf

    def start(self, wait=True):
        self.starts += 1
        self.process = Process(
            [sys.executable, "-m", "zkzeo.server", "-C", self.write_config()],
            os.path.join(self.directory, f"server-{self.starts}.log"),
            env={"PYTHONPATH": os.pathsep.join(sys.path)})
        if wait:
            wait_for(lambda: self._check_alive() and
                     "registered" in self.output(),
                     f"zkrunzeo {self.name} to register in ZooKeeper")
        return self

    def _check_alive(self):
        if not self.process.alive():
            raise AssertionError(
                f"zkrunzeo {self.name} exited:\n{self.output()}")
        return True

    def output(self):
        return self.process.output()

    def kill(self):
        self.process.kill()

    def pause(self):
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self):
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self):
        if self.process is not None:
            if self.process.alive():
                self.resume()
            self.process.stop()


class Tree:
    """Reads the test's ZooKeeper path with a real kazoo client."""

    def __init__(self, address, path):
        self.path = path
        self.zk = KazooClient(hosts=address, timeout=5)
        self.zk.start(timeout=30)

    def servers(self):
        """{child: data dict} of the registered servers."""
        if not self.zk.exists(self.path):
            return {}
        out = {}
        for child in self.zk.get_children(self.path):
            try:
                data, stat = self.zk.get(f"{self.path}/{child}")
            except Exception:
                continue
            value = json.loads(data)
            value["owner"] = stat.ephemeralOwner
            out[child] = value
        return out

    def by_name(self):
        return {v["name"]: dict(v, address=k)
                for k, v in self.servers().items()}

    def state(self):
        data, _ = self.zk.get(self.path)
        return json.loads(data) if data else None

    def close(self):
        self.zk.stop()
        self.zk.close()

