"""The examples in docs/ and README.md are run here."""
import os
import re
import subprocess
import sys

import pytest
import ZEO

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = [os.path.join(ROOT, "README.md")] + sorted(
    os.path.join(ROOT, "docs", name)
    for name in os.listdir(os.path.join(ROOT, "docs"))
    if name.endswith(".md"))
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.M | re.S)


def blocks(kind):
    for path in DOCS:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for i, match in enumerate(BLOCK.finditer(text)):
            if match.group(1) == kind:
                yield pytest.param(match.group(2),
                                   id=f"{os.path.basename(path)}-{i}")


@pytest.fixture(scope="module")
def documented_cluster(zookeeper, tmp_path_factory):
    """The server of docs/zookeeper.md, running, for the docs' clients."""
    from tests.support import Process, wait_for
    [text] = [b.values[0] for b in blocks("zkconf")]
    directory = tmp_path_factory.mktemp("documented")
    text = text.replace("127.0.0.1:2181", zookeeper.address).replace(
        "var/", f"{directory}/")
    os.makedirs(directory / "db1")
    conf = directory / "zeo.conf"
    conf.write_text(text)
    server = Process([sys.executable, "-m", "zkzeo.server", "-C", str(conf)],
                     str(directory / "log"),
                     env={"PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        wait_for(lambda: "registered" in server.output(),
                 "the documented zkrunzeo server to register")
        yield zookeeper.address
    finally:
        server.stop()


@pytest.mark.parametrize("code", list(blocks("python")))
def test_python_examples_run(code, tmp_path, documented_cluster):
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
        text=True, timeout=120,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path),
                 ZOOKEEPER=documented_cluster))
    assert result.returncode == 0, result.stderr
    expected = re.findall(r"print\(.*\)\s+# (.*)", code)
    assert result.stdout.split("\n")[:len(expected)] == expected


def test_server_configurations_replicate(tmp_path):
    """The docs' primary and secondary configurations, run as servers."""
    import ast
    from tests.support import Process, replica_db, wait_for
    from zkzeo.zkserver import free_port
    import transaction
    ports = {str(p): str(free_port()) for p in (8100, 8101, 8200, 8201)}
    servers = []
    try:
        for i, text in enumerate(blocks("conf")):
            text = text.values[0].replace("var/", str(tmp_path) + "/")
            text = re.sub(r"\b(%s)\b" % "|".join(ports),
                          lambda m: ports[m.group(1)], text)
            directory = re.search(r"path (.*)/Data.fs", text).group(1)
            os.makedirs(directory)
            conf = os.path.join(directory, "zeo.conf")
            with open(conf, "w") as f:
                f.write(text)
            servers.append(Process(
                [sys.executable, "-m", "replication.runzeo", "-C", conf],
                os.path.join(directory, "log"),
                env={"PYTHONPATH": os.pathsep.join(sys.path)}))
        assert len(servers) == 2
        addresses = [ast.literal_eval(wait_for(
            lambda: re.search(r"ZEO server listening on (\(.*\))",
                              s.output()), "the server to start").group(1))
            for s in servers]
        db = ZEO.DB(addresses[0], wait_timeout=60)
        with db.transaction() as conn:
            conn.root.doc = "tested"
        replica = replica_db(ZEO.client(addresses[1], read_only=True,
                                        wait_timeout=60))
        conn = replica.open()

        def visible():
            transaction.begin()
            return getattr(conn.root, "doc", None) == "tested"
        wait_for(visible, "the docs' secondary to have the commit")
        conn.close()
        replica.close()
        db.close()
    finally:
        for s in servers:
            s.stop()


def test_sphinx_builds_the_docs_without_warnings(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html",
         os.path.join(ROOT, "docs"), str(tmp_path / "html")],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
