"""Helpers shared by the tests: waiting for conditions, running servers."""
import os
import signal
import subprocess
import sys
import time

DEFAULT_TIMEOUT = 60


def wait_for(predicate, what, timeout=DEFAULT_TIMEOUT, interval=0.01):
    """Wait until predicate() is true; fail saying `what` never happened."""
    deadline = time.monotonic() + timeout
    last_error = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except AssertionError:
            raise                # a definite failure (a process died...)
        except Exception as e:  # the condition may not be checkable yet
            last_error = e
        if time.monotonic() > deadline:
            extra = f" (last error: {last_error!r})" if last_error else ""
            raise AssertionError(
                f"timed out after {timeout}s waiting for: {what}{extra}")
        time.sleep(interval)


class Process:
    """A child process whose output goes to a log file; killed on stop."""

    def __init__(self, args, log_path, env=None, cwd=None):
        self.args = args
        self.log_path = log_path
        self.log = open(log_path, "ab")
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.popen = subprocess.Popen(
            args, stdout=self.log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=full_env, cwd=cwd,
            start_new_session=True)

    @property
    def pid(self):
        return self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def output(self):
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def kill(self):
        if self.alive():
            os.kill(self.popen.pid, signal.SIGKILL)
        self.popen.wait()

    def terminate(self, timeout=30):
        if self.alive():
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.popen.wait()

    def stop(self):
        self.terminate()
        self.log.close()


PYTHON = sys.executable


def replica_db(storage, at_least=b"\0" * 8):
    """A ZODB.DB over a read-only client storage, once the storage has a
    transaction after ``at_least`` (ZODB.DB writes the root object when the
    storage is empty, which a read-only storage refuses)."""
    import ZODB
    try:
        wait_for(lambda: storage.lastTransaction() > at_least,
                 "the replica to have the data")
        return ZODB.DB(storage)
    except BaseException:
        storage.close()
        raise


class ServerProcess:
    """A server process of the tests, in its own directory (Data.fs and
    blobs there); start() again after stop() or kill() (each start logs to
    a new file).  Subclasses write the configuration and say what a
    started server prints."""

    module = None          # run as: python -m MODULE -C CONFIG
    log_name = "server"

    def __init__(self, directory, name):
        self.name = name
        self.directory = os.path.join(str(directory), name)
        os.makedirs(self.directory, exist_ok=True)
        self.path = os.path.join(self.directory, "Data.fs")
        self.blobs = os.path.join(self.directory, "blobs")
        self.process = None
        self.starts = 0

    def write_config(self):
        raise NotImplementedError

    def launch(self):
        self.starts += 1
        self.process = Process(
            [PYTHON, "-m", self.module, "-C", self.write_config()],
            os.path.join(self.directory,
                         f"{self.log_name}-{self.starts}.log"),
            env={"PYTHONPATH": os.pathsep.join(sys.path)})

    def check_alive(self):
        if not self.process.alive():
            raise AssertionError(
                f"{self.module} {self.name} exited:\n{self.output()}")
        return True

    def output(self):
        return self.process.output()

    def kill(self):
        self.process.kill()

    def pause(self):
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self):
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self):
        if self.process is not None:
            if self.process.alive():
                self.resume()
            self.process.stop()
