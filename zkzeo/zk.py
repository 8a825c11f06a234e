"""Connecting to ZooKeeper with kazoo (threading handler).

kazoo does the real work: it reconnects to another ensemble member when one
dies, retries operations (``client.retry``) and keeps the session alive.
Here we only give it our settings and turn "cannot connect" into a clear
error or a patient wait with one log line per attempt.
"""
import atexit
import functools
import logging
import threading

from kazoo.client import KazooClient
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.retry import KazooRetry
from kazoo.security import ACL, Id, Permissions, make_digest_acl

logger = logging.getLogger(__name__)

EXIT_TIMEOUT = 2.0


class ZooKeeperUnreachable(Exception):
    """No ZooKeeper server of the ensemble answered in time."""


def make_client(hosts, session_timeout=10.0, auth=None, acl=None):
    """A KazooClient (not started).

    ``session_timeout`` is in seconds (kazoo's unit; zc.zkzeo documented
    milliseconds and passed them as seconds).  ``auth`` is "user:password"
    for digest authentication; ``acl``, if true, makes nodes we create
    readable by everyone and writable only by that user.
    """
    auth_data = [("digest", auth)] if auth else None
    default_acl = None
    if auth and acl:
        user, _, password = auth.partition(":")
        default_acl = [make_digest_acl(user, password, all=True),
                       ACL(Permissions.READ, Id("world", "anyone"))]
    client = KazooClient(
        hosts=hosts, timeout=session_timeout, auth_data=auth_data,
        default_acl=default_acl,
        connection_retry=KazooRetry(max_tries=-1, delay=0.1, backoff=2,
                                    max_delay=2.0, ignore_expire=False),
        command_retry=KazooRetry(max_tries=5, delay=0.1, backoff=2,
                                 max_delay=2.0))
    client.zkzeo_hosts = hosts     # for messages
    return client


def start(client, timeout):
    """Start ``client``; ZooKeeperUnreachable if not connected in time."""
    try:
        client.start(timeout=timeout)
    except KazooTimeoutError:
        client.stop()
        client.close()
        raise ZooKeeperUnreachable(
            f"could not reach ZooKeeper at {_hosts(client)} "
            f"within {timeout:g}s; check the ensemble address and that "
            "ZooKeeper is running") from None
    return _exit_without_waiting(client)


def start_patiently(client, attempt_timeout=5.0, stopping=lambda: False):
    """Start ``client``, waiting as long as it takes (servers do this).

    Logs one warning per attempt, so an operator sees why a server is not
    up yet, and returns once connected.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            client.start(timeout=attempt_timeout)
            if attempt > 1:
                logger.info("connected to ZooKeeper at %s after %d attempts",
                            _hosts(client), attempt)
            return _exit_without_waiting(client)
        except KazooTimeoutError:
            client.stop()
            if stopping():
                raise ZooKeeperUnreachable(
                    f"gave up reaching ZooKeeper at {_hosts(client)}")
            logger.warning("ZooKeeper at %s is unreachable (attempt %d); "
                           "still trying", _hosts(client), attempt)


def _exit_without_waiting(client):
    """Let the process exit even if ``client`` is never stopped.

    kazoo registers its handler's ``stop`` with atexit, which joins kazoo's
    callback thread; a watch callback blocked in a call to an unreachable
    ZooKeeper never returns (kazoo reconnects for ever), and the process
    never exits.  Our exit hook stops the client with a bounded wait.
    """
    atexit.unregister(client.handler.stop)
    hook = client.zkzeo_exit_hook = functools.partial(stop, client,
                                                      EXIT_TIMEOUT)
    atexit.register(hook)
    return client


def stop(client, timeout=5.0):
    """Stop and close ``client`` without ever hanging the caller.

    kazoo's stop() joins its callback thread; a watch callback that fired
    as the connection closed can be blocked for ever in a synchronous call
    whose answer will never come.  So stop in a daemon thread, and give up
    waiting after ``timeout`` seconds (the thread ends with the process).
    """
    hook = getattr(client, "zkzeo_exit_hook", None)
    if hook is not None:
        atexit.unregister(hook)
    # kazoo's own exit hook would wait for a blocked callback for ever.
    atexit.unregister(client.handler.stop)

    def run():
        client.stop()
        client.close()
    thread = threading.Thread(target=run, name="kazoo-stop", daemon=True)
    try:
        thread.start()
    except RuntimeError:            # at interpreter shutdown: leave it
        return
    thread.join(timeout)
    if thread.is_alive():
        logger.warning("the ZooKeeper client to %s did not stop within %gs "
                       "(a kazoo callback is blocked); leaving it behind",
                       _hosts(client), timeout)


def _hosts(client):
    return getattr(client, "zkzeo_hosts", "?")
