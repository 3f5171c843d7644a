"""agora's environment server: many multi-agent worlds behind one ZeroMQ ROUTER socket.

- :mod:`.protocol`: the wire (words, frames, spaces, world spec, errors, connection files): the one part clients
  import; it needs only msgpack, numpy and gymnasium.
- :mod:`.server`: :class:`~.server.EnvServer`, the loop, sessions, deadlines and liveness.
- :mod:`.handlers`: one function per operation and the table of them (stepping ones in :mod:`.stepping`; field
  checks in :mod:`.fields`).
- :mod:`.world`: one world, its seats and the step rule; :mod:`.batch` and :mod:`.vector`: K worlds in one message.

Nothing is imported here, so that ``import agora_marl.envserver.protocol`` stays light for clients.
"""
