"""The networks of stochastic policies and their critics: MLP trunks with orthogonal init, an action head per action
space, a running normaliser.

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


def sample_categorical(logits: torch.Tensor) -> torch.Tensor:
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
        actions = sample_categorical(params)
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
        parts = [sample_categorical(logits) for logits in params.split(self.sizes, -1)]
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
