"""agora: shared multi-agent worlds behind a ZeroMQ server, and learners that train in them.

One import package maps the repository's top-level folders (pyproject.toml, ``[tool.setuptools] package-dir``)::

    agora_marl.scenarios   scenarios/   the worlds: registry, authoring API, vectorised form, built-ins, checks
    agora_marl.envserver   envserver/   the ZeroMQ server; envserver/protocol/ is the wire, the only part clients need
    agora_marl.agents      agents/      the client side: client, PettingZoo/gymnasium views, batched worlds, policies
    agora_marl.learners    learners/    PyTorch learners (MAPPO, IPPO, IDQN), run directories, MPI
    agora_marl.launch      launch/      the ``agora`` command, configs, server processes on clusters

Imports flow one way: scenarios <- envserver <- agents <- learners <- launch (docs/architecture.md).
"""

__version__ = "0.2.0"
