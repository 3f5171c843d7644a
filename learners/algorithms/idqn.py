"""IDQN: independent deep Q-learning, one Q-network per team of agents, trained through the env server.

Every agent learns as if the others were part of its environment (Tan, 1993; Tampuu et al., 2017), with the DQN
machinery of Mnih et al. (2015): a replay buffer, a target network (hard copies or Polyak averaging), an epsilon-greedy
schedule, and double-DQN targets (van Hasselt et al., 2016). Agents of a team (same name prefix and spaces, see
learners.policy.group_agents) share one network, with a one-hot of their index appended to its input. A one-seat
gymnasium world (``gymnasium:CartPole-v1``) is the special case of one team of one agent.

Experience comes only through ``agents.BatchedWorlds``: each batched step adds K rows to the joint replay buffer
(learners.replay: one row per world and step, every seat's transition in it), and each sampled row gives every team
the transitions of its agents that acted. Episode ends follow the protocol's flags, as the buffer records them: a
terminated agent's target has no bootstrap; a truncated one bootstraps from the observation its episode ended in
(the world's ``final_obs``; for an agent cut short while its world goes on, which has none on the wire, its last
observation). Under MPI every rank samples its own worlds into its own buffer, and each gradient step is averaged
over ranks with one allreduce (learners.mpi), so parameters stay identical.

With ``env.seats`` the learner holds only those seats of its worlds (``BatchedWorlds(seats=...)``, one ``act_batch``
per step) and has Q-networks for them alone; an opponent process plays the others (learners.training). Such a
holder gets no global state, which IDQN never reads, and logs ``opponent_late`` / ``own_late``: the fraction of the
other seats, and of its own, that the worlds filled at their deadline.

One *update* of the loop below is ``steps_per_update`` environment steps per rank followed by ``gradient_steps``
gradient steps; logging and checkpoints count these updates. Resume is exact: the networks, target, optimizer and
the gradient-step counter are registered with the session, each rank's replay buffer per rank, and the harness
reseeds torch (exploration) and the session's generator (replay sampling) and resets the worlds at every checkpoint
boundary. The epsilon schedule is a function of the step (learners.schedules). Written on the learner API only
(learners.api): this file is a worked example of an off-policy algorithm.
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
from agora_marl.learners.networks import flat_dim, init_linear, mlp
from agora_marl.learners.policy import group_agents
from agora_marl.learners.replay import JointBatch, JointReplay
from agora_marl.learners.schedules import linear
from agora_marl.learners.targets import make_target, update_target


@dataclass
class Settings:
    """IDQN settings (the ``[idqn]`` table). With 8 worlds, the defaults learn CartPole-v1 in ~25K steps."""

    buffer_size: int = 100_000
    """Replay capacity in rows (one world's step, every seat's transition in it), per rank; the oldest go first."""
    batch_size: int = 128
    """Transitions per team per gradient step on each rank (the averaged gradient sees ranks × this): a team of m
    agents samples batch_size / m rows of the replay (rounded up), each with the transitions of its agents that
    acted."""
    lr: float = 1e-3
    """Adam learning rate."""
    gamma: float = 0.99
    """Discount."""
    learning_starts: int = 2_000
    """Environment steps (summed over ranks) of pure exploration before the first gradient step."""
    steps_per_update: int = 128
    """Environment steps each rank collects per update (rounded up to whole batched steps of its K worlds)."""
    gradient_steps: int = 16
    """Gradient steps per update: with steps_per_update, the replay ratio, independent of K."""
    target_every: int = 250
    """Gradient steps between target-network updates."""
    tau: float = 1.0
    """Target update rate: 1 copies the online network; below 1 is Polyak averaging (use with target_every = 1)."""
    double_dqn: bool = True
    """Pick the next action with the online network and value it with the target network."""
    eps_start: float = 1.0
    """Initial exploration rate."""
    eps_end: float = 0.05
    """Final exploration rate (and the rate of ``act(greedy=False)``)."""
    eps_fraction: float = 0.2
    """Fraction of ``run.total_steps`` over which epsilon decays linearly from eps_start to eps_end."""
    huber_delta: float = 10.0
    """Huber loss threshold on the TD error (0: squared error)."""
    max_grad_norm: float = 10.0
    """Gradient norm clip over all Q-networks (0: off)."""
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    """Hidden layer widths of the Q-networks."""
    activation: str = "relu"
    """``relu`` or ``tanh``."""
    input_norm: bool = False
    """LayerNorm over the network inputs."""
    share: str = "team"
    """``team``: agents with the same spaces and name prefix share a Q-network; ``none``: one per agent."""
    agent_id: bool = True
    """Append a one-hot of the agent's index within its team to the input (shared networks only)."""
    checkpoint_buffer: bool = True
    """Save the replay buffer in checkpoints (needed for exact resume)."""


