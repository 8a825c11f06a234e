"""What a pack did to a replicated FileStorage, and packing a replica alike.

FileStorage's pack rewrites every transaction up to the pack time: records
that were no longer current (or no longer reachable) at that time go, the
transactions that keep some get status "p", and those that keep none are
gone.  Transactions after the pack time are copied as they were, tids
unchanged.  So after a pack, a secondary whose last transaction is at or
before the pack time finds it changed or missing on its source: that is not
divergence, its position was *packed away*.

FileStorage does not remember when it was packed, so a replicated storage
keeps that in a small file beside its Data.fs (``Data.fs.packed``, JSON):

- ``time``: the float given to ``FileStorage.pack``; the same float always
  gives the same ``stop`` tid, so a secondary packs to exactly the same point;
- ``stop``: that tid (transactions up to it were packed);
- ``last_tid``: the storage's last transaction when it packed; a replica
  holding the same transactions up to there, and packed with the same time,
  is the same file (FileStorage's pack is deterministic);
- ``last_digest``: the digest of that transaction *before* the pack, so a
  secondary that stood exactly there still proves its history (pack
  rewrote that transaction if it was at or before ``stop``).

``history_check`` decides, from that and a secondary's HELLO, whether the
secondary shares the source's history, was packed away, or diverged.
"""
import enum
import json
import logging
import math
import os
import time
from collections import namedtuple

from ZODB.FileStorage import FileStorage
from ZODB.serialize import referencesf
from ZODB.TimeStamp import TimeStamp

from .records import transaction_digest

logger = logging.getLogger(__name__)

SUFFIX = ".packed"


class PackState(namedtuple("PackState", "time stop last_tid last_digest")):
    """One pack: ``time`` (float), ``stop`` and ``last_tid`` (8-byte tids),
    ``last_digest`` (32 bytes)."""

    def to_json(self):
        return json.dumps({"time": self.time, "stop": self.stop.hex(),
                           "last_tid": self.last_tid.hex(),
                           "last_digest": self.last_digest.hex()})

    @classmethod
    def from_json(cls, text):
        d = json.loads(text)
        return cls(float(d["time"]), bytes.fromhex(d["stop"]),
                   bytes.fromhex(d["last_tid"]),
                   bytes.fromhex(d["last_digest"]))


def stop_tid(t):
    """The tid FileStorage.pack packs up to for time ``t`` (its formula)."""
    return TimeStamp(*time.gmtime(t)[:5] + (t % 60,)).raw()


def not_after(t, tid):
    """``t``, or, when ``t`` is later than transaction ``tid``, the earliest
    time whose stop tid is not before ``tid`` (a float cannot always name
    ``tid`` exactly; it is at most a fraction of a microsecond after it).
    A pack time far past the last transaction would pack the transactions
    committed *while* the pack runs on a secondary (which packs later, with
    them in its file) but not on the primary (which had them after the
    position where its pack started)."""
    limit = TimeStamp(tid).timeTime()
    if t <= limit:
        return t
    t = limit
    while stop_tid(t) < tid:
        t = math.nextafter(t, math.inf)
    return t


def state_path(storage):
    if not isinstance(storage, FileStorage):
        return None
    return storage.getName() + SUFFIX


def read_state(storage):
    """The last pack recorded for ``storage``, or None (never packed here,
    or not a FileStorage).  An unreadable file is logged and ignored: the
    worst that follows is one byte copy more."""
    path = state_path(storage)
    if path is None or not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return PackState.from_json(f.read())
    except (OSError, ValueError, KeyError, TypeError) as e:
        logger.warning("ignoring %s, which cannot be read: %s", path, e)
        return None


def write_state(storage, state):
    path = state_path(storage)
    if path is None:
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(state.to_json())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def pack(storage, t, gc=None, record=None):
    """Pack the FileStorage ``storage`` to time ``t`` and record it (or
    ``record``, the source's state, for a secondary); return the
    PackState.  ``gc`` None means the storage's own pack-gc setting."""
    last = storage.lastTransaction()
    if record is None and last != b"\0" * 8:
        t = not_after(t, last)
    digest = transaction_digest(storage, last)
    if gc is None:
        storage.pack(t, referencesf)
    else:
        storage.pack(t, referencesf, gc=gc)
    state = record or PackState(t, stop_tid(t), last, digest)
    write_state(storage, state)
    logger.info("packed %s to %s (up to tid %s)", storage.getName(),
                time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)),
                state.stop.hex())
    return state


class Verdict(enum.Enum):
    SAME = "same history"
    PACKED_AWAY = "packed away"
    MISSING = "divergent: not in the source's history"
    DIFFERENT = "divergent: differs from the source's"


def history_check(state, tid, digest, source_digest):
    """How a secondary whose last transaction is ``tid`` (with ``digest``)
    stands with a source whose own digest of ``tid`` is ``source_digest``
    (None: no such transaction) and whose last pack is ``state`` (or
    None).  Pure; the source refuses all but SAME."""
    if source_digest is not None and source_digest == digest:
        return Verdict.SAME
    if state is not None and tid <= state.stop:
        # Pack removed or rewrote it (status "p", fewer records), so it no
        # longer proves anything, except exactly where the pack began.
        if tid == state.last_tid and digest == state.last_digest:
            return Verdict.SAME
        return Verdict.PACKED_AWAY
    return Verdict.MISSING if source_digest is None else Verdict.DIFFERENT
