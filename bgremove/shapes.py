"""The model's input shape for a photo: the model's square, or (``keep`` aspect) a shape near the photo's own.

A square input stretches every photo: a 16:9 video frame loses 40 % of its width and a thin standing
figure its horizontal detail. A model trained with ``--aspect keep`` takes each photo at the one of a
few shapes nearest its aspect (portrait, square, landscape), each with about as many pixels as the
square, so the model's time is the same and no side is squeezed. The shapes are few so training can
batch photos of one shape together, and multiples of 32 for the encoder's five halvings.

Training (``data``/``tfdata``) and inference (``runtime``) both call ``model_shape``, so a photo is
seen at the same shape in both. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import math

ASPECTS = ("stretch", "keep")
# Width / height of the shapes a keep-aspect model takes: 9:16, 3:4, 1:1, 4:3, 16:9.
RATIOS = (9 / 16, 3 / 4, 1.0, 4 / 3, 16 / 9)
MULTIPLE = 32


def all_shapes(size: int, aspect: str = "stretch") -> list[tuple[int, int]]:
    """Every (rows, cols) a model of square ``size`` takes, tallest first."""
    if aspect == "stretch":
        return [(size, size)]
    shapes = []
    for ratio in RATIOS:
        rows = max(MULTIPLE, round(size / math.sqrt(ratio) / MULTIPLE) * MULTIPLE)
        cols = max(MULTIPLE, round(size * math.sqrt(ratio) / MULTIPLE) * MULTIPLE)
        shapes.append((rows, cols))
    return list(dict.fromkeys(shapes))


def nearest_shape(height: int, width: int, shapes: list[tuple[int, int]]) -> tuple[int, int]:
    """The shape whose aspect is nearest the photo's (compared as ratios: 2:1 is as far from 1:1 as 1:2)."""
    return min(shapes, key=lambda s: abs(math.log(width / height * s[0] / s[1])))


def model_shape(height: int, width: int, size: int, aspect: str = "stretch") -> tuple[int, int]:
    """(rows, cols) of the model input for a ``height`` x ``width`` photo and a model of square ``size``."""
    return nearest_shape(height, width, all_shapes(size, aspect))
