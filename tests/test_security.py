"""Replication security against real runzeo processes, with the settings
docs/security.md documents: TLS with mutual authentication
(``<replication-ssl>``), the shared secret (``secret-file``), and the bounds
every source puts on peers (``max-connections``, ``handshake-timeout``,
frame sizes).

Attackers are real sockets (and a real ``SecondaryStorage``, as a rogue
replica would be); the primary is a real process whose log and memory are
read from outside.
"""
import logging
import os
import re
import socket
import ssl
import struct
import sys
import threading
import time

import pytest
import transaction
from persistent.mapping import PersistentMapping
import ZEO
import ZConfig
import ZODB.config

from replication import SecondaryStorage, auth, protocol
from replication.auth import Security
from replication.protocol import (Ack, Auth, Challenge, FrameReader, Hello,
                                  Proof, Refuse, Welcome, Z64)
from replication.secondary import State
from tests.certificates import Authority
from tests.replication_support import (Cluster, assert_same_history, blob,
                                       commit, wait_caught_up)
from tests.support import replica_db, wait_for
from tests.zk_servers import ZKServer
from tests.zeo_servers import replication_address

PLANTED = "planted-4711-do-not-copy"


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return Authority(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def rogue_ca(tmp_path_factory):
    return Authority(tmp_path_factory.mktemp("rogue-ca"), "rogue CA")


def write_secret(path, text="0123456789abcdef" * 4):
    with open(path, "w") as f:
        f.write(text + "\n")
    os.chmod(path, 0o600)
    return str(path)


@pytest.fixture
def secret_file(tmp_path):
    return write_secret(tmp_path / "replication.secret")


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.close()


def credentials(mode, ca, secret_file, name):
    """ZEOServer keywords for a server of a cluster secured by ``mode``."""
    if mode == "tls":
        return {"sections": ca.config(name)}
    return {"secret_file": secret_file}


def security(mode, ca, secret_file, name):
    """The same credentials for an in-process storage."""
    if mode == "tls":
        return Security(tls=ca.tls(name))
    return Security(secret=auth.read_secret(secret_file))


def host_port(address):
    host, port = address.rsplit(":", 1)
    return host, int(port)


def write(server, tmp_path, **values):
    db = ZEO.DB(server.address, wait_timeout=60,
                blob_dir=str(tmp_path / f"client-{server.name}"))
    try:
        with db.transaction() as conn:
            for k, v in values.items():
                setattr(conn.root, k, v)
    finally:
        db.close()


def read_value(server, tmp_path, key, value):
    """Wait until a read-only client of ``server`` sees key=value (a
    secondary drops its clients when it installs a byte copy: open again).
    """
    def check():
        db = replica_db(ZEO.client(
            server.address, read_only=True, wait_timeout=60,
            blob_dir=str(tmp_path / f"reader-{server.name}"),
            shared_blob_dir=False))
        try:
            conn = db.open()
            transaction.begin()
            return getattr(conn.root, key, None) == value
        finally:
            db.close()
    wait_for(check, f"{key}={value!r} on {server.name}", interval=0.2)


# --- attackers ------------------------------------------------------------

def thief_conversation(sock, proof=bytes(32), name="thief",
                       ack=None):
    """Speak the protocol as an empty secondary asking for everything;
    return every byte the source sent until it hung up (or 10s)."""
    received = bytearray()
    sock.settimeout(10)
    try:
        sock.sendall(protocol.preamble() + Auth(os.urandom(32)).encode())
        hello = Hello(0, Z64, protocol.NO_DIGEST,
                      protocol.WANT_BLOBS | protocol.CAN_SNAPSHOT, name)
        sock.sendall(Proof(proof).encode() + hello.encode() +
                     (Ack(ack).encode() if ack else b""))
        while True:
            data = sock.recv(65536)
            if not data:
                break
            received += data
    except (OSError, ssl.SSLError):
        pass        # refused: reset, closed, or a TLS alert
    return bytes(received)


def messages(data):
    """The frames a source sent (after its preamble), decoded."""
    if len(data) < protocol.PREAMBLE_SIZE:
        return []
    reader = FrameReader()
    reader.feed(data[protocol.PREAMBLE_SIZE:])
    try:
        return list(reader)
    except protocol.ProtocolError:
        return ["undecodable"]


def rogue_tls(rogue_ca):
    """A TLS client context with a certificate from the wrong CA, that
    trusts any server (as an attacker's would)."""
    certificate, key = rogue_ca.issue("intruder")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.load_cert_chain(certificate, key)
    return context


def attacker_socket(address, tls_context=None):
    sock = socket.create_connection(host_port(address), timeout=10)
    if tls_context is None:
        return sock
    try:
        return tls_context.wrap_socket(sock)
    except (OSError, ssl.SSLError):
        sock.close()
        raise


def log_lines(server, needle):
    return [line for line in server.output().splitlines() if needle in line]


# --- nobody without credentials gets data -----------------------------------

@pytest.mark.parametrize("mode", ["tls", "secret"])
def test_without_credentials_the_replication_port_gives_nothing(
        servers, tmp_path, ca, rogue_ca, secret_file, mode):
    repl = replication_address()
    primary = servers("primary", replicate_to=repl,
                      **credentials(mode, ca, secret_file, "primary"))
    write(primary, tmp_path, planted=PLANTED, b=blob(PLANTED.encode()))
    # A secondary with the credentials replicates.
    secondary = servers("secondary", replicate_from=repl,
                        **credentials(mode, ca, secret_file, "secondary"))
    read_value(secondary, tmp_path, "planted", PLANTED)

    # A process that speaks the protocol in the clear.
    sock = attacker_socket(repl)
    port = sock.getsockname()[1]
    data = thief_conversation(sock)
    sock.close()
    assert PLANTED.encode() not in data
    assert not any(isinstance(m, Welcome) for m in messages(data))
    peer = f"127.0.0.1:{port}:"
    wait_for(lambda: log_lines(primary, peer),
             "the primary to log the refusal naming the peer")
    [line] = log_lines(primary, peer)     # one line, no more
    assert "refused" in line

    # Wrong credentials: a certificate of another CA, a wrong secret.
    if mode == "tls":
        try:
            sock = attacker_socket(repl, rogue_tls(rogue_ca))
        except (OSError, ssl.SSLError):
            data = b""      # refused during the handshake (TLS 1.2)
        else:
            data = thief_conversation(sock)
            sock.close()
    else:
        sock = attacker_socket(repl)
        data = thief_conversation(sock, proof=os.urandom(32))
        sock.close()
    assert PLANTED.encode() not in data
    assert not any(isinstance(m, Welcome) for m in messages(data))

    # A live rogue replica (the attack of issue 10) stays empty.
    thief = SecondaryStorage(
        ZODB.FileStorage.FileStorage(str(tmp_path / "stolen.fs")), repl,
        name="thief", reconnect_max=0.2)
    try:
        wait_for(lambda: len(log_lines(primary, "refused")) >= 4,
                 "the primary to refuse the rogue replica again and again")
        assert thief.lastTransaction() == Z64
        assert thief.follower.state is State.CONNECTING
    finally:
        thief.close()
    with open(tmp_path / "stolen.fs", "rb") as f:
        assert PLANTED.encode() not in f.read()
    # The real secondary never stopped following.
    write(primary, tmp_path, after="attacks")
    read_value(secondary, tmp_path, "after", "attacks")


def test_a_rogue_source_cannot_feed_a_secondary(cluster, ca, rogue_ca,
                                                tmp_path, caplog):
    """Both ways: a source must prove itself to a secondary too."""
    caplog.set_level(logging.INFO, "replication")
    secret = b"s" * 32
    for name, source_security, complaint in [
            ("by-secret", Security(secret=b"x" * 32),
             "did not prove it knows the shared secret"),
            ("no-secret", Security(),
             "did not prove it knows the shared secret"),
            ("by-ca", Security(tls=rogue_ca.tls("rogue-source")),
             "TLS handshake failed")]:
        rogue = cluster.primary(f"rogue-{name}", security=source_security)
        db = ZODB.DB(rogue)     # closed with the cluster's storages
        commit(db, planted=PLANTED)
        own = Security(tls=ca.tls(f"victim-{name}")) if name == "by-ca" \
            else Security(secret=secret)
        victim = cluster.secondary(rogue, name=f"victim-{name}",
                                   security=own)
        wait_for(lambda: complaint in (victim.follower.problem or ""),
                 f"the secondary to refuse the rogue source ({name})")
        assert victim.lastTransaction() == Z64
        # It said nothing about its storage: no HELLO reached the source.
        assert f"victim-{name}@" not in caplog.text
        assert victim.follower.state is not State.FOLLOWING


# --- sync-replicas counts authenticated secondaries only ------------------------

def fake_acknowledger(address, tls_context, stop):
    """Keep a connection that says HELLO and acknowledges tid ff...ff,
    reconnecting whenever the source hangs up."""
    while not stop.is_set():
        try:
            sock = attacker_socket(address, tls_context)
        except (OSError, ssl.SSLError):
            time.sleep(0.05)
            continue
        with sock:
            thief_conversation(sock, ack=b"\xff" * 8)


@pytest.mark.parametrize("mode", ["tls", "secret"])
def test_a_fake_acknowledgement_does_not_satisfy_sync_replicas(
        servers, tmp_path, ca, rogue_ca, secret_file, mode):
    repl = replication_address()
    primary = servers("primary", replicate_to=repl, sync_replicas=1,
                      sync_block="true", sync_timeout=1.0,
                      **credentials(mode, ca, secret_file, "primary"))
    stop = threading.Event()
    faker = threading.Thread(target=fake_acknowledger, args=(
        repl, rogue_tls(rogue_ca) if mode == "tls" else None, stop))
    faker.start()
    try:
        wait_for(lambda: log_lines(primary, "refused"),
                 "the primary to refuse the fake secondary")
        with pytest.raises(Exception):
            write(primary, tmp_path, x=1)
        assert log_lines(primary, "was not acknowledged by 1 secondaries")
        # A real secondary with credentials satisfies it.
        secondary = servers("secondary", replicate_from=repl,
                            **credentials(mode, ca, secret_file,
                                          "secondary"))
        wait_for(lambda: "following from" in secondary.output(),
                 "the real secondary to follow")
        write(primary, tmp_path, x=2)
        read_value(secondary, tmp_path, "x", 2)
    finally:
        stop.set()
        faker.join(30)


# --- bounds -----------------------------------------------------------------

def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1)) * 1024


