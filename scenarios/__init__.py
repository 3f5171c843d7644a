"""agora's worlds: a registry of hostable scenarios, and the small API for authoring new ones (docs/scenarios.md).

Importing the package registers the built-in worlds (agora_marl.scenarios.builtin), as an operator's module
registers its own.
"""

from agora_marl.scenarios import builtin  # noqa: F401 (importing it registers the built-in worlds)
from agora_marl.scenarios.api import Scenario, ScenarioEnv, scenario_env
from agora_marl.scenarios.registry import (
    DEFAULT_ALLOWED_PACKAGES,
    ScenarioNotAllowed,
    check_allowed,
    load_scenario_module,
    make_env,
    make_vector,
    register,
    registered,
)
from agora_marl.scenarios.vector import VectorParallelEnv, VectorScenario, vector_env

__all__ = [
    "DEFAULT_ALLOWED_PACKAGES",
    "Scenario",
    "ScenarioEnv",
    "ScenarioNotAllowed",
    "VectorParallelEnv",
    "VectorScenario",
    "check_allowed",
    "load_scenario_module",
    "make_env",
    "make_vector",
    "register",
    "registered",
    "scenario_env",
    "vector_env",
]
