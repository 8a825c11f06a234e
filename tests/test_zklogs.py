"""A ZooKeeper outage is a line a minute per message, not one per attempt."""
import logging

from zkzeo.zklogs import RepeatedLines


def test_a_repeated_warning_is_let_through_once_a_minute_with_a_count():
    now = [0.0]
    quiet = RepeatedLines(interval=60, clock=lambda: now[0])

    def record(message, level=logging.WARNING):
        return logging.LogRecord("kazoo.client", level, __file__, 1,
                                 message, (), None)

    dropped = "Connection dropped: socket connection error: Connection refused"
    passed = []
    for second in range(0, 150):          # an attempt every second
        now[0] = float(second)
        r = record(dropped)
        if quiet.filter(r):
            passed.append(r.getMessage())
    assert passed == [
        dropped,
        f"{dropped} (and 59 times more in the last 60s)",
        f"{dropped} (and 59 times more in the last 60s)"]
    # Other messages, and INFO lines, are not held back.
    assert quiet.filter(record("Zookeeper connection lost"))
    assert quiet.filter(record("Connecting to 127.0.0.1", logging.INFO))
    assert quiet.filter(record("Connecting to 127.0.0.1", logging.INFO))



def test_every_zookeeper_client_of_zkzeo_installs_it():
    from zkzeo import zk, zklogs
    zk.make_client("127.0.0.1:1")
    assert zklogs._FILTER in logging.getLogger("kazoo.client").filters
