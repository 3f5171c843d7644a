"""Running agora on the simulated nodes: the environment a job gets, jobs bounded in time, and job templates filled in.

Every job carries a unique token in its environment, which every process it starts inherits (on any node, through
SLURM too: sbatch and srun pass the environment on), so that "no process left behind" is a scan of /proc.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.cluster.nodes import ROOT, Cluster, Node
from tests.procs import TokenJob

BIN = Path(sys.executable).parent
#: MPICH's Hydra from the venv, next to the interpreter.
MPIEXEC = BIN / "mpiexec"
#: A tiny budget: 4 worlds x 25 steps per rank and update, one epoch.
TINY = ["env.num_worlds=4", "ppo.epochs=1", "run.progress=false"]
#: Steps per update of a job template's run here (:func:`tiny_config`): 4 worlds x 25 steps, 2 ranks.
STEPS_PER_UPDATE = 200


def require(reason: str) -> None:
    """At a test module's top: skip the module when ``reason`` says the simulated cluster cannot run here (raised
    here, so that every module's skip folds into one summary line); in CI (``CI`` set) go on: the fixtures then fail
    every test, so that CI never passes without running them."""
    if reason and os.environ.get("CI", "").lower() in ("", "0", "false", "no"):
        pytest.skip(f"simulated cluster: {reason}", allow_module_level=True)


def agora(*args: str) -> list[str]:
    """The ``agora`` command line of this interpreter."""
    return [sys.executable, "-m", "agora_marl", *args]


def hydra(cluster: Cluster, *args: str) -> list[str]:
    """``mpiexec ARGS`` starting the ranks of other nodes through the cluster's launcher (ssh's place)."""
    return [str(MPIEXEC), "-launcher", "ssh", "-launcher-exec", str(cluster.launcher), *args]


def job_env(token: str, **extra: str) -> dict[str, str]:
    """The environment of a job on the nodes.

    All nodes share one kernel, so MPICH's UCX would move "inter-node" messages through shared memory: ``UCX_TLS``
    makes them cross the bridge over TCP, as between real machines.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI", "PMIX_", "OMPI_", "SLURM_", "HYDRA_"))}
    env.update(
        AGORA_TEST_TOKEN=token,
        OMP_NUM_THREADS="1",
        UCX_TLS="tcp,self",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}",
    )
    env.update(extra)
    return env


class NodeJob(TokenJob):
    """A command on a node, in a session of its own, with a fresh token; killed if the test leaves it running."""

    def __init__(self, node: Node, argv: list, cwd: str | Path = ROOT, **extra_env: str) -> None:
        self.token = uuid.uuid4().hex
        self.proc = node.popen(
            argv, job_env(self.token, **extra_env), cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def __enter__(self) -> NodeJob:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.kill()
        self.proc.communicate()


def wait_for(condition, timeout_s: float, what: str, interval_s: float = 0.2) -> None:
    """Poll ``condition()`` until true; fail the test with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


def tiny_config(path: Path, updates: int) -> Path:
    """Write a job template's CONFIG: ``updates`` tiny updates with 2 ranks, one env server per node."""
    path.write_text(
        f'algo = "mappo"\n[env]\nnum_worlds = 4\nservers = 1\n[run]\ntotal_steps = {updates * STEPS_PER_UPDATE}\n'
        "progress = false\ncheckpoint_every = 1000\n[ppo]\nepochs = 1\n"
    )
    return path


def fill_in(template: Path, edits: dict[str, str | None]) -> str:
    """The job template's text with its EDIT lines changed, and only those: ``edits`` maps a regular expression
    matching a whole line to its replacement (``\\1`` refers to a group; ``None`` deletes the line). Every pattern
    must match, and only lines marked EDIT."""
    lines: list[str | None] = list(template.read_text().splitlines())
    for pattern, replacement in edits.items():
        matched = [(i, m) for i, line in enumerate(lines) if line is not None and (m := re.fullmatch(pattern, line))]
        assert matched, f"{template.name}: no line matches {pattern!r}"
        for i, match in matched:
            assert "EDIT" in match.string, f"{template.name}: {match.string!r} is not an EDIT line"
            lines[i] = match.expand(replacement) if replacement is not None else None
    return "\n".join(line for line in lines if line is not None) + "\n"
