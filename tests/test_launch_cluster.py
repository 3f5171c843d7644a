"""agora_marl.launch.cluster and `agora train` on a cluster: servers per node or rank, MPMD server ranks, stopping on SIGTERM.

The multi-rank tests run a real ``mpirun -n 2`` (MPICH's Hydra from the venv). Each job carries a unique token in its
environment, which every process it starts inherits (ranks, env servers), so that "no process left behind" is
checked by scanning /proc for it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from agora_marl.agents.client import AgentClient
from agora_marl.envserver.protocol.connection import read_connection_file, write_connection_file
from agora_marl.launch import cluster
from agora_marl.learners import mpi
from agora_marl.learners.config import load_config
from agora_marl.learners.run import Run, TrainingStopped, read_metrics
from agora_marl.learners.training import env_servers, torch_threads
from tests.procs import TokenJob, alive, leftovers, pids_with

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent / "mpi_scripts"
MPIRUN = shutil.which("mpirun", path=str(Path(sys.executable).parent)) or shutil.which("mpirun")
#: A tiny budget: 2 ranks x 4 worlds x 25 steps = 200 steps per update, one epoch per update.
TINY = ["env.num_worlds=4", "ppo.epochs=1", "run.progress=false"]


# ---------------------------------------------------------------------------------------------- helpers


class Job(TokenJob):
    """``mpirun`` ARGS in its own session with a unique token in its environment; killed if a test leaves it."""

    def __init__(self, *args: str, ranks: int = 2) -> None:
        if MPIRUN is None:
            pytest.skip("no mpirun on PATH or next to the interpreter: install an MPI (pip install mpich)")
        self.token = uuid.uuid4().hex
        env = {**os.environ, "AGORA_TEST_TOKEN": self.token, "OMP_NUM_THREADS": "1"}
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [MPIRUN, "-n", str(ranks), *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )


def _train(run_dir: Path, *settings: str) -> list[str]:
    return [sys.executable, "-m", "agora_marl", "train", f"run.dir={run_dir}", *TINY, *settings]


def _wait_for_rows(path: Path, rows: int, job: Job, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if job.proc.poll() is not None:
            pytest.fail(f"the job ended early ({job.proc.returncode}): {job.proc.communicate()}")
        if path.exists() and len(read_metrics(path)) >= rows:
            return
        time.sleep(0.2)
    job.kill()
    pytest.fail(f"{path} did not reach {rows} rows in {timeout_s} s")


# ---------------------------------------------------------------------------------------------- one process


def test_share_spreads_ranks_over_servers() -> None:
    addresses = ["a", "b", "c", "d"]
    assert [cluster.share(addresses, i, 2) for i in range(2)] == [["a", "c"], ["b", "d"]]
    assert [cluster.share(addresses[:1], i, 3) for i in range(3)] == [["a"]] * 3
    assert [cluster.share(addresses[:2], i, 3) for i in range(3)] == [["a"], ["b"], ["a"]]
    with pytest.raises(ValueError, match="no env server"):
        cluster.share([], 0, 1)


def test_connect_reads_connection_files_written_later(tmp_path) -> None:
    path = tmp_path / "servers.json"
    writer = threading.Timer(0.3, lambda: path.write_text(json.dumps({"addresses": ["tcp://h:1", "tcp://h:2"]})))
    writer.start()
    assert cluster.read_connect(["ipc:///x", str(path)], timeout_s=30) == ["ipc:///x", "tcp://h:1", "tcp://h:2"]
    with pytest.raises(FileNotFoundError, match="no such connection file after 0 s"):
        cluster.read_connect([str(tmp_path / "missing.json")], timeout_s=0.2)


def test_a_wildcard_bind_is_published_under_this_hosts_name(tmp_path) -> None:
    # `agora serve --bind tcp://0.0.0.0:0 --addr-file F` on one node, `agora train --connect F` on another.
    path = tmp_path / "servers.json"
    bound = ["tcp://0.0.0.0:5555", "tcp://*:5556", "tcp://[::]:5557", "tcp://127.0.0.1:5558", "ipc:///tmp/s.sock"]
    write_connection_file(path, bound)
    host = socket.gethostname()
    published = [f"tcp://{host}:5555", f"tcp://{host}:5556", f"tcp://{host}:5557", *bound[3:]]
    assert read_connection_file(path) == published


def test_train_refuses_tasks_that_srun_started_without_a_pmi(tmp_path) -> None:
    """`srun --mpi=none agora train`: every task would train alone as rank 0 of 1, into the same run directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI", "PMIX", "OMPI_", "MV2_", "SLURM_"))}
    env.update(SLURM_STEP_NUM_TASKS="4", SLURM_PROCID="2", SLURM_JOB_ID="17")
    command = [sys.executable, "-m", "agora_marl", "train", f"run.dir={tmp_path / 'run'}", *TINY, "run.total_steps=200"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("agora train: error:")]
    assert "srun started 4 tasks" in line and "srun --mpi=pmi2" in line and "--mpi=pmix" in line
    assert not (tmp_path / "run").exists()


