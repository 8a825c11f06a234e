"""``zkrunzeo``: a ZEO server that registers in ZooKeeper and takes its role
(primary or secondary) from the cluster state there.

It is ZEO's runzeo, extended through ``ZEOServer``'s hooks:

* ``open_storages`` connects to ZooKeeper (waiting, with a log line per
  attempt, while it is unreachable), reads the cluster state, decides the
  role (``ha.decide_start``; bootstrap is a compare-and-set), and opens each
  ``<replication>`` section with ``replicate-from zk:`` as a primary or as a
  secondary that follows whichever server ZooKeeper names primary;
* ``create_server`` registers ``PATH/HOST:PORT`` with the real, reachable
  address once the ZEO server listens;
* ``close_server`` removes the node first, so clients stop using the server
  at once on a clean stop (SIGTERM).

Threads of one server::

    main thread        ZEO's asyncio loop: client connections, the storage
                       API (a commit's tpc_* run here and check fencing and
                       the write lease), and tpc_finish's wait for ACKs.
    replication hub    gevent, one thread (replication/hub.py): the source's
                       stream server and the follower's stream client.
    kazoo's threads    connection and event threads: ClusterView watches,
                       connection-state listeners, re-registration.
    zkzeo-controller   the HA loop (controller.py): snapshot -> ha.decide ->
                       action; role changes of the storage.
    zkzeo-lease        renews the write lease (lease.py).

    crossings:  kazoo -> controller         an Event (wake), never blocking
                lease -> controller         the same Event
                lease -> storage            ``lease_until`` (a float)
                controller -> storage       fenced / become_primary /
                                            become_secondary (role lock);
                                            ZEO's connections closed through
                                            StorageServer._invalidateCache
                follower (hub) -> snapshot  ``primary_replication_address``
                                            reads the immutable Snapshot
"""
import logging
import os
import socket

from kazoo.exceptions import BadVersionError, NodeExistsError

import replication.runzeo
import ZEO.runzeo
from replication.address import parse_address
from replication.config import ReplicationConfig

from replication.storage import ReplicatedStorage

from . import ha, history, zk
from .controller import Controller
from .discovery import ClusterView
from .layout import PRIMARY, SECONDARY, ServerInfo, format_address
from .registry import Registration

logger = logging.getLogger(__name__)


class ZKZEOOptions(ZEO.runzeo.ZEOOptions):
    schemadir = os.path.dirname(os.path.abspath(__file__))

    def __init__(self):
        super().__init__()
        self.add("zookeeper", "zookeeper")


