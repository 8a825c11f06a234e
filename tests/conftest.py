import os
import uuid

import pytest
from kazoo.client import KazooClient

from tests.zeo_servers import ZEOServer
from tests.zk_servers import Tree, ZKServer
from zkzeo.zkserver import ZooKeeperServer


@pytest.fixture(scope="session")
def zookeeper(tmp_path_factory):
    """One real standalone ZooKeeper server for the whole test session."""
    server = ZooKeeperServer(str(tmp_path_factory.mktemp("zookeeper")))
    server.start()
    # /tests open to all: a server with an ACL creates the missing parents
    # of its path with that ACL, which would lock the other tests out.
    client = KazooClient(hosts=server.address, timeout=5)
    client.start(timeout=30)
    client.ensure_path("/tests")
    client.stop()
    client.close()
    yield server
    server.stop()


@pytest.fixture
def zk_path(zookeeper, request):
    """A fresh ZooKeeper path for one test, and the ensemble string."""
    name = request.node.name.replace("[", "_").replace("]", "")
    return f"/tests/{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def zk_url(zookeeper, zk_path):
    return f"zk://{zookeeper.address}{zk_path}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed and "zookeeper" in getattr(
            item, "fixturenames", ()):
        server = item.funcargs.get("zookeeper")
        if server is not None:
            report.sections.append(
                ("ZooKeeper log (tail)", server.log_text()[-4000:]))


def pytest_configure(config):
    os.environ.setdefault("ZKZEO_TESTING", "1")


@pytest.fixture
def tree(zookeeper, zk_path):
    """The test's ZooKeeper path, read with a real kazoo client."""
    t = Tree(zookeeper.address, zk_path)
    yield t
    t.close()


@pytest.fixture
def cluster(tmp_path, zookeeper, zk_path):
    """cluster(name, start=True, **options) -> a ZKServer of the test's
    path; every one is stopped at the end."""
    started = []

    def server(name, start=True, **kw):
        s = ZKServer(tmp_path, name, zookeeper.address, zk_path, **kw)
        started.append(s)
        return s.start() if start else s
    yield server
    for s in reversed(started):
        s.stop()


@pytest.fixture
def servers(tmp_path):
    """servers(name, start=True, **options) -> a ZEOServer (replication
    without ZooKeeper); every one is stopped at the end."""
    made = []

    def server(name, start=True, **kw):
        s = ZEOServer(tmp_path, name, **kw)
        made.append(s)
        return s.start() if start else s
    yield server
    for s in reversed(made):
        s.stop()
