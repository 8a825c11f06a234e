"""FileStorage's fsync, hooked for replication.

FileStorage fsyncs its file in every ``tpc_finish``, through its module's
``fsync`` function; we put a wrapper there that does two things.

**Group commit on secondaries** (``fsync_deferred``).  A secondary applies
its source's transactions one by one, so it would fsync once per
transaction: that bounds a catching-up or busy secondary to the disk's
fsync rate, and every fsync is disk and journal work that a primary on the
same machine waits behind.  A secondary needs less: what it acknowledges
must be durable (the primary counts on it), what it has merely applied can
be fetched again from its source after a crash.  So the follower applies
transactions without fsync and fsyncs the file once before each
acknowledgement (``Follower.make_durable``): once per burst for a
synchronous source, at most every ``ACK_INTERVAL`` otherwise.  Only
commits inside ``fsync_deferred()`` on the current thread skip the call.

**Work during a primary's fsync** (``before_fsync``).  When a primary's
FileStorage fsyncs a commit, the transaction's bytes are complete in the
file already, and the committing thread is about to wait for the disk with
the GIL released.  A registered callback runs just before that wait: the
source uses it to have its hub read and encode the transaction meanwhile,
so the committing thread only has to write it out afterwards.
"""
import contextlib
import importlib
import logging
import threading

logger = logging.getLogger(__name__)

# The module, not the class that ZODB.FileStorage exports under its name.
filestorage_module = importlib.import_module("ZODB.FileStorage.FileStorage")

_deferring = threading.local()
_announced = ()       # (storage, callback): copied on change, read anywhere
_registry_lock = threading.Lock()


def _fsync(fd):
    if getattr(_deferring, "active", False):
        return
    try:
        for get_storage, callback in _announced:
            file = getattr(get_storage(), "_file", None)
            if file is not None and not file.closed and \
                    file.fileno() == fd:
                callback()
                break
    except Exception:
        # Never fail a commit for this: FileStorage would close itself.
        logger.exception("before-fsync callback failed")
    if _real_fsync is not None:
        _real_fsync(fd)


def before_fsync(get_storage, callback):
    """Call ``callback()`` in the committing thread whenever the FileStorage
    that ``get_storage()`` returns is about to fsync a commit; return a
    function that unregisters it."""
    global _announced
    entry = (get_storage, callback)
    with _registry_lock:
        _announced = _announced + (entry,)

    def unregister():
        global _announced
        with _registry_lock:
            _announced = tuple(e for e in _announced if e is not entry)
    return unregister


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
