"""zkzeo: replicated ZEO clusters whose servers are found in ZooKeeper.

``zkzeo.client(url, ...)``, ``zkzeo.DB(url, ...)`` and
``zkzeo.connection(url, ...)`` are ``ZEO.client``, ``ZEO.DB`` and
``ZEO.connection`` with a ``zk://HOST:PORT[,...]/path`` or ``zk:/path`` URL
instead of an address.
"""


def client(url, *args, **kw):
    from .zeoclient import client
    return client(url, *args, **kw)


def DB(url, *args, **kw):
    from .zeoclient import DB
    return DB(url, *args, **kw)


def connection(url, *args, **kw):
    from .zeoclient import connection
    return connection(url, *args, **kw)
