"""kazoo's reconnection messages, once a minute instead of every attempt.

While ZooKeeper is unreachable kazoo logs a WARNING for every connection
attempt ("Connection dropped: socket connection error: Connection
refused"), every second or two, in every server and client: a twelve-minute
outage was 764 lines per server.  ``install()`` adds a logging filter to
kazoo's client logger that lets a given message through at most once per
``INTERVAL`` seconds and says, with the next one let through, how many
were held back.  Other messages pass unchanged.
"""
import logging
import threading
import time

INTERVAL = 60.0
KAZOO_LOGGER = "kazoo.client"


class RepeatedLines(logging.Filter):

    def __init__(self, interval=INTERVAL, clock=time.monotonic):
        super().__init__()
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        self._seen = {}          # message -> (last let through, held back)

    def filter(self, record):
        if record.levelno < logging.WARNING:
            return True
        message = record.getMessage()
        now = self.clock()
        with self._lock:
            last, held = self._seen.get(message, (None, 0))
            if last is not None and now - last < self.interval:
                self._seen[message] = (last, held + 1)
                return False
            self._seen[message] = (now, 0)
            if len(self._seen) > 100:        # messages with changing parts
                self._seen = {message: (now, 0)}
        if held:
            record.msg = "%s (and %d times more in the last %.0fs)"
            record.args = (message, held, now - last)
        return True


_FILTER = RepeatedLines()


def install():
    """Add the filter to kazoo's client logger (once)."""
    log = logging.getLogger(KAZOO_LOGGER)
    if _FILTER not in log.filters:
        log.addFilter(_FILTER)
