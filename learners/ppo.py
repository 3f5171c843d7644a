"""IPPO and MAPPO: PPO with one actor and one critic per team, trained through the env server's batched path.

The two differ only in the critic's input: IPPO's critic reads the agent's own observation, MAPPO's the world's
global state (``BatchedWorlds(state=True)``, plus optionally the agent's observation). Agents of a team share both
networks, told apart by an agent-id one-hot in their inputs (see learners.policy).

One update: reset the worlds if this is the first update after a checkpoint boundary; step every world
``rollout_steps`` times, sampling all agents of a team in one forward pass, with ``pipeline`` parts of the worlds in
flight (the servers step one part while the learner samples for the next); compute every value in one pass of the
critic; GAE per team; advantage and value-target statistics reduced over ranks; ``epochs`` passes of
``minibatches`` minibatches whose gradients are averaged over ranks with one Allreduce and clipped per actor and
per critic; then the end of the update (learners.training: log, checkpoint, stop). With ``overlap`` (the default)
the passes run in a thread beside the next rollout, which samples from a copy of the actors as they were when the
update began (one update of policy lag); every collective call stays in one thread at a time.

Resume is exact: at each checkpoint boundary the worlds are reset and torch's generators re-seeded from
(seed, rank, update), so a run resumed from a checkpoint makes the same draws as one that never stopped. The parts
of a pipelined rollout are fixed row ranges, sampled in a fixed order; the update shuffles with a generator of its
own; the update that ends at a checkpoint, and the last, run alone. A different ``pipeline`` samples the parts in
another order, so it draws different (equally distributed) actions.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from agora_marl.agents.batched import BatchedWorlds, BatchResult
from agora_marl.envserver.protocol import WorldSpec
from agora_marl.learners import mpi
from agora_marl.learners.config import Config
from agora_marl.learners.mpi.gradients import GradientAllreducer, broadcast_parameters
from agora_marl.learners.mpi.tensors import check_in_sync
from agora_marl.learners.networks import flat_dim
from agora_marl.learners.policy import MultiAgentPolicy, TeamActor
from agora_marl.learners.rollout import Team, gae
from agora_marl.learners.run import Run
from agora_marl.learners.training import Training, train_in_worlds


@dataclass
class Settings:
    """PPO settings (the ``[ppo]`` table). Defaults: the MAPPO paper's MPE settings, tuned for simple_spread on a
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


def train(config: Config, run: Run, addresses: list[str]) -> dict[str, float]:
    """Train IPPO or MAPPO (``config.algo``) until ``config.run.total_steps``; see learners.config for the contract.

    The worlds are stacked (one array with an agent axis) when every agent shares its spaces, else per agent.
    """
    centralized = config.algo == "mappo"
    loop = partial(_train, centralized=centralized)
    # One part of the worlds per request: a rollout keeps ppo.pipeline parts in flight, and a vector-backed part
    # steps only whole.
    parts = config.algo_settings.pipeline if isinstance(config.algo_settings, Settings) else 1
    return train_in_worlds(config, run, addresses, loop, state=centralized, layouts=("stacked", "agents"), parts=parts)


