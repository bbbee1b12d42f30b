"""Labelled data: find image/mask pairs in the supported layouts, split them by group, load them.

Layouts (auto-detected, or forced with ``--layout``):

* ``aisegment`` — AISegment Matting Human: ``clip_img/<group>/clip_*/<name>.jpg`` paired with
  ``matting/<group>/matting_*/<name>.png`` whose 4th channel is the alpha.
* ``manifest`` — ``images/`` + ``masks/`` + ``manifest.csv`` with ``stem`` and ``group`` columns
  (optionally ``source``), as in shared/data/people.
* ``folders`` — ``images/`` + ``masks/`` paired by file stem; every image is its own group.

Nothing here imports TensorFlow: ``eval`` reads the same layouts without it (see ``tfdata.py``).
"""

from __future__ import annotations

import csv
import random
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Union

import cv2
import numpy as np

LAYOUTS = ("auto", "aisegment", "manifest", "folders")
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


class DataError(Exception):
    """The data set as a whole cannot be used (no pairs, unknown layout, ...)."""


class SampleError(Exception):
    """One pair cannot be used; the message is the reason."""


@dataclass(frozen=True)
class Sample:
    image: Path
    mask: Path
    group: str
    source: str = ""

    @property
    def stem(self) -> str:
        return self.image.stem


@dataclass
class Discovery:
    """What a data folder holds: usable pairs and files that had no partner."""

    layout: str
    samples: list[Sample]
    unmatched: list[Path] = field(default_factory=list)


# ---------------------------------------------------------------- layouts


def _aisegment_root(root: Path) -> Path | None:
    """The folder holding clip_img/ and matting/ (the Kaggle archive nests it one or two levels down)."""
    for cand in (root, *root.glob("*"), *root.glob("*/*")):
        if (cand / "clip_img").is_dir() and (cand / "matting").is_dir():
            return cand
    return None


def detect_layout(root: Path) -> str:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    if (root / "manifest.csv").is_file() and (root / "images").is_dir():
        return "manifest"
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return "folders"
    if _aisegment_root(root) is not None:
        return "aisegment"
    raise DataError(
        f"{root}: no known layout (expected images/ + masks/ [+ manifest.csv], or AISegment's clip_img/ + matting/)"
    )


