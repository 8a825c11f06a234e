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
    file-storage = ${buildout:directory}/var/filestorage/NAME/Data.fs
    blob-dir = ${buildout:directory}/var/blobstorage/NAME
    log-file = ${buildout:directory}/var/log/NAME.log
    log-level = INFO
    log-max-size = 10MB
    log-old-files = 5
    session-timeout = 10
    sync-replicas = 0
    # and, zkrunzeo's defaults when not given: the <replication> keys
    # (REPLICATION_OPTIONS), the <zookeeper> keys (ZOOKEEPER_OPTIONS:
    # auto-failover, advertise-host, the zookeeper-* security options),
    # pack-gc, log-format, effective-user, eggs, pack-days,
    # zeo-conf-additional.

It writes ``parts/NAME/zeo.conf`` and ``parts/NAME/zdaemon.conf``, a
``bin/NAME-server`` script (zkrunzeo with this buildout's eggs and the
part's ``eggs``), the control script ``bin/NAME`` (zdaemon: ``start``,
``stop``, ``status``, ``restart``, ``fg``, ``logtail``...),
``bin/NAME-zeopack`` (``zkzeo pack``) and ``bin/repozo``.  ``blob-dir``
empty means no blobs.  The credential itself never goes in the buildout
(only the name of its file).  A part written for plone.recipe.zeoserver
has its options taken under our names, or a warning says what to write
(PLONE_OPTIONS).
"""
import logging
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
    "advertise-host": "advertise-host",
    "bootstrap": "bootstrap",
}

# recipe option -> key of the <replication> section
REPLICATION_OPTIONS = {
    name: name for name in (
        "sync-replicas", "sync-timeout", "sync-block", "rewind-divergent",
        "replicate-blobs", "keep-alive-delay", "reconnect-max-delay",
        "secret-file", "max-connections", "handshake-timeout")}

# plone.recipe.zeoserver option -> (our option, or None) and advice
PLONE_OPTIONS = {
    "zeo-address": ("address", None),
    "zeo-var": (None, "give file-storage and blob-dir"),
    "file-storage": ("file-storage", None),
    "blob-storage": ("blob-dir", None),
    "zeo-log": ("log-file", None),
    "zeo-log-level": ("log-level", None),
    "zeo-log-format": ("log-format", None),
    "zeo-log-max-size": ("log-max-size", None),
    "zeo-log-old-files": ("log-old-files", None),
    "pack-days": ("pack-days", None),
    "effective-user": ("effective-user", None),
    "zeo-conf-additional": ("zeo-conf-additional", None),
    "eggs": ("eggs", None),
    "socket-name": (None, "zkzeo sets it to parts/NAME/zdaemon.sock"),
    "zeo-log-custom": (None, "write an <eventlog> in zeo-conf-additional "
                       "and leave log-file empty"),
    "zeopack-script-name": (None, "the script is bin/NAME-zeopack"),
    "repozo-script-name": (None, "the script is bin/repozo"),
    "monitor-address": (None, "use `zkzeo metrics` or `zkzeo check` "
                        "(docs/operations.md, Monitoring)"),
    "storage-number": (None, "zkzeo serves storage 1"),
    "authentication-database": (None, "ZEO authentication is gone in ZEO "
                                "5+; use TLS or secret-file"),
    "authentication-realm": (None, "ZEO authentication is gone in ZEO 5+; "
                             "use TLS or secret-file"),
    "invalidation-queue-size": (None, "not supported yet (a <zeo> key)"),
    "pack-gc": ("pack-gc", None),
    "pack-user": (None, "give zookeeper-auth-file"),
    "pack-password": (None, "give zookeeper-auth-file"),
    "read-only": (None, "a zkzeo server's role comes from ZooKeeper"),
    "relative-paths": (None, "not supported; paths are absolute"),
    "initialization": (None, "not supported"),
    "zodb-package": (None, "pin ZODB in [versions]"),
    "zeo-package": (None, "pin ZEO in [versions]"),
}

logger = logging.getLogger("zkzeo.recipe")

def _boolean(value):
    """ZConfig's boolean spellings; None for unset or unknown."""
    value = (value or "").strip().lower()
    if value in ("true", "yes", "on", "1"):
        return True
    if value in ("false", "no", "off", "0"):
        return False
    return None


