"""zodburi resolvers for ``zk://`` and ``zkzeo://`` URIs.

``zodburi.resolve_uri("zk://zk1:2181,zk2:2181/databases/main?read_only=1")``
gives a factory of a ZooKeeper-discovered ZEO client storage; query
arguments are those of zodburi's ``zeo://`` URIs (ClientStorage arguments
and ``connection_*``/``database_name`` for the DB).
"""
from urllib.parse import parse_qsl

from zodburi.resolvers import ClientStorageURIResolver

from .layout import parse_url


class ZooKeeperURIResolver(ClientStorageURIResolver):

    def __call__(self, uri):
        url, _, query = uri.partition("?")
        parse_url(url)                      # a clear error now, not later
        kw, unused = self.interpret_kwargs(dict(parse_qsl(query)))

        def factory():
            from .zeoclient import ZooKeeperClientStorage
            return ZooKeeperClientStorage(url, **kw)
        return factory, unused


resolve_zk = ZooKeeperURIResolver()
