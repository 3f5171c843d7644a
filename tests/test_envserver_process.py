"""agora_marl.envserver.process and ``python -m agora_marl.envserver``: server processes that start bound, answer,
stop on SIGINT, survive the job's signals when asked, and never outlive the process that started them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from agora_marl.envserver import process
from agora_marl.envserver.process import ServerProcesses, ServerStartError
from agora_marl.envserver.protocol import read_connection_file
from tests.procs import alive, modules_loaded_by
from tests.rawwire import RawClient

#: Loaded by the server as a scenario module before it binds: from then on it ignores SIGINT, its stop signal.
_DEAF = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
#: The same, and it never gets as far as binding.
_STUCK = _DEAF + "import time\ntime.sleep(60)\n"


def _wait_dead(pids: list[int], timeout_s: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while any(map(alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [pid for pid in pids if alive(pid)]


def _pong(address: str) -> bool:
    return RawClient(address, timeout_s=20).request({"op": "ping"})["op"] == "pong"


def _module(tmp_path: Path, name: str, text: str) -> list[str]:
    path = tmp_path / f"{name}.py"
    path.write_text(text)
    return ["--scenario-module", str(path)]


# ---------------------------------------------------------------------------------------------- ServerProcesses


def test_servers_start_bound_answer_and_stop_cleanly_on_sigint() -> None:
    with ServerProcesses(count=2) as servers:
        assert len(servers.addresses) == 2 and len(set(servers.addresses)) == 2
        assert all(a.startswith("ipc://") for a in servers.addresses)
        assert all(map(_pong, servers.addresses))
        pids, tmp = servers.pids, servers._tmp
        assert all(map(alive, pids)) and servers.running()
    assert [proc.returncode for proc in servers.procs] == [0, 0]  # SIGINT: served to a clean end, not SIGKILLed
    assert _wait_dead(pids, timeout_s=0.5) == []
    assert not tmp.exists(), "the socket directory was left behind"


def test_tcp_transport_binds_a_free_loopback_port() -> None:
    with ServerProcesses(count=1, transport="tcp") as servers:
        (address,) = servers.addresses
        assert address.startswith("tcp://127.0.0.1:") and not address.endswith(":0")
        assert _pong(address)


def test_given_binds_and_log_dir(tmp_path) -> None:
    binds = [f"ipc://{tmp_path}/a.sock", "tcp://127.0.0.1:0"]
    with ServerProcesses(binds=binds, log_dir=tmp_path / "logs", server_args=["--log-level", "INFO"]) as servers:
        assert servers.addresses[0] == binds[0] and servers.addresses[1].startswith("tcp://127.0.0.1:")
        assert all(map(_pong, servers.addresses))
    assert "serving on" in (tmp_path / "logs" / "server1.log").read_text()


def test_an_exception_in_the_block_stops_the_servers() -> None:
    with pytest.raises(KeyError), ServerProcesses(count=1) as servers:
        pids = servers.pids
        raise KeyError("boom")
    assert _wait_dead(pids, timeout_s=0.5) == []


def test_a_server_that_dies_at_start_reports_its_error() -> None:
    start = time.monotonic()
    with pytest.raises(ServerStartError, match="no_such_module_for_agora") as caught:
        ServerProcesses(count=2, server_args=["--scenario-module", "no_such_module_for_agora"]).start()
    assert "exited with status" in str(caught.value)
    assert time.monotonic() - start < 30


def test_a_server_that_never_binds_times_out_and_is_killed(tmp_path) -> None:
    servers = ServerProcesses(server_args=_module(tmp_path, "stuck", _STUCK), start_timeout_s=3, grace_s=0.3)
    start = time.monotonic()
    with pytest.raises(ServerStartError, match="did not bind within 3 s"):
        servers.start()
    assert time.monotonic() - start < 10
    assert servers.procs[0].returncode == -signal.SIGKILL
    assert _wait_dead(servers.pids, timeout_s=0.5) == []


def test_a_server_ignoring_sigint_is_killed_after_the_grace_period(tmp_path) -> None:
    servers = ServerProcesses(server_args=_module(tmp_path, "deaf", _DEAF), grace_s=0.5)
    servers.start()
    start = time.monotonic()
    servers.stop()
    assert 0.4 < time.monotonic() - start < 5
    assert servers.procs[0].returncode == -signal.SIGKILL
    assert _wait_dead(servers.pids, timeout_s=5.0) == []
    servers.stop()  # a second stop is harmless


@pytest.mark.parametrize("survive", [False, True], ids=["local", "cluster"])
def test_job_signals_stop_a_local_server_and_not_a_cluster_one(survive: bool) -> None:
    """SIGTERM and SIGUSR1 reach every process of a SLURM step: a cluster server waits for SIGINT from its rank."""
    with ServerProcesses(count=1, survive_job_signals=survive, grace_s=30) as servers:
        (proc,) = servers.procs
        for sig in (signal.SIGUSR1, signal.SIGTERM) if survive else (signal.SIGTERM,):
            os.kill(proc.pid, sig)
        if survive:
            time.sleep(0.5)
            assert _pong(servers.addresses[0]) and proc.poll() is None
        else:
            assert proc.wait(10) == 0  # the server's own SIGTERM handler: a clean end
    assert proc.returncode == 0


def test_servers_stop_cleanly_on_sigint_even_if_started_with_it_ignored() -> None:
    """A batch script's background job starts with SIGINT ignored; the servers must still take it as their stop."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited by the servers, as from `cmd &` in a script
    try:
        servers = ServerProcesses(count=1, survive_job_signals=True, grace_s=60)
        servers.start()
    finally:
        signal.signal(signal.SIGINT, previous)
    servers.stop()
    assert [proc.returncode for proc in servers.procs] == [0]  # it served to a clean end, not SIGKILLed


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity on this platform")
def test_servers_run_on_the_given_cores() -> None:
    core = min(os.sched_getaffinity(0))
    with ServerProcesses(count=1, cores=[core]) as servers:
        assert os.sched_getaffinity(servers.pids[0]) == {core}


