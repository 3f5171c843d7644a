"""Shared fixtures: real servers on free loopback ports, torn down after each test."""

from __future__ import annotations

import os

import pytest

# Headless rendering for scenarios that draw with pygame.
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")


@pytest.fixture
def server():
    """An EnvServer on tcp://127.0.0.1 (a free port), serving from a thread; ``server.address`` to connect."""
    from envserver.server import EnvServer, ServerConfig

    instance = EnvServer(ServerConfig(bind="tcp://127.0.0.1:0", heartbeat_timeout_s=2.0)).start_in_thread()
    yield instance
    instance.stop()


@pytest.fixture
def make_server():
    """A factory of servers with custom ServerConfig fields, all stopped after the test."""
    from envserver.server import EnvServer, ServerConfig

    started = []

    def factory(**fields):
        instance = EnvServer(ServerConfig(bind="tcp://127.0.0.1:0", **fields)).start_in_thread()
        started.append(instance)
        return instance

    yield factory
    for instance in started:
        instance.stop()
