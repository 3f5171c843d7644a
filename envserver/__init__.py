"""agora's environment server: many multi-agent worlds behind one ZeroMQ ROUTER socket.

``envserver.protocol`` is importable on its own (clients use it); the server itself is imported lazily so that a
client never pulls in the scenarios and their dependencies.
"""

__all__ = ["EnvServer"]


def __getattr__(name: str):
    if name == "EnvServer":
        from agora_marl.envserver.server import EnvServer

        return EnvServer
    raise AttributeError(f"module 'envserver' has no attribute {name!r}")
