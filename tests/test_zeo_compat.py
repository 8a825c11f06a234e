"""Canary for zkzeo/_zeo_compat.py: the ZEO internals zkzeo's client uses
are still there and still behave as we work around them.  If one of these
fails after a ZEO upgrade, read _zeo_compat.py's docstring and adapt it
(or drop a workaround ZEO no longer needs)."""
import inspect
import threading

import pytest
import ZEO
import ZEO.asyncio.base
import ZEO.asyncio.client
import ZEO.cache
from ZEO.ClientStorage import ClientStorage
from ZEO.Exceptions import ClientDisconnected

from tests.support import wait_for
from zkzeo import _zeo_compat
from zkzeo.routing import Connection


def test_zeo_private_names_are_there():
    client_io = ZEO.asyncio.client.ClientIO
    for name in ("manage_connected", "verify", "disconnected", "register",
                 "upgrade", "_clear_protocols", "try_connecting",
                 "new_addrs", "trying_to_connect"):
        assert callable(getattr(client_io, name)), name
    init = inspect.getsource(client_io.__init__)
    assert "self.addrs = addrs" in init
    assert "self.disconnected(None)" in init
    # What we work around: new_addrs ends in disconnected(None), which
    # cancels the future that callers waiting for a connection await.
    assert "self.disconnected(None)" in inspect.getsource(
        client_io.new_addrs)
    assert "self.connected.cancel()" in inspect.getsource(
        client_io.manage_connected)
    register = inspect.getsource(client_io.register)
    assert "self.upgrade(protocol)" in register
    assert "Fallback" in register
    protocol = ZEO.asyncio.client.Protocol
    assert "self.addr = addr" in inspect.getsource(protocol.__init__)
    assert "self.read_only = " in inspect.getsource(protocol.__init__)
    assert protocol.closed is False
    assert ZEO.asyncio.base.ZEOBaseProtocol.sm_protocol is None
    runner = ZEO.asyncio.client.ClientRunner
    assert "self.client = client = ClientIO(" in inspect.getsource(
        runner.setup_delegation)
    storage_init = inspect.getsource(ClientStorage.__init__)
    assert "_client_factory" in inspect.signature(
        ClientStorage.__init__).parameters
    for text in ("self._server = _client_factory(", "self._call = ",
                 "self._wait = self._server.wait",
                 "self._is_read_only = read_only"):
        assert text in storage_init, text
    assert "self._call('new_oids')" in inspect.getsource(
        ClientStorage.new_oid)
    cache = ZEO.cache.ClientCache(None, 1 << 20)
    try:
        assert hasattr(cache.current, "get")
        assert cache.f is not None and cache._lock is not None
    finally:
        cache.close()


def _wait_in_thread(storage):
    outcome = []

    def wait():
        try:
            storage._server.wait(60)
            outcome.append("connected")
        except ClientDisconnected as e:
            outcome.append(str(e))
    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    return thread, outcome


@pytest.mark.parametrize("ours", [False, True], ids=["zeo", "zkzeo"])
def test_new_addresses_and_a_pending_first_connection(tmp_path, ours):
    """Stock ZEO fails a caller waiting for the first connection when the
    address list changes; ours lets it wait for the new list."""
    addr, stop = ZEO.server(path=str(tmp_path / "Data.fs"))
    factory = {"_client_factory": _zeo_compat.ClientThread} if ours else {}
    storage = ClientStorage([str(tmp_path / "nobody.sock")], wait=False,
                            **factory)
    try:
        thread, outcome = _wait_in_thread(storage)
        storage.new_addr([addr])
        thread.join(60)
        assert outcome == ["connected" if ours else "connection cancelled"]
    finally:
        storage.close()
        stop()


def test_client_io_sees_and_leaves_its_connection(tmp_path):
    addr, stop = ZEO.server(path=str(tmp_path / "Data.fs"))
    storage = ClientStorage(addr, wait_timeout=60,
                            _client_factory=_zeo_compat.ClientThread)
    try:
        io = _zeo_compat.client_io(storage)
        assert isinstance(io, _zeo_compat.ClientIO)
        assert type(io.cache) is _zeo_compat.ClientCache
        connection = []
        done = threading.Event()

        def look():
            connection.append(io.connection())
            done.set()
        _zeo_compat.call_soon_in_io_thread(storage, look)
        assert done.wait(30)
        assert connection == [Connection(tuple(addr), False)]
        assert len(_zeo_compat.new_oids(storage)) > 1
        assert _zeo_compat.read_only_now(storage) is False
        # Leaving: ZEO hears of it as a lost connection and connects again.
        generation = storage._connection_generation
        _zeo_compat.call_soon_in_io_thread(storage, io.use, [addr], True)
        wait_for(lambda: storage._connection_generation >= generation + 2,
                 "the client to leave and connect again")
        wait_for(storage.is_connected, "the client to be connected again")
    finally:
        storage.close()
        stop()


def test_a_read_only_connection_is_kept_until_a_writable_one_registers(
        tmp_path):
    """ZEO's fallback upgrade, driven by ClientIO.use(..., upgrade=True)."""
    from ZODB.FileStorage import FileStorage
    FileStorage(str(tmp_path / "ro.fs")).close()
    ro_addr, stop_ro = ZEO.server(storage_conf=f"""
<filestorage>
  path {tmp_path / 'ro.fs'}
  read-only true
</filestorage>""")
    rw_addr, stop_rw = ZEO.server(path=str(tmp_path / "rw.fs"))
    storage = ClientStorage([ro_addr], read_only_fallback=True,
                            wait_timeout=60,
                            _client_factory=_zeo_compat.ClientThread)
    try:
        io = _zeo_compat.client_io(storage)

        def connection():
            seen = []
            done = threading.Event()
            _zeo_compat.call_soon_in_io_thread(
                storage, lambda: (seen.append(io.connection()), done.set()))
            assert done.wait(30)
            return seen[0]
        assert connection() == Connection(tuple(ro_addr), True)
        _zeo_compat.call_soon_in_io_thread(storage, io.use, [rw_addr],
                                           False, True)
        wait_for(lambda: connection() == Connection(tuple(rw_addr), False),
                 "the client to upgrade to the writable server")
        assert not storage.isReadOnly()
    finally:
        storage.close()
        stop_ro()
        stop_rw()


def test_new_addresses_keep_the_attempts_still_wanted(tmp_path):
    down = str(tmp_path / "nobody.sock")       # nothing listens there
    addr, stop = ZEO.server(path=str(tmp_path / "Data.fs"))
    storage = ClientStorage([down], wait=False,
                            _client_factory=_zeo_compat.ClientThread)
    try:
        io = _zeo_compat.client_io(storage)

        def on_io_thread(function, *args):
            result = []
            done = threading.Event()
            _zeo_compat.call_soon_in_io_thread(
                storage, lambda: (result.append(function(*args)), done.set()))
            assert done.wait(30)
            return result[0]
        before = on_io_thread(lambda: list(io.protocols))
        on_io_thread(io.use, [down, addr])
        after = on_io_thread(lambda: list(io.protocols))
        assert after[0] is before[0] and not before[0].closed
        assert [p.addr for p in after] == [down, addr]
        wait_for(storage.is_connected, "a connection to the new address")
        on_io_thread(io.use, [])
        assert on_io_thread(lambda: list(io.addrs)) == []
    finally:
        storage.close()
        stop()
