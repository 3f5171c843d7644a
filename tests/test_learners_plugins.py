"""An algorithm written outside the package, as a researcher would: trained with ``agora train algo=FILE.py:CLASS``,
resumed from another folder with no flag repeated, and put through ``agora learners check`` (exact resume, an
opponent process and self-play, ``agora eval`` and ``agora play --policy RUN_DIR`` in fresh processes, ``mpirun -n
2`` in sync); its settings table checked as the built-ins' are; and what the registry says of names that load
nothing."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agora_marl.envserver.process import ServerProcesses
from agora_marl.learners.config import ConfigError, load_config, to_toml
from agora_marl.learners.registry import BUILTIN, AlgorithmError, resolve
from agora_marl.learners.run import load_checkpoint, read_metrics
from agora_marl.learners.trained import load_trained_policy

ROOT = Path(__file__).resolve().parent.parent
MPIRUN = shutil.which("mpirun", path=str(Path(sys.executable).parent)) or shutil.which("mpirun")

#: REINFORCE over fixed rollouts with a batch-mean baseline, one small policy shared by every seat: short, and
#: nothing like a built-in. It imports only the public API and one building block.
PLUGIN = '''
"""REINFORCE over fixed rollouts (returns-to-go cut at the rollout's end), one policy shared by every seat."""

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from agora_marl.learners import api
from agora_marl.learners.mpi.gradients import GradientAllreducer


@dataclass
class Settings:
    rollout_steps: int = 25
    """Steps per world per update."""
    lr: float = 3e-3
    """Adam learning rate."""
    gamma: float = 0.95
    """Discount."""
    hidden: list[int] = field(default_factory=lambda: [32])
    """Hidden layer widths."""


class SharedPolicy(nn.Module):
    def __init__(self, spec, seats, settings):
        super().__init__()
        self.possible_agents = list(seats)
        self.observation_spaces = {a: spec.observation_spaces[a] for a in seats}
        self.action_spaces = {a: spec.action_spaces[a] for a in seats}
        space = self.action_spaces[seats[0]]
        width, layers = int(np.prod(self.observation_spaces[seats[0]].shape)), []
        for size in settings.hidden:
            layers += [nn.Linear(width, size), nn.Tanh()]
            width = size
        self.net = nn.Sequential(*layers, nn.Linear(width, int(space.n)))
        self.start = int(space.start)

    def dist(self, obs):  # observations (..., features) -> a categorical per row
        return torch.distributions.Categorical(logits=self.net(torch.as_tensor(np.asarray(obs), dtype=torch.float32)))

    @torch.no_grad()
    def act(self, obs, greedy=True):
        out = {}
        for agent, o in obs.items():
            dist = self.dist(o)
            out[agent] = (dist.probs.argmax(-1) if greedy else dist.sample()).numpy() + self.start
        return out


class Reinforce(api.Algorithm):
    name = "reinforce"
    Settings = Settings
    actions = {"discrete"}
    partial_seats = True
    self_play = True
    layouts = ("stacked",)

    def make_policy(self, spec, seats, settings):
        return SharedPolicy(spec, seats, settings)

    def train(self, session):
        s, worlds = session.settings, session.worlds
        policy = self.make_policy(session.spec, session.seats, s)
        optimizer = torch.optim.Adam(policy.parameters(), lr=s.lr)
        session.register(policy, optimizer=optimizer)
        reducer = GradientAllreducer(policy.parameters())
        obs = None
        while not session.done:
            reset = session.begin_update()
            obs = reset.obs if reset is not None else obs
            steps = []
            for _ in range(s.rollout_steps):
                with torch.no_grad():
                    actions = policy.dist(obs).sample()
                result = worlds.step(actions.numpy() + policy.start)
                ended = result.terminated | result.truncated | result.episode_over[:, None]
                steps.append((obs, actions, torch.as_tensor(result.rewards), torch.as_tensor(ended)))
                obs = result.obs
            running, returns = torch.zeros_like(steps[0][2]), []
            for _, _, reward, ended in reversed(steps):
                running = reward + s.gamma * running * (~ended)
                returns.insert(0, running)
            returns = torch.stack(returns)
            log_probs = policy.dist(np.stack([o for o, _, _, _ in steps])).log_prob(torch.stack([a for _, a, _, _ in steps]))
            loss = -(log_probs * (returns - returns.mean())).mean()
            reducer.zero_grad()
            loss.backward()
            reducer.allreduce()
            optimizer.step()
            session.end_update({"loss": loss.item()})
'''
SMALL = ["env.num_worlds=4", "run.checkpoint_every=2", "run.progress=false"]


def _agora(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "agora_marl", *args]
    env = {**os.environ, "AGORA_MPI": "off"}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"agora {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "lab"
    folder.mkdir()
    (folder / "my_algo.py").write_text(textwrap.dedent(PLUGIN))
    return folder


@pytest.mark.slow
@pytest.mark.mpi
def test_an_algorithm_from_a_file_trains_resumes_and_passes_the_check_from_anywhere(
    tmp_path: Path, plugin_dir: Path
) -> None:
    """``agora train algo=./my_algo.py:Reinforce`` in its folder; ``--resume`` from another folder with no algo
    given (config.toml names the file by its absolute path); then ``agora learners check`` on it: exact resume,
    partial seats beside its own run in an opponent process, self-play, eval and play in fresh processes, and
    ``mpirun -n 2`` in sync."""
    run_dir = tmp_path / "run"
    with ServerProcesses(count=1) as servers:
        connect = f"--connect={servers.addresses[0]}"
        _agora(
            "train",
            "algo=./my_algo.py:Reinforce",
            *SMALL,
            "run.total_steps=200",
            f"run.dir={run_dir}",
            connect,
            cwd=plugin_dir,
        )
        _agora("train", "--resume", str(run_dir), "run.total_steps=400", "reinforce.lr=1e-2", connect, cwd=ROOT)
    recorded = load_config(run_dir / "config.toml")
    assert recorded.algo == f"{plugin_dir / 'my_algo.py'}:Reinforce" and recorded.algo_settings.lr == 1e-2
    state = load_checkpoint(sorted((run_dir / "checkpoints").glob("*.pt"))[-1])
    assert state["update"] == 4 and state["algorithm"]["name"] == "reinforce"
    assert state["algorithm"]["reference"] == recorded.algo and state["algorithm"]["settings"]["lr"] == 1e-2
    assert [int(r["step"]) for r in read_metrics(run_dir / "metrics.csv")] == [100, 200, 300, 400]

    if MPIRUN is None:
        pytest.skip("no mpirun on PATH or next to the interpreter: install an MPI (pip install mpich)")
    checked = _agora("learners", "check", str(plugin_dir / "my_algo.py") + ":Reinforce", cwd=ROOT, timeout=300)
    lines = checked.stdout.splitlines()
    for check in ("train", "resume", "policy", "partial seats", "self-play", "eval", "play", "mpirun -n 2"):
        assert any(line.startswith(f"  ok    {check}") for line in lines), checked.stdout
    assert "10 of 10 checks passed" in checked.stdout

    # A moved file: the run says where it looked, and loads again once its config.toml names the new place.
    moved = tmp_path / "elsewhere.py"
    (plugin_dir / "my_algo.py").rename(moved)
    with pytest.raises(ConfigError, match="set algo in that file to its new place"):
        load_trained_policy(run_dir)
    config_file = run_dir / "config.toml"
    config_file.write_text(config_file.read_text().replace(recorded.algo, f"{moved}:Reinforce"))
    assert load_trained_policy(run_dir).possible_agents == ["agent_0", "agent_1", "agent_2"]


def test_a_plugin_table_is_checked_as_the_built_ins_are(plugin_dir: Path, monkeypatch) -> None:
    monkeypatch.chdir(plugin_dir)
    monkeypatch.delitem(sys.modules, "my_algo", raising=False)  # another test's folder may have loaded its own
    config = load_config(None, ["algo=my_algo:Reinforce", "reinforce.gamma=0.9"])
    assert config.algo == f"{plugin_dir / 'my_algo.py'}:Reinforce"  # found in the working directory: by its file
    assert config.section == "reinforce" and config.algo_settings.gamma == 0.9 and "[reinforce]" in to_toml(config)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['gama'\] in \[reinforce\]; valid keys: rollout_steps"):
        load_config(None, ["algo=my_algo.py:Reinforce", "reinforce.gama=0.9"])
    with pytest.raises(ConfigError, match=r"reinforce.lr = 'fast' is not a valid float"):
        load_config(None, ["algo=my_algo.py:Reinforce", "reinforce.lr=fast"])


@pytest.mark.parametrize(
    ("algo", "message"),
    [
        ("sac", f"unknown algo 'sac'; choose one of {', '.join(sorted(BUILTIN))}"),
        ("./missing.py:X", "no file"),
        ("my_algo.py:Nope", "has no 'Nope' (its algorithms: Reinforce)"),
        ("my_algo.py:SharedPolicy", "not a subclass of agora_marl.learners.api.Algorithm"),
        ("broken.py:Broken", "Settings must be a dataclass (@dataclass class Settings: ...); implement train()"),
    ],
)
def test_names_that_load_nothing_say_what_to_fix(plugin_dir: Path, monkeypatch, algo: str, message: str) -> None:
    (plugin_dir / "broken.py").write_text(
        "from agora_marl.learners import api\n\nclass Broken(api.Algorithm):\n    name = 'broken'\n"
        "    def make_policy(self, spec, seats, settings): ...\n"
    )
    monkeypatch.chdir(plugin_dir)
    with pytest.raises(AlgorithmError, match=re.escape(message)):
        resolve(algo)


def test_an_installed_entry_point_names_an_algorithm(plugin_dir: Path, monkeypatch) -> None:
    """A package that declares ``[project.entry-points."agora.learners"]`` makes ``algo=NAME`` work wherever it is
    installed: here a distribution's metadata on sys.path, as pip would leave it."""
    dist = plugin_dir / "lab_algos-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: lab-algos\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[agora.learners]\nreinforce = my_algo:Reinforce\n")
    monkeypatch.syspath_prepend(str(plugin_dir))
    monkeypatch.delitem(sys.modules, "my_algo", raising=False)
    config = load_config(None, ["algo=reinforce", "reinforce.gamma=0.5"])
    assert config.algo == "reinforce" and config.algorithm.name == "reinforce" and config.algo_settings.gamma == 0.5
    assert resolve("reinforce")[1] == "reinforce"  # recorded by its name: installed, it loads anywhere