def _files_by_stem(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in IMAGE_EXTS and path.is_file():
            files.setdefault(path.relative_to(folder).with_suffix("").as_posix(), path)
    return files


def _discover_aisegment(root: Path) -> Discovery:
    base = _aisegment_root(root)
    assert base is not None
    images: dict[tuple[str, str], Path] = {}
    for path in sorted((base / "clip_img").glob("*/clip_*/*")):
        if path.suffix.lower() in IMAGE_EXTS:
            group, clip = path.parts[-3], path.parts[-2]
            images[(group, clip.replace("clip_", "", 1) + "/" + path.stem)] = path
    mattes: dict[tuple[str, str], Path] = {}
    for path in sorted((base / "matting").glob("*/matting_*/*")):
        if path.suffix.lower() in IMAGE_EXTS:
            group, clip = path.parts[-3], path.parts[-2]
            mattes[(group, clip.replace("matting_", "", 1) + "/" + path.stem)] = path
    samples = [Sample(images[k], mattes[k], k[0], "aisegment") for k in sorted(images) if k in mattes]
    unmatched = [images[k] for k in images if k not in mattes] + [mattes[k] for k in mattes if k not in images]
    return Discovery("aisegment", samples, sorted(unmatched))


def _discover_folders(root: Path) -> Discovery:
    images, masks = _files_by_stem(root / "images"), _files_by_stem(root / "masks")
    samples = [Sample(images[s], masks[s], s, "") for s in sorted(images) if s in masks]
    unmatched = [images[s] for s in images if s not in masks] + [masks[s] for s in masks if s not in images]
    return Discovery("folders", samples, sorted(unmatched))


def _discover_manifest(root: Path) -> Discovery:
    images, masks = _files_by_stem(root / "images"), _files_by_stem(root / "masks")
    with open(root / "manifest.csv", newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = {"stem", "group"} - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"{root / 'manifest.csv'}: missing column(s) {', '.join(sorted(missing))}")
        rows = list(reader)
    samples, unmatched, listed = [], [], set()
    for row in rows:
        stem = row["stem"]
        listed.add(stem)
        if stem in images and stem in masks:
            samples.append(Sample(images[stem], masks[stem], row["group"], row.get("source", "")))
        else:
            unmatched.append(images.get(stem) or masks.get(stem) or root / "images" / stem)
    unmatched += [p for s, p in {**masks, **images}.items() if s not in listed]
    return Discovery("manifest", samples, sorted(unmatched))


def discover(root: Path, layout: str = "auto") -> Discovery:
    """Find all image/mask pairs under ``root``."""
    root = Path(root)
    if layout not in LAYOUTS:
        raise DataError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if layout == "auto":
        layout = detect_layout(root)
    finder = {"aisegment": _discover_aisegment, "manifest": _discover_manifest, "folders": _discover_folders}
    if layout == "aisegment" and _aisegment_root(root) is None:
        raise DataError(f"{root}: no clip_img/ and matting/ folders (AISegment layout)")
    if layout in ("manifest", "folders") and not (root / "images").is_dir():
        raise DataError(f"{root}: no images/ folder")
    found = finder[layout](root)
    if not found.samples:
        raise DataError(f"{root}: no image/mask pairs found ({layout} layout)")
    return found


# ---------------------------------------------------------------- split


def split_by_group(samples: list[Sample], val_split: float, seed: int = 0) -> tuple[list[Sample], list[Sample]]:
    """Deterministic train/validation split that keeps each group on one side.

    Groups are drawn per source, so a small source (7 video sequences next to 1,300 portraits) still gets
    its share of validation groups instead of none or all of them by chance.
    """
    if not 0 <= val_split < 1:
        raise ValueError("--val-split must be in [0, 1)")
    by_source: dict[str, list[str]] = defaultdict(list)
    for s in samples:
        if s.group not in by_source[s.source]:
            by_source[s.source].append(s.group)
    val_groups: set[str] = set()
    rng = random.Random(seed)
    for source in sorted(by_source):
        groups = sorted(by_source[source])
        rng.shuffle(groups)
        n = round(val_split * len(groups))
        if val_split > 0 and n == 0 and len(groups) > 1:
            n = 1
        val_groups.update(groups[:n])
    train = [s for s in samples if s.group not in val_groups]
    val = [s for s in samples if s.group in val_groups]
    return train, val


# ---------------------------------------------------------------- loading


def read_mask(path: Path) -> np.ndarray:
    """An 8-bit alpha from a grayscale mask or from the alpha channel of an RGBA matte."""
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise SampleError(f"{path}: cannot read mask")
    if raw.dtype == np.uint16:
        raw = (raw >> 8).astype(np.uint8)
    if raw.ndim == 3:
        raw = raw[:, :, 3] if raw.shape[2] == 4 else raw[:, :, 0]
    return raw


def read_pair(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 image and uint8 mask of the same size, or SampleError with the reason."""
    if not sample.image.is_file():
        raise SampleError(f"{sample.image}: missing")
    bgr = cv2.imread(str(sample.image), cv2.IMREAD_COLOR)
    if bgr is None:
        raise SampleError(f"{sample.image}: cannot read image")
    mask = read_mask(sample.mask)
    if mask.shape[:2] != bgr.shape[:2]:
        raise SampleError(
            f"{sample.mask}: mask is {mask.shape[1]}x{mask.shape[0]}, image is {bgr.shape[1]}x{bgr.shape[0]}"
        )
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), mask


# The size a pair is loaded at: a square side, (rows, cols), or (rows, cols) from the photo's (height, width).
Shape = Union[int, tuple[int, int], Callable[[int, int], tuple[int, int]]]


def load_resized(sample: Sample, shape: Shape) -> tuple[np.ndarray, np.ndarray]:
    image, mask = read_pair(sample)
    rows, cols = (shape, shape) if isinstance(shape, int) else shape if isinstance(shape, tuple) else shape(*image.shape[:2])
    image = cv2.resize(image, (cols, rows), interpolation=cv2.INTER_AREA)
    mask = cv2.resize(mask, (cols, rows), interpolation=cv2.INTER_AREA)
    return image, mask


@dataclass
class LoadedSet:
    samples: list[Sample]
    images: list[np.ndarray]  # (H, W, 3) uint8 each
    masks: list[np.ndarray]  # (H, W) uint8 each
    skipped: list[tuple[Path, str]]

    def stacked(self, indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """The images and masks of ``indices`` (pairs of one shape) as two arrays."""
        return np.stack([self.images[i] for i in indices]), np.stack([self.masks[i] for i in indices])

    def groups(self) -> dict[tuple[str, tuple[int, int]], list[int]]:
        """Indices of the pairs by (source, shape): each group can be stacked into one array."""
        found: dict[tuple[str, tuple[int, int]], list[int]] = {}
        for i, (sample, image) in enumerate(zip(self.samples, self.images)):
            found.setdefault((sample.source, image.shape[:2]), []).append(i)
        return found


def load_all(samples: Iterable[Sample], shape: Shape, workers: int = 4) -> LoadedSet:
    """Decode and resize every pair into memory (OpenCV releases the GIL, so threads decode in parallel)."""
    samples = list(samples)

    def load(sample: Sample):
        try:
            return load_resized(sample, shape)
        except SampleError as err:
            return err
        except Exception as err:  # noqa: BLE001 - any decoder failure is a bad sample, not a crash
            return SampleError(f"{sample.image}: {err}")

    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(load, samples))
    good = [(s, r) for s, r in zip(samples, results) if not isinstance(r, SampleError)]
    skipped = [(s.image, str(r)) for s, r in zip(samples, results) if isinstance(r, SampleError)]
    return LoadedSet([s for s, _ in good], [r[0] for _, r in good], [r[1] for _, r in good], skipped)
