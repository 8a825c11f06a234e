"""Who may replicate: the security settings of a replication server and
the shared-secret proofs of the handshake (see protocol.py, "Shared
secret").

``Security`` is one value per server, handed to its ``Source`` (the serving
side) and its ``Follower`` (the replicating side): TLS contexts, the shared
secret, and the bounds a source puts on connections that have not proved
anything yet.  Without TLS and without a secret, anyone who can reach the
replication port can read the whole database: the defaults keep working
for a trusted network, and docs/security.md says what to set otherwise.
"""
import hashlib
import hmac
import logging
import os
import stat
from dataclasses import dataclass
from typing import Optional

from .protocol import NONCE_SIZE, PROOF_SIZE

logger = logging.getLogger(__name__)

MIN_SECRET = 16                 # bytes; shorter is refused
MAX_CONNECTIONS = 64            # replication connections per source
HANDSHAKE_TIMEOUT = 10.0        # seconds to finish TLS and the handshake

_SOURCE_LABEL = b"zkzeo-replication source\0"
_SECONDARY_LABEL = b"zkzeo-replication secondary\0"
NO_PROOF = b"\0" * PROOF_SIZE


class SecretError(ValueError):
    """The secret file is missing, unreadable or too short."""


@dataclass(frozen=True)
class Security:
    """How a replication server authenticates peers and bounds them.

    ``tls``: a ``tls.TLS`` (contexts for both roles) or None; ``secret``:
    the shared secret's bytes or None; ``max_connections`` and
    ``handshake_timeout`` bound what unauthenticated peers can hold.
    """
    tls: Optional[object] = None
    secret: Optional[bytes] = None
    max_connections: int = MAX_CONNECTIONS
    handshake_timeout: float = HANDSHAKE_TIMEOUT

    @property
    def authenticates(self):
        """Whether peers must prove who they are (TLS or a secret)."""
        return self.tls is not None or self.secret is not None

    def __repr__(self):     # never the secret, not even in a traceback
        return (f"Security(tls={self.tls is not None}, "
                f"secret={self.secret is not None}, "
                f"max_connections={self.max_connections}, "
                f"handshake_timeout={self.handshake_timeout})")


OPEN = Security()


def read_secret(path):
    """The shared secret in file ``path`` (surrounding whitespace removed).
    """
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            secret = f.read().strip()
    except OSError as e:
        raise SecretError(f"cannot read secret-file {path}: "
                          f"{e.strerror or e}") from None
    if len(secret) < MIN_SECRET:
        raise SecretError(
            f"secret-file {path} holds {len(secret)} bytes; use at least "
            f"{MIN_SECRET} random bytes (e.g. openssl rand -hex 32)")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("secret-file %s is readable by other users than its "
                       "owner: chmod 600 it", path)
    return secret


def nonce():
    return os.urandom(NONCE_SIZE)


def source_proof(secret, nonce_c, nonce_s):
    return _proof(secret, _SOURCE_LABEL, nonce_c, nonce_s)


def secondary_proof(secret, nonce_c, nonce_s):
    return _proof(secret, _SECONDARY_LABEL, nonce_c, nonce_s)


def _proof(secret, label, nonce_c, nonce_s):
    # The label names who proves, so neither side's proof can be
    # reflected back as the other's; both nonces make every proof fresh.
    return hmac.new(secret, label + nonce_c + nonce_s,
                    hashlib.sha256).digest()


def verify(expected, received):
    """Constant-time comparison of two proofs."""
    return hmac.compare_digest(expected, received)
