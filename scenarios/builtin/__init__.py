"""agora's built-in scenarios; importing this package registers them."""

from agora_marl.scenarios.builtin import coin_duel, cover, foraging, homing, predator_prey

__all__ = ["coin_duel", "cover", "foraging", "homing", "predator_prey"]
