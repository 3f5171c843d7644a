"""One check of agora's CUDA paths on a GPU machine, in one go; on a machine without CUDA it runs the CPU parts.

usage: python bench/gpu_check.py [--out DIR] [--quick] [--only STEP,...] [--time-limit S] [--pkg-dir DIR]

Each step runs in subprocesses with a time limit and ends in ``PASS|FAIL|SKIP name: reason`` lines:

- facts: python, torch and its CUDA, the GPUs, mpi4py and the MPI library it loaded, the mpirun found;
- doctor: ``mpirun -n 2 python -m agora_marl doctor`` (the job's report, the CUDA-aware detection);
- sync: tests/mpi_scripts/cuda_params_in_sync.py under ``mpirun -n 2``: two ranks train a small net on different
  data and keep bitwise identical parameters, on CPU and on CUDA (staged through host memory; direct where the MPI
  is CUDA-aware);
- train: ``python -m agora_marl train`` on a small budget with ``run.device=cuda`` and ``run.device=cpu``: steps/s
  from metrics.csv, and their ratio; on CUDA also under ``mpirun -n 2`` with the parameters compared every update;
- allreduce: bench/allreduce.py under ``mpirun -n 2`` with ``--device cpu`` and ``--device cuda``: ours/raw;
- probe: ``doctor --probe`` last, because handing a CUDA buffer to an MPI that is not CUDA-aware may crash it.

Everything printed, with each command's output, goes to DIR/gpu_check.log; the figures and results to
DIR/gpu_check.json (rewritten after every step, so a run cut short still leaves them). DIR: --out, else ``$OUT``,
else runs/gpu_check. Exit status 1 if a step FAILs (a SKIP is not a failure).

The script itself needs only the standard library. The commands it runs need ``agora_marl`` importable; where it is
not (a plain checkout: its folders become ``agora_marl.*`` only through pyproject's package-dir), the script builds
a link farm, ``--pkg-dir``/agora_marl (its files linked to the checkout's agora_marl/ and its subpackages to the
folders package-dir names), and puts --pkg-dir first on the commands' PYTHONPATH. Where mpi4py finds no MPI library
by itself (the mpich wheel installed with ``pip --target``), MPI4PY_LIBMPI points it at the one beside mpirun.

Over 400 lines in one module on purpose: it is the one file the GPU machine runs, before anything of agora imports.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STEPS = ("doctor", "sync", "train", "allreduce", "probe")
#: The checkout's folders that are agora_marl's subpackages (pyproject's package-dir, for Python 3.10 without tomllib).
FOLDERS = ("envserver", "agents", "learners", "scenarios", "launch")
NO_CUDA = "torch.cuda.is_available() is False"
#: The imports that tell whether agora_marl is this checkout's, whole (not just its top folder on sys.path).
IMPORT_CHECK = (
    "import agora_marl.envserver.protocol, agora_marl.learners.mpi, agora_marl.launch as m; print(m.__file__)"
)
FACTS = """\
import json, sys
facts = {"python": sys.version.split()[0], "executable": sys.executable}
import torch
facts |= {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
count = torch.cuda.device_count() if facts["cuda_available"] else 0
props = [torch.cuda.get_device_properties(i) for i in range(count)]
facts["devices"] = [{"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1), "sm": f"{p.major}.{p.minor}"}
                    for p in props]
try:
    import mpi4py
    from mpi4py import MPI
    facts |= {"mpi4py": mpi4py.__version__, "mpi_library": " ".join(MPI.Get_library_version().split()[:3])}
except Exception as exc:
    facts["mpi_error"] = f"{type(exc).__name__}: {exc}"
import agora_marl, agora_marl.learners
facts |= {"agora_marl": agora_marl.__version__, "agora_marl_from": agora_marl.learners.__file__}
print(json.dumps(facts))
"""


class Check:
    """The output folder, the environment of every command, and the results so far."""

    def __init__(self, out: Path, time_limit: float) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.out = out
        self.log = (out / "gpu_check.log").open("w")
        self.deadline = time.monotonic() + time_limit
        self.started = time.monotonic()
        self.env = dict(os.environ)
        self.figures: dict = {"results": []}
        self.mpirun: str | None = None
        self.mpirun_family = ""

    def say(self, text: str = "") -> None:
        print(text, flush=True)
        self.log.write(text + "\n")
        self.log.flush()

    def result(self, status: str, name: str, reason: str) -> None:
        self.say(f"{status} {name}: {reason}")
        self.figures["results"].append({"status": status, "name": name, "reason": reason})
        self.save()

    def save(self) -> None:
        self.figures["seconds"] = round(time.monotonic() - self.started, 1)
        tmp = self.out / "gpu_check.json.tmp"
        tmp.write_text(json.dumps(self.figures, indent=2))
        os.replace(tmp, self.out / "gpu_check.json")

    def run(self, argv: list[str], timeout: float, quiet: bool = False) -> tuple[int | None, str]:
        """Run ``argv`` with the check's environment: (exit status, or None if cut off; output).

        The command and its output are printed and logged; ``quiet``: logged only. It runs in the output folder, not
        in the checkout, whose agora_marl/ would come first on ``python -m``'s and ``-c``'s sys.path and hide the
        rest of the package.
        """
        limit = min(timeout, self.deadline - time.monotonic())
        if limit < 5:
            return None, f"not run: the check's --time-limit is spent ({shlex.join(argv)})"
        say = self.say if not quiet else lambda text: print(text, file=self.log, flush=True)
        say(f"$ {shlex.join(argv)}   (limit {limit:.0f} s)")
        started = time.monotonic()
        # A session of its own, so that a command cut off takes its whole tree along (mpirun's ranks, servers).
        proc = subprocess.Popen(
            argv, cwd=self.out, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip
        try:
            output, _ = proc.communicate(timeout=limit)
            code: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            try:
                output, _ = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:  # a process of another session still holds the pipe: leave it
                proc.stdout.close()
                output = ""
            code, output = None, output + f"\n[cut off after {limit:.0f} s]"
        for line in output.rstrip().splitlines():
            say(f"  | {line}")
        say(f"  (exit {code} after {time.monotonic() - started:.1f} s)")
        return code, output

    def mpi(self, ranks: int, *argv: str) -> list[str]:
        """``mpirun -n ranks`` and what it needs to pass on this check's environment."""
        command = [self.mpirun or "mpirun", "-n", str(ranks)]
        if self.mpirun_family == "Open MPI":
            command += ["--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
            for var in ("PYTHONPATH", "MPI4PY_LIBMPI", "PATH"):
                command += ["-x", var] if var in self.env else []
        return [*command, *argv]


# ---------------------------------------------------------------------------------------------- setting up


def package_dirs() -> dict[str, str]:
    """pyproject's ``[tool.setuptools] package-dir``: package name -> folder of the checkout."""
    try:
        import tomllib
    except ImportError:  # Python 3.10: the layout as it is
        return {"agora_marl": "agora_marl", **{f"agora_marl.{p}": p for p in FOLDERS}}
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]


def link_farm(pkg_dir: Path) -> tuple[Path, bool]:
    """``pkg_dir``/agora_marl as links into this checkout, and whether it was built now (a farm of the same links is
    kept)."""
    dirs = package_dirs()
    top = REPO / dirs["agora_marl"]
    links = {f.name: f for f in top.iterdir() if f.name != "__pycache__"}
    for name, folder in dirs.items():
        parts = name.split(".")
        if len(parts) == 2:
            links[parts[1]] = REPO / folder
        elif len(parts) > 2 and Path(folder) != Path(dirs[".".join(parts[:-1])]) / parts[-1]:
            raise RuntimeError(f"package-dir maps {name} to {folder}: a link farm cannot follow that")
    target = pkg_dir / "agora_marl"
    # Python writes the bytecode of the linked top files into the farm's own __pycache__: the one real folder in it.
    present = {p.name: p for p in target.iterdir() if p.name != "__pycache__"} if target.is_dir() else {}
    if {k: v.resolve() for k, v in present.items()} == {k: v.resolve() for k, v in links.items()}:
        return target, False
    if target.exists() and any(not p.is_symlink() for p in present.values()):
        raise RuntimeError(f"{target} exists and is not a link farm: remove it or pass another --pkg-dir")
    building = pkg_dir / f".agora_marl.{os.getpid()}"
    building.mkdir(parents=True)
    for name, path in links.items():
        (building / name).symlink_to(path)
    if target.exists():
        shutil.rmtree(target)  # links and bytecode only (checked above): rmtree never follows a link
    building.rename(target)
    return target, True


def make_importable(check: Check, pkg_dir: Path) -> None:
    """Make sure the commands import this checkout's agora_marl, through a link farm if need be."""
    code, output = check.run([sys.executable, "-c", IMPORT_CHECK], 60, quiet=True)
    where = output.strip().splitlines()[-1] if code == 0 and output.strip() else ""
    if code == 0 and REPO in Path(where).resolve().parents:
        check.say(f"agora_marl imports from this checkout as it is ({Path(where).parent.parent})")
        check.figures["agora_marl_via"] = "installed"
        return
    why = f"from {where}, not this checkout" if code == 0 else (output.strip().splitlines() or ["?"])[-1]
    farm, built = link_farm(pkg_dir)
    check.env["PYTHONPATH"] = os.pathsep.join([str(pkg_dir), *filter(None, [check.env.get("PYTHONPATH")])])
    check.say(f"agora_marl is not importable as this checkout here ({why}):")
    made = "built a link farm" if built else "kept the link farm"
    check.say(f"  {made} {farm} -> {REPO} and put {pkg_dir} first on PYTHONPATH of every command")
    check.figures["agora_marl_via"] = f"link farm {farm}"
    code, output = check.run([sys.executable, "-c", IMPORT_CHECK], 60, quiet=True)
    if code != 0:
        raise RuntimeError(f"agora_marl does not import even through the link farm: {output.strip()}")


def find_mpi(check: Check) -> None:
    """The mpirun to use, and MPI4PY_LIBMPI where mpi4py would load another MPI library than that mpirun's, or none.

    In a virtual environment its own mpirun comes first (the mpich wheel's), else the one on PATH: a system python
    beside an unrelated system MPI is left to PATH (``pip --target`` puts the wheel's bin/ there).
    """
    beside = shutil.which("mpirun", path=str(Path(sys.executable).parent))
    on_path = shutil.which("mpirun", path=check.env.get("PATH")) or shutil.which("mpiexec", path=check.env.get("PATH"))
    order = (beside, on_path) if sys.prefix != sys.base_prefix else (on_path, beside)
    check.mpirun = next((found for found in order if found), None)
    if check.mpirun is None:
        return
    _, version = check.run([check.mpirun, "--version"], 30, quiet=True)
    check.mpirun_family = "Open MPI" if re.search(r"Open MPI|OpenRTE|PRRTE", version) else "other"
    check.figures["mpirun"] = {"path": check.mpirun, "version": " ".join(version.split()[:6])}
    code, output = check.run([sys.executable, "-m", "mpi4py", "--mpi-library"], 60, quiet=True)
    loaded = Path(output.strip().splitlines()[-1]).resolve() if code == 0 and output.strip() else None
    prefix = Path(check.mpirun).resolve().parent.parent
    if loaded is not None and prefix in loaded.parents:
        return
    for name in ("libmpi.so.12", "libmpi.so.40", "libmpi.so"):
        if (prefix / "lib" / name).exists():
            check.env["MPI4PY_LIBMPI"] = str(prefix / "lib" / name)
            check.say(
                f"mpi4py loads {loaded or 'no MPI library'} by itself, not the library of {check.mpirun}: "
                f"MPI4PY_LIBMPI={check.env['MPI4PY_LIBMPI']} for every command"
            )
            return


# ---------------------------------------------------------------------------------------------- the steps


def facts(check: Check) -> bool:
    """Print the machine's facts; whether CUDA is available."""
    code, output = check.run([sys.executable, "-c", FACTS], 120, quiet=True)
    if code != 0:
        check.result("FAIL", "facts", (output.strip().splitlines() or ["no output"])[-1])
        return False
    found = json.loads(output.strip().splitlines()[-1])
    _, library = check.run([sys.executable, "-m", "mpi4py", "--mpi-library"], 60, quiet=True)
    found["mpi_library_file"] = library.strip().splitlines()[-1] if library.strip() else "?"
    smi = shutil.which("nvidia-smi")
    if smi:
        query = "--query-gpu=name,driver_version,memory.total,utilization.gpu"
        found["nvidia_smi"] = check.run([smi, query, "--format=csv,noheader"], 30, quiet=True)[1].strip()
    check.figures["facts"] = found
    devices = ", ".join(f"{d['name']} ({d['memory_gib']} GiB, sm {d['sm']})" for d in found["devices"]) or "none"
    mpirun = check.figures.get("mpirun", {})
    for line in (
        f"python {found['python']} ({found['executable']})",
        f"torch {found['torch']}, torch.version.cuda {found['torch_cuda']}, torch.cuda.is_available() "
        f"{found['cuda_available']}, {len(found['devices'])} device(s): {devices}",
        *([f"nvidia-smi: {found['nvidia_smi']}"] if "nvidia_smi" in found else []),
        f"mpi4py {found.get('mpi4py', '-')}: {found.get('mpi_library', found.get('mpi_error'))} "
        f"from {found['mpi_library_file']}",
        f"mpirun: {mpirun.get('path', 'none found')} ({mpirun.get('version', '-')})",
        f"agora_marl {found['agora_marl']}, agora_marl.learners from {Path(found['agora_marl_from']).parent}",
    ):
        check.say(f"  {line}")
    check.result("PASS", "facts", "collected")
    return bool(found["cuda_available"])


def doctor(check: Check, probe: bool, cuda: bool) -> None:
    name = "doctor probe" if probe else "doctor"
    argv = [sys.executable, "-m", "agora_marl", "doctor", *(["--probe"] if probe else [])]
    code, output = check.run(check.mpi(2, *argv), 90 if probe else 120)
    line = next((" ".join(ln.split()) for ln in output.splitlines() if ln.strip().startswith("CUDA-aware MPI")), "")
    check.figures[name.replace(" ", "_")] = {"exit": code, "cuda_aware": line}
    claims_none = "library: no" in check.figures.get("doctor", {}).get("cuda_aware", "")
    if code == 0 and "no problem found" in output:
        check.result("PASS", name, f"2 ranks, no problem found; {line or 'no CUDA-aware line'}")
    elif probe and cuda and code is not None and claims_none:
        # What --probe is for: an MPI that says nothing about CUDA may still take CUDA buffers, or crash on them.
        reason = f"the CUDA probe ended the MPI job (exit {code}): this MPI, which claims no CUDA support, is not "
        check.result("PASS", name, reason + "CUDA-aware; the learners stage through host memory (mpi_cuda=auto)")
    else:
        check.result("FAIL", name, f"exit {code}: {_last(output)}")


def sync(check: Check, device: str, steps: int) -> None:
    script = str(REPO / "tests/mpi_scripts/cuda_params_in_sync.py")
    argv = [sys.executable, "-m", "mpi4py", script, "--device", device, "--steps", str(steps)]
    code, output = check.run(check.mpi(2, *argv), 120)
    lines = [ln.strip() for ln in output.splitlines()]
    oks = [ln.removeprefix("OK in sync ") for ln in lines if ln.startswith("OK in sync ")]
    check.figures.setdefault("sync", {})[device] = {"exit": code, "ok": oks}
    if code != 0 or "OK all" not in lines:
        check.result("FAIL", f"{device} sync", f"exit {code}: {_last(output)}")
        return
    for ok in oks:
        _, path, rest = ok.split(" ", 2)
        check.result("PASS", f"{device} sync" + ("" if path == "host" else f" {path}"), rest)
    for skip in (ln for ln in lines if ln.startswith("SKIP direct: ")):
        check.result("SKIP", f"{device} sync direct", skip.removeprefix("SKIP direct: "))


def train(check: Check, device: str, total_steps: int, ranks: int = 1) -> dict | None:
    """``agora train`` on ``device``, and its steps/s from metrics.csv.

    Under mpirun (``ranks`` > 1) the ranks compare their parameters after every update (``run.sync_every=1``): the
    learner's own use of the reducer, the statistics and the broadcast over MPI.
    """
    name = f"{device} train" + (f" {ranks} ranks" if ranks > 1 else "")
    run_dir = check.out / f"train-{device}-{ranks}"
    shutil.rmtree(run_dir, ignore_errors=True)  # this check's own run of a previous try
    argv = [sys.executable, "-m", "agora_marl", "train", f"run.dir={run_dir}", f"run.device={device}"]
    argv += [f"run.total_steps={total_steps}", "env.num_worlds=16", "run.progress=false", "run.checkpoint_every=1000"]
    env = check.env
    if ranks > 1:
        argv = check.mpi(ranks, *argv, "run.sync_every=1")
    else:
        check.env = {**env, "AGORA_MPI": "off"}  # one rank, no launcher: no MPI at all
    try:
        code, output = check.run(argv, 150)
    finally:
        check.env = env
    metrics = run_dir / "metrics.csv"
    if code != 0 or not metrics.exists():
        check.result("FAIL", name, f"exit {code}: {_last(output)}")
        return None
    with metrics.open(newline="") as f:
        rows = list(csv.DictReader(f))
    first, last = rows[1] if len(rows) > 2 else rows[0], rows[-1]  # the first update holds imports and warm-up
    span = float(last["time_s"]) - float(first["time_s"])
    figures = {
        "steps_per_s": (int(last["step"]) - int(first["step"])) / span if span > 0 else 0.0,
        "update_s_median": statistics.median(float(r["update_s"]) for r in rows[1:] or rows),
        "rollout_s_median": statistics.median(float(r["rollout_s"]) for r in rows[1:] or rows),
        "updates": len(rows),
        "steps": int(last["step"]),
    }
    check.figures.setdefault("train", {})[device if ranks == 1 else f"{device}_{ranks}_ranks"] = figures
    reason = (
        f"{figures['steps_per_s']:,.0f} steps/s end to end over updates 2-{len(rows)} of {total_steps:,} steps "
        f"(per update: {figures['update_s_median']:.3f} s learning, {figures['rollout_s_median']:.3f} s rollout)"
    )
    check.result("PASS" if figures["steps_per_s"] > 0 else "FAIL", name, reason)
    return figures


def allreduce(check: Check, device: str, reps: int, big_reps: int) -> None:
    figures_file = check.out / f"allreduce-{device}.json"
    figures_file.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "mpi4py", str(REPO / "bench/allreduce.py"), "--device", device, "--reps", str(reps)]
    argv += ["--big-reps", str(big_reps), "--json", str(figures_file)]
    code, output = check.run(check.mpi(2, *argv, *(["--mpi-cuda", "auto"] if device == "cuda" else [])), 150)
    if code != 0 or not figures_file.exists():
        check.result("FAIL", f"{device} allreduce", f"exit {code}: {_last(output)}")
        return
    figures = json.loads(figures_file.read_text())
    check.figures.setdefault("allreduce", {})[device] = figures
    for path in sorted({r["path"] for r in figures["results"]}, key=("host", "staged", "direct").index):
        parts = [
            f"{r['model']} ({r['params']:,} params): ours/raw {r['median_ratios']['ours/raw']:.2f} "
            f"({_us(r['median_us']['ours'])} vs {_us(r['median_us']['raw'])} median, "
            f"min ratio {r['min_ratios']['ours/raw']:.2f})"
            for r in figures["results"]
            if r["path"] == path
        ]
        check.result("PASS", f"{device} allreduce" + ("" if path == "host" else f" {path}"), "; ".join(parts))
    for note in figures["notes"]:
        check.result("SKIP", f"{device} allreduce direct", note.removeprefix("direct path not timed: "))


def _us(microseconds: float) -> str:
    return f"{microseconds:.1f} us" if microseconds < 10_000 else f"{microseconds / 1000:.2f} ms"


def _last(output: str) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip() and not ln.startswith("[cut off")]
    cut = " (cut off: too slow)" if "[cut off after" in output else ""
    return (lines[-1][:300] if lines else "no output") + cut


