"""Shared fixtures: real servers on free loopback ports, torn down after each test.

Conformance: with ``AGORA_SERVER=ENDPOINT`` set, the ``server`` fixture points at that running server instead of
starting one, so the protocol tests (tests/test_envserver_*.py) check any implementation of docs/protocol.md.
Tests that need a server with special settings (``make_server``) or scenarios registered in this process skip.
"""

from __future__ import annotations

import os
import tempfile
from types import SimpleNamespace

import pytest

# Headless rendering for scenarios that draw with pygame.
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
# Servers the tests start write their operator secrets here, not into the home folder.
os.environ.setdefault("AGORA_OPERATOR_DIR", tempfile.mkdtemp(prefix="agora-operator-"))


EXTERNAL_SERVER = os.environ.get("AGORA_SERVER")


@pytest.fixture
def server():
    """An EnvServer on tcp://127.0.0.1 (a free port), serving from a thread; ``server.address`` to connect."""
    if EXTERNAL_SERVER:
        yield SimpleNamespace(address=EXTERNAL_SERVER)
        return
    from agora_marl.envserver.server import EnvServer, ServerConfig

    instance = EnvServer(ServerConfig(bind="tcp://127.0.0.1:0", heartbeat_timeout_s=2.0)).start_in_thread()
    yield instance
    instance.stop()


@pytest.fixture
def make_server():
    """A factory of servers with custom ServerConfig fields, all stopped after the test."""
    if EXTERNAL_SERVER:
        pytest.skip("needs a server with its own settings; AGORA_SERVER points at an external one")
    from agora_marl.envserver.server import EnvServer, ServerConfig

    started = []

    def factory(**fields):
        instance = EnvServer(ServerConfig(bind="tcp://127.0.0.1:0", **fields)).start_in_thread()
        started.append(instance)
        return instance

    yield factory
    for instance in started:
        instance.stop()
