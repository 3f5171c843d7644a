"""The learners' networks, a building block of the learner API (docs/learners.md, 'Writing a learner').

- :mod:`~agora_marl.learners.networks.core`: MLP trunks, an action head per action space for stochastic policies,
  actors, critics and a running normaliser (PPO, IDQN's Q-networks' trunks).
- :mod:`~agora_marl.learners.networks.offpolicy`: QMIX's mixing network, a centralized ``Q(s, a)`` critic and the
  differentiable action heads of deterministic policy gradients (MADDPG).

Everything is importable from here.
"""

from agora_marl.learners.networks.core import (
    ActionHead,
    Actor,
    CategoricalHead,
    Critic,
    GaussianHead,
    MultiCategoricalHead,
    RunningNorm,
    flat_dim,
    init_linear,
    make_head,
    mlp,
    sample_categorical,
)
from agora_marl.learners.networks.offpolicy import (
    CentralQCritic,
    DeterministicHead,
    DifferentiableHead,
    GumbelSoftmaxHead,
    QMixer,
    make_differentiable_head,
)

__all__ = [
    "ActionHead",
    "Actor",
    "CategoricalHead",
    "CentralQCritic",
    "Critic",
    "DeterministicHead",
    "DifferentiableHead",
    "GaussianHead",
    "GumbelSoftmaxHead",
    "MultiCategoricalHead",
    "QMixer",
    "RunningNorm",
    "flat_dim",
    "init_linear",
    "make_differentiable_head",
    "make_head",
    "mlp",
    "sample_categorical",
]
