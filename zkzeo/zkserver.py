"""Start a real standalone ZooKeeper server for tests and local demos.

Uses Debian's ``zookeeper`` package (``/usr/share/java/zookeeper.jar``,
whose manifest carries its class path) or an unpacked Apache release in
``$ZOOKEEPER_HOME``.  The server listens on a free loopback port, keeps its
data in a directory of the caller's, and is stopped (and waited for) by
``stop()``.

With ``sasl_users`` ({user: password}) it accepts SASL DIGEST-MD5 logins
(a JAAS file).  With ``tls`` (a ``TLS``) it also listens with TLS on ``secure_port``
(Netty connection factory, PEM key and trust stores), as a production
ensemble would; the plain port stays open on loopback for the four-letter
word that tells it is up.
"""
import glob
import logging
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass

logger = logging.getLogger(__name__)

DEBIAN_JAR = "/usr/share/java/zookeeper.jar"


class ZooKeeperNotFound(Exception):
    """No ZooKeeper installation was found on this machine."""


def find_classpath():
    home = os.environ.get("ZOOKEEPER_HOME")
    if home:
        jars = (glob.glob(os.path.join(home, "lib", "*.jar"))
                + glob.glob(os.path.join(home, "*.jar")))
        if jars:
            return os.pathsep.join(sorted(jars))
        raise ZooKeeperNotFound(f"$ZOOKEEPER_HOME={home} holds no jar files")
    if os.path.exists(DEBIAN_JAR):
        # Debian's jar names its dependencies in its manifest; slf4j-nop
        # keeps ZooKeeper's own logging out of our way (it is not in there).
        # netty-codec is missing from that manifest, and TLS needs it.
        extra = [p for p in ("/usr/share/java/slf4j-nop.jar",
                             "/usr/share/java/netty-codec.jar")
                 if os.path.exists(p)]
        return os.pathsep.join([DEBIAN_JAR] + extra)
    raise ZooKeeperNotFound(
        "ZooKeeper is not installed: run 'apt-get install zookeeper' "
        "or set $ZOOKEEPER_HOME to an unpacked Apache ZooKeeper release")


def free_port(host="127.0.0.1"):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def four_letter_word(host, port, word, timeout=1.0):
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(word.encode("ascii"))
        chunks = []
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


@dataclass(frozen=True)
class TLS:
    """ZooKeeper's TLS: ``keystore`` a PEM file with the server's private
    key and certificate, ``truststore`` a PEM file of the CA(s) whose
    client certificates it accepts, ``client_auth`` need, want or none."""
    keystore: str
    truststore: str
    client_auth: str = "need"

    def config(self):
        return ("serverCnxnFactory="
                "org.apache.zookeeper.server.NettyServerCnxnFactory\n"
                f"ssl.keyStore.location={self.keystore}\n"
                "ssl.keyStore.type=PEM\n"
                f"ssl.trustStore.location={self.truststore}\n"
                "ssl.trustStore.type=PEM\n"
                f"ssl.clientAuth={self.client_auth}\n")


class ZooKeeperServer:
    """A standalone ZooKeeper server process on a free loopback port."""

    def __init__(self, data_dir, host="127.0.0.1", port=None,
                 tick_time=200, tls=None, sasl_users=None):
        self.data_dir = os.path.abspath(data_dir)
        self.host = host
        self.port = port or free_port(host)
        self.tls = tls
        self.secure_port = free_port(host) if tls else None
        # {user: password} that SASL DIGEST-MD5 accepts (a JAAS file)
        self.sasl_users = sasl_users
        self.tick_time = tick_time
        self.process = None
        self.log_path = os.path.join(self.data_dir, "zookeeper.log")

    @property
    def address(self):
        return f"{self.host}:{self.port}"

    @property
    def secure_address(self):
        return f"{self.host}:{self.secure_port}"

    def write_config(self):
        os.makedirs(os.path.join(self.data_dir, "data"), exist_ok=True)
        conf = os.path.join(self.data_dir, "zoo.cfg")
        with open(conf, "w") as f:
            f.write(
                f"tickTime={self.tick_time}\n"
                f"dataDir={os.path.join(self.data_dir, 'data')}\n"
                f"clientPortAddress={self.host}\n"
                f"clientPort={self.port}\n"
                # short minimum so tests can use short session timeouts
                f"minSessionTimeout={2 * self.tick_time}\n"
                "maxSessionTimeout=60000\n"
                "admin.enableServer=false\n"
                "4lw.commands.whitelist=srvr,ruok,stat,cons\n")
            if self.sasl_users:
                f.write("authProvider.1=org.apache.zookeeper.server.auth."
                        "SASLAuthenticationProvider\n")
            if self.tls:
                f.write(f"secureClientPortAddress={self.host}\n"
                        f"secureClientPort={self.secure_port}\n"
                        + self.tls.config())
        return conf

    def command(self):
        """The command line that runs this server in the foreground."""
        java = shutil.which("java")
        if java is None:
            raise ZooKeeperNotFound(
                "java is not installed (Debian's zookeeper package pulls "
                "in a Java runtime)")
        return [java, "-Xmx256m", "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
                "-Dzookeeper.log.dir=" + self.data_dir,
                *self.jaas_options(),
                "-cp", find_classpath(),
                "org.apache.zookeeper.server.ZooKeeperServerMain",
                self.write_config()]

    def jaas_options(self):
        if not self.sasl_users:
            return []
        jaas = os.path.join(self.data_dir, "jaas.conf")
        users = "".join(f'\n  user_{user}="{password}"'
                        for user, password in self.sasl_users.items())
        fd = os.open(jaas, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("Server {\n  org.apache.zookeeper.server.auth."
                    f"DigestLoginModule required{users};\n}};\n")
        return ["-Djava.security.auth.login.config=" + jaas]

    def answers(self):
        try:
            return "Mode: standalone" in four_letter_word(
                self.host, self.port, "srvr")
        except OSError:
            return False

    def start(self, timeout=30):
        command = self.command()
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"ZooKeeper exited with status {self.process.returncode}"
                    f" at start; its log:\n{self.log_text()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"ZooKeeper did not answer on {self.address} within "
                    f"{timeout}s; its log:\n{self.log_text()}")
            time.sleep(0.05)
        logger.info("ZooKeeper serving on %s (pid %s)",
                    self.address, self.process.pid)
        return self

    def log_text(self):
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()[-20000:]
        except OSError:
            return "(no log)"

    def stop(self):
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
