"""Make the README's picture: each example photo beside its cutout over a checkerboard.

    python examples/make_preview.py [MODEL]     # writes docs/preview.png (default: the shipped model)

The picture lives in docs/, not here, so that `bgremove cut examples/` only finds the photos.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

from bgremove import Remover
from bgremove.images import encode, open_photo, write_atomic
from bgremove.report import over_checkerboard

HERE = Path(__file__).resolve().parent
HEIGHT = 300


def main(model: str | None = None) -> None:
    remover = Remover(model)
    out = HERE.parent / "docs"
    out.mkdir(exist_ok=True)
    rows = []
    for photo_path in sorted(HERE.glob("*.jpg")):
        photo = open_photo(photo_path)
        rgba = np.asarray(remover.cut(photo.rgb))
        scale = HEIGHT / photo.rgb.shape[0]
        size = (round(photo.rgb.shape[1] * scale), HEIGHT)
        left = cv2.resize(photo.rgb, size, interpolation=cv2.INTER_AREA)
        right = over_checkerboard(cv2.resize(rgba, size, interpolation=cv2.INTER_AREA))
        gap = np.full((HEIGHT, 6, 3), 255, np.uint8)
        rows.append(np.concatenate([left, gap, right, gap, gap], axis=1))
    strip = np.concatenate(rows, axis=1)
    write_atomic(out / "preview.png", encode(strip, "png", 9))
    print(f"wrote {out / 'preview.png'}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
