"""Storage-level replication of ZODB FileStorages (usable without ZooKeeper).

``PrimaryStorage`` streams every committed transaction (records and blobs)
to ``SecondaryStorage`` replicas, which apply them atomically, pass the
invalidations to their own clients and can feed further secondaries.
"""
from .auth import Security, read_secret  # noqa: F401
from .storage import (PrimaryStorage, ReplicatedStorage, Role,  # noqa: F401
                      SecondaryStorage)
from .tls import TLS  # noqa: F401
