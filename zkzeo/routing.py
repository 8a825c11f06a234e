"""Where a zkzeo client should connect: a pure function of what ZooKeeper
says and of what the client knows about its own connection.

``route(snapshot, mode, current, lost)`` returns a ``Route``: the ZEO
addresses to use, whether to leave the current connection now, whether to
keep a read-only connection while trying for a writable one, and a
sentence that says why.  Nothing here does I/O; tests build snapshots.

The rules (servers say what they are in their nodes, see layout.py):

* The *writable primary* is the server the cluster state names, registered
  as primary in the state's epoch, that advertises ``writable``.  There is
  at most one.
* ``WRITE`` clients use the writable primary alone, and nothing while there
  is none (a secondary would refuse their read-write registration, and ZEO
  would wait some 9 s before it tried again).
* ``FALLBACK`` clients use the writable primary when there is one, else
  the following secondaries.  A fallback client connected read-only while
  a writable primary exists keeps its connection and tries the primary: ZEO
  never retries a read-only connection by itself.  After losing its
  connection to the writable primary (whose node lives until its session
  expires) it also tries the following secondaries, to keep reading.
* ``READ`` clients spread over the following secondaries, or use the
  writable primary when none follows.
* Secondaries that are catching up, connecting, diverged or stopped, and a
  primary that does not accept writes, get no clients; with one exception:
  while no server follows and no primary accepts writes (a primary just
  died: its secondaries lost their stream), read and fallback clients read
  from secondaries that are connecting or catching up rather than not at
  all; so does a fallback client that lost its connection to the primary.
  Diverged and stopped secondaries never get clients.
* A client leaves (closes) a writable connection once the cluster state
  names another primary: ZEO has no request timeout, and a hung primary
  would hold it for ever.  (Not merely because the server's node is gone:
  a re-created node is missing for an instant.)
  It leaves a read-only connection to a server that is no longer
  registered, that says it diverged or stopped, or that says it is a
  primary the cluster state no longer names.
"""
from dataclasses import dataclass

from .layout import (CATCHING_UP, CONNECTING, DIVERGED, FOLLOWING, PRIMARY,
                     SECONDARY, STOPPED, format_address)

WRITE, FALLBACK, READ = "write", "fallback", "read"
MODES = (WRITE, FALLBACK, READ)

_WHO = {WRITE: "write client", FALLBACK: "fallback client",
        READ: "read-only client"}


@dataclass(frozen=True)
class Connection:
    """The client's current connection, as ZEO reports it."""
    address: tuple
    read_only: bool


@dataclass(frozen=True)
class Route:
    addresses: tuple
    sentence: str
    leave: bool = False     # close the current connection now
    upgrade: bool = False   # keep it (read-only), try addresses for writes


def writable_primary(snapshot):
    """The server that accepts writes now, or None."""
    primary = snapshot.primary
    if primary is not None and primary.role == PRIMARY and \
            primary.writable and primary.epoch == snapshot.state.epoch:
        return primary
    return None


def following(snapshot):
    return [s for s in snapshot.servers
            if s.role == SECONDARY and s.replication_state == FOLLOWING]


def _stale_readable(snapshot):
    return [s for s in snapshot.servers if s.role == SECONDARY and
            s.replication_state in (CONNECTING, CATCHING_UP)]


def _names(servers):
    return ", ".join(s.name for s in servers)


def _candidates(snapshot, mode, primary, lost_primary):
    """(servers, why) for a client of ``mode``."""
    readers = following(snapshot)
    why_readers = "following secondaries"
    stale = not readers and (primary is None or lost_primary)
    if stale and mode != WRITE:
        readers = _stale_readable(snapshot)
        why_readers = "no server follows: secondaries not following yet"
    if mode == WRITE:
        if primary is not None:
            return [primary], f"{primary.name} is the writable primary"
        return [], _no_primary(snapshot)
    if mode == FALLBACK:
        if primary is not None and not lost_primary:
            return [primary], f"{primary.name} is the writable primary"
        if primary is not None:
            return [primary] + readers, (
                f"the connection to {primary.name} was lost: "
                f"{primary.name} and {why_readers}")
        return readers, f"{_no_primary(snapshot)}; {why_readers}"
    if readers and stale:
        return readers, f"{_no_primary(snapshot)}; {why_readers}"
    if readers:
        return readers, why_readers
    if primary is not None:
        return [primary], "no secondary follows"
    return [], f"{_no_primary(snapshot)}; no server follows"


def _no_primary(snapshot):
    state = snapshot.state
    if state.primary is None:
        return "the cluster state names no primary"
    named = snapshot.primary
    if named is None:
        return f"primary {state.primary} (epoch {state.epoch}) is not " \
            "registered"
    return f"primary {state.primary} (epoch {state.epoch}) does not " \
        "accept writes"


def _must_leave(snapshot, current, by_address):
    """Why the current connection must be closed now, or None."""
    server = by_address.get(current.address)
    where = server.name if server else format_address(current.address)
    state = snapshot.state
    named = snapshot.primary
    replaced = (f"{where} is no longer primary ({state.primary or 'none'} "
                f"is, epoch {state.epoch})")
    if not current.read_only:
        # Only once ZooKeeper names another: a node that vanishes for an
        # instant (re-created) or a session that expires says nothing
        # about who accepts writes.
        if server is not None and server.name != state.primary:
            return replaced
        if server is None and named is not None:
            return replaced
        return None
    if server is None:
        return f"{where} is no longer registered"
    if server.role == PRIMARY and server.name != state.primary:
        return replaced
    if server.role == SECONDARY and \
            server.replication_state in (DIVERGED, STOPPED):
        return f"{where} has " + (
            "stopped" if server.replication_state == STOPPED else "diverged")
    return None


def route(snapshot, mode, current=None, lost=None):
    """Where a client of ``mode`` should connect.

    ``current`` is its Connection (None when not connected); ``lost`` the
    address of the server whose connection it lost last, if it has not
    had a writable connection since.
    """
    if mode not in MODES:
        raise ValueError(f"unknown client mode {mode!r}")
    primary = writable_primary(snapshot)
    lost_primary = mode == FALLBACK and primary is not None and \
        lost == primary.address
    servers, why = _candidates(snapshot, mode, primary, lost_primary)
    addresses = tuple(s.address for s in servers)
    who = _WHO[mode]
    use = _names(servers) or "no server"
    if current is not None:
        by_address = {s.address: s for s in snapshot.servers}
        reason = _must_leave(snapshot, current, by_address)
        if reason is not None:
            return Route(addresses, f"{who}: {reason}: leaving it; "
                         f"{why}: {use}", leave=True)
        if mode == FALLBACK and current.read_only and primary is not None:
            return Route(addresses, (
                f"{who} connected read-only while {primary.name} accepts "
                f"writes in epoch {snapshot.state.epoch}: trying {use}"),
                upgrade=True)
    return Route(addresses, f"{who}: {why}: {use}")