def test_mpi_rank_detection_ignores_children_of_ranks(monkeypatch) -> None:
    for var in (*(launcher.rank_var for launcher in mpi.LAUNCHERS if launcher.rank_var), "AGORA_MPI"):
        monkeypatch.delenv(var, raising=False)
    assert not mpi.launched_by_mpi()
    monkeypatch.setenv("PMI_RANK", "1")
    assert mpi.launched_by_mpi()
    monkeypatch.setenv("AGORA_MPI", "off")  # what the servers a rank starts are given (envserver.process)
    assert not mpi.launched_by_mpi()


def test_stop_signals_are_recorded_then_restored() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with cluster.StopSignals() as stop:
        assert stop.requested() == 0
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 5
        while not stop.requested() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stop.requested() == signal.SIGUSR1  # the first one counts
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize("per", ["node", "rank"])
def test_started_servers_ignore_the_jobs_signals_and_stop_with_their_rank(per: str) -> None:
    env = load_config(None, [f"env.servers_per={per}", "env.servers=2"]).env
    with cluster.training_servers(env, report=False) as addresses:
        assert len(addresses) == 2 and all(a.startswith("ipc://") for a in addresses)
        pids = [pid for a in addresses for pid in pids_with(a.removeprefix("ipc://"), "cmdline")]
        assert len(pids) == 2
        for pid in pids:  # what SLURM sends every process of a step: the learner decides when its servers go
            os.kill(pid, signal.SIGUSR1)
            os.kill(pid, signal.SIGTERM)
        time.sleep(0.5)
        for address in addresses:
            with AgentClient(address, timeout_s=20) as client:
                assert client.hello()["server"] == "agora"
    deadline = time.monotonic() + 10
    while any(map(alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(map(alive, pids))


def test_an_error_stops_the_servers_at_once() -> None:
    env = load_config(None, ["env.servers=1"]).env
    with pytest.raises(RuntimeError, match="boom"), cluster.training_servers(env, report=False) as addresses:
        pids = pids_with(addresses[0].removeprefix("ipc://"), "cmdline")
        raise RuntimeError("boom")
    time.sleep(0.2)
    deadline = time.monotonic() + 10
    while any(map(alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pids and not any(map(alive, pids))


def test_threads_default_to_a_fair_share_and_the_saved_config_keeps_asking(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = len(os.sched_getaffinity(0))
    run = Run.create(load_config(None, []), tmp_path / "a")
    servers = env_servers(run.config.env)
    assert torch_threads(run.config) == max(1, cores // (1 + servers))  # this rank and the env servers it starts
    assert run.config.run.threads == 0 and load_config(tmp_path / "a" / "config.toml").run.threads == 0
    given = Run.create(load_config(None, ["env.connect=tcp://elsewhere:5555"]), tmp_path / "b")
    assert torch_threads(given.config) == cores
    assert torch_threads(Run.create(load_config(None, ["run.threads=3"]), tmp_path / "c").config) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert torch_threads(Run.open(tmp_path / "a").config) == 5


@pytest.mark.parametrize(
    ("node_cores", "local_rank", "overrides", "servers"),
    [
        ([[0, 1]], 0, [], 2),  # a 2-core machine: both cores step worlds
        ([[0, 1, 2, 3]], 0, [], 4),  # a laptop
        ([list(range(16))], 0, [], 8),  # one rank on a 16-core node: at most one server per 8 worlds
        ([list(range(16))], 0, ["env.num_worlds=256"], 16),
        ([list(range(16))] * 16, 3, [], 16),  # 16 ranks share the node's 16 servers, one each
        ([list(range(16))] * 3, 0, [], 15),  # 3 ranks: 5 servers each
        ([list(range(8))] * 16, 0, [], 16),  # more ranks than cores: still one per rank
        ([[0, 1], [2, 3]], 1, ["env.servers_per=rank"], 2),  # srun binds each rank to 2 cores: its own 2 servers
        ([[0, 1, 2, 3]] * 2, 1, ["env.servers_per=rank"], 2),  # 2 ranks on the same 4 cores: 2 servers each
        ([[0, 1]], 0, ["env.num_worlds=4"], 1),  # a few worlds: one server
        ([list(range(16))], 0, ["env.servers=3"], 3),  # asked for: as asked
    ],
)
def test_the_default_server_count_follows_the_cores(monkeypatch, node_cores, local_rank, overrides, servers) -> None:
    monkeypatch.setattr(mpi, "node_cores", lambda: node_cores)
    monkeypatch.setattr(mpi, "local_size", lambda: len(node_cores))
    monkeypatch.setattr(mpi, "local_rank", lambda: local_rank)
    assert env_servers(load_config(None, overrides).env) == servers


def test_agora_train_starts_a_server_per_core_by_default() -> None:
    """Without env.servers, the servers started for one rank are one per core it may use (up to one per 8 worlds)."""
    env = load_config(None, []).env
    cores = len(os.sched_getaffinity(0))
    with cluster.training_servers(env, report=False) as addresses:
        assert len(addresses) == min(cores, env.num_worlds // 8) == env_servers(env)


def test_a_stop_request_checkpoints_the_update_and_resume_continues(tmp_path) -> None:
    from agora_marl.learners.training import train

    overrides = ["env.num_worlds=4", "ppo.epochs=1", "run.progress=false", "run.total_steps=2000"]
    config = load_config(None, [*overrides, "run.checkpoint_every=100"])
    run = Run.create(config, tmp_path / "run")
    polls = iter(range(100))
    run.stop_on(lambda: 15 if next(polls) >= 2 else 0)  # a SIGTERM seen at the third logged update
    with cluster.training_servers(config.env, report=False) as addresses, pytest.raises(TrainingStopped) as stopped:
        train(config, run, addresses)
    run.close()
    assert (stopped.value.update, stopped.value.step, stopped.value.reason) == (3, 300, 15)
    assert [p.name for p in run.checkpoints()] == ["update_0000003.pt"]
    resumed = Run.open(tmp_path / "run", ["run.total_steps=500"])
    assert resumed.config.run.checkpoint_every == 100  # the stop changed nothing on disk
    with cluster.training_servers(resumed.config.env, report=False) as addresses:
        train(resumed.config, resumed, addresses)
    resumed.close()
    assert [int(r["update"]) for r in read_metrics(tmp_path / "run" / "metrics.csv")] == [1, 2, 3, 4, 5]


# ---------------------------------------------------------------------------------------------- mpirun -n 2


@pytest.mark.mpi
@pytest.mark.slow
def test_train_two_ranks_share_their_node_server(tmp_path) -> None:
    run_dir = tmp_path / "run"
    job = Job(*_train(run_dir, "run.total_steps=1200", "env.servers=1", "run.checkpoint_every=3"))
    code, out, err = job.wait(180)
    assert code == 0, out + err
    assert "agora: 2 rank(s) on 1 node(s), env servers: started per node" in err
    used = [line for line in err.splitlines() if line.startswith("agora:   node 0")]
    assert len(used) == 1 and used[0].endswith("<- rank(s) 0 1"), err  # one server, both ranks on it
    assert out.count("agora train: done") == 1
    rows = read_metrics(run_dir / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [200 * (i + 1) for i in range(6)]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["update_0000003.pt", "update_0000006.pt"]
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert [p.name for p in (run_dir / "servers" / "node0").iterdir()] == ["server0.log"]
    assert leftovers(job.token) == []


@pytest.mark.mpi
@pytest.mark.slow
@pytest.mark.parametrize("fail_rank", [0, 1], ids=["server-starting-rank", "other-rank"])
def test_one_rank_raising_aborts_train_and_leaves_no_process(tmp_path, fail_rank: int) -> None:
    script = [sys.executable, str(SCRIPTS / "train_rank_fails.py"), "--fail-rank", str(fail_rank)]
    job = Job(*script, f"run.dir={tmp_path / 'run'}", *TINY, "run.total_steps=10000000")
    code, out, err = job.wait(120)  # the budget would take hours: only an abort ends it this soon
    assert code != 0
    assert f"deliberate failure in rank {fail_rank} at update 3" in err
    assert "agora train: done" not in out
    assert leftovers(job.token) == [], "a rank or an env server outlived the aborted job"


@pytest.mark.mpi
@pytest.mark.slow
def test_sigterm_to_every_process_checkpoints_and_resume_continues(tmp_path) -> None:
    """What SLURM does at a time limit: SIGTERM to every process of the step, env servers included."""
    run_dir = tmp_path / "run"
    job = Job(*_train(run_dir, "run.total_steps=10000000", "run.checkpoint_every=1000"))
    _wait_for_rows(run_dir / "metrics.csv", 3, job)
    for pid in [job.proc.pid, *pids_with(job.token)]:
        os.kill(pid, signal.SIGTERM)
    code, out, err = job.wait(90)
    assert code == cluster.EXIT_STOPPED, out + err
    assert "agora train: SIGTERM: stopped after update" in out
    update = int(out.split("stopped after update ")[1].split()[0])
    assert update >= 3
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == [f"update_{update:07d}.pt"]
    assert int(read_metrics(run_dir / "metrics.csv")[-1]["update"]) == update
    assert leftovers(job.token) == []

    args = [
        sys.executable,
        "-m",
        "agora_marl",
        "train",
        "--resume",
        str(run_dir),
        f"run.total_steps={200 * (update + 2)}",
    ]
    resumed = Job(*args)
    code, out, err = resumed.wait(180)
    assert code == 0, out + err
    rows = read_metrics(run_dir / "metrics.csv")
    assert [int(r["update"]) for r in rows] == list(range(1, update + 3))
    assert [int(r["step"]) for r in rows[-2:]] == [200 * (update + 1), 200 * (update + 2)]
    assert leftovers(resumed.token) == []


@pytest.mark.mpi
@pytest.mark.slow
def test_mpmd_server_rank_serves_both_train_ranks(tmp_path) -> None:
    run_dir = tmp_path / "run"
    serve = [
        sys.executable,
        "-m",
        "agora_marl",
        "serve",
        "--log-level",
        "WARNING",
        "--addr-file",
        str(tmp_path / "s.json"),
    ]
    job = Job(*_train(run_dir, "run.total_steps=1200"), ":", "-n", "1", *serve)
    code, out, err = job.wait(180)
    assert code == 0, out + err
    assert "agora serve: 1 server rank(s) for 2 learner rank(s)" in err
    assert "env servers: MPMD server ranks" in err
    used = [line for line in err.splitlines() if line.startswith("agora:   node 0")]
    assert len(used) == 1 and "/server.sock <- rank(s) 0 1" in used[0], err
    assert json.loads((tmp_path / "s.json").read_text())["addresses"][0].startswith("tcp://127.0.0.1:")
    assert len(read_metrics(run_dir / "metrics.csv")) == 6
    assert leftovers(job.token) == []


@pytest.mark.parametrize("template", sorted(p.name for p in (ROOT / "launch" / "templates").iterdir()))
def test_job_templates_are_valid_shell_that_resumes_after_a_stop(template: str) -> None:
    path = ROOT / "launch" / "templates" / template
    checked = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    text = path.read_text()
    assert "agora train" in text and "--resume" in text and "agora doctor" in text
    assert f"status == {cluster.EXIT_STOPPED}" in text  # requeue or resubmit on a checkpointed stop
    directives = [line for line in text.splitlines() if line.startswith(("#SBATCH --account", "#PBS -A"))]
    assert directives and all("# EDIT" in line for line in directives)


@pytest.mark.parametrize("template", sorted(p.name for p in (ROOT / "launch" / "templates").iterdir()))
def test_job_templates_leave_the_device_and_the_pmi_to_edit_lines(template: str) -> None:
    """Nothing site-dependent off the EDIT lines: the device (run.device=cuda was hard-coded) and srun's --mpi=.

    tests/cluster/ runs every template with only its EDIT lines filled in; this checks the same where it cannot run.
    """
    lines = (ROOT / "launch" / "templates" / template).read_text().splitlines()
    assert all("run.device=$DEVICE" in line for line in lines if "run.device=" in line)
    (device,) = [line for line in lines if line.startswith("DEVICE=")]
    assert device.startswith("DEVICE=auto ") and "# EDIT" in device
    sruns = [line for line in lines if line.lstrip().startswith("srun ")]
    assert all('--mpi="$PMI"' in line for line in sruns)
    assert not sruns or any(line.startswith("PMI=") and "# EDIT" in line for line in lines)
    resubmits = [i for i, line in enumerate(lines) if line.lstrip().startswith(("scontrol requeue", "qsub "))]
    assert resubmits and all("[[ -z ${cancelled:-} ]]" in lines[i - 1] for i in resubmits)  # a cancel ends the job
