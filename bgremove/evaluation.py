"""``bgremove eval``: score models on labelled pairs through the same pipeline ``cut`` uses.

Each photo is decoded once and given to every model; the prediction is compared with the ground truth
at the ground truth's own resolution, so the numbers are what users get, not what the network sees at
256x256. Segmentation metrics binarise at 0.5 (unless a model is thresholded); matting metrics use the
soft alpha over the whole image. See ``metrics.py`` for the conventions.
"""

from __future__ import annotations

import heapq
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from .data import Sample, SampleError, discover, read_mask, split_by_group
from .images import ImageError, Photo, encode, open_photo
from .metrics import METRIC_INFO, all_metrics
from .pipeline import CutOptions, Remover, compose_rgba, finish_alpha

THUMB_HEIGHT = 160
SPLITS = ("all", "val", "train")
DEGRADATIONS = {"rotate": "degrees", "blur": "sigma in pixels", "jpeg": "quality 1-100"}


class EvalError(Exception):
    """Evaluation cannot run (no data, no model); the message says why."""


@dataclass
class Candidate:
    """A model under evaluation: ``predict(photo) -> (alpha at photo size, model seconds)``."""

    name: str
    predict: Callable[[Photo], tuple[np.ndarray, float]]
    render: Callable[[Photo, np.ndarray], np.ndarray]
    # The 8-bit alpha the user gets (after threshold, refine, clean, ...): what the metrics score.
    # Given the rendered output too, so it is not computed twice when the output already carries it.
    final_alpha: Callable[[Photo, np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Degradation:
    """Each photo made worse as users' photos often are, to score how robust a model is.

    ``rotate:15`` tilts the photo (and its label) about the centre, zoomed in just enough that no corner
    is empty; ``blur:3`` is a Gaussian blur (sigma in the photo's pixels): a soft or upscaled photo;
    ``jpeg:25`` recompresses it at that quality. The label follows the photo's geometry only.
    """

    kind: str
    amount: float

    @classmethod
    def parse(cls, text: str) -> "Degradation":
        kind, _, amount = text.partition(":")
        choices = ", ".join(f"{k}:N ({v})" for k, v in DEGRADATIONS.items())
        try:
            value = float(amount)
        except ValueError:
            raise ValueError(f"degradation {text!r}: expected one of {choices}") from None
        if kind not in DEGRADATIONS:
            raise ValueError(f"degradation {text!r}: expected one of {choices}")
        if (kind == "jpeg" and not 1 <= value <= 100) or (kind == "blur" and value <= 0) or not np.isfinite(value):
            raise ValueError(f"degradation {text!r}: {kind} takes {DEGRADATIONS[kind]}")
        return cls(kind, value)

    def __str__(self) -> str:
        return f"{self.kind}:{self.amount:g}"

    def apply(self, photo: Photo, gt: np.ndarray) -> tuple[Photo, np.ndarray]:
        """(photo, float label) -> the degraded pair at the same size; a transparent photo's alpha turns too."""
        rgb = photo.rgb
        if self.kind == "jpeg":
            _, data = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(self.amount)])
            return replace(photo, rgb=np.ascontiguousarray(cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1])), gt
        if self.kind == "blur":
            return replace(photo, rgb=cv2.GaussianBlur(rgb, (0, 0), self.amount, borderType=cv2.BORDER_REFLECT)), gt
        h, w = gt.shape
        theta = np.deg2rad(self.amount)
        cos, sin = abs(np.cos(theta)), abs(np.sin(theta))
        zoom = max(cos + sin * w / h, cos + sin * h / w)  # as training's tfdata.rotate
        matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), self.amount, zoom)

        def turn(x: np.ndarray) -> np.ndarray:
            return cv2.warpAffine(x, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

        alpha = None if photo.alpha is None else turn(photo.alpha)
        return replace(photo, rgb=turn(rgb), alpha=alpha), turn(gt)


def remover_candidate(remover: Remover, name: str) -> Candidate:
    """Wrap the cut pipeline so that model time and whole-pipeline time can be told apart."""
    def predict(photo: Photo) -> tuple[np.ndarray, float]:
        alphas, seconds = remover.predict_alphas_timed([photo])
        return alphas[0], seconds

    # Scored on the alpha that `cut` writes, with every option that shapes it, but not cropped.
    as_mask = replace(remover.options, mask=True, bg=None, crop=False)
    rgba_is_mask = remover.options.has_alpha and not remover.options.crop

    def final_alpha(photo: Photo, alpha: np.ndarray, rendered: np.ndarray) -> np.ndarray:
        if rgba_is_mask:  # the cutout's own alpha channel: refine, clean, ... are not run a second time
            return rendered[..., 3]
        return remover.finish(photo, alpha, as_mask).pixels

    return Candidate(name, predict, remover.render, final_alpha)


def function_candidate(name: str, fn: Callable[[np.ndarray], np.ndarray]) -> Candidate:
    """Any ``rgb -> alpha`` function (e.g. another project's model), rendered like our cutouts."""

    def predict(photo: Photo) -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        alpha = np.clip(np.asarray(fn(photo.rgb), np.float32), 0, 1)
        return alpha, time.perf_counter() - t0

    def final_alpha(photo: Photo, alpha: np.ndarray, rendered: np.ndarray) -> np.ndarray:
        return rendered[..., 3]

    def render(photo: Photo, alpha: np.ndarray) -> np.ndarray:
        return compose_rgba(photo.rgb, finish_alpha(alpha, CutOptions()))

    return Candidate(name, predict, render, final_alpha)


@dataclass
class Thumb:
    stem: str
    iou: float
    image: np.ndarray
    gt: np.ndarray
    alpha: np.ndarray
    cutout: np.ndarray


@dataclass
class EvalResult:
    models: list[str]
    rows: list[dict]  # one per (image, model)
    summary: dict  # model -> {"all": {...}, "by_source": {...}, timing}
    skipped: list[tuple[str, str]] = field(default_factory=list)
    examples: dict[str, list[Thumb]] = field(default_factory=dict)  # first images, per model
    worst: dict[str, list[Thumb]] = field(default_factory=dict)  # lowest IoU, per model


def select_samples(
    data: Path, layout: str = "auto", split: str = "all", run: Path | None = None, val_split: float = 0.1,
    seed: int = 0, limit: int = 0,
) -> list[Sample]:
    """The pairs to score: all of them, or one side of a group split (a run's own, with ``run``)."""
    if split not in SPLITS:
        raise EvalError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    samples = discover(data, layout).samples
    if split != "all":
        if run is not None:
            info = json.loads((run / "split.json").read_text())
            val_groups = set(info["val_groups"])
            chosen = [s for s in samples if (s.group in val_groups) == (split == "val")]
        else:
            train, val = split_by_group(samples, val_split, seed)
            chosen = val if split == "val" else train
        samples = chosen
    if not samples:
        raise EvalError(f"{data}: no pairs in the {split} split")
    if limit:
        # Spread a limited evaluation over the whole set instead of taking its first files.
        step = max(1, len(samples) // limit)
        samples = samples[::step][:limit]
    return samples


def _thumb(image: np.ndarray, interpolation=cv2.INTER_AREA) -> np.ndarray:
    h, w = image.shape[:2]
    scale = THUMB_HEIGHT / h
    return cv2.resize(image, (max(1, round(w * scale)), THUMB_HEIGHT), interpolation=interpolation)


def _mean(rows: list[dict], keys: list[str]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in rows])) for k in keys} if rows else {}