class ZKZEOServer(replication.runzeo.ZEOServer):

    zk = None
    view = None
    registration = None
    controller = None
    role = None

    def open_storages(self):
        config = self.options.zookeeper
        self.server_name = config.server_name(self.options.configfile)
        # Before anything is claimed or registered: a server that would
        # refuse its configuration later must not be named primary first.
        check_configuration(self.options)
        self.zk = zk.start_patiently(zk.make_client(
            config.connection, session_timeout=config.session_timeout,
            settings=config.settings))
        zk.ensure_cluster_path(self.zk, config.path)
        self.view = ClusterView(self.zk, config.path)
        self.view.wait_ready(30)
        self.role, self.epoch = self._decide_role(config)
        self.storages = {}
        for opener in self.options.storages:
            self.storages[opener.name] = self._open(opener)

    def _decide_role(self, config):
        while True:
            snapshot = self.view.refresh()
            action, sentence = ha.decide_start(snapshot, self.server_name,
                                               config.bootstrap)
            if action is ha.Start.BOOTSTRAP:
                state = ha.bootstrap_state(self.server_name)
                try:
                    self.zk.set(config.path, state.to_bytes(),
                                version=snapshot.state_version)
                except (BadVersionError, NodeExistsError):
                    logger.info("the cluster state changed while %s tried "
                                "to bootstrap; deciding again",
                                self.server_name)
                    continue
                history.record_later(self.zk, config.path, snapshot.state,
                                     state)
                logger.info("%s", sentence)
                return PRIMARY, state.epoch
            logger.info("%s", sentence)
            role = PRIMARY if action is ha.Start.PRIMARY else SECONDARY
            return role, snapshot.state.epoch

    def _open(self, opener):
        if isinstance(opener, ReplicationConfig) and opener.follows_cluster:
            if self.role == PRIMARY:
                storage = opener.open_primary()
            else:
                storage = opener.open_secondary(
                    self.primary_replication_address)
            storage.epoch = self.epoch
            # Commits need the write lease (lease.py) from the moment the
            # ZEO server listens, before the controller runs.
            storage.lease_until = 0.0
            return storage
        if self.role == SECONDARY:
            raise SystemExit(
                f"{self.server_name} must run as a secondary, but storage "
                f"{opener.name!r} cannot follow a primary: use a "
                "<replication> section with replicate-from zk:")
        return opener.open()

    def primary_replication_address(self):
        """The replication address of the primary ZooKeeper names now."""
        primary = self.view.snapshot.primary
        if primary is None or primary.name == self.server_name:
            return None
        return primary.replication

    def create_server(self):
        super().create_server()
        config = self.options.zookeeper
        # A TCP address: check_configuration refused a unix socket.
        address = replication.runzeo.bound_address(self.server)
        info = ServerInfo(
            name=self.server_name, role=self.role,
            address=(self._advertised_host(address[0]), address[1]),
            epoch=self.epoch, pid=os.getpid(),
            replication=self._replication_address(),
            # Without replication nothing fences it: a lone primary.
            writable=self.role == PRIMARY)
        replicated = [s for s in self.storages.values()
                      if isinstance(s, ReplicatedStorage)]
        if replicated:
            info = info.with_(writable=False, replication_state=(
                None if self.role == PRIMARY else "connecting"))
        self.registration = Registration(self.zk, config.path, info)
        self.registration.register()
        if replicated:
            self.controller = Controller(
                self.zk, self.view, self.registration, replicated[0], config,
                self.primary_replication_address)
            self.controller.start()

    def _advertised_host(self, host):
        if host in ("", "0.0.0.0", "::"):
            return self.options.zookeeper.advertise_host or socket.getfqdn()
        return host

    def _replication_address(self):
        for storage in self.storages.values():
            address = getattr(storage, "replication_address", None)
            if isinstance(address, tuple):
                return format_address(
                    (self._advertised_host(address[0]), address[1]))
        return None

    def close_server(self):
        if self.controller is not None:
            self.controller.stop()
        if self.registration is not None:
            self.registration.close()
        if self.view is not None:
            self.view.stop()
        try:
            super().close_server()
        finally:
            if self.zk is not None:
                zk.stop(self.zk)


def check_configuration(options):
    """SystemExit naming what is wrong with a zkrunzeo configuration."""
    replicated = [o for o in options.storages
                  if isinstance(o, ReplicationConfig)]
    if len(replicated) > 1:
        raise SystemExit("zkrunzeo serves one replicated storage (one "
                         "database per ZooKeeper path); run one server per "
                         "database")
    for opener in replicated:
        c = opener.config
        if not opener.follows_cluster:
            raise SystemExit(
                f"storage {opener.name!r}: with a <zookeeper> section, "
                "ZooKeeper decides which server is primary, so the "
                "<replication> section must say 'replicate-from zk:' (and "
                "'replicate-to' for the address it serves replication on); "
                f"fixed roles ({'replicate-from ' + c.replicate_from if c.replicate_from else 'replicate-to only'}) "
                "are for zkzeo-runzeo without ZooKeeper")
        if not c.replicate_to:
            raise SystemExit(
                f"storage {opener.name!r}: replicate-from zk: needs "
                "replicate-to too (a TCP address such as :0): every server "
                "of a cluster may become primary and serve replication")
        if isinstance(parse_address(c.replicate_to), str):
            raise SystemExit(
                f"storage {opener.name!r}: replicate-to {c.replicate_to} is "
                "a unix socket, which other servers cannot reach; give a "
                "TCP address (HOST:PORT or :0)")
    if isinstance(options.address, str):
        raise SystemExit("zkrunzeo needs a TCP address for the ZEO server "
                         "(clients find it in ZooKeeper), not the unix "
                         f"socket {options.address}")


def main(args=None):
    options = ZKZEOOptions()
    options.realize(args)
    ZKZEOServer(options).main()


if __name__ == "__main__":
    main()
