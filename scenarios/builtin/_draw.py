"""Tiny numpy drawing helpers for the built-in worlds' ``rgb_array`` renders (no pygame needed)."""

from __future__ import annotations

import numpy as np

#: Distinct colours for agents, cycled.
PALETTE = np.array(
    [[66, 133, 244], [234, 67, 53], [251, 188, 5], [52, 168, 83], [171, 71, 188], [0, 172, 193], [255, 112, 67]],
    np.uint8,
)


def canvas(size: int, shade: int = 240) -> np.ndarray:
    """A blank square RGB image."""
    return np.full((size, size, 3), shade, np.uint8)


def arena_disc(image: np.ndarray, pos, radius: float, colour) -> None:
    """Paint a disc of arena radius ``radius`` at position ``pos`` of the [-1, 1]^2 arena (y up)."""
    size = image.shape[0]
    scale = (size - 1) / 2
    cx, cy = (float(pos[0]) + 1) * scale, (1 - float(pos[1])) * scale
    yy, xx = np.ogrid[:size, :size]
    image[(xx - cx) ** 2 + (yy - cy) ** 2 <= (radius * scale) ** 2] = colour


def arena_square(image: np.ndarray, pos, half: float, colour) -> None:
    """Paint a square of arena half-side ``half`` centred at ``pos`` of the [-1, 1]^2 arena (y up)."""
    size = image.shape[0]
    scale = (size - 1) / 2
    cx, cy = (float(pos[0]) + 1) * scale, (1 - float(pos[1])) * scale
    r = half * scale
    image[max(0, int(cy - r)) : int(cy + r) + 1, max(0, int(cx - r)) : int(cx + r) + 1] = colour
