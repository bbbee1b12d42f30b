"""Make the README's pictures with the shipped model (or MODEL):

    python examples/make_preview.py [MODEL]

docs/preview.png: each example photo beside its cutout over a checkerboard;
docs/options.png: one photo through the main `cut` options.

The picture lives in docs/, not here, so that `bgremove cut examples/` only finds the photos.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

from bgremove import CutOptions, Remover
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
    write_atomic(out / "options.png", encode(options_strip(model, HERE / "astronaut.jpg"), "png", 9))
    print(f"wrote {out / 'preview.png'} and {out / 'options.png'}")


OPTIONS = [
    ("default", CutOptions()),
    ("--refine", CutOptions(refine=True)),
    ("--threshold 0.5", CutOptions(threshold=0.5)),
    ("--bg white", CutOptions(bg="white")),
    ("--bg blur", CutOptions(bg="blur")),
    ("--mask", CutOptions(mask=True)),
    ("--crop --margin 5%", CutOptions(crop=True, margin="5%")),
]


def options_strip(model: str | None, photo_path: Path) -> np.ndarray:
    """One photo through each option, labelled, side by side."""
    remover = Remover(model)
    photo = open_photo(photo_path)
    alpha = remover.predict_alphas([photo])[0]
    tiles = []
    for label, options in OPTIONS:
        pixels = remover.finish(photo, alpha, options).pixels
        if pixels.ndim == 2:
            pixels = np.repeat(pixels[..., None], 3, axis=2)
        elif pixels.shape[2] == 4:
            pixels = over_checkerboard(pixels)
        scale = HEIGHT / pixels.shape[0]
        tile = cv2.resize(pixels, (round(pixels.shape[1] * scale), HEIGHT), interpolation=cv2.INTER_AREA)
        caption = np.full((26, tile.shape[1], 3), 255, np.uint8)
        cv2.putText(caption, label, (4, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
        tiles += [np.concatenate([caption, tile], axis=0), np.full((HEIGHT + 26, 6, 3), 255, np.uint8)]
    return np.concatenate(tiles, axis=1)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
