"""Expected refusals in one log line, not a traceback.

During a failover, and whenever a client tries a server that is not (or no
longer, or not yet) the primary, ZEO refuses the client's registration or
its vote with ``ReadOnlyError``, and logs each refusal as an ERROR with a
traceback, on the server ("`'register'` raised exception", "While
voting") and on the client ("from server: ReadOnlyError", "Registration or
cache validation failed").  These are normal operation in a replicated
cluster.  ``install()`` adds a logging filter to ZEO's loggers that turns a
record carrying a ``ReadOnlyError`` into one INFO sentence with the reason
(a fenced primary's ``ReadOnlyError`` says why it refused), and a commit
that failed for want of acknowledgements (``SyncReplicationTimeout``, which
the storage has already logged at ERROR) into one line.  Every other
record, and every other exception, passes unchanged.
"""
import logging

from ZODB.POSException import ReadOnlyError

from .storage import SyncReplicationTimeout

ZEO_LOGGERS = ("ZEO.asyncio.server", "ZEO.StorageServer",
               "ZEO.asyncio.client")


class ExpectedRefusals(logging.Filter):

    def filter(self, record):
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, SyncReplicationTimeout):
            # Already said, at ERROR, by the storage: the commit failed
            # because no secondary acknowledged it in time.  No traceback.
            what = record.getMessage().rstrip(": ")
            record.msg, record.args = "%s %s", (what, exc)
            record.exc_info = record.exc_text = None
            return True
        if isinstance(exc, ReadOnlyError) or _is_read_only_reply(record):
            reason = str(exc) if exc is not None and str(exc) else \
                "it does not accept writes now"
            what = record.getMessage().rstrip(": ")
            record.msg = "%s: refused, read-only (%s)"
            record.args = (what, reason)
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def _is_read_only_reply(record):
    # ZEO's client logs a server's error reply as "%s from server: %s:%s"
    # with the exception's class name, without exc_info.
    args = record.args
    return (isinstance(args, tuple) and len(args) == 3 and
            "from server" in str(record.msg) and
            str(args[1]).endswith("ReadOnlyError"))


_FILTER = ExpectedRefusals()


def install():
    """Add the filter to ZEO's loggers (once)."""
    for name in ZEO_LOGGERS:
        log = logging.getLogger(name)
        if _FILTER not in log.filters:
            log.addFilter(_FILTER)
