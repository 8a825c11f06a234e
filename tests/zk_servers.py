"""Real zkrunzeo processes for the tests, and a kazoo client to look."""
import json
import os

from kazoo.client import KazooClient

from tests.support import ServerProcess, wait_for
from zkzeo.conffiles import server_config

class ZKServer(ServerProcess):
    """A zkrunzeo process of the test's ZooKeeper path."""

    module = "zkzeo.server"

    def __init__(self, directory, name, connection, path,
                 session_timeout=2.0, bootstrap=True, zookeeper_options=None,
                 replication_options=None, zeo_extra=""):
        ServerProcess.__init__(self, directory, name)
        self.connection = connection
        self.zk_path = path
        self.session_timeout = session_timeout
        self.zookeeper_options = dict(zookeeper_options or {},
                                      bootstrap=str(bootstrap).lower())
        self.replication_options = {"keep-alive-delay": 0.5,
                                    "reconnect-max-delay": 0.3}
        self.replication_options.update(replication_options or {})
        self.zeo_extra = zeo_extra

    def write_config(self):
        conf = os.path.join(self.directory, "zeo.conf")
        with open(conf, "w") as f:
            f.write(server_config(
                self.connection, self.zk_path, self.name, self.path,
                blob_dir=self.blobs, session_timeout=self.session_timeout,
                zookeeper_options=self.zookeeper_options,
                replication_options=self.replication_options,
                zeo_extra=self.zeo_extra))
        return conf

    def start(self, wait=True):
        self.launch()
        if wait:
            wait_for(lambda: self.check_alive() and
                     "registered" in self.output(),
                     f"zkrunzeo {self.name} to register in ZooKeeper")
        return self


def address_of(tree, name):
    """(host, port) of the server ``name`` registered in ``tree``."""
    host, port = tree.by_name()[name]["address"].rsplit(":", 1)
    return host, int(port)


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

