#!/usr/bin/env python
"""Accuracy and speed of our model(s) against the peer models in ../shared/peers, on the same photos.

What it measures
    Every model -- ours (``--model``, default the shipped weights/bgremove.tflite) and every peer in
    shared/peers/peers.py (mediapipe_selfie, u2netp, sinet, ...) -- is scored on the same labelled photos of
    shared/data/people through the same code that ``bgremove eval`` uses (bgremove.evaluation.evaluate):
    each photo is decoded once with bgremove's reader, each model predicts an alpha at the photo's full
    resolution, the cutout is rendered and PNG-encoded like ``bgremove cut`` does, and the alpha is scored
    against the ground-truth mask at the mask's own resolution.

    * IoU and Boundary F (DAVIS F-measure) use the alpha binarised at 0.5; higher is better.
    * Gradient error and SAD use the soft 8-bit alpha over the whole image (both / 1000); lower is better.
    * "model ms" is the time of the model call per photo: for our models the LiteRT call alone on the
      already resized input (bgremove.evaluation.remover_candidate), plus, where ``cut`` takes a closer
      look at small people (``--zoom``, on by default), the second call with its crop; for peers the
      whole ``PEERS[name](rgb)`` call, which includes the peer's own resize in and out. "pipeline ms" is
      decode + model + resize + render + PNG encode for every model, the fair end-to-end comparison.

    Photos: the validation side of the group split (``--split val``, the default) -- either the split of a
    training run (``--run RUN_DIR`` reads its split.json) or, without --run, the same deterministic split
    ``bgremove train`` makes by default (val fraction 0.1, seed 0). ``--split all`` uses every pair (our
    model has seen the training side, so only the val split is a fair comparison). ``--limit N`` spreads N
    photos over the chosen set.

Output
    A plain-text table (rows = models; per source: IoU, Boundary F, Gradient error, SAD; then ms/image).
    With ``--out REPORT_DIR``: the full report of ``bgremove eval`` (index.html with pictures, metrics.csv,
    summary.json) plus the table as markdown in REPORT_DIR/table.md, ready to paste into a model card.

Examples
    python benchmarks/peers.py --model /tmp/m.tflite --limit 20
    python benchmarks/peers.py --run runs/people-mnv2-256 --out reports/peers
    python benchmarks/peers.py --model a.tflite --model b.tflite --peers mediapipe_selfie,ppseg_lite
    python benchmarks/peers.py --zoom both --peers none      # the closer look at small people against one pass

Threads: ``--threads`` (default: all cores) is given to our LiteRT interpreter and, as PEERS_NUM_THREADS,
to the peers' ONNX Runtime / LiteRT sessions, so every model runs with the same number of threads.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    choose_peers, load_average, load_peers, machine, markdown_table, model_or_exit, need_shared, text_table,
)

# (summary key, column label, higher is better)
METRICS = [("iou", "IoU", True), ("boundary_f", "BF", True), ("grad", "Grad", False), ("sad", "SAD", False)]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Accuracy (per source) and speed of bgremove model(s) vs the peer models in shared/peers.",
        epilog="See the module docstring (or benchmarks/README.md) for what each figure means.",
    )
    p.add_argument("--model", type=Path, action="append", default=[],
                   help="our .tflite/.keras model; repeat for several (default: the run's model.tflite with --run, "
                        "else the shipped weights/bgremove.tflite)")
    p.add_argument("--peers", default="all",
                   help="comma-separated peer names, 'all' (default) or 'none'")
    p.add_argument("--split", choices=("val", "all"), default="val", help="which pairs to score (default: val)")
    p.add_argument("--run", type=Path, default=None,
                   help="training run folder: use its validation groups (split.json)")
    p.add_argument("--data", type=Path, default=None, help="labelled data (default: shared/data/people)")
    p.add_argument("--val-split", type=float, default=0.1, help="val fraction without --run (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="split seed without --run (default 0)")
    p.add_argument("--limit", type=int, default=0, help="score at most N pairs, spread over the set (0 = all)")
    p.add_argument("--out", type=Path, default=None,
                   help="report folder: index.html, metrics.csv, summary.json and table.md")
    p.add_argument("--threads", type=int, default=None, help="model threads for every model (default: all cores)")
    p.add_argument("--degrade", default=None, metavar="KIND:N",
                   help="score on degraded photos: rotate:DEGREES, blur:SIGMA or jpeg:QUALITY (see bgremove eval)")
    p.add_argument("--zoom", choices=("on", "off", "both"), default="on",
                   help="our models with cut's closer look at small people (on, the default), without it (off, "
                        "`cut --no-zoom`), or both side by side ('NAME one-pass' is the one without)")
    return p.parse_args(argv)


def model_labels(paths: list[Path]) -> list[str]:
    """File names, or longer paths where two names repeat."""
    names = [p.name for p in paths]
    if len(set(names)) == len(names):
        return names
    labels = [str(p) for p in paths]
    return [lab if labels.count(lab) == 1 else f"{lab} #{i + 1}" for i, lab in enumerate(labels)]


def fmt(key: str, value: float) -> str:
    if value != value:  # NaN: the model has no photo of this source
        return "-"
    return f"{value:.3f}" if key in ("iou", "boundary_f") else f"{value:.2f}"


def build_table(result, models: list[str], sources: list[str], markdown: bool = False):
    header = ["model"]
    for source in sources:
        header += [f"{source} {label}" for _, label, _ in METRICS]
    header += ["model ms", "pipeline ms"]
    values = []
    for m in models:
        s = result.summary[m]
        row = []
        for source in sources:
            by = s["by_source"].get(source, {})
            row += [by.get(key, float("nan")) for key, _, _ in METRICS]
        row += [s["model_ms"], s["pipeline_ms"]]
        values.append(row)
    keys = [key for _ in sources for key, _, _ in METRICS] + ["ms", "ms"]
    higher = [h for _ in sources for _, _, h in METRICS] + [False, False]
    rows = []
    for m, row in zip(models, values):
        cells = [m]
        for j, v in enumerate(row):
            text = f"{v:.1f}" if keys[j] == "ms" else fmt(keys[j], v)
            if markdown and len(models) > 1 and v == v:
                column = [r[j] for r in values if r[j] == r[j]]
                best = max(column) if higher[j] else min(column)
                if v == best:
                    text = f"**{text}**"
            cells.append(text)
        rows.append(cells)
    return header, rows


def main(argv=None) -> int:
    args = parse_args(argv)
    threads = args.threads or os.cpu_count() or 1
    data = args.data or need_shared("data/people", "the labelled photos (shared/data/people)")
    if args.peers.strip().lower() == "none":
        peers_mod, peer_names = None, []
    else:
        peers_dir = need_shared("peers", "the peer models (shared/peers)")
        peers_mod = load_peers(peers_dir, threads)  # before any peer is built: PEERS_NUM_THREADS is read at import
        peer_names = choose_peers(peers_mod, args.peers)

    from bgremove.data import DataError
    from bgremove.evaluation import Degradation, EvalError, evaluate, function_candidate, remover_candidate, select_samples
    from bgremove.pipeline import Remover
    from bgremove.runtime import ModelError

    if args.run is not None and not (args.run / "split.json").is_file():
        raise SystemExit(f"error: {args.run}: not a run folder (no split.json)")
    models = list(args.model)
    if not models and args.run is not None and (args.run / "model.tflite").is_file():
        models = [args.run / "model.tflite"]
    models = [model_or_exit(m) for m in (models or [None])]

    try:
        degrade = Degradation.parse(args.degrade) if args.degrade else None
        samples = select_samples(data, "auto", args.split, args.run if args.split == "val" else None,
                                 args.val_split, args.seed, args.limit)
        candidates = []
        for path, label in zip(models, model_labels(models)):
            if args.zoom != "off":
                candidates.append(remover_candidate(Remover(path, threads=threads), label))
            if args.zoom != "on":
                name = f"{label} one-pass" if args.zoom == "both" else label
                candidates.append(remover_candidate(Remover(path, threads=threads, zoom=False), name))
    except (DataError, EvalError, ModelError, ValueError) as exc:
        raise SystemExit(f"error: {exc}")
    candidates += [function_candidate(name, peers_mod.PEERS[name]) for name in peer_names]

    split_desc = ("all pairs" if args.split == "all" else
                  f"val groups of {args.run}" if args.run else
                  f"val side of the default group split (fraction {args.val_split}, seed {args.seed})")
    if degrade is not None:
        split_desc += f", each photo degraded ({degrade})"
    print(f"{len(samples)} photo(s) from {data} ({split_desc}); {len(candidates)} model(s), {threads} thread(s)",
          file=sys.stderr)
    t0 = time.perf_counter()
    step = max(1, len(samples) // 10)

    def progress(done: int, total: int) -> None:
        if done % step == 0 or done == total:
            print(f"  {done}/{total} photos, {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)

    try:
        result = evaluate(samples, candidates, on_progress=progress, degrade=degrade)
    except EvalError as exc:
        raise SystemExit(f"error: {exc}")
    elapsed = time.perf_counter() - t0

    names = result.models
    sources = sorted({s for m in names for s in result.summary[m]["by_source"]})
    counts = {s: result.summary[names[0]]["by_source"][s]["images"] for s in sources}
    header = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "load average at end": load_average(),
        "data": str(data),
        "split": split_desc,
        "images": len(samples),
        "images per source": ", ".join(f"{s} {n}" for s, n in counts.items()),
        "models": ", ".join(f"{lab} = {p}" for lab, p in zip(model_labels(models), models))
                  + {"on": " (with the closer look at small people)", "off": " (one pass: --no-zoom)",
                     "both": " (each with the closer look at small people and in one pass)"}[args.zoom],
        "peers": ", ".join(peer_names) or "-",
        "threads": threads,
        "segmentation": "IoU and Boundary F of the alpha binarised at 0.5",
        "matting": "Grad and SAD of the soft 8-bit alpha over the whole image, / 1000",
        "timing": "model ms: our LiteRT call alone / a peer's whole PEERS[name](rgb) call; "
                  "pipeline ms: decode + model + resize + render + PNG encode",
    }

    text_header, text_rows = build_table(result, names, sources)
    print()
    print(f"{len(samples)} photo(s): " + ", ".join(f"{s} {n}" for s, n in counts.items())
          + f"; {split_desc}; {threads} thread(s); {elapsed:.0f}s")
    print("IoU, BF (Boundary F): higher is better; Grad (gradient error), SAD: lower is better, both / 1000.")
    print("model ms: ours = LiteRT call on the resized input; peers = whole PEERS[name](rgb) call.")
    print(text_table(text_header, text_rows))
    if result.skipped:
        print(f"{len(result.skipped)} pair(s) skipped: " + "; ".join(f"{p}: {r}" for p, r in result.skipped[:5]))

    if args.out is not None:
        index = write_outputs(result, args, header, names, sources, counts, split_desc, threads)
        print(f"report: {index}\nmarkdown table: {args.out / 'table.md'}")
    return 0


def write_outputs(result, args, header, names, sources, counts, split_desc, threads) -> Path:
    from bgremove.report import write_report

    index = write_report(result, args.out, args.run, header)
    md_header, md_rows = build_table(result, names, sources, markdown=True)
    caption = (f"Photos: {sum(counts.values())} from shared/data/people ("
               + ", ".join(f"{s} {n}" for s, n in counts.items()) + f"), {split_desc}. "
               "IoU and BF (boundary F-measure) of the alpha binarised at 0.5, higher is better; Grad (gradient "
               "error) and SAD of the soft alpha, / 1000, lower is better; every metric at the photo's full "
               "resolution. model ms: ours = LiteRT call on the resized input, peers = their whole "
               "`PEERS[name](rgb)` call; pipeline ms = decode + model + resize + render + PNG encode. "
               f"{threads} thread(s) per model on {header['machine']}; {header['date'][:10]}. Best value in bold.")
    (args.out / "table.md").write_text(markdown_table(md_header, md_rows) + "\n\n" + caption + "\n")
    return index


if __name__ == "__main__":
    sys.exit(main())
