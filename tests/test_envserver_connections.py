"""What reaches a connection, and what connections may cost: no reply of a reading client is lost, a reply reaches
only the session that asked, routing ids are the server's, and connections and their unread or unfinished bytes are
bounded (docs/security.md).

The bounds are checked against a real server process (its memory and CPU are its own); the orderings against an
in-process one.
"""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import pytest
import zmq

from agora_marl.agents import AgentClient
from agora_marl.envserver.process import ServerProcesses
from agora_marl.envserver.protocol import pack, read_connection_file, unpack, vocabulary
from tests.conftest import EXTERNAL_SERVER
from tests.fuzzing import SPREAD
from tests.procs import wait_for_connection_file
from tests.rawwire import RawClient

pytestmark = pytest.mark.skipif(bool(EXTERNAL_SERVER), reason="needs servers of its own")
MIB = 1 << 20


def _dealer(address: str, routing_id: bytes | None = None) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if routing_id is not None:
        sock.setsockopt(zmq.ROUTING_ID, routing_id)
    sock.connect(address)
    return sock


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def _pipelined_pings(address: str, total: int, in_flight: int, lost: list) -> None:
    """A well-behaved client: keeps ``in_flight`` pings in flight and reads its replies in bursts."""
    sock = _dealer(address)
    outstanding, sent, deadline = set(), 0, time.monotonic() + 60
    try:
        while (sent < total or outstanding) and time.monotonic() < deadline:
            while len(outstanding) < in_flight and sent < total:
                sock.send(msgpack.packb({"v": vocabulary.PROTOCOL_VERSION, "op": "ping", "id": sent}))
                outstanding.add(sent)
                sent += 1
            if not sock.poll(2000):
                break
            while True:
                try:
                    outstanding.discard(msgpack.unpackb(sock.recv(zmq.NOBLOCK))["id"])
                except zmq.Again:
                    break
    finally:
        lost.append(len(outstanding) + total - sent)
        sock.close()


def test_a_client_that_reads_its_replies_never_loses_one():
    """Three clients keeping 48 pings in flight each (under the old count of 64) lost some to a busy server."""
    with ServerProcesses(binds=["tcp://127.0.0.1:0"], server_args=["--log-level=WARNING"]) as servers:
        lost: list[int] = []
        clients = [
            threading.Thread(target=_pipelined_pings, args=(servers.addresses[0], 6000, 48, lost)) for _ in range(3)
        ]
        for client in clients:
            client.start()
        for client in clients:
            client.join(90)
        assert lost == [0, 0, 0], f"replies lost per client: {lost}"


@pytest.mark.parametrize("routing_id", [b"my-own-id", b"\0\0\0", b"\0" * 9], ids=["text", "short", "long"])
def test_a_routing_id_the_peer_chose_is_refused(server, routing_id):
    chooser = _dealer(server.address, routing_id)
    for request_id, op in enumerate(("ping", "hello")):
        chooser.send_multipart(pack({"op": op, "id": request_id}))
        assert chooser.poll(5000)
        reply = unpack(chooser.recv_multipart())
        assert reply["code"] == "not_allowed" and "ZMQ_ROUTING_ID" in reply["hint"], reply
    chooser.close()
    assert RawClient(server.address).request({"op": "ping"})["op"] == "pong"


def test_a_reply_reaches_only_its_session_whatever_routing_id_a_peer_takes(make_server):
    """The victim's act waits for its world; it disconnects; a peer connects with the victim's routing id (known
    here from the server's own table: a blind guess of one in 2**32 otherwise). The step reply waits for the victim,
    who gets it once back on a new connection with its secret."""
    server = make_server(heartbeat_timeout_s=30.0)
    owner = RawClient(server.address)
    world = owner.ok({"op": "create", "scenario": SPREAD, "seed": 0, "deadline_ms": 60_000})["worlds"][0]
    owner.ok({"op": "join", "world": world, "seats": ["agent_1", "agent_2"]})
    victim = RawClient(server.address)
    victim.ok({"op": "join", "world": world, "seats": ["agent_0"]})
    acted = victim.send({"op": "act", "world": world, "actions": {"agent_0": 1}})
    time.sleep(0.2)
    route = next(s.route for s in server.sessions.values() if s.secret == victim.secret)
    victim.close()
    time.sleep(0.3)
    thief = _dealer(server.address, route)
    time.sleep(0.3)  # its handshake is done: the routing id is its own now
    owner.ok({"op": "act", "world": world, "actions": {"agent_1": 0, "agent_2": 0}})  # the world steps
    assert not thief.poll(500), f"a peer that took the routing id got {unpack(thief.recv_multipart())}"
    thief.close()
    back = RawClient(server.address, hello=False)
    back.secret = victim.secret
    pong = back.send({"op": "ping"})
    replies = {r["id"]: r for r in (back.recv(), back.recv())}
    assert replies[acted]["op"] == "step" and replies[acted]["tick"] == 1 and replies[pong]["op"] == "pong"


def _limited(limit: int):
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return preexec


def test_idle_connections_cannot_lock_newcomers_out_or_make_the_server_spin(tmp_path):
    """At a limit of 256 descriptors, 300 idle TCP connections took every descriptor: newcomers waited forever and
    libzmq spun on the listening socket it could not accept from."""
    addr_file = tmp_path / "server.json"
    command = [
        sys.executable,
        "-m",
        "agora_marl.envserver",
        "--bind",
        "tcp://127.0.0.1:0",
        "--addr-file",
        str(addr_file),
    ]
    proc = subprocess.Popen(command, stderr=subprocess.DEVNULL, preexec_fn=_limited(256))
    idle: list[socket.socket] = []
    try:
        wait_for_connection_file(addr_file, proc)
        address = read_connection_file(addr_file)[0]
        host, port = address.removeprefix("tcp://").rsplit(":", 1)
        for _ in range(300):
            try:
                idle.append(socket.create_connection((host, int(port)), timeout=5))
            except OSError:
                break
        time.sleep(0.5)
        cpu = _cpu_s(proc.pid)
        time.sleep(2.0)
        busy = (_cpu_s(proc.pid) - cpu) / 2.0
        with AgentClient(address, timeout_s=10.0) as newcomer:
            assert newcomer.ping() > 0
        assert busy < 0.5, f"the server used {busy:.0%} of a core while idle connections held it"
    finally:
        for sock in idle:
            sock.close()
        proc.kill()
        proc.wait(10)
