"""``agora doctor``: check that this machine, or this MPI job, is set up to train: MPI, GPUs, threads, env servers.

Run it the way the job will run (``mpirun -n 8 agora doctor``, ``srun agora doctor``): every rank looks at itself,
rank 0 prints one report, and every rank exits 1 if something is misconfigured (0 otherwise).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

_EPILOG = """\
examples:
  agora doctor                               # this machine: MPI library, mpirun, torch, GPUs, a local env server
  mpirun -n 8 agora doctor                   # the job: ranks per node, GPU and threads of every rank
  srun --ntasks-per-node=4 agora doctor --connect tcp://node17:5555   # can every rank reach these servers?
  mpirun -n 2 agora doctor --probe           # also hand MPI a CUDA buffer, even if the library says it cannot

Exit status 1 names each problem and its fix; notes are hints that do not fail the check.
"""
#: Environment variables that change how MPI, CUDA and torch behave, shown when set.
_RELEVANT_ENV = re.compile(
    r"^(UCX_|OMPI_MCA_|PMIX_MCA_|MPICH_|MPIR_CVAR_|FI_|MV2_|I_MPI_|CUDA_VISIBLE_DEVICES$|OMP_NUM_THREADS$|"
    r"AGORA_|NCCL_|SLURM_(NTASKS|NNODES|CPUS_PER_TASK|GPUS|JOB_ID)|CUDA_DEVICE_ORDER$)"
)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="check MPI, GPUs, threads and env servers for training (run it as the job runs)",
        description="Check that this machine or MPI job is set up to train: MPI implementation and launcher, "
        "CUDA-aware MPI, GPU and threads per rank, env server reachability.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--connect",
        metavar="ADDR[,ADDR]",
        help="ping these env servers (addresses or connection files) from every rank",
    )
    parser.add_argument(
        "--probe",
        action="store_true",
        help="allreduce a CUDA tensor through MPI even when the library does not claim CUDA support (may crash it)",
    )
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for a server (default %(default)s)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from agora_marl.learners import mpi

    try:
        mpi.size()
    except RuntimeError as exc:  # a launcher says several ranks, but mpi4py cannot load
        print(f"agora doctor: problem: {exc}", file=sys.stderr)
        return 1
    with mpi.abort_on_exception():
        facts = mpi.allgather_object(_rank_facts(args))
        cuda = _cuda_aware(args, facts)
        if not mpi.is_root():
            return int(mpi.broadcast_object(None))
        job = _job_facts()
        problems, notes = _diagnose(job, facts, cuda)
        _print_report(job, facts, cuda, problems, notes)
        return int(mpi.broadcast_object(1 if problems else 0))


# ---------------------------------------------------------------------------------------------- facts


def _rank_facts(args: argparse.Namespace) -> dict[str, Any]:
    """What one rank sees of itself: placement, launcher, GPU, threads, and its env servers' replies."""
    import torch

    from agora_marl.launch.cluster import placement, tasks_without_mpi
    from agora_marl.learners import mpi
    from agora_marl.learners.config import load_config
    from agora_marl.learners.mpi import cuda
    from agora_marl.learners.training import torch_threads

    where = placement()
    config = load_config(None, [])
    if args.connect:
        config.env.connect = args.connect.split(",")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    gpu = where.local_rank % gpus if gpus else None
    sizes = [launcher.size_var for launcher in mpi.LAUNCHERS if launcher.size_var]
    launcher = next(((var, os.environ[var]) for var in sizes if os.environ.get(var, "").isdigit()), None)
    return {
        "rank": where.rank,
        "size": where.size,
        "node": where.node,
        "nodes": where.nodes,
        "host": where.host,
        "local": f"{where.local_rank}/{where.local_size}",
        "local_size": where.local_size,
        "pid": os.getpid(),
        "parent": _parent_exe(),
        "launcher": launcher,
        "without_mpi": tasks_without_mpi(),
        "cuda_visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "gpus": gpus,
        "gpu": gpu,
        "gpu_name": torch.cuda.get_device_name(gpu) if gpu is not None else None,
        "threads": torch_threads(config),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "servers": _ping_servers(config.env, args),
        "library": cuda.library_cuda_support(),
    }


