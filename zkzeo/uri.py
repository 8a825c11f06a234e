"""zodburi resolvers for ``zk://`` and ``zkzeo://`` URIs.

``zodburi.resolve_uri("zk://zk1:2181,zk2:2181/databases/main?read_only=1")``
gives a factory of a ZooKeeper-discovered ZEO client storage; query
arguments are those of zodburi's ``zeo://`` URIs (ClientStorage arguments
and ``connection_*``/``database_name`` for the DB), plus the ZooKeeper
security arguments of clients (``zookeeper_auth_file``, ``zookeeper_use_ssl``,
``zookeeper_ca``, ...; not ``zookeeper_auth``: no password in a URI).
"""
from urllib.parse import parse_qsl

from zodburi.resolvers import ClientStorageURIResolver

from . import zk
from .layout import parse_url


def _boolean(key, value):
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{key}={value!r} in a zk:// URI: expected true or "
                     "false")


class ZooKeeperURIResolver(ClientStorageURIResolver):

    def __call__(self, uri):
        url, _, query = uri.partition("?")
        parse_url(url)                      # a clear error now, not later
        args = dict(parse_qsl(query))
        if "zookeeper_auth" in args:
            # URIs end up in logs and process lists.
            raise ValueError("a zk:// URI must not carry a password: give "
                             "zookeeper_auth_file=FILE (a credentials file "
                             "holding USER:PASSWORD), or set "
                             "$ZKZEO_AUTH_FILE")
        zookeeper = {key: args.pop(key) for key in list(args)
                     if key.startswith("zookeeper_")}
        unknown = set(zookeeper) - {f"zookeeper_{name}" for name in
                                    zk.CLIENT_KEYWORDS}
        if unknown:
            raise ValueError(f"unknown argument(s) {', '.join(sorted(unknown))}"
                             " in a zk:// URI")
        for key in ("zookeeper_use_ssl", "zookeeper_verify_certs",
                    "zookeeper_check_hostname"):
            if key in zookeeper:
                zookeeper[key] = _boolean(key, zookeeper[key])
        kw, unused = self.interpret_kwargs(args)
        kw.update(zookeeper)

        def factory():
            from .zeoclient import ZooKeeperClientStorage
            return ZooKeeperClientStorage(url, **kw)
        return factory, unused


resolve_zk = ZooKeeperURIResolver()
