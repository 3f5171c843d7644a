"""agora_marl.launch.local: env servers as subprocesses that start bound, answer, and never outlive their job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agora_marl.agents.client import AgentClient
from agora_marl.launch.local import LocalServers, ServerStartError
from tests.procs import alive

ROOT = Path(__file__).resolve().parent.parent

#: A stand-in server for the shutdown logic: writes its connection file, then ignores SIGTERM (or never binds).
_STUBBORN = textwrap.dedent(
    """
    import json, signal, sys, time
    addr_file = sys.argv[sys.argv.index("--addr-file") + 1]
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if "--never-bind" not in sys.argv:
        open(addr_file, "w").write(json.dumps({"protocol": 1, "addresses": ["ipc:///nowhere"], "pid": 0}))
    time.sleep(60)
    """
)


def _wait_dead(pids: list[int], timeout_s: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while any(map(alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [pid for pid in pids if alive(pid)]


def test_servers_start_bound_answer_and_stop() -> None:
    with LocalServers(count=2) as servers:
        assert len(servers.addresses) == 2 and len(set(servers.addresses)) == 2
        assert all(a.startswith("ipc://") for a in servers.addresses)
        for address in servers.addresses:
            with AgentClient(address, timeout_s=10) as client:
                assert client.hello()["server"] == "agora"
        pids, tmp = servers.pids, servers._tmp
        assert all(map(alive, pids))
    assert _wait_dead(pids, timeout_s=0.5) == []
    assert not tmp.exists(), "the socket directory was left behind"


def test_tcp_transport_binds_a_free_loopback_port() -> None:
    with LocalServers(count=1, transport="tcp") as servers:
        (address,) = servers.addresses
        assert address.startswith("tcp://127.0.0.1:") and not address.endswith(":0")
        with AgentClient(address, timeout_s=10) as client:
            client.ping()


def test_an_exception_in_the_block_stops_the_servers() -> None:
    with pytest.raises(KeyError), LocalServers(count=1) as servers:
        pids = servers.pids
        raise KeyError("boom")
    assert _wait_dead(pids, timeout_s=0.5) == []


def test_a_server_that_dies_at_start_reports_its_error() -> None:
    start = time.monotonic()
    with pytest.raises(ServerStartError, match="no_such_module_for_agora") as caught:
        LocalServers(count=2, server_args=["--scenario-module", "no_such_module_for_agora"]).start()
    assert "exited with status" in str(caught.value)
    assert time.monotonic() - start < 30


def test_a_server_that_never_binds_times_out_and_is_killed() -> None:
    servers = LocalServers(command=[sys.executable, "-c", _STUBBORN, "--never-bind"], start_timeout_s=1, grace_s=0.3)
    start = time.monotonic()
    with pytest.raises(ServerStartError, match="did not bind within 1"):
        servers.start()
    assert time.monotonic() - start < 10
    assert _wait_dead(servers.pids, timeout_s=0.5) == []


def test_a_server_ignoring_sigterm_is_killed_after_the_grace_period() -> None:
    servers = LocalServers(command=[sys.executable, "-c", _STUBBORN], grace_s=0.5)
    servers.start()
    start = time.monotonic()
    servers.stop()
    assert 0.4 < time.monotonic() - start < 5
    assert _wait_dead(servers.pids, timeout_s=5.0) == []
    servers.stop()  # a second stop is harmless


_OWNER = textwrap.dedent(
    """
    import sys, time
    from agora_marl.launch.local import LocalServers
    servers = LocalServers(count=1)
    servers.start()
    print(*servers.pids, flush=True)
    if sys.argv[1] == "hang":
        time.sleep(60)
    """
)


@pytest.mark.parametrize("ending", ["exit", "sigkill"])
def test_servers_do_not_outlive_their_job(ending: str) -> None:
    """At interpreter exit (atexit) and when the job is killed outright (the kernel's parent-death signal)."""
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER, "exit" if ending == "exit" else "hang"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    pids: list[int] = []
    try:
        pids = [int(p) for p in owner.stdout.readline().split()]
        assert pids, "the owner did not start its server"
        if ending == "sigkill":
            assert all(map(alive, pids))
            owner.send_signal(signal.SIGKILL)
        owner.wait(30)
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
    survivors = _wait_dead(pids)
    for pid in survivors:  # do not leave them running when the test fails
        os.kill(pid, signal.SIGKILL)
    assert survivors == [], f"servers {survivors} outlived their job"