class QPolicy(nn.Module):
    """Every team's Q-network and how its inputs are laid out; acts greedily or epsilon-greedily.

    ``possible_agents``, ``observation_spaces``, ``action_spaces`` and ``act`` make it a policy for learners.policy
    (evaluation, ``agora play --policy RUN_DIR``).

    Args:
        spec: the world's spec.
        settings: the IDQN settings that shape the networks.
        seats: the agents it acts for (default every agent of the world): a learner holding some seats of its worlds
            (``env.seats``) has Q-networks for those only, so the other seats' spaces may be anything.
    """

    def __init__(self, spec: api.WorldSpec, settings: Settings, seats: list[str] | None = None):
        super().__init__()
        self.spec = spec
        self.possible_agents = list(spec.possible_agents if seats is None else seats)
        self.observation_spaces = {a: spec.observation_spaces[a] for a in self.possible_agents}
        self.action_spaces = {a: spec.action_spaces[a] for a in self.possible_agents}
        self.epsilon = settings.eps_end
        self.teams: list[tuple[str, list[str]]] = group_agents(
            self.possible_agents, self.observation_spaces, self.action_spaces, settings.share
        )
        self.nets = nn.ModuleDict()
        self.layout: dict[str, tuple[int, int, int]] = {}  # team -> (obs_dim, id_dim, action start)
        for name, agents in self.teams:
            space = spec.action_spaces[agents[0]]
            if not isinstance(space, spaces.Discrete):
                raise ValueError(f"IDQN needs Discrete actions; {agents[0]} acts in {space}: use ippo or mappo")
            obs_dim = flat_dim(spec.observation_spaces[agents[0]])
            id_dim = len(agents) if settings.agent_id and len(agents) > 1 else 0
            self.layout[name] = (obs_dim, id_dim, int(space.start))
            trunk = mlp(obs_dim + id_dim, settings.hidden, settings.activation, settings.input_norm)
            self.nets[name] = nn.Sequential(trunk, init_linear(nn.Linear(settings.hidden[-1], int(space.n)), 1.0))

    def inputs(self, team: str, agents: list[str], obs: dict[str, np.ndarray]) -> np.ndarray:
        """Network inputs ``(B, len(agents), in_dim)`` for observations ``{agent: (B, *shape)}``."""
        obs_dim, id_dim, _ = self.layout[team]
        members = dict(self.teams)[team]
        batch = len(obs[agents[0]])
        x = np.zeros((batch, len(agents), obs_dim + id_dim), np.float32)
        for j, agent in enumerate(agents):
            x[:, j, :obs_dim] = np.asarray(obs[agent]).reshape(batch, -1)
            if id_dim:  # the agent's index in its whole team: ``agents`` may be some of them (one seat played)
                x[:, j, obs_dim + members.index(agent)] = 1.0
        return x

    @torch.no_grad()
    def act(self, obs: dict[str, np.ndarray], greedy: bool = True) -> dict[str, np.ndarray]:
        """Actions ``{agent: (B,)}`` for observations ``{agent: (B, *shape)}``; epsilon-greedy unless ``greedy``."""
        device = next(self.parameters()).device
        actions: dict[str, np.ndarray] = {}
        for name, agents in self.teams:
            present = [a for a in agents if a in obs]
            if not present:
                continue
            x = torch.from_numpy(self.inputs(name, present, obs)).to(device)
            q = self.nets[name](x)
            chosen = q.argmax(-1)
            if not greedy:  # torch's generator, which the harness reseeds: exploration repeats on resume
                explore = torch.rand(chosen.shape, device=device) < self.epsilon
                chosen = torch.where(explore, torch.randint_like(chosen, q.shape[-1]), chosen)
            chosen = chosen.cpu().numpy()
            for j, agent in enumerate(present):
                actions[agent] = chosen[:, j] + self.layout[name][2]
        return actions


def _td_loss(
    policy: QPolicy, target: QPolicy, team: str, agents: list[str], batch: JointBatch, s: Settings
) -> tuple[torch.Tensor, torch.Tensor]:
    """The team's TD loss over the transitions of its agents that acted in the sampled rows, and its mean Q of the
    taken actions (for logging)."""
    cols = batch.columns(agents)
    x, x_next = _inputs(policy, team, agents, batch.obs), _inputs(policy, team, agents, batch.next_obs)
    chosen = torch.stack([batch.actions[a] for a in agents], 1) - policy.layout[team][2]
    q = policy.nets[team](x).gather(2, chosen.unsqueeze(2)).squeeze(2)
    with torch.no_grad():
        next_q = target.nets[team](x_next)
        if s.double_dqn:
            best = policy.nets[team](x_next).argmax(2, keepdim=True)
            next_value = next_q.gather(2, best).squeeze(2)
        else:
            next_value = next_q.max(2).values
        y = batch.rewards[:, cols] + s.gamma * (~batch.terminated[:, cols]) * next_value
    acted = batch.alive[:, cols]
    q, y = q[acted], y[acted]
    loss = F.huber_loss(q, y, delta=s.huber_delta) if s.huber_delta > 0 else F.mse_loss(q, y)
    return loss, q.detach().mean()


