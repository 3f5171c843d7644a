"""agora's worlds: a registry of hostable scenarios, and the small API for authoring new ones."""

from scenarios.registry import (
    DEFAULT_ALLOWED_PACKAGES,
    ScenarioNotAllowed,
    check_allowed,
    make_env,
    make_vector,
    register,
    registered,
)

__all__ = [
    "DEFAULT_ALLOWED_PACKAGES",
    "ScenarioNotAllowed",
    "check_allowed",
    "make_env",
    "make_vector",
    "register",
    "registered",
]
