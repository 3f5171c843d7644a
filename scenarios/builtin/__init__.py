"""agora's built-in scenarios; importing this package registers them."""

from scenarios.builtin import foraging, predator_prey

__all__ = ["foraging", "predator_prey"]
