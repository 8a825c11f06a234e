"""ZConfig support: ``%import replication`` and a ``<replication>`` (or
zc.zrs-style ``<zrs>``) section wrapping another storage section."""
import ZConfig

from .address import AddressError, parse_address
from .storage import PrimaryStorage, SecondaryStorage


def address(value):
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
                f"replication section {self.name or ''}: set replicate-to "
                "(a primary) or replicate-from (a secondary)")
        if config.replicate_from and config.sync_replicas:
            raise ZConfig.ConfigurationError(
                "sync-replicas is a primary's setting; this section has "
                "replicate-from, which makes it a secondary")

    def open(self):
        c = self.config
        base = c.base.open()
        name = c.name or base.getName()
        try:
            if c.replicate_from:
                return SecondaryStorage(
                    base, c.replicate_from, replicate_to=c.replicate_to,
                    keep_alive_delay=c.keep_alive_delay,
                    replicate_blobs=c.replicate_blobs, name=name,
                    reconnect_max=c.reconnect_max_delay)
            return PrimaryStorage(
                base, c.replicate_to, keep_alive_delay=c.keep_alive_delay,
                sync_replicas=c.sync_replicas, sync_timeout=c.sync_timeout,
                sync_block=c.sync_block, replicate_blobs=c.replicate_blobs,
                name=name)
        except BaseException:
            base.close()
            raise