def closed_by_peer(sock, timeout):
    """Whether the peer closes ``sock`` within ``timeout`` seconds
    (reading and dropping whatever it sends)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if not sock.recv(65536):
                return True
        except socket.timeout:
            return False
        except OSError:
            return True     # reset
    return False


@pytest.mark.parametrize("stage", ["before-proof", "after-handshake"])
def test_partial_big_frames_leave_memory_bounded(servers, tmp_path,
                                                  secret_file, stage):
    """40 connections, each announcing a 4 MiB frame and sending part of
    it, then a byte now and then: the primary's memory stays flat and it
    closes every one of them."""
    repl = replication_address()
    primary = servers("primary", replicate_to=repl, secret_file=secret_file)
    write(primary, tmp_path, x=1)
    pid = primary.process.pid
    before = rss(pid)
    secret = auth.read_secret(secret_file)
    header = protocol.FRAME_HEADER.pack(4 * 1024 * 1024, Ack.TAG)
    part = os.urandom(256 * 1024)
    sockets = []
    try:
        for i in range(40):
            sock = attacker_socket(repl)
            sockets.append(sock)
            if stage == "after-handshake":
                # A peer that knows the secret, then misbehaves.
                nonce_c = os.urandom(32)
                sock.sendall(protocol.preamble() + Auth(nonce_c).encode())
                reader = FrameReader()
                data = b""
                while True:
                    data += sock.recv(4096)
                    if len(data) >= protocol.PREAMBLE_SIZE:
                        reader.feed(data[protocol.PREAMBLE_SIZE:])
                        data = data[:protocol.PREAMBLE_SIZE]
                        challenge = reader.next()
                        if challenge is not None:
                            break
                assert isinstance(challenge, Challenge)
                sock.sendall(Proof(auth.secondary_proof(
                    secret, nonce_c, challenge.nonce)).encode() + Hello(
                        0, Z64, protocol.NO_DIGEST, protocol.WANT_BLOBS,
                        f"big{i}").encode())
            else:
                sock.sendall(protocol.preamble())
            try:
                sock.sendall(header + part)
            except OSError:
                pass            # closed already
        peak = before
        open_sockets = list(sockets)
        deadline = time.monotonic() + 30
        while open_sockets and time.monotonic() < deadline:
            peak = max(peak, rss(pid))
            for sock in list(open_sockets):
                try:
                    sock.send(b"x")        # a byte now and then
                except OSError:
                    open_sockets.remove(sock)
                    continue
                if closed_by_peer(sock, 0.01):
                    open_sockets.remove(sock)
            time.sleep(0.1)
        assert not open_sockets, f"{len(open_sockets)} connections open"
        peak = max(peak, rss(pid))
    finally:
        for sock in sockets:
            sock.close()
    growth = peak - before
    print(f"primary RSS {before / 1e6:.1f} MB before, peak "
          f"{peak / 1e6:.1f} MB during 40 partial 4 MiB frames ({stage})")
    assert growth < 20e6, f"RSS grew by {growth / 1e6:.1f} MB"
    limit = "exceeds the limit of"
    wait_for(lambda: len(log_lines(primary, limit)) == 40,
             "one line per hostile connection")


@pytest.mark.parametrize("stage", ["handshake", "after-handshake"])
def test_slowloris_connections_are_closed(servers, tmp_path, secret_file,
                                          stage):
    repl = replication_address()
    primary = servers("primary", replicate_to=repl, secret_file=secret_file,
                      handshake_timeout=2.0)
    write(primary, tmp_path, x=1)
    sock = attacker_socket(repl)
    try:
        if stage == "handshake":
            dribble = protocol.preamble() + Auth(os.urandom(32)).encode()
            complaint = "handshake not completed within 2s"
        else:
            secret = auth.read_secret(secret_file)
            nonce_c = os.urandom(32)
            sock.sendall(protocol.preamble() + Auth(nonce_c).encode())
            reader = FrameReader()
            reader.feed(sock.recv(4096)[protocol.PREAMBLE_SIZE:])
            challenge = reader.next()
            sock.sendall(Proof(auth.secondary_proof(
                secret, nonce_c, challenge.nonce)).encode() + Hello(
                    0, Z64, protocol.NO_DIGEST, protocol.WANT_BLOBS,
                    "slow").encode())
            dribble = Ack(Z64).encode() * 100
            complaint = "no whole frame from the secondary"
        started = time.monotonic()
        closed = False
        for byte in dribble:      # one byte every half second
            try:
                sock.send(bytes([byte]))
            except OSError:
                closed = True
                break
            if closed_by_peer(sock, 0.5):
                closed = True
                break
            assert time.monotonic() - started < 30, "never closed"
        assert closed
        elapsed = time.monotonic() - started
    finally:
        sock.close()
    assert elapsed < 15
    wait_for(lambda: log_lines(primary, complaint),
             f"the primary to log {complaint!r}")


def test_connections_beyond_max_connections_are_closed(servers, tmp_path,
                                                       secret_file):
    repl = replication_address()
    primary = servers("primary", replicate_to=repl, secret_file=secret_file,
                      max_connections=5, handshake_timeout=60)
    idle = [attacker_socket(repl) for _ in range(12)]
    try:
        closed = [s for s in idle if closed_by_peer(s, 1.0)]
        assert len(closed) == 7
        lines = log_lines(primary, "max-connections")
        assert 1 <= len(lines) <= 2, lines
    finally:
        for s in idle:
            s.close()
    # Once they are gone, a real secondary connects.
    secondary = servers("secondary", replicate_from=repl,
                        secret_file=secret_file)
    write(primary, tmp_path, x=3)
    read_value(secondary, tmp_path, "x", 3)


# --- logs -------------------------------------------------------------------

def test_peer_supplied_names_cannot_forge_or_drop_log_lines(servers,
                                                            tmp_path):
    repl = replication_address()
    primary = servers("primary", replicate_to=repl)
    write(primary, tmp_path, x=1)
    name = "evil%s%(x)d%\nCRITICAL forged line\r\x1b[31m"
    sock = attacker_socket(repl)
    sock.sendall(protocol.preamble() + Auth(os.urandom(32)).encode())
    sock.sendall(Proof(bytes(32)).encode() + Hello(
        0, Z64, protocol.NO_DIGEST, protocol.WANT_BLOBS, name).encode())
    try:
        wait_for(lambda: log_lines(primary, "secondary connected"),
                 "the primary to log the connection")
    finally:
        sock.close()
    escaped = r"evil%s%(x)d%\nCRITICAL forged line\r\x1b[31m@127.0.0.1:"
    wait_for(lambda: len(log_lines(primary, escaped)) >= 2,
             "the primary to log the connection and its end, escaped")
    output = primary.output()
    assert "Logging error" not in output
    assert "evil%%" not in output       # no line changed, either
    for line in output.splitlines():
        assert not line.startswith("CRITICAL forged")
        assert "\x1b" not in line and "\r" not in line


def test_refusal_messages_from_a_source_are_escaped(cluster, caplog):
    listener = socket.create_server(("127.0.0.1", 0))

    def serve():
        conn, _ = listener.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(protocol.preamble() + Refuse(
                protocol.NOT_READY, "no\nCRITICAL forged").encode())
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    caplog.set_level(logging.INFO, "replication")
    secondary = cluster.secondary("127.0.0.1:%d" % listener.getsockname()[1],
                                  name="victim")
    wait_for(lambda: "forged" in (secondary.follower.problem or ""),
             "the secondary to record the refusal")
    listener.close()
    assert "\n" not in secondary.follower.problem
    assert r"no\nCRITICAL forged" in secondary.follower.problem
    assert all("\n" not in r.getMessage() for r in caplog.records)


# --- protocol and configuration ----------------------------------------------

def test_proofs_are_bound_to_both_nonces_and_to_the_side():
    secret, a, b = b"k" * 32, b"a" * 32, b"b" * 32
    proof = auth.source_proof(secret, a, b)
    assert auth.verify(proof, auth.source_proof(secret, a, b))
    assert not auth.verify(proof, auth.secondary_proof(secret, a, b))
    assert not auth.verify(proof, auth.source_proof(secret, b, a))
    assert not auth.verify(proof, auth.source_proof(b"K" * 32, a, b))
    assert "k" * 32 not in repr(Security(secret=secret))


@pytest.mark.parametrize("name, complaint", [
    ("x" * 256, "longer than 255 bytes"),
])
def test_hello_names_are_bounded(name, complaint):
    raw = name.encode()
    payload = Hello.HEAD.pack(0, Z64, protocol.NO_DIGEST, 0, len(raw)) + raw
    with pytest.raises(protocol.ProtocolError, match=complaint):
        Hello.decode(payload)
    with pytest.raises(ValueError):
        Hello(0, Z64, protocol.NO_DIGEST, 0, name).encode()


def test_handshake_frames_are_bounded():
    reader = FrameReader(protocol.HANDSHAKE_MAX_FRAME)
    reader.feed(struct.pack(">IB", 4 * 1024 * 1024, Auth.TAG))
    with pytest.raises(protocol.ProtocolError, match="exceeds the limit"):
        reader.next()


CONFIG = """\
%import replication
<zodb>
  <replication>
    replicate-to 127.0.0.1:0
    {keys}
    <filestorage>
      path {path}
    </filestorage>
  </replication>
