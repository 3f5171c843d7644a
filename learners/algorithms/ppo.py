"""IPPO and MAPPO: PPO with one actor and one critic per team, trained through the env server's batched path.

The two differ only in the critic's input: IPPO's critic reads the agent's own observation, MAPPO's the world's
global state (plus optionally the agent's observation; where no state is granted, a learner holding some seats,
the team's joint observation). Agents of a team share both networks, told apart by an agent-id one-hot in their
inputs (see learners.policy). Both are written on the learner API only (learners.api): this file is a worked example
of an on-policy algorithm.

One update: begin it (the harness resets the worlds at checkpoint boundaries); step every world ``rollout_steps``
times, sampling all agents of a team in one forward pass, with ``pipeline`` parts of the worlds in flight (the
servers step one part while the learner samples for the next); compute every value in one pass of the critic; GAE
per team; advantage and value-target statistics reduced over ranks; ``epochs`` passes of ``minibatches``
minibatches whose gradients are averaged over ranks with one Allreduce and clipped per actor and per critic; then
end it (the harness logs, checks, checkpoints). With ``overlap`` (the default) the passes run in a thread beside the
next rollout, which samples from a copy of the actors as they were when the update began (one update of policy
lag); every collective call stays in the main thread.

Resume is exact: the harness reseeds torch and the session's generator at every checkpoint boundary and resets the
worlds there; the update's shuffling generator is seeded from the session's at each reset. The parts of a
pipelined rollout are fixed row ranges, sampled in a fixed order; the update that ends at a checkpoint, and the
last, run alone (``session.ends_at_boundary``). A different ``pipeline`` samples the parts in another order, so it
draws different (equally distributed) actions.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from agora_marl.learners import api, mpi
from agora_marl.learners.mpi.gradients import GradientAllreducer
from agora_marl.learners.networks import flat_dim
from agora_marl.learners.policy import MultiAgentPolicy, TeamActor
from agora_marl.learners.rollout import Team, gae
from agora_marl.learners.schedules import linear, set_lr

STATS = ("loss/policy", "loss/value", "entropy", "approx_kl", "clip_frac", "explained_variance")


@dataclass
class Settings:
    """PPO settings (the ``[ppo]`` table, shared by ``ippo`` and ``mappo``). Defaults: the MAPPO paper's MPE settings, tuned for simple_spread on a
    small budget (gamma 0.95, 15 epochs of 4 minibatches; see docs/learners.md)."""

    rollout_steps: int = 25
    """Steps per world per update. A multiple of the episode length keeps every update on episode boundaries."""
    epochs: int = 15
    """Passes over each rollout."""
    minibatches: int = 4
    """Minibatches per epoch (per team)."""
    lr: float = 7e-4
    """Adam learning rate (actor and critic)."""
    lr_anneal: bool = False
    """Decay the learning rate linearly to zero over the run."""
    adam_eps: float = 1e-5
    """Adam epsilon."""
    gamma: float = 0.95
    """Discount. 0.95 learns 25-step MPE episodes much faster than 0.99 for the same steps (docs/learners.md)."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    clip: float = 0.2
    """PPO ratio clip."""
    value_clip: float = 0.2
    """Clip of the value change per update around the rollout's prediction (0: off)."""
    entropy_coef: float = 0.01
    """Entropy bonus."""
    value_coef: float = 1.0
    """Weight of the value loss."""
    huber_delta: float = 10.0
    """Huber loss threshold for the value loss (0: squared error)."""
    max_grad_norm: float = 10.0
    """Gradient norm clip, applied to actor and critic separately."""
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    """Hidden layer widths of actor and critic."""
    activation: str = "relu"
    """``relu`` or ``tanh``."""
    input_norm: bool = True
    """LayerNorm over the network inputs."""
    share: str = "team"
    """``team``: agents with the same spaces and name prefix (``adversary_*``) share networks; ``none``: one per agent."""
    agent_id: bool = True
    """Append a one-hot of the agent's index within its team to actor and critic inputs (shared networks only)."""
    critic_obs: bool = False
    """MAPPO: also give the critic the agent's own observation, next to the global state."""
    normalize_advantages: bool = True
    """Normalise advantages per team (mean and std over all ranks)."""
    value_norm: bool = True
    """Learn values of normalised returns (running mean and std over all ranks)."""
    pipeline: int = 2
    """Parts of the worlds in flight during a rollout: the servers step one part while the learner samples the
    actions of another (1: the whole batch, one step at a time). The parts are equal ranges of rows, fixed by
    ``env.num_worlds`` and this alone, so a run with the same settings resumes exactly (docs/learners.md)."""
    overlap: bool = True
    """Run each update in a background thread while the next rollout samples from the parameters that update started
    from: one update of policy lag (as in APPO; PPO's ratio and clip are taken against the sampling parameters, whose
    log-probabilities the rollout stores), so that the servers do not idle through the update. The update before each
    checkpoint boundary and the last run alone, so resume stays exact. Off: every rollout samples from the latest
    parameters, strictly on-policy, and waits for the update (docs/learners.md, 'Speed')."""
    box_bounds: str = "clip"
    """Box actions: ``clip`` the Gaussian sample into the bounds, or ``squash`` it through tanh."""
    log_std_init: float = 0.0
    """Initial log standard deviation of Box actions."""


