"""agora's built-in scenarios; importing this package registers them."""

from agora_marl.scenarios.builtin import cover, foraging, predator_prey

__all__ = ["cover", "foraging", "predator_prey"]
