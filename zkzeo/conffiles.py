"""The configuration files zkzeo writes: a zkrunzeo server's zeo.conf and
the zdaemon.conf of a process it runs (a server, or ZooKeeper).  Used by the
local cluster (``local.py``) and the buildout recipe (``recipe.py``)."""

ZDAEMON_CONF = """\
<runner>
  program {program}
  socket-name {directory}/zdaemon.sock
  transcript {directory}/transcript.log
  directory {directory}
  daemon true
  backoff-limit 10
  start-timeout 60
  stop-timeout 30
{runner_extra}</runner>
<eventlog>
  <logfile>
    path {directory}/zdaemon.log
  </logfile>
</eventlog>
"""

SERVER_CONF = """\
<zeo>
  address {address}
{zeo_extra}</zeo>
<zookeeper>
  connection {zookeeper}
  path {path}
  name {name}
  session-timeout {session_timeout}
{zookeeper_extra}</zookeeper>
<replication 1>
  replicate-from zk:
  replicate-to {replicate_to}
{replication_extra}{replication_sections}  <filestorage>
    path {file_storage}
{blob_dir}{storage_extra}  </filestorage>
</replication>
<eventlog>
  level {log_level}
  <logfile>
    path {log_file}
{rotation}    format {log_format}
  </logfile>
</eventlog>
"""


def zdaemon_config(program, directory, user=None, logfile=None):
    """The text of a zdaemon.conf that runs ``program`` (a command line)
    with its socket, transcript and log in ``directory``; ``user``: the
    user zdaemon switches to when started as root; ``logfile``: the file
    its ``logtail`` command follows."""
    extra = "".join(f"  {key} {value}\n" for key, value in
                    (("user", user), ("logfile", logfile)) if value)
    return ZDAEMON_CONF.format(program=program, directory=directory,
                               runner_extra=extra)


def _keys(options):
    return "".join(f"  {key} {value}\n" for key, value in options.items())


def server_config(zookeeper, path, name, file_storage, blob_dir=None,
                  log_file="STDOUT", address="127.0.0.1:0",
                  replicate_to="127.0.0.1:0", session_timeout=10,
                  zookeeper_options=None, replication_options=None,
                  zeo_extra="", replication_sections="", log_level="INFO",
                  log_format="%(asctime)s.%(msecs)03d %(levelname)s %(name)s "
                  "%(message)s",
                  log_max_size="10MB", log_old_files=5,
                  storage_options=None):
    """The zeo.conf of a zkrunzeo server whose role ZooKeeper decides
    (``replicate-from zk:``).  The options dicts add keys to the
    ``<zookeeper>``, ``<replication>`` and ``<filestorage>`` sections;
    ``zeo_extra`` is text added to the ``<zeo>`` section (an ``<ssl>``
    subsection, say), and ``replication_sections`` to the
    ``<replication>`` section (a ``<replication-ssl>`` subsection).  A log
    file (not STDOUT) is rotated by ZConfig: 10 MB, five old files by
    default."""
    return SERVER_CONF.format(
        address=address, zeo_extra=zeo_extra, zookeeper=zookeeper,
        path=path, name=name,
        session_timeout=session_timeout,
        zookeeper_extra=_keys(zookeeper_options or {}),
        replicate_to=replicate_to,
        replication_extra=_keys(replication_options or {}),
        replication_sections=replication_sections,
        file_storage=file_storage,
        blob_dir=f"    blob-dir {blob_dir}\n" if blob_dir else "",
        storage_extra="".join(f"    {key} {value}\n" for key, value in
                              (storage_options or {}).items()),
        log_file=log_file, log_level=log_level, log_format=log_format,
        rotation="" if log_file == "STDOUT" else
        f"    max-size {log_max_size}\n    old-files {log_old_files}\n")