def _train(training: Training, centralized: bool) -> dict[str, float]:
    config, worlds, device = training.config, training.worlds, training.device
    s, rs = config.algo_settings, config.run
    K, T = config.env.num_worlds, s.rollout_steps
    agents = worlds.possible_agents
    torch.manual_seed(rs.seed)  # the initial parameters (rank 0's are broadcast to all)
    policy = MultiAgentPolicy(agents, worlds.observation_spaces, worlds.action_spaces, s)
    # A client holding some seats gets no global state: MAPPO's critic then reads its own team's joint observation.
    joint = centralized and worlds.partial
    if joint and mpi.is_root():
        print(f"mappo: the worlds grant {agents} no global state; the critic reads their joint observation")
    if centralized and not joint and worlds.state_space is None:
        raise ValueError(f"{config.env.scenario} has no global state (some observation is not a Box): use algo=ippo")
    if joint:
        state_dim = sum(flat_dim(worlds.observation_spaces[a]) for a in agents)
    else:
        state_dim = flat_dim(worlds.state_space) if centralized else 0
    teams = []
    for name, actor in policy.teams.items():
        critic_dim = state_dim + actor.obs_dim * s.critic_obs + actor.id_dim if centralized else None
        teams.append(Team(name, actor, [agents.index(a) for a in actor.agents], critic_dim, s, K))
    critics = nn.ModuleDict({t.name: t.critic for t in teams})
    norms = nn.ModuleDict({t.name: t.norm for t in teams if t.norm is not None})
    policy.to(device), critics.to(device), norms.to(device)
    params = [*policy.parameters(), *critics.parameters()]
    # fused: one kernel over all parameters per step, where foreach launches one per operation
    optimizer = torch.optim.Adam(params, lr=s.lr, eps=s.adam_eps, fused=True)

    step, update, episodes = 0, 0, 0
    state = training.resumed
    if state is not None:
        policy.load_state_dict(state["actors"]), critics.load_state_dict(state["critics"])
        norms.load_state_dict(state["value_norms"]), optimizer.load_state_dict(state["optimizer"])
        step, update, episodes = state["step"], state["update"], state["episodes"]
    for module in (policy, critics, norms):
        broadcast_parameters(module)
    training.track(policy)  # self-play's snapshots copy it
    reducer = GradientAllreducer(params, mpi_cuda=rs.mpi_cuda)
    # Actor and critic of each team are clipped separately: each is a run of consecutive parameters of the buffer.
    clip_parts = [reducer.part(net.parameters()) for net in [*(t.actor for t in teams), *(t.critic for t in teams)]]
    # The actors the rollouts sample from: the trained ones, or with overlap a copy that lags one update behind.
    behaviour = copy.deepcopy(policy) if s.overlap else policy
    actors = [behaviour.teams[t.name] for t in teams]
    shuffle = torch.Generator(device=device)  # the update's own: with overlap it runs beside the rollout's sampling
    steps_per_update = K * T * mpi.size()
    if s.pipeline < 1:
        raise ValueError(f"ppo.pipeline = {s.pipeline}: use 1 (no pipelining) or more parts of the worlds in flight")
    split = np.array_split(np.arange(K), min(s.pipeline, K))
    parts = [slice(int(rows[0]), int(rows[-1]) + 1) for rows in split]
    total_updates = math.ceil(rs.total_steps / steps_per_update)

    def checkpoint(step: int, update: int) -> dict[str, Any]:
        return {
            "step": step,
            "update": update,
            "episodes": episodes,
            "algo": config.algo,
            "spec": worlds.spec.to_wire(),
            "seats": agents,
            "actors": policy.state_dict(),
            "critics": critics.state_dict(),
            "value_norms": norms.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": {"seed": rs.seed, "reseeded_at_update": update},
        }

    def learn(batches: list[dict[str, torch.Tensor]], lr: float) -> tuple[torch.Tensor, float]:
        """``epochs`` passes over the batches; returns the summed statistics of the last pass and the seconds taken."""
        began = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr
        sums = torch.zeros(6, device=device)
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

    def end(done: _Done, sums: torch.Tensor, learn_s: float, update_s: float) -> dict[str, float]:
        """Log, check and checkpoint update ``done.update`` (every rank, in the main thread: it is collective)."""
        nonlocal episodes
        metrics = _metrics(sums.cpu().numpy() / (s.minibatches * len(teams)), done.finished, done.lengths, teams)
        episodes += int(metrics.pop("episodes"))
        metrics.update(lr=done.lr, episodes=episodes, rollout_s=done.rollout_s, learn_s=learn_s, update_s=update_s)
        metrics["steps_per_s"] = steps_per_update / update_s
        if worlds.partial:
            metrics["opponent_late"], metrics["own_late"] = (float(x) for x in mpi.allreduce_mean(done.late / T))
        if done.update % rs.sync_every == 0:
            check_in_sync([*params, *norms.buffers()])
        training.end_update(done.step, done.update, metrics, partial(checkpoint, done.step, done.update))
        return metrics

    alive = np.ones((K, len(agents)), bool)
    returns_k = np.zeros((K, 1 + len(teams)))
    lengths_k = np.zeros(K)
    metrics: dict[str, float] = {}
    behind: _Behind | None = None  # the update running beside this rollout (overlap)
    first_update = update  # a run resumed off a checkpoint boundary (an early stop) also starts from a reset
    try:
        while step < rs.total_steps:
            started = time.perf_counter()
            # ---- rollout ----------------------------------------------------------------------------------
            if update % rs.checkpoint_every == 0 or update == first_update:
                seeds = np.random.SeedSequence([rs.seed, mpi.rank(), update]).generate_state(3)
                torch.manual_seed(int(seeds[1])), shuffle.manual_seed(int(seeds[2]))
                result = _with_joint_state(worlds.reset(seed=int(seeds[0]) & 0x3FFFFFFF), joint)
                for team in teams:
                    team.start(result.obs, result.state)
                alive[:], returns_k[:], lengths_k[:] = result.alive, 0.0, 0.0
            finished: list[np.ndarray] = []
            finished_lengths: list[np.ndarray] = []
            late = np.zeros(2)  # opponent_late, own_late summed over the rollout (partial seats)
            # Pipelined: each part's next step goes out as soon as its actions are sampled, while the servers still
            # step the other parts (docs/learners.md, 'Speed').
            pending = [worlds.step_async(_act(teams, actors, worlds, 0, rows, device), rows) for rows in parts]
            for t in range(T):
                for p, rows in enumerate(parts):
                    result = _with_joint_state(worlds.step_wait(pending[p]), joint)
                    if result.opponent_late is not None:
                        late += np.multiply((result.opponent_late, result.own_late), (rows.stop - rows.start) / K)
                    returns_k[rows, 0] += result.rewards.sum(1)
                    lengths_k[rows] += 1
                    for i, team in enumerate(teams):
                        team.record(t, rows, alive[rows], result)
                        returns_k[rows, 1 + i] += team.buf.rewards[t, rows].sum(1)
                    ended = rows.start + np.flatnonzero(result.episode_over)
                    if len(ended):
                        finished.append(returns_k[ended].copy())
                        finished_lengths.append(lengths_k[ended].copy())
                        returns_k[ended], lengths_k[ended] = 0.0, 0.0
                    alive[rows] = result.alive
                    if t + 1 < T:
                        pending[p] = worlds.step_async(_act(teams, actors, worlds, t + 1, rows, device), rows)
            step += steps_per_update
            if step >= rs.total_steps:
                training.last_step_taken()
            worlds.heartbeat()  # the servers hear nothing from us during the update: keep the seats from timing out
            rollout_s = time.perf_counter() - started
            if behind is not None:  # the update that ran beside this rollout ends now
                sums, learn_s = behind.join()
                metrics = end(behind.done, sums, learn_s, started - behind.started)
                behind = None
            # ---- advantages -------------------------------------------------------------------------------
            batches = [_prepare(team, s, device) for team in teams]
            # ---- update -----------------------------------------------------------------------------------
            lr = s.lr * (1.0 - update / total_updates) if s.lr_anneal else s.lr
            update += 1
            done = _Done(step, update, lr, rollout_s, finished, finished_lengths, late)
            if s.overlap and update % rs.checkpoint_every != 0 and step < rs.total_steps:
                behaviour.load_state_dict(policy.state_dict())  # the next rollout samples from these parameters
                behind = _Behind(learn, batches, lr, done, started)
                continue
            sums, learn_s = learn(batches, lr)
            if s.overlap:
                behaviour.load_state_dict(policy.state_dict())
            metrics = end(done, sums, learn_s, time.perf_counter() - started)
    finally:
        if behind is not None:  # the rollout failed: let the update finish before the worlds close
            behind.thread.join()
    return metrics