def zkzeo_command_options(options):
    """The ``zkzeo`` command's ZooKeeper credential and TLS options that
    match the server's: the zeopack script connects as the server does."""
    args = []
    for option, flag in (("zookeeper-auth-file", "--auth-file"),
                         ("zookeeper-ca", "--ca"),
                         ("zookeeper-certfile", "--certfile"),
                         ("zookeeper-keyfile", "--keyfile"),
                         ("zookeeper-sasl-mechanism", "--sasl-mechanism")):
        if options.get(option):
            args += [flag, options[option]]
    for option, flag, when in (
            ("zookeeper-use-ssl", "--use-ssl", True),
            ("zookeeper-verify-certs", "--no-verify-certs", False),
            ("zookeeper-check-hostname", "--no-check-hostname", False)):
        if _boolean(options.get(option)) is when:
            args.append(flag)
    return args


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
        self._map_plone_options()
        options.setdefault("server-name", name)
        options.setdefault("address", "127.0.0.1:0")
        options.setdefault("replicate-to", "127.0.0.1:0")
        var = os.path.join(buildout["buildout"]["directory"], "var")
        options.setdefault("file-storage", os.path.join(
            var, "filestorage", name, "Data.fs"))
        options.setdefault("blob-dir", os.path.join(var, "blobstorage", name))
        options.setdefault("session-timeout", "10")
        options.setdefault("sync-replicas", "0")
        options.setdefault("auto-failover", "")
        options.setdefault("log-file", os.path.join(var, "log", f"{name}.log"))
        options.setdefault("log-level", "INFO")
        options.setdefault("log-max-size", "10MB")
        options.setdefault("log-old-files", "5")
        options.setdefault("eggs", "")
        options.setdefault("zeo-conf-additional", "")

    def _map_plone_options(self):
        """A part written for plone.recipe.zeoserver: each of its options
        is taken under our name, or a warning says what to write."""
        options = self.options
        for plone, (ours, advice) in PLONE_OPTIONS.items():
            if plone not in options:
                continue
            if ours is None:
                logger.warning("[%s] %s (plone.recipe.zeoserver) is ignored: "
                               "%s", self.name, plone, advice)
                options[plone]      # mark it used: our warning says it all
            elif ours != plone:
                value = options[plone]
                if ours in options:
                    logger.warning("[%s] %s and %s both given: %s is used",
                                   self.name, plone, ours, ours)
                else:
                    logger.info("[%s] %s (plone.recipe.zeoserver) is taken "
                                "as %s", self.name, plone, ours)
                    options[ours] = value

    def install(self):
        options = self.options
        part = options["location"]
        os.makedirs(part, exist_ok=True)
        # ZConfig wants the parents of the data and log paths to exist.
        for path in (options["file-storage"], options["blob-dir"],
                     options["log-file"]):
            if path and path not in ("STDOUT", "STDERR"):
                os.makedirs(os.path.dirname(path), exist_ok=True)
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
                    key: options[option]
                    for option, key in REPLICATION_OPTIONS.items()
                    if options.get(option)},
                storage_options={"pack-gc": options["pack-gc"]}
                if options.get("pack-gc") else {},
                log_level=options["log-level"],
                log_max_size=options["log-max-size"],
                log_old_files=options["log-old-files"],
                **({"log_format": options["log-format"]}
                   if options.get("log-format") else {})))
            if options["zeo-conf-additional"].strip():
                f.write(options["zeo-conf-additional"].strip() + "\n")

        b = self.buildout["buildout"]
        executable = b["executable"]
        ws = zc.buildout.easy_install.working_set(
            ["zkzeo", "zdaemon"] + options["eggs"].split(), executable,
            [b["develop-eggs-directory"], b["eggs-directory"]])
        bin_dir = b["bin-directory"]
        server_script = os.path.join(bin_dir, f"{self.name}-server")
        zdaemon_conf = os.path.join(part, "zdaemon.conf")
        with open(zdaemon_conf, "w") as f:
            f.write(zdaemon_config(f"{server_script} -C {zeo_conf}", part,
                                   user=options.get("effective-user"),
                                   logfile=options["log-file"] if
                                   options["log-file"] not in
                                   ("STDOUT", "STDERR") else None))
        scripts = zc.buildout.easy_install.scripts(
            [(f"{self.name}-server", "zkzeo.server", "main")], ws,
            executable, bin_dir)
        scripts += zc.buildout.easy_install.scripts(
            [(self.name, "zdaemon.zdctl", "main")], ws, executable, bin_dir,
            arguments=f"['-C', {zdaemon_conf!r}] + sys.argv[1:]")
        url = f"zk://{options['zookeeper']}{options['zookeeper-path']}"
        pack = ["pack", url]
        if options.get("pack-days"):
            pack += ["--days", options["pack-days"]]
        pack += zkzeo_command_options(options)
        scripts += zc.buildout.easy_install.scripts(
            [(f"{self.name}-zeopack", "zkzeo.cli", "main")], ws, executable,
            bin_dir, arguments=f"{pack!r} + sys.argv[1:]")
        scripts += zc.buildout.easy_install.scripts(
            [("repozo", "ZODB.scripts.repozo", "main")], ws, executable,
            bin_dir)
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
