"""ZConfig datatypes of zkzeo's component.xml."""
import os
import socket

from ZEO.zconfig import ClientStorageConfig

from . import zk
from .layout import LayoutError, check_path, parse_url


def ensemble(value):
    try:
        hosts, _ = parse_url(f"zk://{value}/x")
    except LayoutError:
        raise ValueError(f"bad ZooKeeper ensemble {value!r}: expected "
                         "HOST:PORT[,HOST:PORT...]") from None
    return hosts


def zk_path(value):
    try:
        return check_path(value)
    except LayoutError as e:
        raise ValueError(str(e)) from None


acl_mode = zk.acl_mode


def zookeeper_settings(section, prefix=""):
    """zk.Settings from the security keys of a <zookeeper> section (no
    prefix) or of a <zkzeoclient> (prefix "zookeeper_")."""
    def key(name):
        return getattr(section, prefix + name)
    try:
        return zk.settings(
            auth=key("auth"), auth_file=key("auth_file"),
            acl=getattr(section, "acl", zk.ACL_OFF),
            use_ssl=key("use_ssl"), ca=key("ca"), certfile=key("certfile"),
            keyfile=key("keyfile"), verify_certs=key("verify_certs"),
            check_hostname=key("check_hostname"),
            sasl_mechanism=key("sasl_mechanism"))
    except ValueError as e:
        raise ValueError(f"{'zkzeoclient' if prefix else 'zookeeper'}: "
                         f"{e}") from None


class ZooKeeperConfig:
    """The <zookeeper> section of a zkrunzeo configuration."""

    def __init__(self, section):
        self.connection = section.connection
        self.path = section.path
        self.name = section.name
        self.session_timeout = section.session_timeout
        self.bootstrap = section.bootstrap
        self.advertise_host = section.advertise_host
        self.auto_failover = section.auto_failover
        # Credentials, ACL mode and TLS, read (auth-file) once, here.
        self.settings = zookeeper_settings(section)
        self.auth = self.settings.auth
        self.acl = self.settings.acl

    def server_name(self, configfile):
        if self.name:
            return self.name
        where = os.path.abspath(configfile) if configfile else os.getcwd()
        return f"{socket.gethostname()}:{where}"


class ZooKeeperClientStorageConfig(ClientStorageConfig):
    """<zkzeoclient>: ZEO's <clientstorage> with servers from ZooKeeper."""

    def open(self):
        from .zeoclient import ZooKeeperClientStorage
        config = self.config
        paths = [s.address for s in config.server]
        if len(paths) != 1 or not isinstance(paths[0], str):
            raise ValueError(
                "zkzeoclient: give exactly one server, the database's path "
                "in ZooKeeper (e.g. server /databases/main)")
        url = f"zk://{config.zookeeper}{zk_path(paths[0])}"
        options = {}
        if config.blob_cache_size is not None:
            options["blob_cache_size"] = config.blob_cache_size
        if config.blob_cache_size_check is not None:
            options["blob_cache_size_check"] = config.blob_cache_size_check
        if config.client_label is not None:
            options["client_label"] = config.client_label
        if config.ssl:
            options["ssl"], options["ssl_server_hostname"] = config.ssl
        settings = zookeeper_settings(config, "zookeeper_")
        return ZooKeeperClientStorage(
            url,
            zookeeper_session_timeout=config.zookeeper_session_timeout,
            zookeeper_settings=settings,
            blob_dir=config.blob_dir,
            shared_blob_dir=config.shared_blob_dir,
            storage=config.storage,
            cache_size=config.cache_size,
            cache=config.cache_path,
            name=config.name,
            read_only=config.read_only,
            read_only_fallback=config.read_only_fallback,
            server_sync=config.server_sync,
            wait_timeout=config.wait_timeout,
            **options)
