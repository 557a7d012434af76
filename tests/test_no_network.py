"""The suite-wide network guard of tests/conftest.py works (and loopback stays usable)."""
import socket
import urllib.request

import pytest


def test_connect_to_a_remote_address_is_refused():
    with pytest.raises(RuntimeError, match="must not touch the network"):
        socket.create_connection(("93.184.216.34", 80), timeout=1)


def test_host_name_lookup_is_refused():
    with pytest.raises(RuntimeError, match="must not touch the network"):
        urllib.request.urlopen("http://example.com", timeout=1)


def test_loopback_stays_usable():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname(), timeout=1)
    client.close()
    server.close()