def _ping_servers(env: Any, args: argparse.Namespace) -> list[tuple[str, float | None, str]]:
    """(address, round trip in ms or None, error) for every ``--connect`` server, or else for this rank's share of
    the servers ``agora train`` would start (they are started, pinged and stopped: collective)."""
    from agora_marl.launch.cluster import read_connect, training_servers

    if args.connect:
        try:
            addresses = read_connect(args.connect.split(","), args.timeout)
        except (OSError, ValueError, KeyError) as exc:
            return [(args.connect, None, f"{type(exc).__name__}: {exc}")]
        return [_ping(address, args.timeout) for address in addresses]
    env.connect, env.timeout_s = [], args.timeout
    with training_servers(env, report=False) as mine:
        return [_ping(address, args.timeout) for address in mine]


def _ping(address: str, timeout_s: float) -> tuple[str, float | None, str]:
    from agora_marl.agents.client import AgentClient

    try:
        with AgentClient(address, timeout_s=timeout_s, name="agora-doctor") as client:
            client.hello()
            start = time.perf_counter()
            client.ping()
            return address, (time.perf_counter() - start) * 1e3, ""
    except Exception as exc:  # noqa: BLE001 (every failure is a finding to report)
        return address, None, f"{type(exc).__name__}: {exc}"


def _cuda_aware(args: argparse.Namespace, facts: list[dict]) -> str:
    """Whether MPI took a CUDA buffer, as probed; a reason when it was not probed. Collective."""
    from agora_marl.learners import mpi
    from agora_marl.learners.mpi import cuda

    if mpi.size() == 1:
        return "not probed (one rank)"
    if all(f["gpus"] == 0 for f in facts):
        return "not probed (no GPU)"
    if any(f["gpus"] == 0 for f in facts):
        return "not probed (some ranks have no GPU)"
    claims = all(f["library"][0] for f in facts)
    if not (claims or args.probe):
        return "not probed (the library does not claim CUDA support; --probe to force)"
    return "yes: a CUDA allreduce came back right" if cuda.cuda_aware("probe") else "no: the CUDA allreduce failed"


def _job_facts() -> dict[str, Any]:
    """The MPI library, mpi4py and the launchers on PATH, as rank 0 sees them."""
    import mpi4py
    import torch

    from agora_marl.learners import mpi
    from agora_marl.learners.mpi import cuda

    MPI = mpi.mpi_module()  # noqa: N806 (the module's own name)
    version = MPI.Get_library_version().strip() if MPI else ""
    launchers: dict[str, tuple[str, str, str]] = {}
    for where, path in (("on PATH", shutil.which("mpirun")), ("next to python", _beside_python("mpirun"))):
        if path and path not in [seen for seen, _, _ in launchers.values()]:
            launchers[where] = (path, *_launcher_version(path))
    return {
        "library": " ".join(version.splitlines()[0].split()) if version else "none (mpi4py loaded no MPI library)",
        "library_family": _family(version),
        "library_path": cuda.library_path(),
        "mpi_version": "{}.{}".format(*MPI.Get_version()) if MPI else "-",
        "thread_level": _thread_level(MPI),
        "mpi4py": mpi4py.__version__,
        "launchers": launchers,
        "torch": f"{torch.__version__} (CUDA {torch.version.cuda or 'none'}, "
        f"{'available' if torch.cuda.is_available() else 'unavailable'})",
        "env": {k: v for k, v in sorted(os.environ.items()) if _RELEVANT_ENV.match(k)},
    }


def _beside_python(name: str) -> str | None:
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else None


def _launcher_version(path: str) -> tuple[str, str]:
    """The implementation family and version number that ``mpirun --version`` prints."""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "unknown", type(exc).__name__
    text = out.stdout + out.stderr
    number = re.search(r"(\d+\.\d+(?:\.\d+)?)", text)
    return _family(text), number.group(1) if number else "?"


