"""The conformance suite (agents/conformance, `agora conformance`): every check passes against our own server, in
process and as a command against a server process, and the suite reports the failures of broken servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import msgpack
import zmq

from agora_marl.agents.conformance import CHECKS, format_report, run_conformance, select
from agora_marl.envserver.server import EnvServer, ServerConfig
from tests.procs import wait_for_connection_file


def _agora(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "agora_marl", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_every_check_passes_against_our_server():
    # No skips: the server hosts the default scenario (which draws), its message limit (16 MiB) is small enough to
    # send a message over it, and the operator secret is given.
    with EnvServer(ServerConfig(bind="tcp://127.0.0.1:0")) as server:
        results = run_conformance(server.address, operator=server.operator_secret)
        assert [r.name for r in results] == [c.name for c in select()] and len(results) == len(CHECKS)
        assert all(r.passed for r in results), format_report(results)
        assert all(r.description and r.seconds >= 0 for r in results)
        # Each check closed the worlds it made.
        assert not server.worlds, sorted(server.worlds)
        only = run_conformance(server.address, only="batch")
        assert {r.name for r in only} == {"step_batch_agents", "step_batch_stacked", "batch_mismatch", "act_batch"}
        assert all(r.passed for r in only)
        without_operator = run_conformance(server.address, only="operator")
        assert {r.name: r.status for r in without_operator} == {"operator_refused": "passed", "operator": "skipped"}


def test_agora_conformance_against_a_server_process(tmp_path):
    addr_file = tmp_path / "agora.json"
    env = {**os.environ, "AGORA_OPERATOR_DIR": str(tmp_path / "operator")}
    command = [sys.executable, "-m", "agora_marl.envserver", "--bind", "tcp://127.0.0.1:0", "--addr-file", addr_file]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        wait_for_connection_file(addr_file, proc)
        # The connection file names the address and holds the operator secret: the operator check runs too.
        done = _agora("conformance", str(addr_file))
        assert done.returncode == 0, done.stdout + done.stderr
        lines = done.stdout.splitlines()
        assert lines[-1].startswith(f"{len(CHECKS)} passed, 0 failed, 0 skipped"), done.stdout
        assert sum(line.startswith("PASS  ") for line in lines) == len(CHECKS)
        assert any(line.startswith("PASS  lockstep ") for line in lines)
        (address,) = json.loads(addr_file.read_text())["addresses"]
        listed = _agora("conformance", address, "-k", "ping", "--json")
        assert listed.returncode == 0, listed.stderr
        assert [(r["name"], r["status"]) for r in json.loads(listed.stdout)] == [("ping", "passed")]
    finally:
        proc.terminate()
        proc.wait(10)


# ---- broken servers ---------------------------------------------------------------------------------------------


def _welcome(request: dict, with_secret: bool) -> dict:
    welcome = {
        "v": 2,
        "op": "welcome",
        "id": request.get("id", 0),
        "server": "fake",
        "version": "0",
        "protocol": 2,
        "session": "s",
        "operator": False,
        "keep_alive_s": 10.0,
        "limits": {
            "max_message_bytes": 1 << 20,
            "max_worlds_per_client": 10,
            "heartbeat_timeout_s": 10.0,
            "max_keep_alive_s": 60.0,
            "max_batch": 10,
        },
        "scenarios": [],
        "allowed_packages": [],
    }
    if with_secret:
        welcome["secret"] = "s3cret"
    return welcome


def _fake_reply(request: dict, fault: str) -> dict:
    """What a broken server answers: ``"no_secret"``: a welcome without a secret (else plausible replies);
    ``"no_id"``: replies that never echo the request's id."""
    op = request.get("op")
    if op == "hello":
        reply = _welcome(request, with_secret=fault != "no_secret")
    elif op == "ping":
        reply = {"v": 2, "op": "pong", "id": request.get("id", 0), "time": time.time()}
    else:
        reply = {"v": 2, "op": "error", "id": request.get("id", 0), "code": "bad_request", "message": "no", "hint": ""}
    if fault == "no_id":
        reply["id"] = 0
    return reply


@contextmanager
def fake_server(fault: str) -> Iterator[str]:
    """A tiny ROUTER on a free loopback port that answers every request with :func:`_fake_reply`."""
    context = zmq.Context()
    socket = context.socket(zmq.ROUTER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.bind("tcp://127.0.0.1:*")
    address = socket.getsockopt_string(zmq.LAST_ENDPOINT)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            if not socket.poll(50):
                continue
            route, header, *_ = socket.recv_multipart()
            try:
                request = msgpack.unpackb(header)
            except Exception:
                request = {}
            if not isinstance(request, dict):
                request = {}
            socket.send_multipart([route, msgpack.packb(_fake_reply(request, fault))])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield address
    finally:
        stop.set()
        thread.join(5)
        context.destroy(linger=0)


def test_the_suite_catches_a_welcome_without_a_secret():
    with fake_server("no_secret") as address:
        results = {r.name: r for r in run_conformance(address, timeout_s=1.0)}
    assert results["welcome"].failed and "no secret" in results["welcome"].message
    assert results["lockstep"].failed and results["no_session"].failed
    assert results["bad_version"].failed and "bad_version" in results["bad_version"].message


def test_the_suite_catches_replies_that_do_not_echo_the_id():
    with fake_server("no_id") as address:
        results = run_conformance(address, timeout_s=1.0)
        # Every check fails, but the one that skips before it asks anything (no operator secret given).
        assert [r.name for r in results if not r.failed] == ["operator"], format_report(results)
        assert "echoes its request's id" in next(r for r in results if r.name == "ping").message
        done = _agora("conformance", address, "--timeout", "1", "-k", "o")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL  welcome " in done.stdout and done.stdout.splitlines()[-1].startswith("0 passed"), done.stdout


def test_nothing_listening_fails_every_check_at_once():
    context = zmq.Context()
    probe = context.socket(zmq.ROUTER)
    probe.bind("tcp://127.0.0.1:*")
    address = probe.getsockopt_string(zmq.LAST_ENDPOINT)
    probe.close(linger=0)  # a port that was free a moment ago and has nobody on it now
    context.term()
    results = run_conformance(address, timeout_s=0.3, only="ping")
    assert [(r.name, r.status) for r in results] == [("ping", "failed")]
    assert "answered a ping" in results[0].message


def test_a_one_agent_scenario_skips_what_needs_two():
    with EnvServer(ServerConfig(bind="tcp://127.0.0.1:0")) as server:
        results = run_conformance(server.address, operator=server.operator_secret, scenario="gymnasium:CartPole-v1")
    assert not [r for r in results if r.failed], format_report(results)
    skipped = {r.name for r in results if r.skipped}
    assert "lockstep" in skipped and all("at least 2 agents" in r.message for r in results if r.skipped)
