"""A local demonstration: a primary and a secondary ZEO server replicating.

``python -m replication.demo [DIRECTORY]`` starts two real ZEO server
processes (``replication.runzeo``) with data under DIRECTORY (default
``var/demo``), writes through a ZEO client of the primary, shows each write
arriving on a read-only ZEO client of the secondary, prints the servers'
replication status, and stops both servers.
"""
import argparse
import ast
import os
import re
import signal
import socket
import subprocess
import sys
import time

import transaction
import ZEO
import ZODB.blob

SERVER_CONFIG = """\
%import replication
<zeo>
  address 127.0.0.1:0
</zeo>
<replication 1>
  name {name}
  {replication}
  <filestorage>
    path {directory}/Data.fs
    blob-dir {directory}/blobs
  </filestorage>
</replication>
<eventlog>
  <logfile>
    path {directory}/server.log
    format %(asctime)s %(levelname)s %(name)s %(message)s
  </logfile>
</eventlog>
"""


def say(text):
    print(text, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:

    def __init__(self, root, name, replication):
        self.name = name
        self.directory = os.path.abspath(os.path.join(root, name))
        os.makedirs(self.directory, exist_ok=True)
        self.config = os.path.join(self.directory, "zeo.conf")
        with open(self.config, "w") as f:
            f.write(SERVER_CONFIG.format(name=name, replication=replication,
                                         directory=self.directory))
        self.log = os.path.join(self.directory, "server.log")
        self.process = None
        self.address = None

    def start(self, timeout=60):
        offset = os.path.getsize(self.log) if os.path.exists(self.log) else 0
        self.process = subprocess.Popen(
            [sys.executable, "-m", "replication.runzeo", "-C", self.config],
            stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        pattern = re.compile(r"ZEO server listening on (\('[^']*', \d+\))")
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"{self.name} exited; see {self.log}")
            if os.path.exists(self.log):
                with open(self.log) as f:
                    f.seek(offset)
                    match = pattern.search(f.read())
                if match:
                    self.address = ast.literal_eval(match.group(1))
                    return self
            time.sleep(0.05)
        raise SystemExit(f"{self.name} did not start within {timeout}s; "
                         f"see {self.log}")

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def wait_visible(conn, key, value, timeout=30):
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        transaction.begin()
        if getattr(conn.root, key, None) == value:
            return (time.monotonic() - start) * 1000
        time.sleep(0.0005)
    raise SystemExit(f"{key}={value!r} never reached the secondary")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", nargs="?", default="var/demo")
    args = parser.parse_args(argv)
    replication_port = free_port()
    primary = Server(args.directory, "primary",
                     f"replicate-to 127.0.0.1:{replication_port}")
    secondary = Server(args.directory, "secondary",
                       f"replicate-from 127.0.0.1:{replication_port}")
    servers = [primary, secondary]
    try:
        for server in servers:
            server.start()
            say(f"started {server.name:9} ZEO on {server.address[0]}:"
                f"{server.address[1]}, data in {server.directory}")
        say(f"replication: primary serves it on 127.0.0.1:{replication_port}")
        writer = ZEO.DB(primary.address, wait_timeout=30,
                        blob_dir=os.path.join(primary.directory, "cb"))
        reader = ZEO.DB(secondary.address, read_only=True, wait_timeout=30,
                        blob_dir=os.path.join(secondary.directory, "cb"))
        rconn = reader.open()
        for i in range(1, 6):
            with writer.transaction(f"demo write {i}") as wconn:
                wconn.root.counter = getattr(wconn.root, "counter", 0) + 1
                value = wconn.root.counter
                wconn.root.note = ZODB.blob.Blob(f"blob {value}".encode())
            ms = wait_visible(rconn, "counter", value)
            with rconn.root.note.open() as f:
                note = f.read().decode()
            say(f"wrote counter={value} on the primary; the secondary's "
                f"read-only client saw it {ms:.1f} ms later (blob: {note!r})")
        rconn.close()
        reader.close()
        writer.close()
        say(f"logs: {primary.log}, {secondary.log}")
        say("stopping the servers")
    finally:
        for server in reversed(servers):
            server.stop()
    say("done")


if __name__ == "__main__":
    main()