def _family(text: str) -> str:
    """The MPI implementation a library version string or ``mpirun --version`` names."""
    upper = text.upper()
    for mark, family in (
        ("OPEN MPI", "Open MPI"),
        ("OPENRTE", "Open MPI"),
        ("PRTE", "Open MPI"),
        ("INTEL(R) MPI", "Intel MPI"),
        ("MVAPICH", "MVAPICH"),
        ("CRAY MPICH", "Cray MPICH"),
        ("MPICH", "MPICH"),
        ("HYDRA", "MPICH"),
        ("SLURM", "Slurm"),
    ):
        if mark in upper:
            return family
    return "unknown"


def _compatible(a: str, b: str) -> bool:
    """Whether a launcher of family ``a`` starts ranks that a library of family ``b`` can join."""
    mpich_abi = {"MPICH", "Intel MPI", "MVAPICH", "Cray MPICH"}
    return "unknown" in (a, b) or "Slurm" in (a, b) or a == b or (a in mpich_abi and b in mpich_abi)


def _thread_level(MPI: Any) -> str:  # noqa: N803
    if MPI is None:
        return "-"
    names = {MPI.THREAD_SINGLE: "single", MPI.THREAD_FUNNELED: "funneled", MPI.THREAD_SERIALIZED: "serialized"}
    return names.get(MPI.Query_thread(), "multiple")


def _parent_exe() -> str:
    try:
        return os.readlink(f"/proc/{os.getppid()}/exe")
    except OSError:
        return "?"


def _parent_family(exe: str) -> str:
    """The implementation whose process manager ``exe`` (this rank's parent) is."""
    name = Path(exe).name
    for mark, family in (("hydra", "MPICH"), ("orted", "Open MPI"), ("prte", "Open MPI"), ("slurmstepd", "Slurm")):
        if mark in name:
            return family
    return "unknown"


# ---------------------------------------------------------------------------------------------- diagnosis


def _diagnose(job: dict, facts: list[dict], cuda: str) -> tuple[list[str], list[str]]:
    problems: list[str] = []
    notes: list[str] = []
    first = facts[0]
    if first["without_mpi"]:
        problems.append(first["without_mpi"])
    elif first["launcher"] and int(first["launcher"][1]) > first["size"]:
        var, value = first["launcher"]
        problems.append(
            f"{var}={value} says {value} ranks were started, but MPI sees {first['size']}: the launcher and the "
            f"library mpi4py loaded ({job['library_path']}) are different MPIs. Use the mpirun of that library, or "
            "rebuild mpi4py against the launcher's MPI (docs/cluster.md)"
        )
    parent_family = _parent_family(first["parent"])
    if first["launcher"] and not _compatible(parent_family, job["library_family"]):
        problems.append(
            f"the ranks were started by {first['parent']} ({parent_family}) but mpi4py loaded "
            f"{job['library_family']} ({job['library_path']}): use that library's mpirun"
        )
    for where, (path, family, number) in job["launchers"].items():
        if not _compatible(family, job["library_family"]):
            problems.append(
                f"the mpirun {where} ({path}) is {family} {number}, but mpi4py loaded {job['library_family']} "
                f"({job['library_path']}): launch with the library's own mpirun, or rebuild mpi4py against this "
                "one (`AGORA_MPI=site bash launch/install.sh`, docs/cluster.md)"
            )
        elif job["library_path"] and not _same_installation(path, job["library_path"]):
            notes.append(f"the mpirun {where} ({path}) comes from another installation than {job['library_path']}")
    unreachable: dict[str, tuple[list[int], str]] = {}
    for f in facts:
        for address, rtt, error in f["servers"]:
            if rtt is None:
                unreachable.setdefault(address, ([], error))[0].append(f["rank"])
    for address, (ranks, error) in unreachable.items():
        problems.append(f"rank(s) {' '.join(map(str, ranks))} cannot reach the env server {address}: {error}")
    with_gpu = [f for f in facts if f["gpus"]]
    if with_gpu and len(with_gpu) < len(facts):
        problems.append(
            f"{len(with_gpu)} of {len(facts)} ranks see a GPU: give every rank one (check CUDA_VISIBLE_DEVICES and "
            "the job's GPU request) or train with run.device=cpu"
        )
    for f in with_gpu:
        if f["local_size"] > f["gpus"] and f["gpu"] == 0 and f["local"].startswith("0/"):
            notes.append(f"{f['host']}: {f['local_size']} ranks share {f['gpus']} visible GPU(s)")
    forced = os.environ.get("AGORA_MPI_CUDA", "").lower()
    if cuda.startswith("no") and forced == "on":
        problems.append("AGORA_MPI_CUDA=on, but MPI returned a wrong CUDA allreduce: unset it (or set it to off)")
    elif cuda.startswith("no") and all(f["library"][0] for f in facts):
        problems.append(
            "the MPI library claims CUDA support but a CUDA allreduce failed: set AGORA_MPI_CUDA=off (the "
            "learners then stage through host memory), or fix the MPI's CUDA setup (UCX_TLS, "
            "MPICH_GPU_SUPPORT_ENABLED)"
        )
    oversubscribed = [f for f in facts if f["threads"] > f["cores"]]
    if oversubscribed:
        notes.append(f"{len(oversubscribed)} rank(s) run more torch threads than the cores they may use")
    return problems, notes


