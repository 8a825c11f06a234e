"""TLS for replication, configured like ZEO's own ``<ssl>`` section.

One ``<replication-ssl>`` section gives a server both of its TLS roles,
because a replication server serves (replicate-to) and replicates
(replicate-from) with the same identity, and a server of a cluster changes
role while it runs:

* serving: the source presents ``certificate`` / ``key`` and requires every
  secondary to present a certificate signed by ``authenticate`` (a CA file
  or directory);
* replicating: the secondary presents the same certificate and checks the
  source's against ``authenticate``, and its host name (the host of the
  source's address, or ``server-hostname``) unless ``check-hostname`` is
  off.

The contexts are built as ZEO's ``ZEO.zconfig.ssl_config`` builds them
(TLS 1.2 at least, CERT_REQUIRED, VERIFY_X509_STRICT, CRL checks when the CA store has
CRLs), with gevent's ``ssl`` module because replication I/O runs on the
gevent hub.  Unlike ZEO's client, ``authenticate`` is required: the
system's public CAs say nothing about who may hold a copy of a database.

A source's side of a connection is a ``ServerConnection``: TLS through
memory BIOs over the plain socket, every use of its SSL object under one
lock.  That lets a committing thread encrypt and write a new transaction
itself (``Outbox``), as over plain TCP, while the hub reads; an SSL
object must never be used by two threads at once, and a gevent SSL socket
belongs to the hub.  A follower's side is an ordinary gevent SSL socket.
"""
import logging
import os
import threading

import gevent.ssl as ssl

from .protocol import printable

logger = logging.getLogger(__name__)


class TLSConfigError(ValueError):
    pass


class TLS:
    """The server and client contexts of one replication server."""

    def __init__(self, certificate, key=None, authenticate=None,
                 password=None, check_hostname=True, server_hostname=None):
        if not authenticate:
            raise TLSConfigError(
                "replication TLS needs authenticate: the CA file or "
                "directory that signed the other servers' certificates")
        cafile = capath = None
        if os.path.isdir(authenticate):
            capath = authenticate
        else:
            cafile = authenticate
        self.check_hostname = check_hostname
        self.server_hostname = server_hostname
        self.server_context = self._context(
            ssl.Purpose.CLIENT_AUTH, cafile, capath, certificate, key,
            password)
        self.server_context.check_hostname = False
        self.client_context = self._context(
            ssl.Purpose.SERVER_AUTH, cafile, capath, certificate, key,
            password)
        self.client_context.check_hostname = check_hostname

    @staticmethod
    def _context(purpose, cafile, capath, certificate, key, password):
        # What ssl.create_default_context does, but gevent's SSLContext
        # (whose sockets cooperate with the hub).
        context = ssl.SSLContext(
            ssl.PROTOCOL_TLS_SERVER if purpose == ssl.Purpose.CLIENT_AUTH
            else ssl.PROTOCOL_TLS_CLIENT)
        try:
            context.load_verify_locations(cafile, capath)
            context.load_cert_chain(certificate, key, password)
        except (OSError, ssl.SSLError) as e:
            raise TLSConfigError(
                f"cannot load the replication certificate {certificate} "
                f"(key {key or 'in the same file'}, CAs {cafile or capath})"
                f": {e}") from None
        context.verify_mode = ssl.CERT_REQUIRED
        context.verify_flags |= ssl.VERIFY_X509_STRICT | (
            context.cert_store_stats()["crl"] and ssl.VERIFY_CRL_CHECK_LEAF)
        return context

    def wrap_server(self, sock):
        """``sock``, accepted by a source, as TLS (handshake not done)."""
        return ServerConnection(self.server_context, sock)

    def wrap_client(self, sock, address):
        """``sock``, connected to the source at ``address``, as TLS."""
        hostname = self.server_hostname
        if hostname is None and not isinstance(address, str):
            hostname = address[0]
        if hostname is None and self.check_hostname:
            raise OSError(
                f"replicating from the unix socket {address} over TLS needs "
                "server-hostname (or check-hostname off)")
        return self.client_context.wrap_socket(
            sock, server_hostname=hostname, do_handshake_on_connect=False)


READ_SIZE = 16 * 1024 + 256     # one TLS record


class ServerConnection:
    """A source's TLS connection: the socket methods the source uses, over
    an SSL object with memory BIOs.

    ``lock`` guards the SSL object: ``recv`` (the hub) and ``seal`` (under
    the lock, by the connection's ``Outbox``, from any thread) take turns.
    ``seal`` returns the ciphertext of what it is given together with
    anything else the SSL object has to send (a session ticket, an alert),
    in order, so whoever writes sealed bytes in sealing order keeps the
    stream intact.
    """

    def __init__(self, context, sock):
        self.raw = sock
        self.lock = threading.Lock()
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._incoming, self._outgoing,
                                     server_side=True)

    # --- on the hub -------------------------------------------------------

    def do_handshake(self):
        # Before the connection has an Outbox: this greenlet is its only
        # user, and nothing waits for its lock.
        while True:
            try:
                self._ssl.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            except ssl.SSLError:
                self._send_pending()    # the alert says why
                raise
            self._send_pending()
            if done:
                return
            data = self.raw.recv(READ_SIZE)
            if not data:
                raise EOFError("peer closed the connection during the TLS "
                               "handshake")
            self._incoming.write(data)

    def _send_pending(self):
        pending = self._outgoing.read()
        if pending:
            try:
                self.raw.sendall(pending)
            except OSError:
                pass        # the handshake's error says more

    def recv(self, size):
        while True:
            with self.lock:
                try:
                    return self._ssl.read(size)
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLZeroReturnError:
                    return b""
            data = self.raw.recv(READ_SIZE)
            if not data:
                return b""
            with self.lock:
                self._incoming.write(data)

    def sendall(self, data):
        with self.lock:
            sealed = self.seal(data)
        self.raw.sendall(sealed)

    # --- from any thread, under ``lock`` ----------------------------------

    def seal(self, data):
        self._ssl.write(data)
        return self._outgoing.read()

    # --- the rest of a socket ---------------------------------------------

    def getpeercert(self):
        return self._ssl.getpeercert()

    def version(self):
        return self._ssl.version()

    def fileno(self):
        return self.raw.fileno()

    def getsockname(self):
        return self.raw.getsockname()

    def settimeout(self, timeout):
        self.raw.settimeout(timeout)

    def close(self):
        self.raw.close()


def peer_name(sock):
    """The subject common name of a TLS peer's certificate, for logs."""
    getpeercert = getattr(sock, "getpeercert", None)
    cert = getpeercert() if getpeercert is not None else None
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return printable(value, 100)
    return None


def from_config(section):
    """A ``TLS`` from a ``<replication-ssl>`` section, or None."""
    if section is None:
        return None
    password = section.password_function
    if password:
        module, name = password.rsplit(".", 1)
        module = __import__(module, globals(), locals(), ["*"], 0)
        password = getattr(module, name)
    return TLS(section.certificate, section.key, section.authenticate,
               password or None, section.check_hostname,
               section.server_hostname)
