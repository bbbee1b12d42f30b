"""The evaluation report: metrics.csv, summary.json, picture grids and an index.html that shows them."""

from __future__ import annotations

import csv
import html
import json
import shutil
from pathlib import Path

import cv2
import numpy as np

from .evaluation import EvalResult, Thumb
from .fileio import atomic_write_bytes
from .images import encode
from .metrics import METRIC_INFO

COLUMNS = ("input", "ground truth", "prediction", "cutout")


def checkerboard(height: int, width: int, cell: int = 8) -> np.ndarray:
    """The usual light-grey checkerboard that shows transparency."""
    yy, xx = np.mgrid[0:height, 0:width]
    light = ((yy // cell + xx // cell) % 2).astype(bool)
    board = np.full((height, width, 3), 205, np.uint8)
    board[light] = 245
    return board


def over_checkerboard(rgba: np.ndarray) -> np.ndarray:
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    board = checkerboard(*rgba.shape[:2]).astype(np.float32)
    return np.rint(rgba[..., :3] * alpha + board * (1 - alpha)).astype(np.uint8)


def _gray(a: np.ndarray) -> np.ndarray:
    return np.repeat(np.rint(np.clip(a, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2)


def grid(thumbs: list[Thumb]) -> np.ndarray:
    """Rows of input | ground truth | prediction | cutout over a checkerboard, with a caption strip."""
    rows = []
    width = max(t.image.shape[1] for t in thumbs)
    for t in thumbs:
        tiles = [t.image, _gray(t.gt), _gray(t.alpha), over_checkerboard(t.cutout)]
        tiles = [np.pad(x, ((0, 0), (0, width - x.shape[1] + 4), (0, 0)), constant_values=255) for x in tiles]
        row = np.concatenate(tiles, axis=1)
        caption = np.full((18, row.shape[1], 3), 255, np.uint8)
        cv2.putText(caption, f"{t.stem}  IoU {t.iou:.3f}", (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1,
                    cv2.LINE_AA)
        rows.append(np.concatenate([caption, row], axis=0))
    return np.concatenate(rows, axis=0)


def _fmt(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"


def write_report(result: EvalResult, out: Path, run: Path | None = None, header: dict | None = None) -> Path:
    """Write every report file into ``out``; returns the index.html path."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "metrics.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(result.rows[0]))
        writer.writeheader()
        writer.writerows(result.rows)
    summary = {"header": header or {}, "conventions": {k: v[0] for k, v in METRIC_INFO.items()},
               "models": result.summary, "skipped": result.skipped}
    atomic_write_bytes(out / "summary.json", json.dumps(summary, indent=2).encode())

    images: list[tuple[str, str]] = []
    for i, model in enumerate(result.models):
        for kind, thumbs in (("examples", result.examples.get(model)), ("worst", result.worst.get(model))):
            if thumbs:
                name = f"{kind}_{i}.png"
                atomic_write_bytes(out / name, encode(grid(thumbs)))
                images.append((name, f"{model}: {'first images' if kind == 'examples' else 'lowest IoU'}"))
    if run is not None and (run / "curve.png").is_file():
        shutil.copy(run / "curve.png", out / "curve.png")
        images.append(("curve.png", f"learning curve of {run}"))
    index = out / "index.html"
    atomic_write_bytes(index, _html(result, images, header or {}).encode())
    return index


def _html(result: EvalResult, images: list[tuple[str, str]], header: dict) -> str:
    esc = html.escape
    models = result.models
    head = "".join(f"<th>{esc(m)}</th>" for m in models)
    body = []
    for key, (desc, higher) in METRIC_INFO.items():
        vals = [result.summary[m]["all"][key] for m in models]
        best = max(vals) if higher else min(vals)
        cells = "".join(f"<td{' class=best' if v == best and len(models) > 1 else ''}>{_fmt(v)}</td>" for v in vals)
        body.append(f"<tr><th title='{esc(desc)}'>{key} {'↑' if higher else '↓'}</th>{cells}</tr>")
    for key in ("model_ms", "pipeline_ms"):
        body.append(f"<tr><th>{key}</th>" + "".join(f"<td>{result.summary[m][key]:.1f}</td>" for m in models) + "</tr>")
    sources = sorted({s for m in models for s in result.summary[m]["by_source"]})
    per_source = []
    for source in sources:
        for key in ("iou", "boundary_f", "grad", "sad"):
            cells = "".join(f"<td>{_fmt(result.summary[m]['by_source'].get(source, {}).get(key, float('nan')))}</td>"
                            for m in models)
            per_source.append(f"<tr><th>{esc(source or '(none)')} {key}</th>{cells}</tr>")
    conventions = "".join(f"<li><b>{k}</b>: {esc(v[0])}</li>" for k, v in METRIC_INFO.items())
    pictures = "".join(f"<figure><figcaption>{esc(c)}</figcaption><img src='{n}'></figure>" for n, c in images)
    info = "".join(f"<li>{esc(str(k))}: {esc(str(v))}</li>" for k, v in header.items())
    skipped = "".join(f"<li>{esc(p)}: {esc(r)}</li>" for p, r in result.skipped) or "<li>none</li>"
    return f"""<!doctype html><meta charset="utf-8"><title>bgremove evaluation</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}}td,th{{padding:3px 10px;text-align:right}}
th{{text-align:left}}.best{{font-weight:bold;background:#e6f4ea}}table{{border-collapse:collapse}}
tr:nth-child(even){{background:#f6f6f6}}img{{max-width:100%}}figure{{margin:1.5em 0}}</style>
<h1>bgremove evaluation</h1><ul>{info}</ul>
<h2>Means over all images</h2><table><tr><th>metric</th>{head}</tr>{''.join(body)}</table>
<h2>Per source</h2><table><tr><th></th>{head}</tr>{''.join(per_source)}</table>
<h2>Pictures: input | ground truth | prediction | cutout</h2>{pictures}
<h2>Conventions</h2><ul>{conventions}</ul><h2>Skipped</h2><ul>{skipped}</ul>
"""
