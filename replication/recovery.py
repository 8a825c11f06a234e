"""Recovery, on opening, from a transaction torn by a crash.

FileStorage writes a transaction into Data.fs in ``tpc_vote`` (its status
byte says "checkpoint", not committed) and marks it committed in
``tpc_finish``.  A process killed between the two leaves that transaction,
never committed, at the end of the file.  The next FileStorage to open the
file cuts it off (FileStorage keeps the bytes it cuts in ``Data.fs.trN``)
but its ``lastTransaction()`` still names the cut transaction: a tid that
is in no file.  Whatever trusts ``lastTransaction()`` then goes wrong: a
secondary's handshake cannot read its own last transaction, clients are
told of a tid that does not exist, an election compares it.

``recover_torn_transaction`` runs right after a replicated storage's
FileStorage is opened: when the last transaction is not in the file (which
FileStorage has cut back to its last complete transaction, keeping the cut
bytes), it opens the file again, which then names the right one, and says
so in one warning.  tests/test_recovery.py checks FileStorage's part too.
"""
import glob
import logging
import os

from ZODB.FileStorage import FileStorage

from .protocol import Z64
from .records import open_iterator

logger = logging.getLogger(__name__)


class RecoveryError(Exception):
    """The storage's last transaction is missing even after reopening."""


def last_transaction_is_whole(storage):
    """Whether ``storage.lastTransaction()`` is a transaction its
    iterator finds: true for every storage after a clean shutdown."""
    last = storage.lastTransaction()
    if last == Z64:
        return True
    it = open_iterator(storage, last, last)
    try:
        for txn in it:
            return txn.tid == last
        return False
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


def recover_torn_transaction(storage, reopen):
    """Return ``storage``, or, when its last transaction was torn by a
    crash, the storage ``reopen()`` gives once the file ends with its last
    complete transaction (``storage`` is closed then)."""
    if not isinstance(storage, FileStorage) or storage.isReadOnly() or \
            last_transaction_is_whole(storage):
        return storage
    path = storage.getName()
    torn = storage.lastTransaction()
    storage.close()
    kept = _newest_truncation_copy(path)
    storage = reopen()
    if not last_transaction_is_whole(storage):
        last = storage.lastTransaction()
        storage.close()
        raise RecoveryError(
            f"{path}: the last transaction {last.hex()} is not in the file "
            "even after reopening it; move the file aside and rebuild this "
            "server from another one")
    logger.warning(
        "%s: its last transaction %s was torn by a crash (written, never "
        "committed) and was cut off (%s); reopened at the last complete "
        "transaction %s",
        path, torn.hex(),
        f"its bytes are kept in {kept}" if kept else "no bytes of it were "
        "left", storage.lastTransaction().hex())
    return storage


def _newest_truncation_copy(path):
    # FileStorage's name for the bytes it cut off: path.tr0, .tr1, ...
    copies = [p for p in glob.glob(glob.escape(path) + ".tr*")
              if p[len(path) + 3:].isdigit()]
    return max(copies, key=os.path.getmtime, default=None)
