"""zdaemon configuration for a process of ours (a server or ZooKeeper)."""

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
</runner>
<eventlog>
  <logfile>
    path {directory}/zdaemon.log
  </logfile>
</eventlog>
"""


def zdaemon_config(program, directory):
    """The text of a zdaemon.conf that runs ``program`` (a command line)
    with its socket, transcript and log in ``directory``."""
    return ZDAEMON_CONF.format(program=program, directory=directory)