class IPPO(api.Algorithm):
    """PPO with decentralized critics: each agent's critic reads its own observation."""

    name = "ippo"
    Settings = Settings
    table = "ppo"
    actions = frozenset({"discrete", "multi_discrete", "box"})
    state = "never"
    partial_seats = True
    self_play = True
    on_policy = True
    layouts = ("stacked", "agents")
    check_settings = {"rollout_steps": 10, "epochs": 2, "minibatches": 2}
    centralized: ClassVar[bool] = False

    def world_parts(self, settings: Settings) -> int:
        # One part of the worlds per request: a rollout keeps ppo.pipeline parts in flight, and a vector-backed part
        # steps only whole.
        if settings.pipeline < 1:
            raise ValueError(f"ppo.pipeline = {settings.pipeline}: use 1 (no pipelining) or more parts in flight")
        return settings.pipeline

    def make_policy(self, spec: api.WorldSpec, seats: list[str], settings: Settings) -> MultiAgentPolicy:
        return MultiAgentPolicy(
            seats,
            spec.observation_spaces,
            spec.action_spaces,
            share=settings.share,
            agent_id=settings.agent_id,
            hidden=settings.hidden,
            activation=settings.activation,
            input_norm=settings.input_norm,
            box_bounds=settings.box_bounds,
            log_std_init=settings.log_std_init,
        )

    def train(self, session: api.Session) -> None:
        _train(self, session)


class MAPPO(IPPO):
    """PPO with a centralized critic on the world's global state (or, where none is granted, the team's joint obs).

    A learner granted no state (it holds some seats of its worlds beside other clients) gives its critic the joint
    observation of its own seats instead."""

    name = "mappo"
    state = "optional"
    centralized = True


