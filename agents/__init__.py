"""Clients of the agora env server: a socket-level client, PettingZoo and gymnasium views, and the batched view.

Needs only pyzmq, msgpack, numpy, gymnasium, pettingzoo and ``agora_marl.envserver.protocol`` (never the server or
torch), so a custom agent can run on any machine that can reach a server. ``WorldSpec`` is the protocol's own.
"""

from agora_marl.agents.batched import BatchedWorlds, BatchResult
from agora_marl.agents.client import AgentClient, ServerError
from agora_marl.agents.gym_env import SeatEnv
from agora_marl.agents.parallel_env import RemoteParallelEnv
from agora_marl.agents.types import Created, Joined, Observation, StepResult
from agora_marl.envserver.protocol import WorldSpec

__all__ = [
    "AgentClient",
    "BatchResult",
    "BatchedWorlds",
    "Created",
    "Joined",
    "Observation",
    "RemoteParallelEnv",
    "SeatEnv",
    "ServerError",
    "StepResult",
    "WorldSpec",
]
