"""``zkzeo-runzeo``: ZEO's runzeo for servers with replication storages.

It is ZEO's own runzeo (same options, same configuration file, where
``%import replication`` makes the ``<replication>`` section available),
extended through ``ZEOServer``'s hooks: it logs the address the ZEO server
really listens on, so that ``address :0`` (an OS-assigned port) is usable.
"""
import logging

import ZEO.runzeo

logger = logging.getLogger(__name__)


def bound_address(server):
    """The (host, port) or unix path a ZEO 6 StorageServer listens on."""
    return server.acceptor.addr


class ZEOServer(ZEO.runzeo.ZEOServer):

    def create_server(self):
        super().create_server()
        logger.info("ZEO server listening on %s", bound_address(self.server))


def main(args=None):
    options = ZEO.runzeo.ZEOOptions()
    options.realize(args)
    ZEOServer(options).main()


if __name__ == "__main__":
    main()
