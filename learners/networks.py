"""Networks shared by the learners: MLP trunks with orthogonal init, an action head per action space, a running
normaliser.

An :class:`ActionHead` turns trunk features into the parameters of a distribution and knows how to sample, score
and pick the greedy action, and how to turn a sampled action into a value of the gymnasium space the server checks:

- ``Discrete(n, start)``: a categorical over n logits; the env gets ``index + start``.
- ``MultiDiscrete(nvec, start)``: independent categoricals, one per component.
- ``Box``: a diagonal Gaussian with a state-independent log standard deviation. The learner keeps the raw sample
  (its log-probability is what PPO's ratio needs); the env gets it clipped into the bounds (``"clip"``) or squashed
  through tanh onto them (``"squash"``). Either map is applied outside the policy, so the ratio is unaffected.

Distributions are written out with plain tensor ops instead of ``torch.distributions``: these heads run once per
environment step on small batches, where the distribution objects' argument checks and broadcasting dominate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def init_linear(layer: nn.Linear, gain: float) -> nn.Linear:
    """Orthogonal weights with ``gain``, zero bias: the init PPO implementations found to matter."""
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


def mlp(in_dim: int, hidden: Sequence[int], activation: str = "tanh", input_norm: bool = False) -> nn.Sequential:
    """A trunk ``in_dim -> hidden[0] -> ... -> hidden[-1]``, an activation after every layer.

    Args:
        in_dim: input features.
        hidden: widths of the hidden layers (at least one).
        activation: ``"tanh"`` or ``"relu"``.
        input_norm: start with a LayerNorm over the input features (helps when features differ in scale).
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation {activation!r} is not one of {sorted(_ACTIVATIONS)}")
    if not hidden:
        raise ValueError("an MLP needs at least one hidden layer")
    gain = nn.init.calculate_gain(activation)
    layers: list[nn.Module] = [nn.LayerNorm(in_dim)] if input_norm else []
    for width in hidden:
        layers += [init_linear(nn.Linear(in_dim, width), gain), _ACTIVATIONS[activation]()]
        in_dim = width
    return nn.Sequential(*layers)


def flat_dim(space: spaces.Space) -> int:
    """Features an observation of ``space`` contributes once flattened. Only Box observations are supported."""
    if not isinstance(space, spaces.Box):
        raise ValueError(
            f"observation space {space} is not a Box; the MLP learners take Box observations (flattened). "
            "Wrap the scenario to flatten its observations."
        )
    return int(np.prod(space.shape, dtype=np.int64))


class ActionHead(nn.Module):
    """Features to a distribution over one action space. Subclasses define the distribution."""

    #: shape of one stored action (what :meth:`sample` returns per row), and its dtype.
    action_shape: tuple[int, ...] = ()
    action_dtype: torch.dtype = torch.int64

    def sample(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample one action per row; returns ``(actions, log_probs)``."""
        raise NotImplementedError

    def evaluate(self, params: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log_probs, entropies)`` of stored ``actions`` under ``params``, one per row."""
        raise NotImplementedError

    def mode(self, params: torch.Tensor) -> torch.Tensor:
        """The greedy action of each row."""
        raise NotImplementedError

    def to_env(self, actions: torch.Tensor) -> np.ndarray:
        """Stored actions as values of the gymnasium space (numpy, the space's dtype)."""
        raise NotImplementedError


def _sample_categorical(logits: torch.Tensor) -> torch.Tensor:
    # Gumbel-max: one uniform draw per logit from torch's generator, so a fixed seed gives fixed actions.
    gumbel = -torch.log(-torch.log(torch.rand_like(logits)))
    return (logits + gumbel).argmax(-1)


def _categorical_logp_entropy(logits: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logp_all = torch.log_softmax(logits, -1)
    logp = logp_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


class CategoricalHead(ActionHead):
    """``Discrete(n, start)``."""

    def __init__(self, in_dim: int, space: spaces.Discrete, gain: float = 0.01):
        super().__init__()
        self.linear = init_linear(nn.Linear(in_dim, int(space.n)), gain)
        self.start = int(space.start)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)

    def sample(self, params):
        actions = _sample_categorical(params)
        return actions, torch.log_softmax(params, -1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)

    def evaluate(self, params, actions):
        return _categorical_logp_entropy(params, actions)

    def mode(self, params):
        return params.argmax(-1)

    def to_env(self, actions):
        return actions.cpu().numpy().astype(np.int64) + self.start


class MultiCategoricalHead(ActionHead):
    """``MultiDiscrete(nvec, start)`` (one-dimensional nvec): independent categoricals, log-probs summed."""

    def __init__(self, in_dim: int, space: spaces.MultiDiscrete, gain: float = 0.01):
        super().__init__()
        if space.nvec.ndim != 1:
            raise ValueError(
                f"MultiDiscrete action spaces must be one-dimensional, got nvec of shape {space.nvec.shape}"
            )
        self.sizes = [int(n) for n in space.nvec]
        self.linear = init_linear(nn.Linear(in_dim, sum(self.sizes)), gain)
        self.start = np.asarray(space.start, dtype=np.int64)
        self.dtype = space.dtype
        self.action_shape = (len(self.sizes),)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)

    def sample(self, params):
        parts = [_sample_categorical(logits) for logits in params.split(self.sizes, -1)]
        actions = torch.stack(parts, -1)
        return actions, self.evaluate(params, actions)[0]

    def evaluate(self, params, actions):
        pairs = [
            _categorical_logp_entropy(logits, actions[..., i]) for i, logits in enumerate(params.split(self.sizes, -1))
        ]
        return sum(p[0] for p in pairs), sum(p[1] for p in pairs)

    def mode(self, params):
        return torch.stack([logits.argmax(-1) for logits in params.split(self.sizes, -1)], -1)

    def to_env(self, actions):
        return (actions.cpu().numpy() + self.start).astype(self.dtype)


