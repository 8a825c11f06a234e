"""The replication handshake, both sides (see protocol.py, "Conversation").

``accept`` runs on a source's connection greenlet, ``connect`` on a
follower's: TLS (when configured), preambles, the mutual proof of the
shared secret (when configured), then HELLO and its answer, all within one
deadline.  A peer that fails any of it has been sent nothing but a
preamble, a CHALLENGE and maybe a REFUSE: no data of the storage.

Reads are bounded: at most ``HANDSHAKE_MAX_FRAME`` per frame and
``READ_SIZE`` per receive, so a connection that has not proved anything
holds a few kilobytes at most, however slowly it sends.
"""
import gevent

from . import auth, protocol
from .protocol import (Auth, Challenge, Hello, Proof, ProtocolError, Refuse,
                       SECRET)

READ_SIZE = 4096


class AuthenticationError(ProtocolError):
    """The peer did not prove who it is (TLS or the shared secret)."""


class HandshakeTimeout(ConnectionError):
    """The peer did not finish the handshake in time."""


def deadline(seconds, what):
    """A ``with`` block that must finish within ``seconds``."""
    return gevent.Timeout(seconds, HandshakeTimeout(
        f"{what} not completed within {seconds:g}s"))


_TLS_HINTS = {
    "WRONG_VERSION_NUMBER": "the peer does not speak TLS",
    "HTTP_REQUEST": "the peer does not speak TLS",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "the peer has no certificate",
    "TLSV1_ALERT_UNKNOWN_CA": "the peer does not accept our certificate",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the peer does not accept our certificate",
}


def tls_handshake(sock):
    """Complete a TLS handshake; a failure is an AuthenticationError."""
    import ssl
    try:
        sock.do_handshake()
    except ssl.SSLError as e:
        reason = e.reason or str(e)
        detail = getattr(e, "verify_message", None) or _TLS_HINTS.get(reason)
        raise AuthenticationError(
            f"TLS handshake failed: {reason}" +
            (f" ({detail})" if detail else "")) from None


# --- the source's side ------------------------------------------------------

def accept(sock, security):
    """Run a source's side of the handshake up to HELLO on ``sock``.

    Returns (HELLO, the FrameReader holding what followed it).  Raises
    AuthenticationError (after sending REFUSE) when the peer does not
    prove it knows the secret, ProtocolError for anything malformed.
    """
    reader = protocol.FrameReader(protocol.HANDSHAKE_MAX_FRAME)
    version = protocol.parse_preamble(
        recv_exactly(sock, protocol.PREAMBLE_SIZE))
    if version != protocol.VERSION:
        sock.sendall(protocol.preamble() + Refuse(
            protocol.UNSUPPORTED_VERSION,
            f"protocol version {version} is not supported; this source "
            f"speaks version {protocol.VERSION}").encode())
        raise ProtocolError(f"unsupported protocol version {version}")
    first = recv_message(sock, reader)
    if not isinstance(first, Auth):
        raise ProtocolError(f"expected AUTH, got {type(first).__name__}")
    nonce_s = auth.nonce()
    secret = security.secret
    if secret is None:
        challenge = Challenge(0, nonce_s, auth.NO_PROOF)
    else:
        challenge = Challenge(SECRET, nonce_s, auth.source_proof(
            secret, first.nonce, nonce_s))
    sock.sendall(protocol.preamble() + challenge.encode())
    proof = recv_message(sock, reader)
    if not isinstance(proof, Proof):
        raise ProtocolError(f"expected PROOF, got {type(proof).__name__}")
    if secret is not None and not auth.verify(
            auth.secondary_proof(secret, first.nonce, nonce_s),
            proof.proof):
        sock.sendall(Refuse(protocol.NOT_AUTHENTICATED,
                            "this source requires the shared secret "
                            "(secret-file)").encode())
        raise AuthenticationError(
            "the peer did not prove it knows the shared secret")
    hello = recv_message(sock, reader)
    if not isinstance(hello, Hello):
        raise ProtocolError(f"expected HELLO, got {type(hello).__name__}")
    return hello, reader


# --- the secondary's side ---------------------------------------------------

def connect(sock, security, hello):
    """Run a follower's side of the handshake on ``sock`` up to the
    source's answer to ``hello``.

    Returns (the source's protocol version, its answer: WELCOME or
    REFUSE, the FrameReader holding what followed).  Raises
    AuthenticationError when the source does not prove it knows our
    secret: we send it nothing about our storage.
    """
    nonce_c = auth.nonce()
    sock.sendall(protocol.preamble() + Auth(nonce_c).encode())
    reader = protocol.FrameReader(protocol.HANDSHAKE_MAX_FRAME)
    version = protocol.parse_preamble(
        recv_exactly(sock, protocol.PREAMBLE_SIZE, "source"))
    answer = recv_message(sock, reader, "source")
    if version != protocol.VERSION or isinstance(answer, Refuse):
        return version, answer, reader
    if not isinstance(answer, Challenge):
        raise ProtocolError(
            f"expected CHALLENGE, got {type(answer).__name__}")
    secret = security.secret
    if secret is None:
        proof = auth.NO_PROOF
    else:
        if not (answer.flags & SECRET and auth.verify(
                auth.source_proof(secret, nonce_c, answer.nonce),
                answer.proof)):
            raise AuthenticationError(
                "the source did not prove it knows the shared secret: not "
                "replicating from it")
        proof = auth.secondary_proof(secret, nonce_c, answer.nonce)
    sock.sendall(Proof(proof).encode() + hello.encode())
    answer = recv_message(sock, reader, "source")
    reader.max_frame = protocol.MAX_FRAME     # the stream follows
    return version, answer, reader


# --- bounded reads ------------------------------------------------------------

def recv_exactly(sock, n, peer="peer"):
    buf = bytearray()
    while len(buf) < n:
        data = sock.recv(min(n - len(buf), READ_SIZE))
        if not data:
            raise EOFError(f"{peer} closed the connection during the "
                           "handshake")
        buf += data
    return bytes(buf)


def recv_message(sock, reader, peer="peer"):
    while True:
        message = reader.next()
        if message is not None:
            return message
        data = sock.recv(READ_SIZE)
        if not data:
            raise EOFError(f"{peer} closed the connection during the "
                           "handshake")
        reader.feed(data)
