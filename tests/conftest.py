"""Suite-wide settings: one torch thread per test process, and no test may touch the network.

Every socket ``connect`` to a non-loopback address, and every host-name lookup of a
host other than localhost, raises in the test process (tests build small files in the
real formats instead of downloading data). Loopback stays allowed: the DDP test talks
to itself over 127.0.0.1 (its spawned workers do not load this file anyway).
"""
import ipaddress
import os
import socket

import pytest
import torch

# One intra-op thread per test process: `make test` runs 2 xdist workers on 2 cores, and tiny
# ops in OpenMP regions on oversubscribed cores each cost a time slice (gradcheck of the ridge
# solution: 0.7 s with 1 thread, 40-60 s with the default under load). Tests that compare runs
# across processes pass torch.get_num_threads() on (tests/test_cli.py). Override with
# METASPARSE_TEST_THREADS=N.
torch.set_num_threads(int(os.environ.get("METASPARSE_TEST_THREADS", "1")))

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