def _same_installation(launcher: str, library: str) -> bool:
    """Whether ``PREFIX/bin/mpirun`` and the library share PREFIX."""
    prefix = Path(launcher).resolve().parent.parent
    return prefix in Path(library).resolve().parents


# ---------------------------------------------------------------------------------------------- report


def _print_report(job: dict, facts: list[dict], cuda: str, problems: list[str], notes: list[str]) -> None:
    first = facts[0]
    launcher = f"{first['launcher'][0]}={first['launcher'][1]} ({first['parent']})" if first["launcher"] else "none"
    library_cuda = first["library"]
    lines = [
        f"agora doctor: {first['size']} rank(s) on {first['nodes']} node(s) ({socket.gethostname()} is rank 0)",
        "",
        f"  MPI library            {job['library']} (MPI {job['mpi_version']}, thread level {job['thread_level']})",
        f"  loaded from            {job['library_path'] or '-'}",
        f"  mpi4py                 {job['mpi4py']}",
        *(
            f"  {'mpirun ' + where:<22} {path}: {family} {number}"
            for where, (path, family, number) in job["launchers"].items()
        ),
        *([] if "on PATH" in job["launchers"] else ["  mpirun on PATH         none"]),
        f"  launcher               {launcher}",
        f"  CUDA-aware MPI         library: {'yes' if library_cuda[0] else 'no'} ({library_cuda[1]}); probe: {cuda}",
        f"  torch                  {job['torch']}",
        "",
        f"  {'rank':>4}  {'node':>4}  {'host':<16} {'local':>5}  {'pid':>7}  {'GPU':<24} {'threads':>7} {'cores':>5}"
        "  env servers",
    ]
    for f in facts:
        gpu = "cpu" if f["gpu"] is None else f"cuda:{f['gpu']} {f['gpu_name'] or ''}"[:24]
        servers = ", ".join(
            f"{address} {rtt:.2f} ms" if rtt is not None else f"{address} UNREACHABLE"
            for address, rtt, _ in f["servers"]
        )
        lines.append(
            f"  {f['rank']:>4}  {f['node']:>4}  {f['host'][:16]:<16} {f['local']:>5}  {f['pid']:>7}  {gpu:<24} "
            f"{f['threads']:>7} {f['cores']:>5}  {servers}"
        )
    if any(f["cuda_visible"] is not None for f in facts):
        lines.append("  CUDA_VISIBLE_DEVICES by rank: " + ", ".join(f"{f['rank']}={f['cuda_visible']}" for f in facts))
    if job["env"]:
        lines += ["", "  environment:"] + [f"    {k}={v}" for k, v in job["env"].items()]
    lines.append("")
    lines += [f"  note: {note}" for note in notes]
    if problems:
        lines.append(f"agora doctor: {len(problems)} problem(s):")
        lines += [f"  - {problem}" for problem in problems]
    else:
        lines.append("agora doctor: no problem found")
    print("\n".join(lines), flush=True)
