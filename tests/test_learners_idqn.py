"""agora_marl.learners.idqn: the replay path, episode ends, resume, and learning CartPole through a real server."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces

from agora_marl.agents.batched import BatchResult
from agora_marl.agents.types import WorldSpec
from agora_marl.envserver.process import ServerProcesses
from agora_marl.learners.algorithms import idqn
from agora_marl.learners.config import load_config
from agora_marl.learners.replay import JointReplay
from agora_marl.learners.run import Run, read_metrics
from agora_marl.learners.trained import evaluate, load_run_policy, load_trained_policy
from agora_marl.learners.training import train

ROOT = Path(__file__).resolve().parent.parent
CARTPOLE = ["algo=idqn", "env.scenario=gymnasium:CartPole-v1", "env.num_worlds=8", "run.progress=false"]
#: CartPole-v1 under uniformly random actions lasts about 22 steps.
RANDOM_RETURN = 22.0


@pytest.fixture(scope="module")
def server() -> list[str]:
    with ServerProcesses(count=1) as servers:
        yield servers.addresses


def _spec(agents: int = 2, action: spaces.Space | None = None) -> WorldSpec:
    names = [f"agent_{i}" for i in range(agents)]
    box = spaces.Box(-1.0, 1.0, (3,), np.float32)
    act = action or spaces.Discrete(4, start=1)
    return WorldSpec("test", {}, names, dict.fromkeys(names, box), dict.fromkeys(names, act), None)


def test_td_targets_tell_termination_truncation_and_auto_reset_apart() -> None:
    """World 0 ends its episode (auto-reset), world 1 goes on with agent_1 terminated, world 2 cuts agent_0 short
    while agent_1 was dead before the step: the five transitions that acted, through the joint replay buffer."""
    spec, settings = _spec(), idqn.Settings(gamma=0.5, huber_delta=0.0)
    policy = idqn.QPolicy(spec, settings)
    agents = spec.possible_agents
    obs = {a: np.full((3, 3), 10.0 * (j + 1), np.float32) + np.arange(3)[:, None] for j, a in enumerate(agents)}
    final = {a: v - 0.5 for a, v in obs.items()}
    alive_before = np.array([[True, True], [True, True], [True, False]])
    result = BatchResult(
        obs={a: v + 0.5 for a, v in obs.items()},
        alive=np.array([[True, True], [True, False], [False, False]]),
        rewards=np.array([[1, 2], [3, 4], [5, 6]], np.float32),
        terminated=np.array([[False, False], [False, True], [False, False]]),
        truncated=np.array([[True, True], [False, False], [True, False]]),
        episode_over=np.array([True, False, False]),
        final_obs=final,
    )
    actions = {"agent_0": np.array([1, 2, 3]), "agent_1": np.array([4, 1, 1])}  # the space starts at 1
    replay = JointReplay(8, agents, spec.observation_spaces, spec.action_spaces)
    replay.add(BatchResult(obs=obs, alive=alive_before), actions, result)
    loss, _ = idqn._td_loss(policy, policy, "agent", agents, replay.rows(np.arange(3)), settings)

    def q(x: np.ndarray, agent: int) -> torch.Tensor:
        one_hot = np.eye(2, dtype=np.float32)[agent]
        return policy.nets["agent"](torch.from_numpy(np.concatenate([x, one_hot]).astype(np.float32))).detach()

    # (world, agent, the observation its target bootstraps from or None where it terminated)
    expected = [(0, 0, final["agent_0"][0]), (0, 1, final["agent_1"][0]), (1, 0, obs["agent_0"][1] + 0.5)]
    expected += [(1, 1, None), (2, 0, obs["agent_0"][2])]  # cut short while the world goes on: its last obs
    errors = []
    for k, i, following in expected:
        a = agents[i]
        y = result.rewards[k, i] + (0.0 if following is None else 0.5 * q(following, i).max().item())
        errors.append((q(obs[a][k], i)[actions[a][k] - 1].item() - y) ** 2)
    assert loss.item() == pytest.approx(np.mean(errors), rel=1e-5)


def test_actions_respect_the_space_start_and_box_actions_are_refused() -> None:
    policy = idqn.QPolicy(_spec(), idqn.Settings())
    obs = {a: np.zeros((5, 3), np.float32) for a in policy.possible_agents}
    for greedy in (True, False):
        for values in policy.act(obs, greedy=greedy).values():
            assert values.shape == (5,) and ((values >= 1) & (values <= 4)).all()
    with pytest.raises(ValueError, match="Discrete"):
        idqn.QPolicy(_spec(action=spaces.Box(-1, 1, (2,))), idqn.Settings())


def test_one_seat_of_a_team_acts_as_it_does_beside_its_teammates() -> None:
    """``agora play --policy RUN_DIR`` and ``agora record`` ask for one seat at a time: its agent-id one-hot is still
    its index in the team."""
    policy = idqn.QPolicy(_spec(agents=3), idqn.Settings())
    obs = {a: np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32) for a in policy.possible_agents}
    together = policy.act(obs)
    for agent in policy.possible_agents:
        assert np.array_equal(policy.act({agent: obs[agent]})[agent], together[agent])


def test_resume_continues_counters_and_experience(tmp_path: Path, server: list[str]) -> None:
    overrides = [*CARTPOLE, "run.total_steps=1024", "run.checkpoint_every=2", "idqn.learning_starts=256"]
    config = load_config(None, overrides)
    run = Run.create(config, tmp_path / "run")
    train(config, run, server)
    run.close()
    first = torch.load(run.checkpoints()[-1], weights_only=True)
    assert first["step"] == 1024 and first["per_rank"][0]["replay"]["size"] == 1024

    resumed = Run.open(tmp_path / "run", ["run.total_steps=2048"])
    metrics = train(resumed.config, resumed, server)
    resumed.close()
    last = torch.load(resumed.checkpoints()[-1], weights_only=True)
    assert last["step"] == 2048 and last["update"] == 2 * first["update"]
    assert last["per_rank"][0]["replay"]["size"] == 2048
    assert metrics["gradient_steps"] > first["state"]["counters"]["gradient_steps"]
    steps = [int(r["step"]) for r in read_metrics(tmp_path / "run" / "metrics.csv")]
    assert steps == sorted(steps) and steps[-1] == 2048 and len(steps) == len(set(steps))
    # The checkpoint alone rebuilds a seat's policy, as `agora play --policy RUN_DIR` needs.
    seat = load_run_policy(tmp_path / "run", action_space=spaces.Discrete(2))
    assert seat(np.zeros(4, np.float32)) in (0, 1)


def test_resume_reproduces_an_uninterrupted_run_exactly(tmp_path: Path, server: list[str]) -> None:
    """4 updates straight equal 2 updates, a stop and 2 more: the replay memory, networks, optimizer and the metrics,
    bit for bit (an off-policy learner's replay travels in the checkpoint; the harness reseeds at the boundary)."""
    common = [*CARTPOLE, "run.checkpoint_every=2", "idqn.learning_starts=256", "idqn.target_every=8"]
    straight = Run.create(load_config(None, [*common, "run.total_steps=512"]), tmp_path / "straight")
    train(straight.config, straight, server)
    straight.close()
    part = Run.create(load_config(None, [*common, "run.total_steps=256"]), tmp_path / "resumed")
    train(part.config, part, server)
    part.close()
    resumed = Run.open(tmp_path / "resumed", ["run.total_steps=512"])
    train(resumed.config, resumed, server)
    resumed.close()
    a, b = (torch.load(r.checkpoints()[-1], weights_only=True) for r in (straight, resumed))
    assert a["update"] == b["update"] == 4 and a["state"]["counters"] == b["state"]["counters"]
    replays = [r["per_rank"][0]["replay"] for r in (a, b)]
    assert [r["size"] for r in replays] == [512, 512] and replays[0]["cursor"] == replays[1]["cursor"]
    for name, tensor in [*a["policy"].items(), *(("replay." + k, v) for k, v in replays[0]["arrays"].items())]:
        other = b["policy"][name] if not name.startswith("replay.") else replays[1]["arrays"][name[7:]]
        assert torch.equal(tensor, other), f"{name} differs after resume"
    for name, tensor in a["state"]["target"].items():
        assert torch.equal(tensor, b["state"]["target"][name]), f"target.{name} differs after resume"
    rows = [read_metrics(r.directory / "metrics.csv") for r in (straight, resumed)]
    assert [[r["return"], r["loss"]] for r in rows[0]] == [[r["return"], r["loss"]] for r in rows[1]]


@pytest.mark.slow
def test_idqn_learns_cartpole_through_the_server(tmp_path: Path, server: list[str]) -> None:
    # Measured over seeds 1-6 with these settings: greedy returns 234-361 after 25K steps (~10 s here).
    config = load_config(None, [*CARTPOLE, "run.total_steps=25000", "run.seed=3"])
    run = Run.create(config, tmp_path / "run")
    metrics = train(config, run, server)
    run.close()
    returns = evaluate(load_trained_policy(tmp_path / "run"), server, "gymnasium:CartPole-v1", {}, episodes=16)
    assert returns.mean() > 5 * RANDOM_RETURN, f"greedy return {returns.mean():.1f} after 25K steps"
    assert metrics["return_recent"] > 3 * RANDOM_RETURN, metrics  # epsilon-greedy training episodes too


@pytest.mark.mpi
@pytest.mark.slow
def test_two_ranks_train_idqn_in_sync() -> None:
    mpirun = shutil.which("mpirun", path=str(Path(sys.executable).parent)) or shutil.which("mpirun")
    if mpirun is None:
        pytest.skip("no mpirun on PATH or next to the interpreter: install an MPI (pip install mpich)")
    script = ROOT / "tests" / "mpi_scripts" / "idqn_two_ranks.py"
    done = subprocess.run(
        [mpirun, "-n", "2", sys.executable, "-m", "mpi4py", str(script)],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for rank in (0, 1):
        assert f"RANK {rank} OK" in done.stdout, done.stdout + done.stderr
    assert "gradient_steps=0" not in done.stdout
