"""MADDPG: decentralized deterministic actors, one centralized ``Q(s, a_1..a_n)`` critic per team.

Multi-agent DDPG (Lowe et al., 2017). Each agent acts from its own observation; each team (the learner's seats
grouped by name prefix: ``agent_*``; ``adversary_*`` and ``agent_*`` are two teams) has a critic that reads the
world's global state (or, where none is granted, the joint observation of the learner's seats) and the actions of
**every** seat the learner holds, and values the team's reward (the sum of its seats' rewards). Because the critic
sees what everyone did, the other agents' exploration is not noise in its target, which is what keeps a
decentralized actor's gradient steady while the others learn.

- **Actions.** Box actions: the actor outputs the action itself, squashed by tanh into the bounds; exploration adds
  Gaussian noise of ``noise`` × the half-width of each dimension (a linear schedule from ``noise_start`` to
  ``noise_end``). Discrete and MultiDiscrete actions: the actor outputs logits; the critic reads one-hot actions;
  the actor's gradient flows through a straight-through Gumbel-softmax sample (Jang et al., 2017), and exploration
  samples the categorical (learners.networks: GumbelSoftmaxHead, DeterministicHead).
- **Critic.** ``y = R + gamma Q'(s', a')`` with ``a'`` the target actors' actions at the next observations, the
  target critic and target actors trailing the online ones by Polyak averaging (``tau``) after every gradient step.
  A seat that terminated adds no next value (the team bootstraps while any of its seats goes on or was truncated);
  a seat that did not act (dead) reads as a zero action.
- **Actors.** Each team's actors climb their critic: the team's actions are replaced by the actors' differentiable
  ones (the other teams' stay those of the replayed row), one critic pass per team, as BenchMARL's MADDPG does;
  Lowe et al. replace one agent's at a time. A small penalty on the logits (``actor_reg``) keeps the Gumbel-softmax
  actors from saturating.

Agents of a team with the same spaces share one actor (``share``, with an agent-id one-hot). Both losses are
differentiated before one allreduce of one flat gradient buffer per gradient step (the actors' gradient is taken
with respect to the actors only), so a step costs one collective at any number of ranks. Resume is exact: networks,
targets, optimizers and counters are registered with the session, the replay buffer per rank; the noise is a
schedule of the step. Where no global state is granted, rank 0 prints what the critics read instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from agora_marl.learners import api
from agora_marl.learners.mpi.gradients import GradientAllreducer
from agora_marl.learners.networks import CentralQCritic, GumbelSoftmaxHead, flat_dim, make_differentiable_head, mlp
from agora_marl.learners.policy import group_agents, team_prefix
from agora_marl.learners.replay import JointBatch, JointReplay
from agora_marl.learners.schedules import linear
from agora_marl.learners.targets import make_target, update_target


@dataclass
class Settings:
    """MADDPG settings (the ``[maddpg]`` table). The defaults learn continuous simple_spread."""

    buffer_size: int = 200_000
    """Replay capacity in rows (one world's step, every seat), per rank; the oldest are overwritten."""
    batch_size: int = 256
    """Rows per gradient step on each rank (the averaged gradient sees ranks × this)."""
    actor_lr: float = 1e-3
    """Adam learning rate of the actors."""
    critic_lr: float = 1e-3
    """Adam learning rate of the critics."""
    gamma: float = 0.95
    """Discount."""
    tau: float = 0.01
    """Polyak rate of the target actors and critics, after every gradient step."""
    learning_starts: int = 2_000
    """Environment steps (summed over ranks) of exploration before the first gradient step."""
    steps_per_update: int = 128
    """Environment steps each rank collects per update (rounded up to whole batched steps of its K worlds)."""
    gradient_steps: int = 16
    """Gradient steps per update: with steps_per_update, the replay ratio, independent of K."""
    noise_start: float = 0.3
    """Box actions: the exploration noise's initial standard deviation, as a fraction of each half-width."""
    noise_end: float = 0.05
    """Box actions: its final standard deviation (and that of ``act(greedy=False)``)."""
    noise_fraction: float = 0.5
    """Fraction of ``run.total_steps`` over which the noise decays linearly from noise_start to noise_end."""
    temperature: float = 1.0
    """Discrete actions: the Gumbel-softmax temperature of the actors' differentiable actions."""
    actor_reg: float = 1e-3
    """Discrete actions: weight of the mean squared logits in the actors' loss."""
    max_grad_norm: float = 10.0
    """Gradient norm clip, actors and critics each on their own (0: off)."""
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    """Hidden layer widths of the actors."""
    critic_hidden: list[int] = field(default_factory=lambda: [128, 128])
    """Hidden layer widths of the critics."""
    activation: str = "relu"
    """``relu`` or ``tanh``."""
    input_norm: bool = False
    """LayerNorm over the actors' and critics' inputs."""
    share: str = "team"
    """``team``: agents with the same spaces and name prefix share an actor; ``none``: one per agent."""
    agent_id: bool = True
    """Append a one-hot of the agent's index within its sharing group to the actor's input (shared actors only)."""
    checkpoint_buffer: bool = True
    """Save the replay buffer in checkpoints (needed for exact resume)."""


class ActorPolicy(nn.Module):
    """Every agent's actor, grouped for sharing: acts greedily or with exploration, and gives the critics' inputs.

    Args:
        spec: the world's spec.
        seats: the agents it acts for.
        settings: the settings that shape the actors (``hidden``, ``activation``, ``input_norm``, ``share``,
            ``agent_id``, ``noise_end``).
    """

    def __init__(self, spec: api.WorldSpec, seats: list[str], settings: Settings):
        super().__init__()
        self.possible_agents = list(seats)
        self.observation_spaces = {a: spec.observation_spaces[a] for a in self.possible_agents}
        self.action_spaces = {a: spec.action_spaces[a] for a in self.possible_agents}
        self.noise = settings.noise_end
        self.groups = group_agents(self.possible_agents, self.observation_spaces, self.action_spaces, settings.share)
        self.trunks, self.heads = nn.ModuleDict(), nn.ModuleDict()
        self.ids: dict[str, tuple[str, int, int]] = {}  # agent -> (group, index in it, one-hot width)
        for name, agents in self.groups:
            id_dim = len(agents) if settings.agent_id and len(agents) > 1 else 0
            in_dim = flat_dim(self.observation_spaces[agents[0]]) + id_dim
            self.trunks[name] = mlp(in_dim, settings.hidden, settings.activation, settings.input_norm)
            self.heads[name] = make_differentiable_head(settings.hidden[-1], self.action_spaces[agents[0]])
            self.ids.update({a: (name, i, id_dim) for i, a in enumerate(agents)})

    def head(self, agent: str):
        """The agent's action head (learners.networks.DifferentiableHead)."""
        return self.heads[self.ids[agent][0]]

    def params(self, agents: list[str], obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each agent's head parameters for flattened observations ``{agent: (B, features)}``; one forward pass per
        sharing group."""
        out: dict[str, torch.Tensor] = {}
        for name, members in self.groups:
            present = [a for a in members if a in agents]
            if not present:
                continue
            x = torch.stack([obs[a].reshape(len(obs[a]), -1).float() for a in present], 1)
            _, _, id_dim = self.ids[present[0]]
            if id_dim:  # the agent's index in its whole group: ``present`` may be some of them (one seat played)
                index = torch.tensor([self.ids[a][1] for a in present], device=x.device)
                x = torch.cat([x, nn.functional.one_hot(index, id_dim).to(x).expand(len(x), -1, -1)], -1)
            params = self.heads[name](self.trunks[name](x))
            out.update({a: params[:, j] for j, a in enumerate(present)})
        return out

    @torch.no_grad()
    def act(self, obs: dict[str, np.ndarray], greedy: bool = True) -> dict[str, np.ndarray]:
        """Actions ``{agent: (B, ...)}`` for observations ``{agent: (B, *shape)}``; exploring unless ``greedy``."""
        device = next(self.parameters()).device
        agents = [a for a in self.possible_agents if a in obs]
        params = self.params(agents, {a: torch.as_tensor(np.asarray(obs[a]), device=device) for a in agents})
        actions = {}
        for agent in agents:
            head = self.head(agent)
            chosen = head.mode(params[agent]) if greedy else head.explore(params[agent], self.noise)
            actions[agent] = head.to_env(chosen)
        return actions


class MADDPG(api.Algorithm):
    """Multi-agent DDPG with a centralized critic per team (see the module docstring)."""

    name = "maddpg"
    Settings = Settings
    actions = frozenset({"discrete", "multi_discrete", "box"})
    state = "optional"
    partial_seats = True
    self_play = True
    on_policy = False
    check_settings = {"steps_per_update": 32, "learning_starts": 32, "gradient_steps": 2, "batch_size": 32}

    def make_policy(self, spec: api.WorldSpec, seats: list[str], settings: Settings) -> ActorPolicy:
        return ActorPolicy(spec, seats, settings)

    def train(self, session: api.Session) -> None:
        _train(self, session)


def _train(algorithm: MADDPG, session: api.Session) -> None:
    s: Settings = session.settings
    worlds, device, rng = session.worlds, session.device, session.rng
    seats = list(worlds.possible_agents)
    # -- networks, optimizers, replay -----------------------------------------------------------------------
    policy = algorithm.make_policy(session.spec, seats, s).to(device)
    teams = _teams(seats)
    if worlds.state_space is None and session.rank == 0:
        print(f"maddpg: the worlds grant {seats} no global state; the critics read their joint observation")
    context_dim = (
        flat_dim(worlds.state_space)
        if worlds.state_space is not None
        else sum(flat_dim(worlds.observation_spaces[a]) for a in seats)
    )
    action_dims = [policy.head(a).action_dim for a in seats]
    critics = nn.ModuleDict(
        {
            name: CentralQCritic(context_dim, action_dims, s.critic_hidden, s.activation, s.input_norm)
            for name, _ in teams
        }
    ).to(device)
    target_policy, target_critics = make_target(policy), make_target(critics)
    actor_optimizer = torch.optim.Adam(policy.parameters(), lr=s.actor_lr, foreach=True)
    critic_optimizer = torch.optim.Adam(critics.parameters(), lr=s.critic_lr, foreach=True)
    counters = api.Counters(gradient_steps=0)
    replay = JointReplay(
        s.buffer_size, seats, worlds.observation_spaces, worlds.action_spaces, worlds.state_space, teams=dict(teams)
    )
    session.register(
        policy,
        critics=critics,
        target_policy=target_policy,
        target_critics=target_critics,
        actor_optimizer=actor_optimizer,
        critic_optimizer=critic_optimizer,
        counters=counters,
        per_rank={"replay": replay} if s.checkpoint_buffer else {},
    )
    actor_params, critic_params = list(policy.parameters()), list(critics.parameters())
    reducer = GradientAllreducer([*actor_params, *critic_params], mpi_cuda=session.config.run.mpi_cuda)
    parts = [reducer.part(actor_params), reducer.part(critic_params)]
    batched_steps = -(-s.steps_per_update // worlds.num_worlds)
    decay = s.noise_fraction * session.total_steps

    # -- the loop -------------------------------------------------------------------------------------------
    sums = torch.zeros(3, device=device)  # critic loss, actor loss, mean Q since the last log
    count = 0
    result: api.BatchResult | None = None
    while not session.done:
        reset = session.begin_update()
        result = reset if reset is not None else result
        # Collect: steps_per_update environment steps with exploration, into the joint replay.
        policy.noise = linear(session.step, s.noise_start, s.noise_end, decay)
        for _ in range(batched_steps):
            actions = policy.act(result.obs, greedy=False)
            after = worlds.step(actions)
            replay.add(result, actions, after)
            result = after

        # Learn: critics and actors from one allreduce per gradient step, then Polyak targets.
        if session.step >= s.learning_starts and len(replay):
            for _ in range(s.gradient_steps):
                reducer.zero_grad()
                batch = replay.sample(s.batch_size, rng, device)
                taken = _replayed(policy, batch)
                critic_loss, q_mean = _critic_loss(critics, target_policy, target_critics, teams, batch, taken, s)
                critic_loss.backward()
                actor_loss = _actor_loss(policy, critics, teams, batch, taken, s)
                grads = torch.autograd.grad(actor_loss, actor_params, allow_unused=True)
                with torch.no_grad():
                    for p, g in zip(actor_params, grads, strict=True):
                        if g is not None:
                            p.grad.add_(g)
                reducer.allreduce()
                if s.max_grad_norm > 0:
                    reducer.clip_grad_norm_(s.max_grad_norm, parts)
                critic_optimizer.step()
                actor_optimizer.step()
                update_target(target_critics, critics, s.tau)
                update_target(target_policy, policy, s.tau)
                sums += torch.stack([critic_loss.detach(), actor_loss.detach(), q_mean])
                count += 1
                counters["gradient_steps"] += 1

        metrics = {"noise": policy.noise, "gradient_steps": float(counters["gradient_steps"])}
        if session.logs() and count:
            critic_sum, actor_sum, q_sum = sums.tolist()
            metrics.update(loss_critic=critic_sum / count, loss_actor=actor_sum / count, q_mean=q_sum / count)
            sums.zero_()
            count = 0
        session.end_update(metrics)


def _teams(seats: list[str]) -> list[tuple[str, list[str]]]:
    """The learner's seats grouped into cooperating teams by name prefix, in order of first appearance."""
    teams: dict[str, list[str]] = {}
    for agent in seats:
        teams.setdefault(team_prefix(agent), []).append(agent)
    return list(teams.items())


def _context(batch: JointBatch, following: bool) -> torch.Tensor:
    """What the critics read besides the actions: the state, else the joint observation (of the next rows too)."""
    state = batch.next_state if following else batch.state
    if state is not None:
        return state
    obs = batch.next_obs if following else batch.obs
    return torch.cat([obs[a] for a in batch.agents], -1)


def _replayed(policy: ActorPolicy, batch: JointBatch) -> dict[str, torch.Tensor]:
    """Every seat's replayed action as the critics read it (zeros where the seat did not act)."""
    alive = batch.alive.float()
    return {
        a: policy.head(a).encode(policy.head(a).from_env(batch.actions[a])) * alive[:, i : i + 1]
        for i, a in enumerate(batch.agents)
    }


def _critic_loss(
    critics: nn.ModuleDict,
    target_policy: ActorPolicy,
    target_critics: nn.ModuleDict,
    teams: list[tuple[str, list[str]]],
    batch: JointBatch,
    taken: dict[str, torch.Tensor],
    s: Settings,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The critics' summed squared TD error on sampled rows whose replayed actions, encoded, are ``taken``, and
    their mean Q of those actions (for logging)."""
    agents = batch.agents
    continues = batch.continues().float()
    with torch.no_grad():
        params = target_policy.params(agents, batch.next_obs)
        following = [
            target_policy.head(a).relaxed(params[a], s.temperature) * continues[:, i : i + 1]
            for i, a in enumerate(agents)
        ]
    loss, q_sum = torch.zeros((), device=continues.device), torch.zeros((), device=continues.device)
    for team, members in teams:
        cols = batch.columns(members)
        q = critics[team](_context(batch, False), [taken[a] for a in agents])
        with torch.no_grad():
            next_q = target_critics[team](_context(batch, True), following)
            y = batch.team_rewards[team] + s.gamma * continues[:, cols].amax(1) * next_q
        acted = batch.alive[:, cols].any(1).float()
        loss = loss + (((q - y) ** 2) * acted).sum() / acted.sum().clamp(min=1.0)
        q_sum = q_sum + q.detach().mean()
    return loss, q_sum / len(teams)


def _actor_loss(
    policy: ActorPolicy,
    critics: nn.ModuleDict,
    teams: list[tuple[str, list[str]]],
    batch: JointBatch,
    taken: dict[str, torch.Tensor],
    s: Settings,
) -> torch.Tensor:
    """Minus each team's critic value of its actors' differentiable actions, the other seats' as replayed
    (``taken``)."""
    agents = batch.agents
    alive = batch.alive.float()
    loss = torch.zeros((), device=alive.device)
    for team, members in teams:
        params = policy.params(members, batch.obs)
        actions = dict(taken)
        for a in members:
            i = agents.index(a)
            actions[a] = policy.head(a).relaxed(params[a], s.temperature) * alive[:, i : i + 1]
            if isinstance(policy.head(a), GumbelSoftmaxHead) and s.actor_reg > 0:
                loss = loss + s.actor_reg * params[a].square().mean()
        cols = batch.columns(members)
        acted = alive[:, cols].amax(1)
        q = critics[team](_context(batch, False), [actions[a] for a in agents])
        loss = loss - (q * acted).sum() / acted.sum().clamp(min=1.0)
    return loss
