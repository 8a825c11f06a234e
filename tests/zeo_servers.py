"""Real ZEO server processes (ZEO's runzeo) with replication storages."""
import ast
import os
import re

from tests.support import ServerProcess, wait_for
from zkzeo.zkserver import free_port

CONFIG = """\
%import replication
<zeo>
  address 127.0.0.1:{zeo_port}
</zeo>
<replication 1>
  name {name}
  keep-alive-delay 0.5
  reconnect-max-delay 0.3
{keys}
{sections}
  <filestorage>
    path {path}
    blob-dir {blobs}
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


class ZEOServer(ServerProcess):
    """One runzeo process; start() again after stop() or kill()."""

    module = "replication.runzeo"
    log_name = "zeo"

    def __init__(self, directory, name, replicate_to=None,
                 replicate_from=None, sections="", **keys):
        ServerProcess.__init__(self, directory, name)
        self.sections = sections    # e.g. a <replication-ssl> section
        self.replicate_to = replicate_to
        self.replicate_from = replicate_from
        self.keys = keys
        self.address = None

    def write_config(self):
        keys = dict(self.keys)
        if self.replicate_to:
            keys["replicate-to"] = self.replicate_to
        if self.replicate_from:
            keys["replicate-from"] = self.replicate_from
        text = CONFIG.format(
            zeo_port=0, name=self.name, path=self.path, blobs=self.blobs,
            sections=self.sections,
            keys="\n".join(f"  {k.replace('_', '-')} {v}"
                           for k, v in keys.items()))
        path = os.path.join(self.directory, "zeo.conf")
        with open(path, "w") as f:
            f.write(text)
        return path

    def start(self):
        self.launch()
        match = wait_for(
            lambda: self.check_alive() and re.search(
                r"ZEO server listening on (\('[^']*', \d+\))",
                self.output()),
            f"ZEO server {self.name} to listen", timeout=60)
        self.address = ast.literal_eval(match.group(1))
        return self


def replication_address():
    return f"127.0.0.1:{free_port()}"
