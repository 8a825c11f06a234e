"""Group commit for a secondary's FileStorage.

FileStorage fsyncs its file in every ``tpc_finish``.  A secondary applies
its source's transactions one by one, so it would fsync once per
transaction: that bounds a catching-up or busy secondary to the disk's
fsync rate, and every fsync is disk and journal work that a primary on the
same machine waits behind.  A secondary needs less: what it acknowledges
must be durable (the primary counts on it), what it has merely applied can
be fetched again from its source after a crash.  So the follower applies
transactions without fsync (``fsync_deferred``) and fsyncs the file once
before each acknowledgement (``Follower._make_durable``): once per burst
for a synchronous source, at most every ``ACK_INTERVAL`` otherwise.

FileStorage calls its module's ``fsync`` function; we put a wrapper there
that skips the call only inside ``fsync_deferred()`` on the current thread.
Every other commit in the process (a primary's, another thread's) fsyncs as
before.
"""
import contextlib
import importlib
import threading

# The module, not the class that ZODB.FileStorage exports under its name.
filestorage_module = importlib.import_module("ZODB.FileStorage.FileStorage")

_deferring = threading.local()


def _fsync(fd):
    if getattr(_deferring, "active", False):
        return
    if _real_fsync is not None:
        _real_fsync(fd)


# Installed once, at import (imports are serialized).
_real_fsync = filestorage_module.fsync      # os.fsync, or None
filestorage_module.fsync = _fsync


@contextlib.contextmanager
def fsync_deferred():
    """FileStorage commits in this thread skip their fsync meanwhile."""
    _deferring.active = True
    try:
        yield
    finally:
        _deferring.active = False
