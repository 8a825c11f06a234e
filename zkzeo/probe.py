"""Asking running ZEO servers about themselves, as a ZEO client would.

The last transaction, connection counts and whether writes are accepted
come from the servers (ZEO's own ``server_status`` call), never from
ZooKeeper: nothing is written there per commit.
"""
import logging
import threading
import time

from ZEO.ClientStorage import ClientStorage
from ZEO.Exceptions import ClientDisconnected

logger = logging.getLogger(__name__)


def _client(address, read_only, timeout):
    return ClientStorage(address, read_only=read_only, wait_timeout=timeout,
                         cache_size=1 << 20, name="zkzeo-probe")


def server_status(address, timeout=5.0):
    """ZEO's status dict of the server at ``address`` (its
    ``last-transaction`` as hex, ``connections``...), or None."""
    try:
        client = _client(address, True, timeout)
    except (ClientDisconnected, OSError) as e:
        logger.debug("no status from %s: %s", address, e)
        return None
    try:
        return client.server_status()
    except Exception as e:
        logger.debug("no status from %s: %s", address, e)
        return None
    finally:
        client.close()


def statuses(addresses, timeout=5.0):
    """{address: status or None}, asked of all servers at once.

    Returns within ``timeout`` (plus a little) whatever happens: a server
    that accepted the connection but hangs (SIGSTOP, a long GC pause) is
    None.  Each question runs in a daemon thread, so one that never ends
    cannot keep the process from exiting (ZEO has no request timeout once
    connected).
    """
    results = {}
    threads = []
    for address in addresses:
        def ask(address=address):
            results[address] = server_status(address, timeout)
        thread = threading.Thread(target=ask, daemon=True,
                                  name=f"zkzeo-probe {address}")
        thread.start()
        threads.append(thread)
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return {address: results.get(address) for address in addresses}


def accepts_writes(address, timeout=5.0):
    """True if a read-write ZEO client can register with the server."""
    try:
        client = _client(address, False, timeout)
    except (ClientDisconnected, OSError):
        return False
    try:
        return not client.isReadOnly()
    finally:
        client.close()
