"""Refusals of read-only servers are one log line, not a traceback."""
import logging

import ZEO
from ZODB.POSException import ReadOnlyError

from replication import quietlogs
from replication.storage import SyncReplicationTimeout
from tests.support import wait_for


def test_a_refused_registration_is_one_line_on_the_server(cluster, tree):
    cluster("s1")
    s2 = cluster("s2")
    host, port = tree.by_name()["s2"]["address"].rsplit(":", 1)
    # A read-write client knocking on a secondary, as during a failover.
    client = ZEO.client((host, int(port)), wait=False)
    try:
        wait_for(lambda: "refused, read-only" in s2.output(),
                 "the secondary to refuse the registration")
    finally:
        client.close()
    assert "Traceback" not in s2.output()


def test_the_filter_keeps_other_errors_and_says_why(caplog):
    quietlogs.install()
    log = logging.getLogger("ZEO.StorageServer")
    with caplog.at_level(logging.INFO, logger="ZEO.StorageServer"):
        for exc in (ReadOnlyError("s1 stopped accepting commits (fenced)"),
                    SyncReplicationTimeout("transaction 0a was not "
                                           "acknowledged"),
                    KeyError("x")):
            try:
                raise exc
            except Exception:
                log.exception("While voting")
    refused, timeout, other = caplog.records
    assert (timeout.levelname, timeout.exc_info) == ("ERROR", None)
    assert timeout.getMessage() == ("While voting transaction 0a was not "
                                    "acknowledged")
    assert (refused.levelname, refused.exc_info) == ("INFO", None)
    assert refused.getMessage() == ("While voting: refused, read-only (s1 "
                                    "stopped accepting commits (fenced))")
    assert other.levelname == "ERROR" and other.exc_info is not None