def _train(algorithm: IPPO, session: api.Session) -> None:
    s, worlds, device = session.settings, session.worlds, session.device
    K, T = worlds.num_worlds, s.rollout_steps
    agents = worlds.possible_agents
    centralized = algorithm.centralized
    policy = algorithm.make_policy(session.spec, agents, s)
    # A client holding some seats gets no global state: MAPPO's critic then reads its own team's joint observation.
    joint = centralized and worlds.partial
    if joint and session.rank == 0:
        print(f"mappo: the worlds grant {agents} no global state; the critic reads their joint observation")
    if centralized and not joint and worlds.state_space is None:
        raise ValueError(f"{worlds.spec.scenario} has no global state (some observation is not a Box): use algo=ippo")
    if joint:
        state_dim = sum(flat_dim(worlds.observation_spaces[a]) for a in agents)
    else:
        state_dim = flat_dim(worlds.state_space) if centralized else 0
    teams = []
    for name, actor in policy.teams.items():
        critic_dim = state_dim + actor.obs_dim * s.critic_obs + actor.id_dim if centralized else None
        columns = [agents.index(a) for a in actor.agents]
        shape = dict(hidden=s.hidden, activation=s.activation, input_norm=s.input_norm)
        teams.append(
            Team(name, actor, columns, critic_dim, K, T, **shape, value_norm=s.value_norm, critic_obs=s.critic_obs)
        )
    critics = nn.ModuleDict({t.name: t.critic for t in teams})
    norms = nn.ModuleDict({t.name: t.norm for t in teams if t.norm is not None})
    policy.to(device), critics.to(device), norms.to(device)
    params = [*policy.parameters(), *critics.parameters()]
    # fused: one kernel over all parameters per step, where foreach launches one per operation
    optimizer = torch.optim.Adam(params, lr=s.lr, eps=s.adam_eps, fused=True)
    session.register(policy, critics=critics, value_norms=norms, optimizer=optimizer)
    reducer = GradientAllreducer(params, mpi_cuda=session.config.run.mpi_cuda)
    # Actor and critic of each team are clipped separately: each is a run of consecutive parameters of the buffer.
    clip_parts = [reducer.part(net.parameters()) for net in [*(t.actor for t in teams), *(t.critic for t in teams)]]
    # The actors the rollouts sample from: the trained ones, or with overlap a copy that lags one update behind.
    behaviour = copy.deepcopy(policy) if s.overlap else policy
    actors = [behaviour.teams[t.name] for t in teams]
    shuffle = torch.Generator(device=device)  # the update's own: with overlap it runs beside the rollout's sampling
    split = np.array_split(np.arange(K), min(s.pipeline, K))
    parts = [slice(int(rows[0]), int(rows[-1]) + 1) for rows in split]
    total_updates = math.ceil(session.total_steps / (K * T * session.ranks))

    def learn(batches: list[dict[str, torch.Tensor]], lr: float) -> tuple[torch.Tensor, float]:
        """``epochs`` passes over the batches; returns the summed statistics of the last pass and the seconds taken."""
        began = time.perf_counter()
        set_lr(optimizer, lr)
        sums = torch.zeros(len(STATS), device=device)
        for epoch in range(s.epochs):
            last_epoch = epoch == s.epochs - 1  # statistics from the last pass only: they cost a sync per minibatch
            # One gather per tensor and epoch; the minibatches are then contiguous views of the shuffled batch.
            orders = [torch.randperm(len(b["adv"]), generator=shuffle, device=device) for b in batches]
            shuffled = [{k: v[order] for k, v in b.items()} for b, order in zip(batches, orders, strict=True)]
            for j in range(s.minibatches):
                reducer.zero_grad()
                loss = torch.zeros((), device=device)
                for team, batch in zip(teams, shuffled, strict=True):
                    size = math.ceil(len(batch["adv"]) / s.minibatches)
                    idx = slice(j * size, (j + 1) * size)
                    if j * size >= len(batch["adv"]):  # fewer live samples than minibatches: a zero gradient here
                        continue
                    team_loss, stats = _loss(team, batch, idx, s, last_epoch)
                    loss = loss + team_loss
                    if last_epoch:
                        sums += stats
                if loss.requires_grad:
                    loss.backward()
                reducer.allreduce()
                reducer.clip_grad_norm_(s.max_grad_norm, clip_parts)
                optimizer.step()
        return sums, time.perf_counter() - began

    def end(done: _Done, sums: torch.Tensor, learn_s: float, update_s: float) -> None:
        """End update ``done.update`` (every rank, in the main thread: the harness's end is collective)."""
        stats = sums.cpu().numpy() / (s.minibatches * len(teams))
        metrics = dict(zip(STATS, (float(x) for x in stats), strict=True))
        metrics.update(lr=done.lr, rollout_s=done.rollout_s, learn_s=learn_s, update_s=update_s)
        session.end_update(metrics, update=done.update)

    alive = np.ones((K, len(agents)), bool)
    behind: _Behind | None = None  # the update running beside this rollout (overlap)
    try:
        while not session.done:
            started = time.perf_counter()
            # ---- rollout ----------------------------------------------------------------------------------
            reset = session.begin_update()
            if reset is not None:  # a checkpoint boundary: the worlds start afresh
                shuffle.manual_seed(int(session.rng.integers(1 << 62)))
                result = _with_joint_state(reset, joint)
                for team in teams:
                    team.start(result.obs, result.state)
                alive[:] = result.alive
            update = session.update
            # Pipelined: each part's next step goes out as soon as its actions are sampled, while the servers still
            # step the other parts (docs/learners.md, 'Speed').
            pending = [worlds.step_async(_act(teams, actors, worlds, 0, rows, device), rows) for rows in parts]
            for t in range(T):
                for p, rows in enumerate(parts):
                    result = _with_joint_state(worlds.step_wait(pending[p]), joint)
                    for team in teams:
                        team.record(t, rows, alive[rows], result)
                    alive[rows] = result.alive
                    if t + 1 < T:
                        pending[p] = worlds.step_async(_act(teams, actors, worlds, t + 1, rows, device), rows)
            rollout_s = time.perf_counter() - started
            if behind is not None:  # the update that ran beside this rollout ends now
                sums, learn_s = behind.join()
                end(behind.done, sums, learn_s, started - behind.started)
                behind = None
            # ---- advantages -------------------------------------------------------------------------------
            batches = [_prepare(team, s, device) for team in teams]
            # ---- update -----------------------------------------------------------------------------------
            lr = linear(update - 1, s.lr, 0.0, total_updates) if s.lr_anneal else s.lr
            done = _Done(update, lr, rollout_s)
            if s.overlap and not session.ends_at_boundary(update):
                behaviour.load_state_dict(policy.state_dict())  # the next rollout samples from these parameters
                behind = _Behind(learn, batches, lr, done, started)
                continue
            sums, learn_s = learn(batches, lr)
            if s.overlap:
                behaviour.load_state_dict(policy.state_dict())
            end(done, sums, learn_s, time.perf_counter() - started)
    finally:
        if behind is not None:  # the rollout failed: let the update finish before the worlds close
            behind.thread.join()


