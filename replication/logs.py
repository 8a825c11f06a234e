"""Log lines that name a peer, safely.

A peer's name (a secondary's HELLO name, a certificate's subject) is text
a stranger chose.  ``protocol.printable`` escapes its control characters
when it is decoded, so it cannot start a new line; ``PeerLog`` puts it in
front of every message of a connection without letting a ``%`` in it
take part in the message's %-formatting (which would drop the line or
change it).
"""
import logging


class PeerLog(logging.LoggerAdapter):
    """``role peer: message`` for every line of one connection."""

    def log(self, level, msg, *args, **kwargs):
        peer = self.extra["peer"]
        if args:
            # logging formats msg % args only when there are args: then,
            # and only then, the peer's % signs must be doubled.
            peer = peer.replace("%", "%%")
        super().log(level, f"{self.extra['role']} {peer}: {msg}", *args,
                    **kwargs)