@dataclass
class _Done:
    """What the end of an update logs about it: its counters, learning rate and rollout."""

    step: int
    update: int
    lr: float
    rollout_s: float
    finished: list[np.ndarray]
    lengths: list[np.ndarray]
    late: np.ndarray


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


def _with_joint_state(result: BatchResult, joint: bool) -> BatchResult:
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
    teams: list[Team], actors: list[TeamActor], worlds: BatchedWorlds, t: int, rows: slice, device: torch.device
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


def _metrics(
    stats: np.ndarray, finished: list[np.ndarray], lengths: list[np.ndarray], teams: list[Team]
) -> dict[str, float]:
    """Loss statistics of the update and the returns of the episodes that ended in its rollout (over all ranks)."""
    names = ("loss/policy", "loss/value", "entropy", "approx_kl", "clip_frac", "explained_variance")
    metrics = dict(zip(names, (float(x) for x in mpi.allreduce_mean(stats)), strict=True))
    done = np.concatenate(finished) if finished else np.zeros((0, 1 + len(teams)))
    lens = np.concatenate(lengths) if lengths else np.zeros(0)
    totals = mpi.allreduce_sum(np.concatenate([[len(done)], done.sum(0), [lens.sum()]]))
    metrics["episodes"] = float(totals[0])
    if totals[0] > 0:
        metrics["return"] = float(totals[1] / totals[0])
        if len(teams) > 1:
            metrics.update({f"return/{team.name}": float(totals[2 + i] / totals[0]) for i, team in enumerate(teams)})
        metrics["episode_length"] = float(totals[-1] / totals[0])
    return metrics


def policy_from_checkpoint(config: Config, state: dict[str, Any]) -> MultiAgentPolicy:
    """The trained actors of a PPO checkpoint, rebuilt from the spec stored in it (no server needed)."""
    spec = WorldSpec.from_wire(state["spec"])
    seats = state.get("seats", spec.possible_agents)  # a run that trained some seats (env.seats) has their actors
    policy = MultiAgentPolicy(seats, spec.observation_spaces, spec.action_spaces, config.algo_settings)
    policy.load_state_dict(state["actors"])
    return policy
