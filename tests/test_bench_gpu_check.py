"""bench/gpu_check.py on a machine without CUDA: its CPU parts run and pass, every CUDA part says SKIP, and it works
where agora_marl is not installed (the GPU machine's plain checkout) through its link farm."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_check.py"
MPIRUN = shutil.which("mpirun", path=str(Path(sys.executable).parent)) or shutil.which("mpirun")
NO_CUDA = "torch.cuda.is_available() is False"

pytestmark = [
    pytest.mark.mpi,
    pytest.mark.slow,
    pytest.mark.skipif(MPIRUN is None, reason="no mpirun on PATH or next to the interpreter (pip install mpich)"),
]


def _check(python: str, out: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    # CUDA_VISIBLE_DEVICES hides any GPU, so that the CUDA parts skip on every machine.
    environment = {**os.environ, "CUDA_VISIBLE_DEVICES": "", **(env or {})}
    command = [python, str(SCRIPT), "--quick", "--out", str(out), *args]
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=240)


def test_the_cpu_parts_pass_and_the_cuda_parts_skip(tmp_path: Path) -> None:
    done = _check(sys.executable, tmp_path / "out", "--pkg-dir", str(tmp_path / "pkg"))
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    lines = out.splitlines()
    assert not [line for line in lines if line.startswith("FAIL ")]
    # The facts.
    assert "PASS facts: collected" in lines
    assert "torch.cuda.is_available() False" in out and "mpi4py " in out and f"mpirun: {MPIRUN}" in out
    assert "agora_marl imports from this checkout as it is" in out or "built a link farm" in out  # (not installed)
    # Doctor under mpirun, plain and with --probe (which has no GPU to probe).
    assert any(line.startswith("PASS doctor: 2 ranks, no problem found") for line in lines)
    assert any(line.startswith("PASS doctor probe: 2 ranks") and "not probed (no GPU)" in line for line in lines)
    assert "agora doctor: 2 rank(s) on 1 node(s)" in out  # its report, printed and logged
    # Two CPU ranks keep bitwise identical parameters.
    assert any(line.startswith("PASS cpu sync: after 20 updates on 2 ranks") for line in lines)
    # The CPU train run, and the allreduce benchmark's CPU ratios.
    figures = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert figures["train"]["cpu"]["steps_per_s"] > 0
    assert any(line.startswith("PASS cpu train: ") and "steps/s" in line for line in lines)
    ratios = [r["median_ratios"]["ours/raw"] for r in figures["allreduce"]["cpu"]["results"]]
    assert len(ratios) == 2 and all(ratio > 0 for ratio in ratios)
    assert any(line.startswith("PASS cpu allreduce: ") and "ours/raw" in line for line in lines)
    # Every CUDA-only part says why it did not run.
    for name in ("cuda sync", "cuda train", "cuda train 2 ranks", "cuda allreduce"):
        assert f"SKIP {name}: {NO_CUDA}" in lines, name
    statuses = {r["name"]: r["status"] for r in figures["results"]}
    assert statuses["cuda train"] == "SKIP" and statuses["cpu sync"] == "PASS"
    assert "agora doctor: 2 rank(s)" in (tmp_path / "out" / "gpu_check.log").read_text()
    assert "gpu_check: " in lines[-1] and " 0 FAIL " in lines[-1]


def test_without_the_install_the_commands_import_through_a_link_farm(tmp_path: Path) -> None:
    """As on the GPU machine: an interpreter that has the dependencies but not agora_marl (the repository root on its
    PYTHONPATH gives only the top folder)."""
    bare = tmp_path / "py"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=120)
    python = str(bare / "bin" / "python")
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    # Our site directories as plain sys.path entries: their packages import, but their .pth files (the editable
    # install's finder among them) are not run.
    Path(purelib, "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    lost = subprocess.run([python, "-c", "import agora_marl.envserver"], capture_output=True, text=True, timeout=60)
    assert lost.returncode != 0 and "No module named 'agora_marl" in lost.stderr

    pkg = tmp_path / "pkg"
    # The GPU machine's recipe (../shared/gpu/README.md) puts the checkout on PYTHONPATH, which finds agora_marl/ but
    # none of its subpackages: the farm must come first. mpirun is found on PATH, as there.
    path = os.pathsep.join([str(Path(MPIRUN).parent), os.environ.get("PATH", "")])
    env = {"PATH": path, "PYTHONPATH": str(ROOT)}
    done = _check(python, tmp_path / "out", "--only", "sync,train", "--pkg-dir", str(pkg), env=env)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert f"built a link farm {pkg / 'agora_marl'}" in out
    assert (pkg / "agora_marl" / "learners").resolve() == ROOT / "learners"
    assert (pkg / "agora_marl" / "__init__.py").resolve() == ROOT / "agora_marl" / "__init__.py"
    figures = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert figures["agora_marl_via"] == f"link farm {pkg / 'agora_marl'}"
    assert figures["facts"]["agora_marl_from"].startswith(str(pkg))
    lines = out.splitlines()
    assert any(line.startswith("PASS cpu sync: ") for line in lines)  # mpirun's ranks import through it
    assert any(line.startswith("PASS cpu train: ") for line in lines)  # and so do the env servers train starts
    assert f"SKIP cuda train: {NO_CUDA}" in lines

    again = _check(python, tmp_path / "again", "--only", "", "--pkg-dir", str(pkg), env=env)  # the facts alone
    assert again.returncode == 0 and f"kept the link farm {pkg / 'agora_marl'}" in again.stdout, again.stdout

    code = f"import sys; sys.path.insert(0, {str(pkg)!r}); import agora_marl.envserver.server as s; print(s.__file__)"
    isolated = subprocess.run([python, "-I", "-c", code], capture_output=True, text=True, timeout=60)
    assert isolated.returncode == 0, isolated.stderr
    assert isolated.stdout.strip() == str(pkg / "agora_marl" / "envserver" / "server.py")
