"""PyTorch learners that train in agora worlds through the env server's batched path.

- :mod:`learners.ppo`: IPPO and MAPPO (the critic's input is the only difference).
- :mod:`learners.idqn`: independent DQN.
- :mod:`learners.config`: settings dataclasses, TOML and ``key=value`` overrides; the algorithm registry and the
  convention every algorithm module follows (``Settings`` and ``train(config, run, addresses)``).
- :mod:`learners.run`: the run directory (config, metrics, checkpoints, resume).
- :mod:`learners.networks`, :mod:`learners.rollout`: networks, action heads, rollout storage and GAE.
- :mod:`learners.mpi`: the only module that touches MPI; everything works without it at one rank.
- :mod:`learners.policy`: load a trained run's policy to act (eval, play).
"""
