"""PyTorch learners that train in agora worlds through the env server's batched path.

- :mod:`learners.ppo`: IPPO and MAPPO (the critic's input is the only difference).
- :mod:`learners.idqn`: independent DQN.
- :mod:`learners.config`: settings dataclasses, TOML and ``key=value`` overrides; the algorithm registry and the
  convention every algorithm module follows (``Settings``, ``train(config, run, addresses)``,
  ``policy_from_checkpoint(config, state)``).
- :mod:`learners.run`: the run directory (config, metrics, checkpoints, resume) and the end of each update.
- :mod:`learners.training`: what every ``train`` shares (threads, device, worlds, progress, end of update).
- :mod:`learners.networks`, :mod:`learners.rollout`: networks, action heads, rollout storage and GAE.
- :mod:`learners.mpi`: the only package that touches MPI (torch-free; its torch parts are ``learners.mpi.tensors``,
  ``.gradients`` and ``.cuda``); everything works without MPI at one rank.
- :mod:`learners.policy`: load a trained run's policy to act (eval, play).
"""
