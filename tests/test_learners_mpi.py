"""agora_marl.learners.mpi and its torch parts (tensors, gradients, cuda): alone (size 1, no launcher) in this process,
and under a real ``mpirun -n 2``."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from agora_marl.learners import mpi
from agora_marl.learners.mpi import cuda, tensors
from agora_marl.learners.mpi.gradients import GradientAllreducer, broadcast_parameters
from tests.procs import modules_loaded_by

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent / "mpi_scripts"
MPIRUN = shutil.which("mpirun", path=str(Path(sys.executable).parent)) or shutil.which("mpirun")


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


def _loss(net: torch.nn.Module) -> torch.Tensor:
    x = torch.arange(12, dtype=torch.float32).reshape(3, 4) / 10
    return net(x).square().sum()


# ---------------------------------------------------------------------------------------------- one process


def test_alone_is_rank_0_of_1() -> None:
    assert (mpi.rank(), mpi.size(), mpi.local_rank(), mpi.local_size()) == (0, 1, 0, 1)
    assert mpi.is_root()
    assert mpi.seed_for_rank(5) == 5
    mpi.barrier()
    assert mpi.broadcast_object({"a": 1}) == {"a": 1}


def test_the_package_imports_no_torch() -> None:
    """``agora serve`` runs as an MPI rank through learners.mpi and launch.cluster: neither may pull torch in."""
    loaded = modules_loaded_by(
        "agora_marl.learners.mpi as m",
        "agora_marl.launch.cluster",
        "agora_marl.launch.commands.serve",
        then="m.size(); m.published('server')",
    )
    assert "torch" not in loaded


def test_launched_by_mpi_reads_the_launchers_rank_variables(monkeypatch) -> None:
    for launcher in mpi.LAUNCHERS:
        for var in (launcher.size_var, launcher.rank_var):
            if var:
                monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("AGORA_MPI", raising=False)
    assert not mpi.launched_by_mpi()
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "0")
    assert mpi.launched_by_mpi()
    monkeypatch.setenv("AGORA_MPI", "off")
    assert not mpi.launched_by_mpi()


def test_gradients_are_views_of_one_buffer_and_match_plain_autograd() -> None:
    plain = _net()
    _loss(plain).backward()
    expected = torch.cat([p.grad.reshape(-1) for p in plain.parameters()])

    net = _net()
    reducer = GradientAllreducer(net.parameters())
    assert reducer.num_params == sum(p.numel() for p in net.parameters())
    for _ in range(2):  # the second pass checks that zero_grad really clears, in place
        reducer.zero_grad()
        _loss(net).backward()
        reducer.allreduce()
    assert torch.equal(reducer.flat, expected)
    start = reducer.flat.data_ptr()
    offsets = [p.grad.data_ptr() - start for p in net.parameters()]
    assert offsets == list(np.cumsum([0] + [p.numel() * 4 for p in net.parameters()])[:-1])


def test_optimizer_zero_grad_set_to_none_is_repaired() -> None:
    net = _net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    reducer = GradientAllreducer(net.parameters())
    _loss(net).backward()
    optimizer.zero_grad()  # set_to_none=True: the next backward allocates fresh tensors
    assert all(p.grad is None for p in net.parameters())
    _loss(net).backward()
    fresh = torch.cat([p.grad.reshape(-1) for p in net.parameters()])
    reducer.allreduce()
    assert torch.equal(reducer.flat, fresh)
    assert all(p.grad.data_ptr() == v.data_ptr() for p, v in zip(net.parameters(), reducer._views, strict=True))


def test_clip_grad_norm_matches_torch() -> None:
    nets = [_net(), _net()]
    reducer = GradientAllreducer(nets[0].parameters())
    for net in nets:
        _loss(net).backward()
    ours = reducer.clip_grad_norm_(0.5)
    theirs = torch.nn.utils.clip_grad_norm_(nets[1].parameters(), 0.5)
    assert ours == pytest.approx(float(theirs), rel=1e-6)
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-7)


def test_clip_grad_norm_by_parts_matches_torch_per_group() -> None:
    nets = [_net(), _net()]
    reducer = GradientAllreducer(nets[0].parameters())
    first, second = list(nets[0][0].parameters()), list(nets[0][2].parameters())
    parts = [reducer.part(first), reducer.part(second)]
    assert parts == [slice(0, 40), slice(40, 58)]
    for net in nets:
        _loss(net).backward()
    reducer.clip_grad_norm_(0.5, parts)
    for group in (nets[1][0].parameters(), nets[1][2].parameters()):
        torch.nn.utils.clip_grad_norm_(list(group), 0.5)
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="consecutive"):
        reducer.part([first[0], second[0]])


def test_half_precision_and_mixed_groups_are_refused() -> None:
    with pytest.raises(TypeError, match="float32"):
        GradientAllreducer(_net().to(torch.bfloat16).parameters())
    with pytest.raises(TypeError, match="float32"):
        tensors.allreduce_sum(torch.ones(3, dtype=torch.bfloat16))
    mixed = [torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2, dtype=torch.float64))]
    with pytest.raises(ValueError, match="one reducer per group"):
        GradientAllreducer(mixed)


def test_statistics_alone_keep_their_kind() -> None:
    assert mpi.allreduce_sum(3) == 3.0 and isinstance(mpi.allreduce_sum(3), float)
    assert mpi.allreduce_mean(2.5) == 2.5
    stats = np.array([1.0, 2.0])
    out = mpi.allreduce_sum(stats)
    assert isinstance(out, np.ndarray) and np.array_equal(out, stats) and out is not stats
    t = torch.tensor([1.0, -1.0], requires_grad=True)
    assert torch.equal(tensors.allreduce_max(t), t.detach())
    with pytest.raises(TypeError, match=r"learners\.mpi\.tensors"):
        mpi.allreduce_max(t)
    x = np.random.default_rng(0).normal(2.0, 3.0, size=1000)
    assert mpi.mean_std(x) == pytest.approx((x.mean(), x.std(ddof=1)))
    assert mpi.mean_std(torch.as_tensor(x), unbiased=False) == pytest.approx((x.mean(), x.std()))


def test_sync_and_broadcast_alone_change_nothing() -> None:
    net = _net()
    before = [p.detach().clone() for p in net.parameters()]
    broadcast_parameters(net)
    tensors.check_in_sync(net)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))


def test_device_and_cuda_settings() -> None:
    assert cuda.select_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert cuda.select_device("auto") == torch.device("cpu")
        with pytest.raises(RuntimeError, match="no GPU"):
            cuda.select_device("cuda")
    assert cuda.cuda_aware("on") and not cuda.cuda_aware("off")
    with pytest.raises(ValueError, match="mpi_cuda"):
        cuda.cuda_aware("maybe")


def test_library_cuda_query_is_found() -> None:
    from mpi4py import MPI

    version = MPI.Get_library_version()
    path = cuda.library_path()
    assert path is not None, "could not locate the MPI library mpi4py loaded"
    if "MPICH" in version or "Open MPI" in version:
        assert hasattr(ctypes.CDLL(path), "MPIX_Query_cuda_support")
    claims, why = cuda.library_cuda_support()
    assert isinstance(claims, bool) and why


def _alone(env: dict[str, str]) -> subprocess.CompletedProcess:
    code = "from agora_marl.learners import mpi; print('size', mpi.size())"
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=60
    )


def test_missing_mpi_library_falls_back_to_one_process_with_a_notice() -> None:
    done = _alone({"MPI4PY_LIBMPI": "/nonexistent/libmpi.so"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "size 1"
    notices = [line for line in done.stderr.splitlines() if line.startswith("agora: MPI unavailable")]
    assert len(notices) == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_missing_mpi_library_under_a_launcher_is_an_error() -> None:
    done = _alone({"MPI4PY_LIBMPI": "/nonexistent/libmpi.so", "PMI_SIZE": "2"})
    assert done.returncode != 0
    assert "PMI_SIZE=2" in done.stderr and "mpi4py" in done.stderr


# ---------------------------------------------------------------------------------------------- mpirun -n 2


def _mpirun(args: list[str], timeout: float) -> tuple[subprocess.CompletedProcess, float, str]:
    """Run ``mpirun -n 2 python ARGS --token T``; returns the result, the wall time and T (to find leftovers)."""
    if MPIRUN is None:
        pytest.skip("no mpirun on PATH or next to the interpreter: install an MPI (pip install mpich)")
    token = f"--token={uuid.uuid4().hex}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [MPIRUN, "-n", "2", sys.executable, *args, token]
    start = time.monotonic()
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"mpirun did not finish in {timeout} s:\n{out}\n{err}")
    done = subprocess.CompletedProcess(command, proc.returncode, out, err)
    return done, time.monotonic() - start, token


def _leftovers(token: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if token in text:
            found.append(f"{cmdline.parent.name}: {text}")
    return found


@pytest.mark.mpi
def test_two_ranks_average_gradients_stay_in_sync_and_detect_drift() -> None:
    done, _, _ = _mpirun(["-m", "mpi4py", str(SCRIPTS / "data_parallel.py")], timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    for check in (
        "broadcast",
        "gradient direct",
        "gradient staged",
        "gradient direct chunked",
        "in sync after updates",
        "in sync after updates (set_to_none)",
        "statistics",
        "drift detected",
        "all",
    ):
        for r in (0, 1):
            assert f"OK {check} rank {r}" in done.stdout, f"missing 'OK {check} rank {r}':\n{done.stdout}{done.stderr}"


@pytest.mark.mpi
@pytest.mark.parametrize(
    "args", [["-m", "mpi4py", "SCRIPT"], ["SCRIPT", "--guard"]], ids=["python-m-mpi4py", "abort_on_exception"]
)
def test_one_rank_raising_aborts_the_job_quickly(args: list[str]) -> None:
    script = str(SCRIPTS / "one_rank_raises.py")
    done, wall, token = _mpirun([script if a == "SCRIPT" else a for a in args], timeout=60)
    assert done.returncode != 0
    assert "deliberate failure in the last rank" in done.stderr
    assert "UNREACHABLE" not in done.stdout
    assert wall < 15, f"the job took {wall:.1f} s to die"
    deadline = time.monotonic() + 5
    while _leftovers(token) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _leftovers(token), _leftovers(token)
