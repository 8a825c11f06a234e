"""``zkzeo:server``: a zc.buildout recipe for one zkrunzeo server.

::

    [db1]
    recipe = zkzeo:server
    zookeeper = zk1:2181,zk2:2181,zk3:2181
    zookeeper-path = /databases/main
    # optional, with their defaults:
    server-name = ${:_buildout_section_name_}
    address = 127.0.0.1:0
    replicate-to = 127.0.0.1:0
    file-storage = ${buildout:parts-directory}/${:_buildout_section_name_}/Data.fs
    blob-dir = ${buildout:parts-directory}/${:_buildout_section_name_}/blobs
    session-timeout = 10
    sync-replicas = 0
    auto-failover =
    log-file = ${buildout:parts-directory}/${:_buildout_section_name_}/server.log
    # ZooKeeper security (docs/security-zookeeper.md), none by default:
    zookeeper-auth-file = /etc/zkzeo/zookeeper.auth   (USER:PASSWORD)
    zookeeper-acl = private              (off, world-read or private)
    zookeeper-use-ssl = true
    zookeeper-ca = /etc/zkzeo/zookeeper-ca.pem
    zookeeper-certfile = /etc/zkzeo/server.pem
    zookeeper-keyfile = /etc/zkzeo/server.key

It writes ``parts/NAME/zeo.conf`` and ``parts/NAME/zdaemon.conf``, a
``bin/NAME-server`` script (zkrunzeo with this buildout's eggs) and the
control script ``bin/NAME`` (zdaemon: ``start``, ``stop``, ``status``,
``restart``, ``fg``...).  ``blob-dir`` empty means no blobs.  The
``zookeeper-*`` security options become the ``<zookeeper>`` section's keys
without the prefix; the credential itself never goes in the buildout (only
the name of its file).
"""
import os

import zc.buildout
import zc.buildout.easy_install

from .conffiles import server_config, zdaemon_config

# recipe option -> key of the <zookeeper> section
ZOOKEEPER_OPTIONS = {
    "auto-failover": "auto-failover",
    "zookeeper-auth-file": "auth-file",
    "zookeeper-acl": "acl",
    "zookeeper-use-ssl": "use-ssl",
    "zookeeper-ca": "ca",
    "zookeeper-certfile": "certfile",
    "zookeeper-keyfile": "keyfile",
    "zookeeper-verify-certs": "verify-certs",
    "zookeeper-check-hostname": "check-hostname",
    "zookeeper-sasl-mechanism": "sasl-mechanism",
}

class Server:

    def __init__(self, buildout, name, options):
        self.buildout = buildout
        self.name = name
        self.options = options
        if options.get("zookeeper-auth"):
            raise zc.buildout.UserError(
                f"[{name}] zookeeper-auth would put the password in "
                "buildout.cfg and zeo.conf: write USER:PASSWORD in a file "
                "readable by the server's user only and give "
                "zookeeper-auth-file")
        for key in ("zookeeper", "zookeeper-path"):
            if not options.get(key):
                raise zc.buildout.UserError(
                    f"[{name}] needs {key} (the ZooKeeper ensemble and the "
                    "database's path)")
        part = os.path.join(buildout["buildout"]["parts-directory"], name)
        options["location"] = part
        options.setdefault("server-name", name)
        options.setdefault("address", "127.0.0.1:0")
        options.setdefault("replicate-to", "127.0.0.1:0")
        options.setdefault("file-storage", os.path.join(part, "Data.fs"))
        options.setdefault("blob-dir", os.path.join(part, "blobs"))
        options.setdefault("session-timeout", "10")
        options.setdefault("sync-replicas", "0")
        options.setdefault("auto-failover", "")
        options.setdefault("log-file", os.path.join(part, "server.log"))

    def install(self):
        options = self.options
        part = options["location"]
        os.makedirs(part, exist_ok=True)
        zeo_conf = os.path.join(part, "zeo.conf")
        with open(zeo_conf, "w") as f:
            f.write(server_config(
                options["zookeeper"], options["zookeeper-path"],
                options["server-name"],
                file_storage=options["file-storage"],
                blob_dir=options["blob-dir"], log_file=options["log-file"],
                address=options["address"],
                replicate_to=options["replicate-to"],
                session_timeout=options["session-timeout"],
                zookeeper_options={
                    key: options[option]
                    for option, key in ZOOKEEPER_OPTIONS.items()
                    if options.get(option)},
                replication_options={
                    "sync-replicas": options["sync-replicas"]}))

        b = self.buildout["buildout"]
        executable = b["executable"]
        ws = zc.buildout.easy_install.working_set(
            ["zkzeo", "zdaemon"], executable,
            [b["develop-eggs-directory"], b["eggs-directory"]])
        bin_dir = b["bin-directory"]
        server_script = os.path.join(bin_dir, f"{self.name}-server")
        zdaemon_conf = os.path.join(part, "zdaemon.conf")
        with open(zdaemon_conf, "w") as f:
            f.write(zdaemon_config(f"{server_script} -C {zeo_conf}", part))
        scripts = zc.buildout.easy_install.scripts(
            [(f"{self.name}-server", "zkzeo.server", "main")], ws,
            executable, bin_dir)
        scripts += zc.buildout.easy_install.scripts(
            [(self.name, "zdaemon.zdctl", "main")], ws, executable, bin_dir,
            arguments=f"['-C', {zdaemon_conf!r}] + sys.argv[1:]")
        # Only what we generate: the data in the part stays on uninstall.
        return [zeo_conf, zdaemon_conf] + list(scripts)

    update = install


class TestRunner:
    """``zkzeo:test``: ``bin/NAME`` runs pytest on the project's tests with
    this buildout's eggs (``eggs`` adds more; ``tests`` names the
    directory, default ``tests``)."""

    def __init__(self, buildout, name, options):
        self.buildout = buildout
        self.name = name
        self.options = options
        options.setdefault("eggs", "")
        options.setdefault("tests", os.path.join(
            buildout["buildout"]["directory"], "tests"))

    def install(self):
        b = self.buildout["buildout"]
        eggs = ["zkzeo", "pytest"] + self.options["eggs"].split()
        ws = zc.buildout.easy_install.working_set(
            eggs, b["executable"],
            [b["develop-eggs-directory"], b["eggs-directory"]])
        return list(zc.buildout.easy_install.scripts(
            [(self.name, "pytest", "console_main")], ws, b["executable"],
            b["bin-directory"],
            initialization=f"sys.argv[1:1] = [{self.options['tests']!r}]"))

    update = install
