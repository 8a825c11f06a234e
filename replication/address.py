"""Replication addresses: ``HOST:PORT``, ``:PORT``, ``[V6]:PORT`` or a unix
socket path (anything containing a ``/``).  Port 0 asks the OS for one."""


class AddressError(ValueError):
    pass


def parse_address(text):
    """Return (host, port) for TCP or a str path for a unix socket."""
    if isinstance(text, tuple):
        return text
    text = text.strip()
    if not text:
        raise AddressError("empty address")
    if "/" in text:
        return text
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]")
    try:
        port = int(port)
    except ValueError:
        raise AddressError(
            f"bad address {text!r}: expected HOST:PORT, :PORT or a unix "
            "socket path") from None
    if not 0 <= port < 65536:
        raise AddressError(f"bad address {text!r}: port out of range")
    return host, port


def format_address(addr):
    if isinstance(addr, str):
        return addr
    host, port = addr[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}"
