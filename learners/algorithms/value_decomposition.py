"""VDN and QMIX: value decomposition, one loop and two mixers.

A cooperative team is trained on its *team* reward (the sum of its seats' rewards) through a team value
``Q_tot(s, a_1..a_n)`` built from per-agent utilities ``Q_i(o_i, a_i)`` that each agent computes from its own
observation alone, so that the agents act greedily on their own ``Q_i`` and still maximise ``Q_tot``:

- **VDN** (Sunehag et al., 2018): ``Q_tot = sum_i Q_i``.
- **QMIX** (Rashid et al., 2018): ``Q_tot = f(Q_1..Q_n; s)``, a mixing network whose weights hypernetworks compute
  from the world's global state and keep non-negative, so that ``Q_tot`` rises with every ``Q_i``
  (learners.networks.QMixer).

Either is trained by one TD error per team and row: ``Q_tot(s, a) - (R + gamma Q_tot'(s', a'))`` where ``R`` is the
team reward and ``a'`` every agent's greedy next action under the online utilities, valued by the target utilities
(and the target mixer): double-Q targets (van Hasselt et al., 2016). The error reaches each agent only through its
share of ``Q_tot``, which is how the team reward is assigned to the agents whose actions earned it (homing_v0 is the
built-in world that shows it, docs/learners.md 'VDN and QMIX').

Teams are the learner's seats grouped by name prefix (``agent_*``; ``adversary_*`` and ``agent_*`` are two teams,
each with its own ``Q_tot``). Agents of a team with the same spaces share one utility network, with a one-hot of
their index appended to its input (``share``, ``agent_id``). Agent utilities are feed-forward, on the current
observation. Episode ends come from the joint replay buffer (learners.replay): a seat that terminated adds no next
value, one truncated adds the value of its final observation; a seat that did not act (dead) adds nothing to
``Q_tot``.

**Where no global state is granted** (a learner holding some seats only, ``env.seats`` with an opponent, or a world
without a state), QMIX's hypernetworks read the joint observation of the learner's seats instead, as MAPPO's critic
does; rank 0 prints it once when training starts. VDN never reads the state.

Data parallel under MPI as IDQN: each rank keeps its own replay of its own worlds, every gradient is averaged over
ranks with one allreduce of a flat buffer (learners.mpi). Resume is exact: the networks, targets, optimizer and
counters are registered with the session, the replay buffer per rank; epsilon is a schedule of the step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from gymnasium import spaces
from torch import nn
from torch.nn import functional as F

from agora_marl.learners import api
from agora_marl.learners.mpi.gradients import GradientAllreducer
from agora_marl.learners.networks import QMixer, flat_dim, init_linear, mlp
from agora_marl.learners.policy import group_agents, team_prefix
from agora_marl.learners.replay import JointBatch, JointReplay
from agora_marl.learners.schedules import linear
from agora_marl.learners.targets import make_target, update_target


@dataclass
class Settings:
    """VDN settings (the ``[vdn]`` table; QMIX's ``[qmix]`` adds the mixer's). The defaults learn homing_v0."""

    buffer_size: int = 100_000
    """Replay capacity in rows (one world's step, every seat), per rank; the oldest are overwritten."""
    batch_size: int = 128
    """Rows per gradient step on each rank (the averaged gradient sees ranks × this)."""
    lr: float = 5e-4
    """Adam learning rate (utilities and mixers)."""
    gamma: float = 0.99
    """Discount."""
    learning_starts: int = 1_000
    """Environment steps (summed over ranks) of pure exploration before the first gradient step."""
    steps_per_update: int = 128
    """Environment steps each rank collects per update (rounded up to whole batched steps of its K worlds)."""
    gradient_steps: int = 16
    """Gradient steps per update: with steps_per_update, the replay ratio, independent of K."""
    target_every: int = 200
    """Gradient steps between target-network updates."""
    tau: float = 1.0
    """Target update rate: 1 copies the online networks; below 1 is Polyak averaging (use with target_every = 1)."""
    double_q: bool = True
    """Pick each agent's next action with the online utilities and value it with the target ones."""
    eps_start: float = 1.0
    """Initial exploration rate."""
    eps_end: float = 0.05
    """Final exploration rate (and the rate of ``act(greedy=False)``)."""
    eps_fraction: float = 0.3
    """Fraction of ``run.total_steps`` over which epsilon decays linearly from eps_start to eps_end."""
    huber_delta: float = 10.0
    """Huber loss threshold on the team TD error (0: squared error)."""
    max_grad_norm: float = 10.0
    """Gradient norm clip over every network (0: off)."""
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    """Hidden layer widths of the utility networks."""
    activation: str = "relu"
    """``relu`` or ``tanh``."""
    input_norm: bool = False
    """LayerNorm over the utility networks' inputs."""
    share: str = "team"
    """``team``: agents with the same spaces and name prefix share a utility network; ``none``: one per agent."""
    agent_id: bool = True
    """Append a one-hot of the agent's index within its sharing group to the input (shared networks only)."""
    checkpoint_buffer: bool = True
    """Save the replay buffer in checkpoints (needed for exact resume)."""


@dataclass
class QMIXSettings(Settings):
    """QMIX settings (the ``[qmix]`` table): VDN's and the mixing network's."""

    mixer_embed: int = 32
    """Width of the mixing layer."""
    hypernet_hidden: int = 64
    """Hidden width of the hypernetworks that compute the mixing weights from the state."""


class AgentQPolicy(nn.Module):
    """Every agent's utility network, grouped for sharing; acts greedily or epsilon-greedily on its own utilities.

    Args:
        spec: the world's spec.
        seats: the agents it acts for.
        settings: the settings that shape the networks (``hidden``, ``activation``, ``input_norm``, ``share``,
            ``agent_id``, ``eps_end``).

    Raises:
        ValueError: an agent whose actions are not Discrete.
    """

    def __init__(self, spec: api.WorldSpec, seats: list[str], settings: Settings):
        super().__init__()
        self.possible_agents = list(seats)
        self.observation_spaces = {a: spec.observation_spaces[a] for a in self.possible_agents}
        self.action_spaces = {a: spec.action_spaces[a] for a in self.possible_agents}
        self.epsilon = settings.eps_end
        self.groups = group_agents(self.possible_agents, self.observation_spaces, self.action_spaces, settings.share)
        self.nets = nn.ModuleDict()
        self.ids: dict[str, tuple[str, int, int]] = {}  # agent -> (group, index in it, one-hot width)
        for name, agents in self.groups:
            space = self.action_spaces[agents[0]]
            if not isinstance(space, spaces.Discrete):
                raise ValueError(f"value decomposition needs Discrete actions; {agents[0]} acts in {space}")
            id_dim = len(agents) if settings.agent_id and len(agents) > 1 else 0
            in_dim = flat_dim(self.observation_spaces[agents[0]]) + id_dim
            trunk = mlp(in_dim, settings.hidden, settings.activation, settings.input_norm)
            self.nets[name] = nn.Sequential(trunk, init_linear(nn.Linear(settings.hidden[-1], int(space.n)), 1.0))
            self.ids.update({a: (name, i, id_dim) for i, a in enumerate(agents)})

    def utilities(self, agents: list[str], obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each agent's Q-values ``(B, n_actions)`` for flattened observations ``{agent: (B, features)}``; one
        forward pass per sharing group."""
        out: dict[str, torch.Tensor] = {}
        for name, members in self.groups:
            present = [a for a in members if a in agents]
            if not present:
                continue
            x = torch.stack([obs[a].reshape(len(obs[a]), -1).float() for a in present], 1)
            _, _, id_dim = self.ids[present[0]]
            if id_dim:  # the agent's index in its whole group: ``present`` may be some of them (one seat played)
                index = torch.tensor([self.ids[a][1] for a in present], device=x.device)
                x = torch.cat([x, F.one_hot(index, id_dim).to(x).expand(len(x), -1, -1)], -1)
            q = self.nets[name](x)
            out.update({a: q[:, j] for j, a in enumerate(present)})
        return out

    @torch.no_grad()
    def act(self, obs: dict[str, np.ndarray], greedy: bool = True) -> dict[str, np.ndarray]:
        """Actions ``{agent: (B,)}`` for observations ``{agent: (B, *shape)}``; epsilon-greedy unless ``greedy``."""
        device = next(self.parameters()).device
        agents = [a for a in self.possible_agents if a in obs]
        q = self.utilities(agents, {a: torch.as_tensor(np.asarray(obs[a]), device=device) for a in agents})
        actions = {}
        for agent in agents:
            chosen = q[agent].argmax(-1)
            if not greedy:  # torch's generator, which the harness reseeds: exploration repeats on resume
                explore = torch.rand(chosen.shape, device=device) < self.epsilon
                chosen = torch.where(explore, torch.randint_like(chosen, q[agent].shape[-1]), chosen)
            actions[agent] = chosen.cpu().numpy() + int(self.action_spaces[agent].start)
        return actions


class VDN(api.Algorithm):
    """Value decomposition by a sum (see the module docstring)."""

    name = "vdn"
    Settings = Settings
    actions = frozenset({"discrete"})
    state = "never"
    partial_seats = True
    self_play = True
    on_policy = False
    check_settings = {"steps_per_update": 32, "learning_starts": 32, "gradient_steps": 2, "target_every": 2}

    def make_policy(self, spec: api.WorldSpec, seats: list[str], settings: Settings) -> AgentQPolicy:
        return AgentQPolicy(spec, seats, settings)

    def make_mixers(self, teams: list[tuple[str, list[str]]], context_dim: int, settings: Settings) -> nn.ModuleDict:
        """The teams' mixing networks: none, VDN sums."""
        return nn.ModuleDict()

    def train(self, session: api.Session) -> None:
        _train(self, session)


class QMIX(VDN):
    """Value decomposition by a monotonic mixing network conditioned on the state (see the module docstring)."""

    name = "qmix"
    Settings = QMIXSettings
    state = "optional"

    def make_mixers(self, teams: list[tuple[str, list[str]]], context_dim: int, settings: QMIXSettings):
        return nn.ModuleDict(
            {
                name: QMixer(len(agents), context_dim, settings.mixer_embed, settings.hypernet_hidden)
                for name, agents in teams
            }
        )


def _train(algorithm: VDN, session: api.Session) -> None:
    s: Settings = session.settings
    worlds, device, rng = session.worlds, session.device, session.rng
    seats = list(worlds.possible_agents)
    # -- networks, optimizer, replay ------------------------------------------------------------------------
    teams = _teams(seats)
    policy = algorithm.make_policy(session.spec, seats, s).to(device)
    context_dim = _context_dim(worlds)
    if algorithm.state != "never" and worlds.state_space is None and session.rank == 0:
        print(f"{algorithm.name}: the worlds grant {seats} no global state; the mixers read their joint observation")
    mixers = algorithm.make_mixers(teams, context_dim, s).to(device)
    target, target_mixers = make_target(policy), make_target(mixers)
    parameters = [*policy.parameters(), *mixers.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=s.lr, foreach=True)
    counters = api.Counters(gradient_steps=0)
    state_space = worlds.state_space if algorithm.state != "never" else None
    replay = JointReplay(
        s.buffer_size, seats, worlds.observation_spaces, worlds.action_spaces, state_space, teams=dict(teams)
    )
    per_rank = {"replay": replay} if s.checkpoint_buffer else {}
    shared = {"mixers": mixers, "target_mixers": target_mixers} if len(mixers) else {}
    session.register(policy, target=target, optimizer=optimizer, counters=counters, per_rank=per_rank, **shared)
    reducer = GradientAllreducer(parameters, mpi_cuda=session.config.run.mpi_cuda)
    batched_steps = -(-s.steps_per_update // worlds.num_worlds)
    decay = s.eps_fraction * session.total_steps

    # -- the loop -------------------------------------------------------------------------------------------
    sums = torch.zeros(2, device=device)  # loss and mean Q_tot since the last log (read only when logging)
    count = 0  # gradient steps since the last log
    result: api.BatchResult | None = None
    while not session.done:
        reset = session.begin_update()
        result = reset if reset is not None else result
        # Collect: steps_per_update environment steps, epsilon-greedy, into the joint replay.
        policy.epsilon = linear(session.step, s.eps_start, s.eps_end, decay)
        for _ in range(batched_steps):
            actions = policy.act(result.obs, greedy=False)
            after = worlds.step(actions)
            replay.add(result, actions, after)
            result = after

        # Learn: gradient steps on replayed rows, averaged over ranks.
        if session.step >= s.learning_starts and len(replay):
            for _ in range(s.gradient_steps):
                reducer.zero_grad()
                loss, q_tot = _td_loss(
                    policy, mixers, target, target_mixers, teams, replay.sample(s.batch_size, rng, device), s
                )
                loss.backward()
                reducer.allreduce()
                if s.max_grad_norm > 0:
                    reducer.clip_grad_norm_(s.max_grad_norm)
                optimizer.step()
                sums += torch.stack([loss.detach(), q_tot])
                count += 1
                counters["gradient_steps"] += 1
                if counters["gradient_steps"] % s.target_every == 0:
                    update_target(target, policy, s.tau)
                    if len(mixers):
                        update_target(target_mixers, mixers, s.tau)

        metrics = {"epsilon": policy.epsilon, "gradient_steps": float(counters["gradient_steps"])}
        if session.logs() and count:  # the losses since the last logged update
            loss_sum, q_sum = sums.tolist()
            metrics.update(loss=loss_sum / count, q_tot=q_sum / count)
            sums.zero_()
            count = 0
        session.end_update(metrics)


def _teams(seats: list[str]) -> list[tuple[str, list[str]]]:
    """The learner's seats grouped into cooperating teams by name prefix, in order of first appearance."""
    teams: dict[str, list[str]] = {}
    for agent in seats:
        teams.setdefault(team_prefix(agent), []).append(agent)
    return list(teams.items())


def _context_dim(worlds: api.Worlds) -> int:
    """Features of what the mixers read: the global state, or the joint observation where none is granted."""
    if worlds.state_space is not None:
        return flat_dim(worlds.state_space)
    return sum(flat_dim(worlds.observation_spaces[a]) for a in worlds.possible_agents)


def _context(batch: JointBatch, following: bool) -> torch.Tensor:
    """The mixers' input for the sampled rows (or their next rows): the state, else the joint observation."""
    state = batch.next_state if following else batch.state
    if state is not None:
        return state
    obs = batch.next_obs if following else batch.obs
    return torch.cat([obs[a] for a in batch.agents], -1)


def _td_loss(
    policy: AgentQPolicy,
    mixers: nn.ModuleDict,
    target: AgentQPolicy,
    target_mixers: nn.ModuleDict,
    teams: list[tuple[str, list[str]]],
    batch: JointBatch,
    s: Settings,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The teams' summed TD loss on sampled rows, and the mean ``Q_tot`` of the taken actions (for logging)."""
    agents, n = batch.agents, len(batch.rewards)
    if s.double_q:  # the online utilities of the rows and of their next rows, in one pass
        both = policy.utilities(agents, {a: torch.cat([batch.obs[a], batch.next_obs[a]]) for a in agents})
        q = {a: v[:n] for a, v in both.items()}
        next_online = {a: v[n:].detach() for a, v in both.items()}
    else:
        q = policy.utilities(agents, batch.obs)
    with torch.no_grad():
        next_target = target.utilities(agents, batch.next_obs)
    if not s.double_q:
        next_online = next_target
    alive, continues = batch.alive.float(), batch.continues().float()
    loss = torch.zeros((), device=alive.device)
    q_tot_sum = torch.zeros((), device=alive.device)
    for team, members in teams:
        cols = batch.columns(members)
        taken = torch.stack(
            [
                q[a].gather(1, (batch.actions[a] - int(policy.action_spaces[a].start)).unsqueeze(1)).squeeze(1)
                for a in members
            ],
            1,
        )
        with torch.no_grad():
            best = [next_online[a].argmax(1, keepdim=True) for a in members]
            following = torch.stack(
                [next_target[a].gather(1, b).squeeze(1) for a, b in zip(members, best, strict=True)], 1
            )
        taken, following = taken * alive[:, cols], following * continues[:, cols]
        if team in mixers:
            q_tot = mixers[team](taken, _context(batch, False))
            with torch.no_grad():
                next_tot = target_mixers[team](following, _context(batch, True))
        else:
            q_tot, next_tot = taken.sum(1), following.sum(1)
        bootstrap = continues[:, cols].amax(1)  # the team's episode goes on for some seat (or was truncated)
        y = batch.team_rewards[team] + s.gamma * bootstrap * next_tot
        acted = alive[:, cols].amax(1)  # rows where no seat of the team acted teach nothing
        errors = (
            F.huber_loss(q_tot, y, reduction="none", delta=s.huber_delta) if s.huber_delta > 0 else (q_tot - y) ** 2
        )
        loss = loss + (errors * acted).sum() / acted.sum().clamp(min=1.0)
        q_tot_sum = q_tot_sum + q_tot.detach().mean()
    return loss, q_tot_sum / len(teams)