</zodb>
"""


def test_configuration(tmp_path, ca, secret_file):
    keys = f"secret-file {secret_file}\n{ca.config('configured')}\n" \
        "max-connections 7\nhandshake-timeout 3"
    db = ZODB.config.databaseFromString(CONFIG.format(
        keys=keys, path=tmp_path / "Data.fs"))
    try:
        storage = db.storage
        assert storage.security.secret == auth.read_secret(secret_file)
        assert storage.security.tls is not None
        assert storage.security.max_connections == 7
        assert storage.source.security is storage.security
    finally:
        db.close()
    short = write_secret(tmp_path / "short", "too short")
    with pytest.raises(ZConfig.ConfigurationError, match="at least 16"):
        ZODB.config.storageFromString(CONFIG.format(
            keys=f"secret-file {short}", path=tmp_path / "Data2.fs")
            .replace("<zodb>\n", "").replace("</zodb>\n", ""))


def test_tls_and_secret_together_in_process(cluster, ca, tmp_path):
    """Both at once, byte copy and live stream over TLS."""
    secret = b"t" * 32
    primary = cluster.primary(security=Security(tls=ca.tls("p"),
                                                secret=secret))
    db = ZODB.DB(primary)
    commit(db, x=1, b=blob(b"over tls"))
    secondary = cluster.secondary(primary, security=Security(
        tls=ca.tls("s"), secret=secret))
    wait_caught_up(secondary, primary)
    for i in range(30):
        commit(db, x=i)
    wait_caught_up(secondary, primary)
    assert_same_history(primary, secondary)
    db.close()


# --- replicate-from zk: ---------------------------------------------------------

class SecuredZKServer(ZKServer):
    """A zkrunzeo server whose <replication> section also holds
    ``section`` (e.g. <replication-ssl>)."""

    def __init__(self, *args, section="", **kw):
        ZKServer.__init__(self, *args, **kw)
        self.section = section

    def write_config(self):
        path = ZKServer.write_config(self)
        with open(path) as f:
            text = f.read()
        with open(path, "w") as f:
            f.write(text.replace("  replicate-from zk:\n",
                                 f"  replicate-from zk:\n{self.section}\n"))
        return path


def test_replicate_from_zk_over_tls_with_a_secret(tmp_path, zookeeper,
                                                  zk_path, tree, zk_url, ca,
                                                  secret_file):
    import zkzeo
    started = []

    def server(name):
        s = SecuredZKServer(tmp_path, name, zookeeper.address, zk_path,
                            section=ca.config(name),
                            replication_options={"secret-file": secret_file})
        started.append(s)
        return s.start()
    db = None
    try:
        server("s1")
        server("s2")
        db = zkzeo.DB(zk_url, wait_timeout=60,
                      blob_dir=str(tmp_path / "rw-blobs"))
        with db.transaction() as conn:
            conn.root.planted = PLANTED
        reader = replica_db(zkzeo.client(
            zk_url, read_only=True, wait_timeout=60,
            blob_dir=str(tmp_path / "ro-blobs")))
        try:
            rconn = reader.open()

            def seen():
                transaction.begin()
                return getattr(rconn.root, "planted", None) == PLANTED
            wait_for(seen, "the write to reach the secondary over TLS")
        finally:
            reader.close()
        # Anyone can read the primary's replication address in ZooKeeper
        # (until its ACLs say otherwise); it gives them nothing.
        address = tree.by_name()["s1"]["replication"]
        thief = SecondaryStorage(
            ZODB.FileStorage.FileStorage(str(tmp_path / "stolen.fs")),
            address, name="thief", reconnect_max=0.2)
        try:
            wait_for(lambda: "TLS" in (thief.follower.problem or "") or
                     "lost" in (thief.follower.problem or ""),
                     "the rogue replica to be turned away")
            assert thief.lastTransaction() == Z64
        finally:
            thief.close()
    finally:
        if db is not None:
            db.close()
        for s in reversed(started):
            s.stop()


def test_the_documented_secured_configurations(tmp_path, ca):
    """docs/security.md's primary and secondary, run as servers with
    certificates and a secret where the docs put them."""
    from tests.support import Process
    from tests.test_docs import blocks
    from zkzeo.zkserver import free_port
    import ast
    ca.issue("primary")
    ca.issue("secondary")
    secret = write_secret(tmp_path / "replication.secret")
    ports = {str(p): str(free_port()) for p in (8100, 8101, 8200)}
    servers = []
    texts = [b.values[0] for b in blocks("secureconf")]
    assert len(texts) == 2
    try:
        for text in texts:
            text = text.replace("/etc/zkzeo/replication.secret", secret) \
                .replace("/etc/zkzeo/replication/", ca.directory + "/") \
                .replace("var/", f"{tmp_path}/")
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
        addresses = [ast.literal_eval(wait_for(
            lambda: re.search(r"ZEO server listening on (\(.*\))",
                              s.output()), "the server to start").group(1))
            for s in servers]
        db = ZEO.DB(addresses[0], wait_timeout=60)
        with db.transaction() as conn:
            conn.root.planted = PLANTED
        db.close()
        replica = replica_db(ZEO.client(addresses[1], read_only=True,
                                        wait_timeout=60))
        conn = replica.open()

        def visible():
            transaction.begin()
            return getattr(conn.root, "planted", None) == PLANTED
        wait_for(visible, "the documented secondary to have the commit")
        conn.close()
        replica.close()
        sock = attacker_socket(f"127.0.0.1:{ports['8101']}")
        data = thief_conversation(sock)
        sock.close()
        assert PLANTED.encode() not in data
        wait_for(lambda: "refused: TLS handshake failed" in
                 servers[0].output(), "the primary to refuse the thief")
    finally:
        for s in servers:
            s.stop()


def test_a_secret_file_others_may_read_is_warned_about(tmp_path, caplog):
    path = write_secret(tmp_path / "loose.secret")
    os.chmod(path, 0o644)
    caplog.set_level(logging.WARNING, "replication")
    assert auth.read_secret(path) == ("0123456789abcdef" * 4).encode()
    assert "readable by other users" in caplog.text
    with pytest.raises(auth.SecretError, match="cannot read"):
        auth.read_secret(str(tmp_path / "missing"))


def test_a_silent_source_is_given_the_handshake_timeout(cluster):
    listener = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(conn)    # and never answer
    threading.Thread(target=serve, daemon=True).start()
    try:
        secondary = cluster.secondary(
            "127.0.0.1:%d" % listener.getsockname()[1], name="patient",
            security=Security(handshake_timeout=1.0))
        wait_for(lambda: "not completed within 1s" in
                 (secondary.follower.problem or ""),
                 "the secondary to give up on the silent source")
    finally:
        listener.close()
        for conn in accepted:
            conn.close()


@pytest.mark.parametrize("sync_replicas", [0, 1])
def test_tls_stream_under_concurrent_committers(cluster, ca, sync_replicas):
    """Committing threads encrypt and write to the TLS connections while
    the replication thread reads acknowledgements from them."""
    primary = cluster.primary(security=Security(tls=ca.tls("p")),
                              sync_replicas=sync_replicas)
    secondaries = [cluster.secondary(primary, name=f"s{i}",
                                     security=Security(tls=ca.tls(f"s{i}")))
                   for i in range(2)]
    wait_for(lambda: len(primary.source.status()) == 2,
             "both secondaries to connect")
    db = ZODB.DB(primary)
    with db.transaction() as conn:
        for n in range(4):      # one object per committer: no conflicts
            conn.root()[f"c{n}"] = PersistentMapping()
    errors = []

    def committer(n):
        try:
            for i in range(40):
                with db.transaction() as conn:
                    mine = conn.root()[f"c{n}"]
                    mine["i"] = i
                    if i % 10 == 0:
                        mine["blob"] = blob(b"x" * (i * 100))
        except Exception as e:      # pragma: no cover - reported below
            errors.append(e)
    threads = [threading.Thread(target=committer, args=(n,))
               for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    for s in secondaries:
        wait_caught_up(s, primary)
        assert_same_history(primary, s)
    db.close()