def test_ipc_paths_fit_the_kernels_limit(monkeypatch, tmp_path) -> None:
    deep = tmp_path / ("d" * 90)
    deep.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    short = process.ipc_tempdir()
    try:
        assert short.parent == Path("/tmp")
        assert len(f"{short}/server9999.sock") <= process.MAX_IPC_PATH
    finally:
        short.rmdir()
    with pytest.raises(ValueError, match="at most 107 bytes"):
        ServerProcesses(binds=[f"ipc://{deep}/{'s' * 40}.sock"])


_OWNER = textwrap.dedent(
    """
    import sys, time
    from agora_marl.envserver.process import ServerProcesses
    servers = ServerProcesses(count=1, survive_job_signals=sys.argv[2] == "cluster")
    servers.start()
    print(*servers.pids, flush=True)
    if sys.argv[1] == "hang":
        time.sleep(60)
    """
)


@pytest.mark.parametrize(("ending", "mode"), [("exit", "local"), ("sigkill", "local"), ("sigkill", "cluster")])
def test_servers_do_not_outlive_their_parent(ending: str, mode: str) -> None:
    """At interpreter exit (atexit) and when the parent is killed outright (the kernel's parent-death signal)."""
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER, "exit" if ending == "exit" else "hang", mode], stdout=subprocess.PIPE, text=True
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
    assert survivors == [], f"servers {survivors} outlived their parent"


# ---------------------------------------------------------------------------------------------- python -m agora_marl.envserver


def test_the_module_serves_on_its_own_and_stops_on_sigint(tmp_path) -> None:
    addr_file = tmp_path / "server.json"
    command = [sys.executable, "-m", "agora_marl.envserver", "--bind", "tcp://127.0.0.1:0", "--addr-file", addr_file]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not addr_file.exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the server never wrote its connection file"
            time.sleep(0.05)
        (address,) = read_connection_file(addr_file)
        assert address.startswith("tcp://127.0.0.1:") and _pong(address)
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0, "SIGINT should stop the server cleanly"


def test_the_serve_module_imports_neither_the_launcher_nor_torch() -> None:
    loaded = modules_loaded_by("agora_marl.envserver.serve", "agora_marl.envserver.process")
    assert not {m for m in loaded if m.split(".")[0] == "torch" or m.startswith("agora_marl.launch")}
