"""CurveZMQ: with a secret key the server talks only to clients that know its public key; with an allow-list of client
keys, only to those clients."""

from __future__ import annotations

import subprocess
import sys

import pytest
import zmq
import zmq.auth

from agora_marl.agents import AgentClient
from agora_marl.envserver.process import ServerProcesses
from tests.rawwire import RawClient

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq was built without CURVE")


def test_curve_server_refuses_plain_clients_and_serves_curve_clients(make_server):
    public, secret = zmq.curve_keypair()
    server = make_server(curve_secret_key=secret)
    plain = RawClient(server.address, timeout_s=0.5, hello=False)
    plain.send({"op": "ping"})
    with pytest.raises(TimeoutError):
        plain.recv()

    client = RawClient(server.address, curve_serverkey=public)
    assert client.request({"op": "ping"})["op"] == "pong"


def _certificates(folder, *names):
    """``{name: (public file, secret file)}`` made by `agora keys new` (the real command)."""
    files = {}
    for name in names:
        done = subprocess.run(
            [sys.executable, "-m", "agora_marl", "keys", "new", name, "--dir", str(folder)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        files[name] = (folder / f"{name}.key", folder / f"{name}.key_secret")
    return files


def test_an_allow_list_lets_in_only_the_listed_clients(make_server, tmp_path):
    keys = _certificates(tmp_path, "server", "alice", "mallory")
    server_public, server_secret = zmq.auth.load_certificate(keys["server"][1])
    alice_public, _ = zmq.auth.load_certificate(keys["alice"][0])
    server = make_server(curve_secret_key=server_secret, curve_client_keys=(alice_public,))
    with AgentClient(
        server.address, timeout_s=10.0, server_key=str(keys["server"][0]), client_key=keys["alice"][1]
    ) as alice:
        assert alice.ping() > 0
        for stranger in (keys["mallory"][1], None):  # a key pair not on the list, and a fresh one
            other = AgentClient(server.address, timeout_s=1.0, server_key=server_public, client_key=stranger)
            with other, pytest.raises(TimeoutError):
                other.ping()
        assert alice.ping() > 0  # the server serves the listed client all along


def test_agora_serve_with_keys_and_clients(tmp_path):
    keys = _certificates(tmp_path, "server")
    clients = tmp_path / "clients"
    listed = _certificates(clients, "alice")
    again = subprocess.run(
        [sys.executable, "-m", "agora_marl", "keys", "new", "alice", "--dir", str(clients)], capture_output=True
    )
    assert again.returncode != 0 and b"exists" in again.stderr  # a key is never overwritten
    flags = ["--curve-secret", str(keys["server"][1]), "--clients", str(clients)]
    with ServerProcesses(count=1, transport="tcp", server_args=flags) as servers:
        address = servers.addresses[0]
        with AgentClient(
            address, timeout_s=10.0, server_key=str(keys["server"][0]), client_key=listed["alice"][1]
        ) as c:
            assert c.hello()["server"] == "agora"
        stranger = AgentClient(address, timeout_s=1.0, server_key=str(keys["server"][0]))
        with stranger, pytest.raises(TimeoutError):
            stranger.ping()
    lonely = subprocess.run(
        [sys.executable, "-m", "agora_marl.envserver", "--clients", str(clients)], capture_output=True, text=True
    )
    assert lonely.returncode != 0 and "--curve-secret" in lonely.stderr