def _inputs(policy: QPolicy, team: str, agents: list[str], obs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The team's network inputs ``(B, len(agents), in_dim)`` for sampled, flattened observations (as
    :meth:`QPolicy.inputs` lays them out)."""
    x = torch.stack([obs[a] for a in agents], 1)
    _, id_dim, _ = policy.layout[team]
    if not id_dim:
        return x
    ids = torch.eye(id_dim, device=x.device)[[dict(policy.teams)[team].index(a) for a in agents]]
    return torch.cat([x, ids.expand(len(x), -1, -1)], -1)


class IDQN(api.Algorithm):
    """Independent deep Q-learning: a Q-network per team, replay, target network, double-DQN, epsilon-greedy."""

    name = "idqn"
    Settings = Settings
    actions = frozenset({"discrete"})
    state = "never"
    partial_seats = True
    self_play = False
    on_policy = False
    check_settings = {"steps_per_update": 32, "learning_starts": 32, "gradient_steps": 2, "target_every": 2}

    def make_policy(self, spec: api.WorldSpec, seats: list[str], settings: Settings) -> QPolicy:
        return QPolicy(spec, settings, seats)

    def train(self, session: api.Session) -> None:
        _train(self, session)


def _train(algorithm: IDQN, session: api.Session) -> None:
    s: Settings = session.settings
    worlds, device, rng = session.worlds, session.device, session.rng
    # -- networks, optimizer, buffers ------------------------------------------------------------------------
    policy = algorithm.make_policy(session.spec, worlds.possible_agents, s).to(device)  # the learner's seats
    target = make_target(policy)
    optimizer = torch.optim.Adam(policy.parameters(), lr=s.lr)
    counters = api.Counters(gradient_steps=0)
    replay = JointReplay(s.buffer_size, worlds.possible_agents, worlds.observation_spaces, worlds.action_spaces)
    per_rank = {"replay": replay} if s.checkpoint_buffer else {}
    session.register(policy, target=target, optimizer=optimizer, counters=counters, per_rank=per_rank)
    reducer = GradientAllreducer(policy.parameters(), mpi_cuda=session.config.run.mpi_cuda)
    batched_steps = -(-s.steps_per_update // worlds.num_worlds)
    decay = max(1.0, s.eps_fraction * session.total_steps)

    # -- the loop -------------------------------------------------------------------------------------------
    sums = torch.zeros(2, device=device)  # loss and mean-Q sums since the last log (read only when logging)
    count = 0  # gradient steps since the last log
    result: api.BatchResult | None = None
    while not session.done:
        reset = session.begin_update()
        result = reset if reset is not None else result
        # Collect: steps_per_update environment steps, epsilon-greedy, into the joint replay.
        policy.epsilon = linear(session.step, s.eps_start, s.eps_end, decay)
        for _ in range(batched_steps):
            actions = policy.act(result.obs, greedy=False)  # valid for dead seats too: the server ignores them
            after = worlds.step(actions)
            replay.add(result, actions, after)
            result = after

        # Learn: gradient steps on replayed rows, averaged over ranks.
        if session.step >= s.learning_starts and len(replay):
            for _ in range(s.gradient_steps):
                reducer.zero_grad()
                total, q_sum = torch.zeros((), device=device), torch.zeros((), device=device)
                for team, agents in policy.teams:
                    batch = replay.sample(-(-s.batch_size // len(agents)), rng, device)
                    if not batch.alive[:, batch.columns(agents)].any():  # a team dead in every sampled row
                        continue
                    loss, q_mean = _td_loss(policy, target, team, agents, batch, s)
                    total, q_sum = total + loss, q_sum + q_mean
                sums += torch.stack([total.detach(), q_sum / len(policy.teams)])
                count += 1
                if total.requires_grad:
                    total.backward()
                reducer.allreduce()
                if s.max_grad_norm > 0:
                    reducer.clip_grad_norm_(s.max_grad_norm)
                optimizer.step()
                counters["gradient_steps"] += 1
                if counters["gradient_steps"] % s.target_every == 0:
                    update_target(target, policy, s.tau)

        metrics = {"epsilon": policy.epsilon, "gradient_steps": float(counters["gradient_steps"])}
        if session.logs() and count:  # the losses since the last logged update
            loss_sum, q_total = sums.tolist()
            metrics.update(loss=loss_sum / count, q_mean=q_total / count)
            sums.zero_()
            count = 0
        session.end_update(metrics)
