"""ZConfig support: ``%import replication`` and a ``<replication>`` (or
zc.zrs-style ``<zrs>``) section wrapping another storage section."""
import logging
import os

import ZConfig
from ZODB.FileStorage import FileStorage

from . import auth, tls
from .address import AddressError, parse_address
from .recovery import recover_torn_transaction
from .storage import ReplicatedStorage

logger = logging.getLogger(__name__)


FOLLOW_CLUSTER = "zk:"


def address(value):
    if value.strip() == FOLLOW_CLUSTER:
        return FOLLOW_CLUSTER    # follow whoever ZooKeeper names (zkrunzeo)
    try:
        parse_address(value)
    except AddressError as e:
        raise ValueError(str(e)) from None
    return value


class ReplicationConfig:

    def __init__(self, config):
        self.config = config
        self.name = config.getSectionName()
        if not (config.replicate_from or config.replicate_to):
            raise ZConfig.ConfigurationError(
                f"replication section {self.name or ''}".strip() +
                ": set replicate-to "
                "(a primary) or replicate-from (a secondary)")
        if config.replicate_from and config.replicate_from != \
                FOLLOW_CLUSTER and config.sync_replicas:
            raise ZConfig.ConfigurationError(
                "sync-replicas is a primary's setting; this section has "
                "replicate-from, which makes it a secondary")
        if config.max_connections < 1 or config.handshake_timeout <= 0:
            raise ZConfig.ConfigurationError(
                "max-connections and handshake-timeout must be positive")
        try:
            self.security = auth.Security(
                tls=tls.from_config(config.ssl),
                secret=auth.read_secret(config.secret_file)
                if config.secret_file else None,
                max_connections=config.max_connections,
                handshake_timeout=config.handshake_timeout)
        except ValueError as e:
            raise ZConfig.ConfigurationError(str(e)) from None

    @property
    def follows_cluster(self):
        """``replicate-from zk:``: the role is ZooKeeper's decision."""
        return self.config.replicate_from == FOLLOW_CLUSTER

    def open(self):
        if self.follows_cluster:
            raise ZConfig.ConfigurationError(
                "replicate-from zk: means ZooKeeper decides this server's "
                "role: run it with zkrunzeo (and a <zookeeper> section)")
        c = self.config
        if c.replicate_from:
            return self.open_secondary(c.replicate_from)
        return self.open_primary()

    def options(self):
        """Every setting of the section, for either role: a server of a
        cluster changes role while it runs and must keep them all."""
        c = self.config
        return dict(
            replicate_to=c.replicate_to, keep_alive_delay=c.keep_alive_delay,
            sync_replicas=c.sync_replicas, sync_timeout=c.sync_timeout,
            sync_block=c.sync_block, replicate_blobs=c.replicate_blobs,
            reconnect_max=c.reconnect_max_delay, reopen=c.base.open,
            rewind_divergent=c.rewind_divergent, security=self.security)

    def open_primary(self):
        c = self.config
        if not c.replicate_to:
            raise ZConfig.ConfigurationError(
                f"replication section {self.name or ''}".strip() +
                ": a primary needs replicate-to")
        return self._open(lambda base, name: ReplicatedStorage(
            base, name=name, **self.options()))

    def open_secondary(self, source):
        """A secondary of ``source``: an address, or a callable returning
        the current one (or None while there is none)."""
        return self._open(lambda base, name: ReplicatedStorage(
            base, replicate_from=source, name=name, **self.options()))

    def _open(self, wrap):
        c = self.config
        if not c.replicate_blobs:
            protect_shared_blob_dir(c.base)
        base = c.base.open()
        try:
            # Here rather than in the storage, so that `base` is the one to
            # close if anything fails.
            base = recover_torn_transaction(base, c.base.open)
            return wrap(base, c.name or base.getName())
        except BaseException:
            base.close()
            raise


def protect_shared_blob_dir(base_section):
    """Create a missing Data.fs before FileStorage opens it with a blob dir.

    FileStorage *empties* the blob directory when it creates a new Data.fs;
    with a blob directory shared between servers that would delete the
    primary's blobs.  An empty Data.fs created first (without blobs) avoids
    that.
    """
    config = getattr(base_section, "config", None)
    path = getattr(config, "path", None)
    if path and getattr(config, "blob_dir", None) and \
            not os.path.exists(path):
        logger.info("creating empty %s first so that the shared blob "
                    "directory %s is left alone", path, config.blob_dir)
        FileStorage(path, create=True).close()
