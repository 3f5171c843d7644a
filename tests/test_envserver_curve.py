"""CurveZMQ: with a secret key the server talks only to clients that know its public key."""

from __future__ import annotations

import pytest
import zmq

from tests.rawwire import RawClient

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq was built without CURVE")


def test_curve_server_refuses_plain_clients_and_serves_curve_clients(make_server):
    public, secret = zmq.curve_keypair()
    server = make_server(curve_secret_key=secret)
    plain = RawClient(server.address, timeout_s=0.5)
    plain.send({"op": "ping"})
    with pytest.raises(TimeoutError):
        plain.recv()

    client = RawClient(server.address, curve_serverkey=public)
    assert client.request({"op": "ping"})["op"] == "pong"