def summarise(rows: list[dict], models: list[str]) -> dict:
    keys = list(METRIC_INFO)
    summary = {}
    for model in models:
        mine = [r for r in rows if r["model"] == model]
        sources = sorted({r["source"] for r in mine})
        model_ms = float(np.mean([r["model_ms"] for r in mine])) if mine else float("nan")
        pipeline_ms = float(np.mean([r["pipeline_ms"] for r in mine])) if mine else float("nan")
        summary[model] = {
            "images": len(mine),
            "all": _mean(mine, keys),
            "by_source": {s: {"images": sum(r["source"] == s for r in mine),
                              **_mean([r for r in mine if r["source"] == s], keys)} for s in sources},
            "model_ms": model_ms,
            "pipeline_ms": pipeline_ms,
            "model_images_per_s": 1000.0 / model_ms if model_ms else float("nan"),
            "pipeline_images_per_s": 1000.0 / pipeline_ms if pipeline_ms else float("nan"),
        }
    return summary


def evaluate(
    samples: list[Sample], candidates: list[Candidate], examples: int = 6, worst: int = 6,
    on_progress: Callable[[int, int], None] = lambda done, total: None, degrade: Degradation | None = None,
) -> EvalResult:
    """Score every candidate on every sample; never stops for one bad pair (it is listed instead).

    ``degrade``: every photo (and its label) is first made worse that way (Degradation)."""
    if not candidates:
        raise EvalError("no model to evaluate")
    if len({c.name for c in candidates}) < len(candidates):
        raise EvalError("two models have the same name")
    rows: list[dict] = []
    skipped: list[tuple[str, str]] = []
    first: dict[str, list[Thumb]] = {c.name: [] for c in candidates}
    heaps: dict[str, list] = {c.name: [] for c in candidates}
    for index, sample in enumerate(samples):
        try:
            t0 = time.perf_counter()
            photo = open_photo(sample.image)
            decode_s = time.perf_counter() - t0
            gt = read_mask(sample.mask).astype(np.float32) / 255.0
            if gt.shape != photo.rgb.shape[:2]:
                raise SampleError(f"mask is {gt.shape[1]}x{gt.shape[0]}, image is {photo.size[0]}x{photo.size[1]}")
            if degrade is not None:
                photo, gt = degrade.apply(photo, gt)
        except (ImageError, SampleError) as exc:
            skipped.append((str(sample.image), str(exc)))
            on_progress(index + 1, len(samples))
            continue
        for cand in candidates:
            t1 = time.perf_counter()
            alpha, model_s = cand.predict(photo)
            rgba = cand.render(photo, alpha)
            encode(rgba, "png", 1)
            pipeline_s = decode_s + time.perf_counter() - t1
            # Scored as written: 8-bit alpha, hard if the model is thresholded (metrics binarise at 0.5).
            scored = cand.final_alpha(photo, alpha, rgba).astype(np.float32) / 255.0
            values = all_metrics(scored, gt, threshold=0.5)
            rows.append({"stem": sample.stem, "source": sample.source, "group": sample.group, "model": cand.name,
                         **{k: round(v, 6) for k, v in values.items()},
                         "model_ms": round(model_s * 1000, 3), "pipeline_ms": round(pipeline_s * 1000, 3)})
            keep_first = len(first[cand.name]) < examples
            heap = heaps[cand.name]
            keep_worst = worst and (len(heap) < worst or -values["iou"] > heap[0][0])
            if keep_first or keep_worst:
                thumb = Thumb(sample.stem, values["iou"], _thumb(photo.rgb), _thumb(gt),
                              _thumb(scored), _thumb(rgba))
                if keep_first:
                    first[cand.name].append(thumb)
                if keep_worst:
                    item = (-values["iou"], index, id(thumb), thumb)
                    heapq.heappush(heap, item) if len(heap) < worst else heapq.heapreplace(heap, item)
        on_progress(index + 1, len(samples))
    if not rows:
        raise EvalError("no pair could be evaluated (see the skipped list)")
    models = [c.name for c in candidates]
    worst_lists = {m: [item[-1] for item in sorted(heaps[m], key=lambda x: -x[0])] for m in models}
    return EvalResult(models, rows, summarise(rows, models), skipped, first, worst_lists)

