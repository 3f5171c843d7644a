"""IPPO and MAPPO: PPO with one actor and one critic per team, trained through the env server's batched path.

The two differ only in the critic's input: IPPO's critic sees the agent's own observation, MAPPO's the world's
global state (``BatchedWorlds(state=True)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Settings:
    """PPO settings (the ``[ppo]`` table). Defaults follow the MAPPO paper's MPE settings."""

    rollout_steps: int = 25
    """Steps per world per update. A multiple of the episode length keeps every update on episode boundaries."""
    epochs: int = 10
    """Passes over each rollout."""
    minibatches: int = 1
    """Minibatches per epoch (per team)."""
    lr: float = 7e-4
    """Adam learning rate (actor and critic)."""
    lr_anneal: bool = False
    """Decay the learning rate linearly to zero over the run."""
    adam_eps: float = 1e-5
    """Adam epsilon."""
    gamma: float = 0.99
    """Discount."""
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
    box_bounds: str = "clip"
    """Box actions: ``clip`` the Gaussian sample into the bounds, or ``squash`` it through tanh."""
    log_std_init: float = 0.0
    """Initial log standard deviation of Box actions."""