# ---------------------------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_out = os.environ.get("OUT") or "runs/gpu_check"
    parser.add_argument("--out", type=Path, default=Path(default_out), help="output folder (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="smaller budgets (the test's run)")
    parser.add_argument("--only", default=",".join(STEPS), help=f"steps to run after the facts ({','.join(STEPS)})")
    parser.add_argument("--time-limit", type=float, default=240.0, help="seconds for the whole check")
    parser.add_argument("--pkg-dir", type=Path, default=Path("/tmp/agora_pkg"), help="where a link farm goes")
    args = parser.parse_args()
    only = set(filter(None, args.only.split(",")))
    if only - set(STEPS):
        parser.error(f"--only: unknown step(s) {sorted(only - set(STEPS))}; steps: {','.join(STEPS)}")
    check = Check(args.out.resolve(), args.time_limit)
    budget = {"sync_steps": 20, "train_steps": 1200, "reps": 100, "big_reps": 3} if args.quick else {}
    budget = {"sync_steps": 50, "train_steps": 4000, "reps": 500, "big_reps": 10} | budget
    check.figures |= {"quick": args.quick, "budget": budget, "repo": str(REPO)}
    check.say(
        f"agora GPU check: {REPO} -> {check.out} (steps: {','.join(['facts', *(s for s in STEPS if s in only)])})"
    )
    try:
        make_importable(check, args.pkg_dir.resolve())
        find_mpi(check)
    except (OSError, RuntimeError) as exc:
        check.result("FAIL", "setup", str(exc))
        return 1
    cuda = facts(check)
    if not cuda:
        check.say(f"  no CUDA: every CUDA step says SKIP ({NO_CUDA})")
    if check.mpirun is None:
        check.result("FAIL", "mpirun", "none found beside python or on PATH: install an MPI (pip install mpich)")

    def on_cuda(name: str, call):
        return call if cuda else lambda: check.result("SKIP", name, NO_CUDA)

    steps = [
        ("doctor", lambda: doctor(check, probe=False, cuda=cuda)),
        ("sync", lambda: sync(check, "cpu", budget["sync_steps"])),
        ("sync", on_cuda("cuda sync", lambda: sync(check, "cuda", budget["sync_steps"]))),
        ("train", lambda: train_both(check, cuda, budget["train_steps"])),
        ("allreduce", lambda: allreduce(check, "cpu", budget["reps"], budget["big_reps"])),
        ("allreduce", on_cuda("cuda allreduce", lambda: allreduce(check, "cuda", budget["reps"], budget["big_reps"]))),
        ("probe", lambda: doctor(check, probe=True, cuda=cuda)),
    ]
    for step, call in steps:
        if step in only:
            try:
                call()
            except Exception as exc:  # noqa: BLE001 (a broken step is a result; the others still run)
                check.result("FAIL", step, f"{type(exc).__name__}: {exc}")
    return summary(check)


def train_both(check: Check, cuda: bool, total_steps: int) -> None:
    on_gpu = train(check, "cuda", total_steps) if cuda else check.result("SKIP", "cuda train", NO_CUDA)
    if cuda:
        train(check, "cuda", total_steps, ranks=2)
    else:
        check.result("SKIP", "cuda train 2 ranks", NO_CUDA)
    on_cpu = train(check, "cpu", total_steps)
    if on_gpu and on_cpu:
        ratio = on_gpu["steps_per_s"] / on_cpu["steps_per_s"]
        learning = on_cpu["update_s_median"] / on_gpu["update_s_median"]
        check.figures["train"] |= {"cuda_over_cpu_steps_per_s": ratio, "cpu_over_cuda_update_s": learning}
        check.say(f"  cuda/cpu: {ratio:.2f}x the steps/s end to end; the learning part {learning:.2f}x as fast")


def summary(check: Check) -> int:
    results = check.figures["results"]
    counts = {status: sum(r["status"] == status for r in results) for status in ("PASS", "SKIP", "FAIL")}
    check.say("")
    check.say("summary:")
    for r in results:
        check.say(f"  {r['status']} {r['name']}: {r['reason']}")
    check.save()
    check.say(
        f"gpu_check: {counts['PASS']} PASS, {counts['SKIP']} SKIP, {counts['FAIL']} FAIL in "
        f"{check.figures['seconds']:.0f} s; log {check.out / 'gpu_check.log'}, figures {check.out / 'gpu_check.json'}"
    )
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
