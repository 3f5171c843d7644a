"""PyTorch learners that train in agora worlds through the env server's batched path.

- :mod:`learners.api`: THE contract a learner plugs in by: ``Algorithm`` (what it declares, ``make_policy``,
  ``train``), the ``Session`` it is handed, the ``Worlds`` and ``Policy`` protocols (docs/learners.md, 'Writing a
  learner').
- :mod:`learners.algorithms`: the built-ins, written on that API only: IPPO and MAPPO (``ppo``), IDQN (``idqn``).
- :mod:`learners.registry`: what ``algo=`` names (a built-in, ``MODULE:ATTR``, ``FILE.py:ATTR``, an entry point of
  ``agora.learners``) and the reference recorded in the run.
- The harness: :mod:`learners.training` (``train``: declarations, worlds, opponents, self-play, resume),
  :mod:`learners.session` (the ``Session``: reseeding, statistics, the end of each update, checkpoints),
  :mod:`learners.episodes` (return metrics), :mod:`learners.checkpoints` (the checked schema),
  :mod:`learners.selfplay`, :mod:`learners.rendezvous`.
- :mod:`learners.check` (``agora learners check``: the contract run on any algorithm) and :mod:`learners.new`
  (``agora learners new``: a one-file algorithm from learners/templates/).
- :mod:`learners.config`: settings dataclasses, TOML and ``key=value`` overrides; :mod:`learners.run`: the run
  directory (config, metrics, checkpoints) and the end of each update; :mod:`learners.trained`: a trained run's
  policy rebuilt from its checkpoint, and evaluation.
- Building blocks, public: :mod:`learners.networks` (MLPs, action heads), :mod:`learners.policy` (teams, the acting
  policy of actors), :mod:`learners.rollout` (rollout storage, GAE), :mod:`learners.targets` (target networks),
  :mod:`learners.schedules`, :mod:`learners.mpi` (the only package that touches MPI: ranks, reductions, gradient
  allreduce; everything works without MPI at one rank).
"""