@dataclass
class _Done:
    """What the end of an update logs about it: its number, learning rate and rollout time."""

    update: int
    lr: float
    rollout_s: float


class _Behind:
    """An update running in a thread beside the next rollout (``ppo.overlap``); :meth:`join` returns what it returned
    or raises what it raised."""

    def __init__(self, learn: Any, batches: list[dict[str, torch.Tensor]], lr: float, done: _Done, started: float):
        self.done, self.started = done, started
        self._out: Any = None
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(learn, batches, lr), name="ppo-update", daemon=True)
        self.thread.start()

    def _run(self, learn: Any, batches: list[dict[str, torch.Tensor]], lr: float) -> None:
        try:
            self._out = learn(batches, lr)
        except BaseException as exc:  # handed to the main thread, which raises it
            self._error = exc

    def join(self) -> Any:
        self.thread.join()
        if self._error is not None:
            raise self._error
        return self._out


def _with_joint_state(result: api.BatchResult, joint: bool) -> api.BatchResult:
    """With ``joint``, the result's ``state`` (and ``final_state``) is the team's joint observation: (K, features)."""
    if joint:
        result.state = _joint(result.obs)
        result.final_state = None if result.final_obs is None else _joint(result.final_obs)
    return result


def _joint(obs: dict[str, np.ndarray] | np.ndarray) -> np.ndarray:
    parts = obs.values() if isinstance(obs, dict) else [obs]
    return np.concatenate([p.reshape(len(p), -1) for p in parts], axis=1).astype(np.float32, copy=False)


@torch.no_grad()
def _act(
    teams: list[Team], actors: list[TeamActor], worlds: api.Worlds, t: int, rows: slice, device: torch.device
) -> Any:
    """Sample the actions of every agent of worlds ``rows`` at step ``t`` from ``actors`` (one per team, one forward
    pass each), laid out as the worlds take them."""
    K = rows.stop - rows.start
    stacked = worlds.layout == "stacked"
    out: Any = None if stacked else {}
    for team, actor in zip(teams, actors, strict=True):
        buf = team.buf
        x = torch.from_numpy(buf.actor_in[t, rows]).reshape(K * buf.agents, -1).to(device)
        actions, log_probs = actor.head.sample(actor.actor(x))
        buf.actions[t, rows] = actions.reshape(K, buf.agents, *buf.actions.shape[3:]).cpu()
        buf.log_probs[t, rows] = log_probs.reshape(K, buf.agents).cpu()
        values = actor.head.to_env(actions)
        values = values.reshape(K, buf.agents, *values.shape[1:])
        if stacked and len(teams) == 1:
            return values
        if stacked:
            if out is None:
                out = np.empty((K, len(worlds.possible_agents), *values.shape[2:]), values.dtype)
            out[:, team.cols] = values
        else:
            out.update({agent: values[:, j] for j, agent in enumerate(team.agents)})
    return out