class GaussianHead(ActionHead):
    """``Box``: a diagonal Gaussian whose mean comes from the features and whose log std is a learned vector."""

    action_dtype = torch.float32

    def __init__(self, in_dim: int, space: spaces.Box, bounds: str = "clip", log_std_init: float = 0.0):
        super().__init__()
        if bounds not in ("clip", "squash"):
            raise ValueError(f"box action bounds {bounds!r} must be 'clip' or 'squash'")
        self.action_shape = tuple(space.shape)
        dim = int(np.prod(space.shape, dtype=np.int64))
        self.mean = init_linear(nn.Linear(in_dim, dim), 0.01)
        self.log_std = nn.Parameter(torch.full((dim,), float(log_std_init)))
        self.bounds = bounds
        self.low = np.broadcast_to(space.low, space.shape).astype(np.float64)
        self.high = np.broadcast_to(space.high, space.shape).astype(np.float64)
        self.dtype = space.dtype
        self.bounded = np.isfinite(self.low) & np.isfinite(self.high)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mean(features)

    def _log_prob(self, mean: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
        z = (flat - mean) * torch.exp(-self.log_std)
        return (-0.5 * z.square() - self.log_std - _LOG_SQRT_2PI).sum(-1)

    def sample(self, params):
        flat = params + torch.randn_like(params) * self.log_std.exp()
        return flat.reshape(*params.shape[:-1], *self.action_shape), self._log_prob(params, flat)

    def evaluate(self, params, actions):
        logp = self._log_prob(params, actions.reshape(params.shape))
        entropy = (0.5 + _LOG_SQRT_2PI + self.log_std).sum().expand(params.shape[:-1])
        return logp, entropy

    def mode(self, params):
        return params.reshape(*params.shape[:-1], *self.action_shape)

    def to_env(self, actions):
        raw = actions.detach().cpu().numpy().astype(np.float64)
        if self.bounds == "clip":
            value = np.clip(raw, self.low, self.high)
        else:
            squashed = self.low + (np.tanh(raw) + 1.0) * 0.5 * (self.high - self.low)
            value = np.where(self.bounded, squashed, raw)
        return value.astype(self.dtype)


def make_head(in_dim: int, space: spaces.Space, box_bounds: str = "clip", log_std_init: float = 0.0) -> ActionHead:
    """The action head for ``space``; raises ValueError for spaces the learners do not act in."""
    if isinstance(space, spaces.Discrete):
        return CategoricalHead(in_dim, space)
    if isinstance(space, spaces.MultiDiscrete):
        return MultiCategoricalHead(in_dim, space)
    if isinstance(space, spaces.Box):
        return GaussianHead(in_dim, space, box_bounds, log_std_init)
    raise ValueError(f"action space {space} is not supported: use Discrete, MultiDiscrete or Box")


class Actor(nn.Module):
    """Observation features to action-distribution parameters: ``head(trunk(x))``."""

    def __init__(
        self,
        in_dim: int,
        space: spaces.Space,
        hidden: Sequence[int],
        activation: str = "tanh",
        input_norm: bool = False,
        box_bounds: str = "clip",
        log_std_init: float = 0.0,
    ):
        super().__init__()
        self.trunk = mlp(in_dim, hidden, activation, input_norm)
        self.head = make_head(hidden[-1], space, box_bounds, log_std_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


class Critic(nn.Module):
    """Input features to one value per row."""

    def __init__(self, in_dim: int, hidden: Sequence[int], activation: str, input_norm: bool = False):
        super().__init__()
        self.trunk = mlp(in_dim, hidden, activation, input_norm)
        self.out = init_linear(nn.Linear(hidden[-1], 1), 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.trunk(x)).squeeze(-1)


class RunningNorm(nn.Module):
    """Running mean and variance of a scalar stream (value targets), merged batch by batch.

    The statistics are buffers, so they travel with ``state_dict`` in checkpoints. :meth:`update` takes a batch's
    moments rather than the batch, so that data-parallel callers can pass moments reduced over all ranks and every
    rank's normaliser stays identical.
    """

    def __init__(self, epsilon: float = 1e-5):
        super().__init__()
        self.register_buffer("mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("var", torch.ones((), dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.epsilon = epsilon

    def update(self, mean: float, var: float, count: float) -> None:
        """Merge a batch with ``count`` samples of this mean and (population) variance."""
        total = self.count + count
        delta = mean - self.mean
        m2 = self.var * self.count + var * count + delta.square() * self.count * count / total
        self.mean.copy_(self.mean + delta * count / total)
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    @property
    def std(self) -> torch.Tensor:
        return torch.sqrt(self.var + self.epsilon)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / self.std).to(x.dtype)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.std + self.mean).to(x.dtype)


class QMixer(nn.Module):
    """QMIX's monotonic mixing network (Rashid et al., 2018): the team's Q from its agents' Qs and the global state.

    ``Q_tot = w2(s) · elu(W1(s)ᵀ q + b1(s)) + V(s)``, where hypernetworks map the state to the mixing weights ``W1``
    and ``w2`` (made non-negative with ``abs``, so that ``∂Q_tot/∂Q_i ≥ 0``: an agent that raises its own Q never
    lowers the team's, and each agent's greedy action is the team's) and to the biases ``b1`` and ``V`` (unconstrained:
    the state may shift the team's value any way).

    Args:
        n_agents: Qs mixed per row.
        state_dim: features of the conditioning input (the global state, or what stands for it).
        embed_dim: width of the mixing layer.
        hypernet_hidden: hidden width of the weights' hypernetworks.
    """

    def __init__(self, n_agents: int, state_dim: int, embed_dim: int = 32, hypernet_hidden: int = 64):
        super().__init__()
        self.n_agents, self.embed_dim = n_agents, embed_dim
        self.hyper_w1 = nn.Sequential(
            nn.Linear(state_dim, hypernet_hidden), nn.ReLU(), nn.Linear(hypernet_hidden, n_agents * embed_dim)
        )
        self.hyper_w2 = nn.Sequential(
            nn.Linear(state_dim, hypernet_hidden), nn.ReLU(), nn.Linear(hypernet_hidden, embed_dim)
        )
        self.hyper_b1 = nn.Linear(state_dim, embed_dim)
        self.value = nn.Sequential(nn.Linear(state_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, 1))

    def forward(self, qs: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """``Q_tot`` of shape ``(B,)`` for agent Qs ``(B, n_agents)`` and states ``(B, state_dim)``."""
        batch = qs.shape[0]
        w1 = self.hyper_w1(state).abs().view(batch, self.n_agents, self.embed_dim)
        hidden = nn.functional.elu(torch.bmm(qs.unsqueeze(1), w1).squeeze(1) + self.hyper_b1(state))
        w2 = self.hyper_w2(state).abs()
        return (hidden * w2).sum(-1) + self.value(state).squeeze(-1)


class CentralQCritic(nn.Module):
    """A centralized ``Q(s, a_1, ..., a_n)``: a context (the global state, or the joint observation) and every
    agent's encoded action in, one value per row (or ``outputs`` values) out (MADDPG's critic, Lowe et al., 2017).

    Args:
        context_dim: features of the context.
        action_dims: width of each agent's encoded action (:attr:`DifferentiableHead.action_dim`), in the order the
            actions are passed.
        hidden, activation, input_norm: the MLP trunk (see :func:`mlp`).
        outputs: values per row (1: a team value).
    """

    def __init__(
        self,
        context_dim: int,
        action_dims: Sequence[int],
        hidden: Sequence[int],
        activation: str = "relu",
        input_norm: bool = False,
        outputs: int = 1,
    ):
        super().__init__()
        self.trunk = mlp(context_dim + sum(action_dims), hidden, activation, input_norm)
        self.out = init_linear(nn.Linear(hidden[-1], outputs), 1.0)
        self.outputs = outputs

    def forward(self, context: torch.Tensor, actions: Sequence[torch.Tensor]) -> torch.Tensor:
        """Values ``(B,)`` (``(B, outputs)`` when ``outputs > 1``) of encoded ``actions`` ``[(B, dim_i)]`` in ``context``
        ``(B, context_dim)``."""
        values = self.out(self.trunk(torch.cat([context, *actions], -1)))
        return values.squeeze(-1) if self.outputs == 1 else values


class DifferentiableHead(nn.Module):
    """An action head for deterministic policy gradients (MADDPG): the action the actor outputs is a differentiable
    function of its parameters, so a critic's ``Q(s, a)`` can be climbed through it.

    Actions have three forms: the head's own (:meth:`explore` and :meth:`mode` return it; for a Discrete space the
    index from 0), the environment's (:meth:`to_env`, :meth:`from_env`: what the server takes and the replay buffer
    stores), and the encoding a critic reads, ``(B, action_dim)`` floats (:meth:`encode`, and :meth:`relaxed` for
    the actor's differentiable one).
    """

    #: width of an encoded action
    action_dim: int = 0

    def relaxed(self, params: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """A differentiable encoded action ``(B, action_dim)`` of the head's parameters (the actor's loss)."""
        raise NotImplementedError

    def explore(self, params: torch.Tensor, noise: float) -> torch.Tensor:
        """An exploring action of each row (the head's form); ``noise`` is the Box heads' noise scale."""
        raise NotImplementedError

    def mode(self, params: torch.Tensor) -> torch.Tensor:
        """The greedy action of each row (the head's form)."""
        raise NotImplementedError

    def encode(self, actions: torch.Tensor) -> torch.Tensor:
        """Actions of the head's form as a critic reads them, ``(B, action_dim)`` float32."""
        raise NotImplementedError

    def to_env(self, actions: torch.Tensor) -> np.ndarray:
        """Actions of the head's form as values of the gymnasium space (numpy, the space's dtype)."""
        raise NotImplementedError

    def from_env(self, values: torch.Tensor) -> torch.Tensor:
        """Values of the gymnasium space (as the replay buffer stores them) in the head's form."""
        raise NotImplementedError


class GumbelSoftmaxHead(DifferentiableHead):
    """``Discrete(n, start)`` and ``MultiDiscrete(nvec, start)`` for deterministic policy gradients: logits per
    component; the critic reads one-hot actions; the actor's differentiable action is a straight-through
    Gumbel-softmax sample (Jang et al., 2017): one-hot forward, the softmax's gradient backward. Exploration samples
    the categorical; the greedy action is the argmax.
    """

    def __init__(self, in_dim: int, space: spaces.Discrete | spaces.MultiDiscrete, gain: float = 0.01):
        super().__init__()
        if isinstance(space, spaces.Discrete):
            self.sizes, self.multi = [int(space.n)], False
            start = np.asarray([int(space.start)], np.int64)
        else:
            if space.nvec.ndim != 1:
                raise ValueError(f"MultiDiscrete action spaces must be one-dimensional, got nvec {space.nvec.shape}")
            self.sizes, self.multi = [int(n) for n in space.nvec], True
            start = np.asarray(space.start, np.int64).reshape(-1)
        self.linear = init_linear(nn.Linear(in_dim, sum(self.sizes)), gain)
        self.register_buffer("start", torch.from_numpy(start), persistent=False)
        self.dtype = space.dtype
        self.action_dim = sum(self.sizes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)

    def _components(self, indices: torch.Tensor) -> torch.Tensor:
        return indices if self.multi else indices.unsqueeze(-1)

    def _form(self, components: torch.Tensor) -> torch.Tensor:
        return components if self.multi else components.squeeze(-1)

    def relaxed(self, params, temperature=1.0):
        parts = []
        for logits in params.split(self.sizes, -1):
            soft = torch.softmax((logits - torch.log(-torch.log(torch.rand_like(logits)))) / temperature, -1)
            hard = nn.functional.one_hot(soft.argmax(-1), soft.shape[-1]).to(soft.dtype)
            parts.append(hard + soft - soft.detach())
        return torch.cat(parts, -1)

    def explore(self, params, noise=0.0):
        return self._form(torch.stack([_sample_categorical(p) for p in params.split(self.sizes, -1)], -1))

    def mode(self, params):
        return self._form(torch.stack([p.argmax(-1) for p in params.split(self.sizes, -1)], -1))

    def encode(self, actions):
        components = self._components(actions)
        parts = [nn.functional.one_hot(components[..., i], n) for i, n in enumerate(self.sizes)]
        return torch.cat(parts, -1).float()

    def to_env(self, actions):
        return (self._components(actions) + self.start).cpu().numpy().astype(self.dtype).reshape(actions.shape)

    def from_env(self, values):
        return self._form(self._components(values.long()) - self.start)


class DeterministicHead(DifferentiableHead):
    """``Box`` for deterministic policy gradients (DDPG, MADDPG): the action itself, squashed by tanh into the
    bounds; exploration adds Gaussian noise of ``noise`` × the half-width of each dimension, clipped into the bounds.
    The head's form is flat, ``(B, dim)``; the critic reads it rescaled to [-1, 1]. Every dimension must be bounded.
    """

    def __init__(self, in_dim: int, space: spaces.Box, gain: float = 0.01):
        super().__init__()
        low = np.broadcast_to(space.low, space.shape).astype(np.float32).reshape(-1)
        high = np.broadcast_to(space.high, space.shape).astype(np.float32).reshape(-1)
        if not (np.isfinite(low).all() and np.isfinite(high).all()):
            raise ValueError(f"a deterministic Box head needs finite bounds in every dimension; {space} has none")
        self.linear = init_linear(nn.Linear(in_dim, len(low)), gain)
        self.register_buffer("center", torch.from_numpy((high + low) / 2), persistent=False)
        self.register_buffer("scale", torch.from_numpy((high - low) / 2), persistent=False)
        self.shape, self.dtype = tuple(space.shape), space.dtype
        self.action_dim = len(low)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.center + self.scale * torch.tanh(self.linear(features))

    def relaxed(self, params, temperature=1.0):
        return self.encode(params)

    def explore(self, params, noise=0.1):
        noisy = params + torch.randn_like(params) * noise * self.scale
        return torch.minimum(torch.maximum(noisy, self.center - self.scale), self.center + self.scale)

    def mode(self, params):
        return params

    def encode(self, actions):
        return (actions - self.center) / self.scale

    def to_env(self, actions):
        return actions.detach().cpu().numpy().reshape(*actions.shape[:-1], *self.shape).astype(self.dtype)

    def from_env(self, values):
        values = values.float()
        return values.flatten(values.ndim - len(self.shape)) if self.shape else values.unsqueeze(-1)


def make_differentiable_head(in_dim: int, space: spaces.Space) -> DifferentiableHead:
    """The deterministic-policy-gradient head for ``space``: Gumbel-softmax for Discrete and MultiDiscrete, a
    deterministic action with exploration noise for Box; raises ValueError for other spaces."""
    if isinstance(space, spaces.Discrete | spaces.MultiDiscrete):
        return GumbelSoftmaxHead(in_dim, space)
    if isinstance(space, spaces.Box):
        return DeterministicHead(in_dim, space)
    raise ValueError(f"action space {space} is not supported: use Discrete, MultiDiscrete or Box")
