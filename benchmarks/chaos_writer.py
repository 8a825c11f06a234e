"""A writer process of the crash-and-freeze suite (``chaos.py``).

    chaos_writer.py URL KEY LOG PAUSE

Commits small transactions in a loop through ``zkzeo.DB(URL,
read_only_fallback=True)``: each stores a unique value ``KEY:SEQ`` under
SEQ in this writer's own BTree (``root["chaos"][KEY]["values"]``, created
by the harness) and SEQ in the same mapping.  Every commit whose
``transaction.commit()`` returned is acknowledged: the line
``A SEQ TID TIME`` goes to LOG at once (line-buffered, so it survives a
SIGKILL of this process).  Every error (ConflictError, ReadOnlyError,
ClientDisconnected...) is logged as ``E TIME CLASS MESSAGE`` and the next
attempt starts with a fresh transaction and a new SEQ; a failed attempt is
never counted as acknowledged, whatever the server did with it.

SIGTERM stops the loop after the attempt in progress.  PAUSE seconds pass
between acknowledged commits (leaving the CPU to the servers).
"""
import logging
import signal
import sys
import time

ERROR_PAUSE = 0.05
REOPEN_AFTER = 20          # consecutive errors before a new connection


def main(url, key, log_path, pause):
    stopping = []
    signal.signal(signal.SIGTERM, lambda *args: stopping.append(True))
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("zkzeo").setLevel(logging.INFO)

    import transaction
    import zkzeo

    out = open(log_path, "a", buffering=1)

    def error(e):
        message = " ".join(str(e).split())[:200]
        out.write(f"E {time.time():.6f} {type(e).__name__} {message}\n")

    db = None
    while db is None and not stopping:
        try:
            db = zkzeo.DB(url, read_only_fallback=True, wait_timeout=30)
        except Exception as e:
            error(e)
            time.sleep(ERROR_PAUSE)
    tm = transaction.TransactionManager()
    conn = None
    seq = 0
    failures = 0
    while not stopping:
        seq += 1
        try:
            if conn is None:
                conn = db.open(tm)
            tm.begin()
            mine = conn.root()["chaos"][key]
            mine["values"][seq] = f"{key}:{seq}"
            mine["seq"] = seq
            tm.commit()
        except Exception as e:
            error(e)
            try:
                tm.abort()
            except Exception as e2:
                error(e2)
            failures += 1
            if failures >= REOPEN_AFTER:
                failures = 0
                try:
                    conn.close()
                except Exception:
                    pass
                conn = None
            time.sleep(ERROR_PAUSE)
            continue
        failures = 0
        out.write(f"A {seq} {mine._p_serial.hex()} {time.time():.6f}\n")
        if pause:
            time.sleep(pause)
    out.close()
    if db is not None:
        db.close()


if __name__ == "__main__":
    url, key, log_path, pause = sys.argv[1:5]
    main(url, key, log_path, float(pause))