def _prepare(team: Team, s: Any, device: torch.device) -> dict[str, torch.Tensor]:
    """A team's training batch: the active samples, with advantages, returns and (normalised) value targets."""
    buf = team.buf
    raw_values, raw_next = buf.values(team.critic, device)
    values, next_values = raw_values, raw_next
    if team.norm is not None:
        values, next_values = (
            team.norm.denormalize(raw_values.to(device)).cpu(),
            team.norm.denormalize(raw_next.to(device)).cpu(),
        )
    rewards = torch.from_numpy(buf.rewards)
    adv = gae(
        rewards,
        values,
        next_values,
        torch.from_numpy(buf.terminated),
        torch.from_numpy(buf.ended),
        s.gamma,
        s.gae_lambda,
    )
    returns = adv + values
    mask = torch.from_numpy(buf.active)
    batch = {
        "actor_in": torch.from_numpy(buf.actor_in[:-1])[mask],
        "critic_in": torch.from_numpy(buf.critic_in[:-1])[mask],
        "actions": buf.actions[mask],
        "log_probs": buf.log_probs[mask],
        "adv": adv[mask],
        "returns": returns[mask],
        "old_values": raw_values[mask],
    }
    buf.roll_over()
    if s.normalize_advantages:
        mean, std = mpi.mean_std(batch["adv"])
        batch["adv"] = (batch["adv"] - mean) / (std + 1e-8)
    targets = batch["returns"]
    if team.norm is not None:
        mean, std = mpi.mean_std(targets, unbiased=False)
        team.norm.update(mean, std**2, mpi.allreduce_sum(float(len(targets))))
        targets = team.norm.normalize(targets.to(device)).cpu()
    batch["targets"] = targets
    return {k: v.to(device) for k, v in batch.items()}


def _loss(
    team: Team, batch: dict[str, torch.Tensor], idx: slice, s: Any, with_stats: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The PPO loss of one team's minibatch and, ``with_stats``, its statistics (policy loss, value loss, entropy,
    approx KL, clip fraction, explained variance)."""
    params = team.actor.actor(batch["actor_in"][idx])
    log_probs, entropy = team.actor.head.evaluate(params, batch["actions"][idx])
    log_ratio = log_probs - batch["log_probs"][idx]
    ratio = log_ratio.exp()
    adv = batch["adv"][idx]
    policy_loss = -torch.min(ratio * adv, ratio.clamp(1 - s.clip, 1 + s.clip) * adv).mean()
    values = team.critic(batch["critic_in"][idx])
    targets, old = batch["targets"][idx], batch["old_values"][idx]
    value_loss = _value_error(values - targets, s.huber_delta)
    if s.value_clip > 0:
        clipped = old + (values - old).clamp(-s.value_clip, s.value_clip)
        value_loss = torch.max(value_loss, _value_error(clipped - targets, s.huber_delta))
    value_loss = value_loss.mean()
    entropy = entropy.mean()
    loss = policy_loss - s.entropy_coef * entropy + s.value_coef * value_loss
    if not with_stats:
        return loss, None
    with torch.no_grad():
        approx_kl = ((ratio - 1) - log_ratio).mean()
        clip_frac = ((ratio - 1).abs() > s.clip).float().mean()
        explained = 1 - (targets - values).var(correction=0) / targets.var(correction=0).clamp_min(1e-8)
        stats = torch.stack([policy_loss, value_loss, entropy, approx_kl, clip_frac, explained])
    return loss, stats


def _value_error(error: torch.Tensor, delta: float) -> torch.Tensor:
    if delta <= 0:
        return 0.5 * error.square()
    return nn.functional.huber_loss(error, torch.zeros_like(error), reduction="none", delta=delta)
