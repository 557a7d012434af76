"""Suite-wide guard: no test may touch the network.

Every socket ``connect`` to a non-loopback address, and every host-name lookup of a
host other than localhost, raises in the test process (tests build small files in the
real formats instead of downloading data). Loopback stays allowed: the DDP test talks
to itself over 127.0.0.1 (its spawned workers do not load this file anyway).
"""
import ipaddress
import socket

import pytest

_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", ""}


def _is_loopback(host) -> bool:
    if host is None:
        return True
    host = host.decode() if isinstance(host, bytes) else str(host)
    if host.lower() in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback or ipaddress.ip_address(
            host.split("%")[0]).is_unspecified
    except ValueError:
        return False


class NetworkAccessInTests(RuntimeError):
    pass


@pytest.fixture(autouse=True, scope="session")
def _no_network():
    mp = pytest.MonkeyPatch()
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def _check(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
            raise NetworkAccessInTests(f"a test tried to connect to {address!r}; tests must not touch the network")

    def connect(sock, address):
        _check(sock, address)
        return real_connect(sock, address)

    def connect_ex(sock, address):
        _check(sock, address)
        return real_connect_ex(sock, address)

    def getaddrinfo(host, *args, **kwargs):
        if not _is_loopback(host):
            raise NetworkAccessInTests(f"a test tried to resolve {host!r}; tests must not touch the network")
        return real_getaddrinfo(host, *args, **kwargs)

    mp.setattr(socket.socket, "connect", connect)
    mp.setattr(socket.socket, "connect_ex", connect_ex)
    mp.setattr(socket, "getaddrinfo", getaddrinfo)
    yield
    mp.undo()
