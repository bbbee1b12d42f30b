"""The command line: parse, call the core, print. Heavy imports happen inside the commands."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from . import __version__

if TYPE_CHECKING:
    from .batch import RunOptions
    from .pipeline import Remover

app = typer.Typer(
    name="bgremove",
    help="Remove the background behind people in photos; train and evaluate the model yourself.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Click's plain help and error text: rich's panels need typer.rich_utils, whose import (rich.markdown,
    # markdown-it) made `bgremove --help` 0.21 instead of 0.15 s; a usage error stays one line.
    rich_markup_mode=None,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = 2) -> None:
    """One clear line on stderr, no traceback. The message is plain text: file names may hold [brackets]."""
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _quiet_ctrl_c_in_finalizers() -> None:
    """Ctrl-C stops training at the next step (training.train saves and exports), but one that lands while
    TensorFlow runs a finalizer (a weakref callback) cannot interrupt it: Python would print it as an
    ignored exception, with a traceback. Those are dropped; every other ignored exception is printed."""
    printed = sys.unraisablehook

    def hook(unraisable) -> None:
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            printed(unraisable)

    sys.unraisablehook = hook


def _need_tensorflow(command: str) -> None:
    import importlib.util

    if importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("keras") is None:
        fail(f"`bgremove {command}` needs TensorFlow: pip install 'bgremove[train]'")


def _version(value: bool) -> None:
    if value:
        out.print(f"bgremove {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """bgremove: cut people out of photos."""


@app.command()
def train(
    data: Annotated[Path, typer.Option(help="Data folder: AISegment, images/+masks/, or with manifest.csv.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Run folder (checkpoints, history, curve, model).")] = Path(
        "runs/bgremove"
    ),
    layout: Annotated[str, typer.Option(help="auto, aisegment, manifest or folders.")] = "auto",
    epochs: Annotated[int, typer.Option(min=1)] = 30,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    size: Annotated[Optional[int], typer.Option(help="Square input size (multiple of 32) [default: --init's, else 256].",
                                                show_default=False)] = None,
    aspect: Annotated[str, typer.Option(help="stretch (every photo squeezed to the square), keep (each photo at "
                                              "the one of five shapes from 9:16 to 16:9 nearest its aspect, with "
                                              "about as many pixels as the square; mobilenetv2) or auto (--init's, "
                                              "else stretch).")] = "auto",
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-3,
    freeze_bn: Annotated[bool, typer.Option("--freeze-bn", help="Keep every batch norm's statistics as they are "
                                            "(fine-tuning with --init, e.g. with --aspect keep, whose batches hold one shape each).")] = False,
    encoder: Annotated[str, typer.Option(help="mobilenetv2 or classic.")] = "mobilenetv2",
    encoder_weights: Annotated[
        str, typer.Option(help="imagenet, none, or a .weights.h5 path (mobilenetv2 encoder).")
    ] = "imagenet",
    base_filters: Annotated[int, typer.Option(help="Classic U-Net: filters of the first level.")] = 16,
    depth: Annotated[int, typer.Option(help="Classic U-Net: number of down-sampling levels.")] = 4,
    decoder_filters: Annotated[
        str, typer.Option(help="MobileNetV2 decoder widths, 1/16 to full resolution (the last two cost most).")
    ] = "96,64,48,32,16",
    head: Annotated[
        str, typer.Option(help="MobileNetV2 full-resolution level: unet (a decoder block), light (~30% faster), subpixel "
                                  "(~35% faster: no full-resolution layer), lean (subpixel with a cheaper decoder, ~45% faster), "
                                  "lean-half (lean at half resolution only, ~40% faster) or auto (--init's, else unet).")
    ] = "auto",
    context: Annotated[
        Optional[bool], typer.Option("--context/--no-context", help="MobileNetV2: gate the bottleneck's channels by "
                                     "what the whole photo holds (a global-context branch; --init's if not given, "
                                     "else off).", show_default=False)
    ] = None,
    val_split: Annotated[float, typer.Option(help="Fraction of groups held out for validation.")] = 0.1,
    seed: Annotated[int, typer.Option()] = 0,
    dice_weight: Annotated[float, typer.Option(help="Weight of the Dice term added to BCE (0 = BCE only).")] = 1.0,
    edge_weight: Annotated[float, typer.Option(min=0.0, help="Weight of an edge term: the squared difference of the Sobel gradients of alpha and mask, for sharper, better placed edges (0 = off).")] = 0.0,
    ema: Annotated[float, typer.Option(min=0.0, max=0.9999, help="Validate, keep and export an exponential moving average of the weights with this momentum, e.g. 0.99 (0 = off).")] = 0.0,
    patience: Annotated[int, typer.Option(help="Early stopping: epochs without val IoU gain.")] = 8,
    strategy: Annotated[str, typer.Option(help="default, mirrored (all local GPUs) or multiworker (TF_CONFIG).")] = "default",
    cache: Annotated[str, typer.Option(help="auto, memory or stream.")] = "auto",
    limit: Annotated[int, typer.Option(help="Use at most N training pairs (0 = all).")] = 0,
    source_weighting: Annotated[
        str, typer.Option(help="How often each source of a manifest is drawn: sqrt (of its size), equal or none.")
    ] = "sqrt",
    paste_prob: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of training crops with another crop's person pasted in.")
    ] = 0.25,
    degrade_prob: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="For this share of training crops each: a tilt of up to 15 degrees, a blur, "
                            "a JPEG recompression (quality 20-90), drawn independently: photos as users send them.")
    ] = 0.0,
    degrade_kinds: Annotated[
        str, typer.Option(help="Which degradations --degrade-prob draws, comma-separated: rotate, blur (the photo alone), "
                            "defocus (photo and mask blurred alike: a soft matte for a soft photo), jpeg.")
    ] = "rotate,blur,jpeg",
    init: Annotated[
        Optional[Path], typer.Option(help="Fine-tune from this .keras model (e.g. weights/bgremove.keras).")
    ] = None,
    quantize: Annotated[
        str, typer.Option(help="model.tflite as int8 (calibrated on training photos; faster) or none (float32).")
    ] = "int8",
    teacher: Annotated[
        Optional[Path], typer.Option(help="Distil this .keras model (e.g. weights/bgremove.keras): its alpha, "
                                     "averaged with its mirror image's, is part of every training target.")
    ] = None,
    teacher_weight: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of each training target that is the --teacher's alpha "
                            "(the rest is the mask).")
    ] = 0.5,
    resume: Annotated[Optional[Path], typer.Option(help="Continue the run in this folder.")] = None,
) -> None:
    """Train the U-Net on image/mask pairs."""
    _need_tensorflow("train")
    from .data import DataError
    from .training import TrainConfig, TrainingError
    from .training import train as run_training

    try:
        widths = tuple(int(w) for w in decoder_filters.split(","))
    except ValueError:
        widths = ()
    if len(widths) != 5 or min(widths) < 1:
        fail(f"--decoder-filters: expected five positive widths such as 96,64,48,32,16, got {decoder_filters!r}")
    cfg = TrainConfig(
        data=str(data), out=str(resume or out_dir), layout=layout, epochs=epochs, batch_size=batch_size, size=size or 0,
        lr=lr, encoder=encoder, encoder_weights=encoder_weights, base_filters=base_filters, depth=depth,
        decoder_filters=widths, head=head, val_split=val_split, seed=seed, dice_weight=dice_weight,
        edge_weight=edge_weight, ema=ema, patience=patience, strategy=strategy, cache=cache,
        limit=limit, source_weighting=source_weighting, paste_prob=paste_prob, degrade_prob=degrade_prob,
        degrade_kinds=degrade_kinds, init=str(init or ""),
        quantize=quantize, aspect=aspect, freeze_bn=freeze_bn, teacher=str(teacher or ""),
        teacher_weight=teacher_weight, context=context,
    )
    _quiet_ctrl_c_in_finalizers()
    try:
        result = run_training(cfg, report=lambda line: out.print(line, highlight=False), resume=resume is not None,
                              live_bar=sys.stdout.isatty())
    except (DataError, TrainingError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    best = result.best
    if result.status == "interrupted":
        out.print(f"interrupted after {result.epochs_done} epoch(s); the best epoch so far is in "
                  f"{result.run_dir / 'model.tflite'}; continue with: bgremove train --data {data} --resume {result.run_dir}")
        raise typer.Exit(130)
    if result.status == "nan":
        fail(f"the loss became NaN; the last good checkpoint is in {result.run_dir / 'checkpoints'} (try a lower --lr)", 1)
    score = f"val_iou {best.get('val_iou', float('nan')):.4f}"
    if "val_source_iou" in best:
        score += f", per-source mean {best['val_source_iou']:.4f}"
    out.print(f"{result.status}: {result.epochs_done} epoch(s), best epoch {best.get('epoch', '-')} ({score}); "
              f"model: {result.run_dir / 'model.tflite'}")


def _cut_single(
    source: Path | bytes, name: str, dst: Path | None, remover: Remover, opts: RunOptions, quiet: bool, debug: bool
) -> None:
    """One photo for pipes: written to ``dst``, or to stdout (binary, and nothing else goes there)."""
    from .batch import cut_one
    from .images import ImageError, write_atomic

    try:
        data, notes = cut_one(source, remover, opts)
        if dst is None:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        else:
            write_atomic(dst, data)
    except ImageError as exc:
        fail(f"{name}: {exc}", 1)
    except Exception as exc:  # noqa: BLE001 - as in batch mode: one line unless --debug
        if debug:
            raise
        fail(f"unexpected error: {type(exc).__name__}: {exc} (rerun with --debug for details)", 1)
    for note in notes:
        err.print(f"note: {name}: {note}", highlight=False, soft_wrap=True, markup=False)
    if dst is not None and not quiet:
        out.print(f"written: {name} -> {dst}", highlight=False, soft_wrap=True, markup=False)


@app.command()
def cut(
    inputs: Annotated[
        list[str], typer.Argument(metavar="PHOTO...", help="Photos, folders (recursive) or glob patterns; - reads one photo from stdin.", show_default=False)
    ],
    output: Annotated[
        Optional[Path], typer.Option("--output", "-o", help="Output folder (mirrors the input tree); - writes the one result to stdout. Default: beside each photo as NAME.cutout.png (stdout for -).")
    ] = None,
    fmt: Annotated[
        str, typer.Option("--format", help="png, webp (alpha kept losslessly) or jpg (needs --bg or --mask). Sets the file extension.")
    ] = "png",
    mask: Annotated[bool, typer.Option("--mask", help="Write the alpha alone as an 8-bit grayscale image instead of the cutout.")] = False,
    bg: Annotated[
        Optional[str], typer.Option("--bg", metavar="COLOR|IMAGE|blur[:R]", help="Put the subject on a background; the output is RGB. A colour (white, black, red, green, blue, gray, #rrggbb, #rgb), an image file (scaled to cover, centred), or blur[:RADIUS] for the photo itself blurred (portrait mode; radius in pixels, default 2% of the diagonal).", show_default=False)
    ] = None,
    refine: Annotated[bool, typer.Option("--refine", help="Refine the edges at the photo's full resolution with a guided filter that follows the photo's own edges (only near the outline).")] = False,
    decontaminate: Annotated[bool, typer.Option("--decontaminate", help="Estimate the subject's own colour in semi-transparent pixels (hair), so the old background does not bleed through.")] = False,
    largest: Annotated[bool, typer.Option("--largest", help="Keep only the largest connected region (e.g. drop other people or stray blobs).")] = False,
    clean: Annotated[bool, typer.Option("--clean/--no-clean", help="Remove specks and fill holes smaller than --min-area.")] = False,
    min_area: Annotated[float, typer.Option(min=0.0, max=1.0, help="--clean: the size below which specks and holes go, as a fraction of the image.")] = 0.0005,
    crop: Annotated[bool, typer.Option("--crop", help="Crop the output to the subject's bounding box (all visible pixels); the full frame if nothing is kept.")] = False,
    margin: Annotated[str, typer.Option(help="--crop: space around the subject, in pixels (20) or percent of the subject's box (5%); clipped to the photo.")] = "0",
    model: Annotated[Optional[Path], typer.Option(help="A .tflite or .keras model (default: the shipped model).")] = None,
    tta: Annotated[bool, typer.Option("--tta", help="Also run the model on the mirrored photo and average the two alphas (test-time augmentation): cleaner edges, twice the model time.")] = False,
    zoom: Annotated[bool, typer.Option("--zoom/--no-zoom", help="Look again, closer, at people who fill less than half the photo: a second model pass on the crop around them (much better edges on full-body photos). --no-zoom: one pass.")] = True,
    threshold: Annotated[
        Optional[float], typer.Option(min=0.0, max=1.0, help="Hard mask at this alpha; default keeps the soft alpha.")
    ] = None,
    size: Annotated[Optional[int], typer.Option(help="Model input size, for models whose size is not fixed.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Redo outputs that exist.")] = False,
    skip_existing: Annotated[
        Optional[bool], typer.Option("--skip-existing/--no-skip-existing", help="Skip outputs that exist (default: for files found in folders).", show_default=False)
    ] = None,
    png_compression: Annotated[int, typer.Option(min=0, max=9, help="PNG compression: 0 fastest/biggest, 9 smallest.")] = 1,
    max_pixels: Annotated[int, typer.Option(help="Refuse images with more pixels than this.")] = 150_000_000,
    threads: Annotated[Optional[int], typer.Option(min=1, help="Threads per model call (default: all cores for one photo; 1 per worker for many).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Photos cut side by side (threads that decode, run a .tflite model and encode).")] = 2,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per model call of a .keras model.")] = 4,
    device: Annotated[str, typer.Option(help="auto, cpu or gpu (gpu needs a .keras model and TensorFlow).")] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only errors and the summary.")] = False,
    debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False,
) -> None:
    """Cut people out of photos into RGBA PNGs (or masks, or on a new background).

    Pipes work too: cat photo.jpg | bgremove cut - -o - > cutout.png
    """
    from .batch import Result, RunOptions, keep_freed_memory, plan, run
    from .images import FORMATS, ImageError
    from .pipeline import CutOptions, Remover
    from .runtime import ModelError

    fmt = fmt.lower().replace("jpeg", "jpg")
    if fmt not in FORMATS:
        fail(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    try:
        options = CutOptions(threshold=threshold, refine=refine, decontaminate=decontaminate, largest=largest,
                             clean=clean, min_area=min_area, crop=crop, margin=margin, mask=mask, bg=bg)
    except (ValueError, ImageError) as exc:
        fail(str(exc))
    if options.margin.value and not crop:
        fail("--margin only applies with --crop")
    if fmt == "jpg" and options.has_alpha:
        fail("JPEG has no transparency: add --bg COLOR|IMAGE|blur (or --mask), or use --format png or webp")

    def load_remover(threads: int | None) -> Remover:
        try:
            return Remover(model, size=size, threads=threads, device=device, max_pixels=max_pixels, options=options,
                           tta=tta, zoom=zoom)
        except ModelError as exc:
            fail(str(exc))

    def make_output_folder() -> None:
        """Only once the model has loaded: a bad model or bad inputs leave nothing behind."""
        try:
            output.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            fail(f"{output}: cannot create output folder ({(exc.strerror or str(exc)).lower()})")

    from_stdin = "-" in inputs
    if from_stdin and len(inputs) > 1:
        fail("- (stdin) must be the only input")
    to_stdout = (output is not None and str(output) == "-") or (from_stdin and output is None)
    if to_stdout or from_stdin:
        source: Path | bytes
        if from_stdin:
            if sys.stdin.isatty():
                fail("no photo on stdin; pipe one in: cat photo.jpg | bgremove cut - -o - > cutout.png")
            source, name = sys.stdin.buffer.read(), "stdin"
        else:
            single = plan(inputs, None, fmt)
            for item, reason in single.errors:
                fail(f"{item}: {reason}")
            if len(single.jobs) != 1:
                fail(f"-o - writes one image to stdout; {len(single.jobs)} inputs were given")
            source, name = single.jobs[0].src, str(single.jobs[0].src)
        if to_stdout and sys.stdout.isatty():
            fail("refusing to write image data to a terminal; redirect it: ... -o - > cutout.png")
        remover = load_remover(threads)
        if not to_stdout:  # stdin into an output folder
            make_output_folder()
        dst = None if to_stdout else output / f"stdin.{fmt}"
        _cut_single(source, name, dst, remover, RunOptions(fmt=fmt, png_compression=png_compression), quiet, debug)
        return

    if output is not None and output.exists() and not output.is_dir():
        fail(f"{output}: exists and is not a folder")
    the_plan = plan(inputs, output, fmt)
    for item, reason in the_plan.errors:
        err.print(f"[red]error:[/] {escape(f'{item}: {reason}')}", highlight=False, soft_wrap=True)
    if not the_plan.jobs:
        if the_plan.errors:  # every input was bad: counted like bad files, not a usage error
            err.print(f"0 written, 0 skipped, {len(the_plan.errors)} failed", highlight=False)
            raise typer.Exit(1)
        fail("no images to cut")
    # Loaded before any output, so that a bad model fails alone. For several photos each worker runs
    # its own copy of the model on one thread (see batch.run), for one photo the model gets every core.
    remover = load_remover(threads or (1 if len(the_plan.jobs) > 1 else None))
    if output is not None:
        make_output_folder()
    opts = RunOptions(fmt=fmt, png_compression=png_compression, overwrite=overwrite, skip_existing=skip_existing,
                      batch_size=batch_size, workers=workers)

    live = sys.stderr.isatty() and not quiet
    if len(the_plan.jobs) > 1:
        keep_freed_memory()

    def report(result: Result) -> None:
        if result.status == "failed":
            err.print(f"[red]failed:[/] {escape(f'{result.job.src}: {result.message}')}", highlight=False,
                      soft_wrap=True)
            if debug and result.error is not None and not isinstance(result.error, ImageError):
                import traceback

                err.print("".join(traceback.format_exception(result.error)), markup=False, highlight=False)
        elif not quiet and not live:
            extra = f" ({result.message})" if result.message else ""
            out.print(f"{result.status}: {result.job.src} -> {result.job.dst}{extra}", highlight=False, soft_wrap=True,
                      markup=False)

    try:
        if live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            columns = [TextColumn("cutting"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[rate]}"), TimeRemainingColumn()]
            with Progress(*columns, console=err, transient=False) as progress:
                task = progress.add_task("cut", total=len(the_plan.jobs), rate="")

                def on_result(result: Result) -> None:
                    report(result)
                    progress.advance(task)
                    speed = progress.tasks[0].speed
                    progress.update(task, rate=f"{speed:.1f} img/s" if speed else "")

                summary = run(the_plan.jobs, remover, opts, on_result)
        else:
            summary = run(the_plan.jobs, remover, opts, report)
    except Exception as exc:  # noqa: BLE001 - a bug should still end in one line unless --debug
        if debug:
            raise
        fail(f"unexpected error: {type(exc).__name__}: {exc} (rerun with --debug for details)", 1)
    failed = summary.failed + len(the_plan.errors)
    line = f"{summary.written} written, {summary.skipped} skipped, {failed} failed"
    if summary.interrupted:
        line += " (interrupted)"
    (err if failed else out).print(line, highlight=False)
    if summary.interrupted:
        raise typer.Exit(130)
    if failed:
        raise typer.Exit(1)


def _model_labels(models: list[Path]) -> list[str]:
    """Short, unique column names: the file name, or more of the path where names repeat."""
    if not models:
        return ["default"]
    names = [m.name for m in models]
    if len(set(names)) == len(names):
        return names
    labels = [str(m) for m in models]
    return [label if labels.count(label) == 1 else f"{label} #{i + 1}" for i, label in enumerate(labels)]


@app.command()
def export(
    model: Annotated[Path, typer.Argument(metavar="MODEL", help="A .keras model (e.g. a run's model.keras).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The .tflite file to write.")],
    calibrate: Annotated[
        Optional[list[Path]],
        typer.Option(help="Photos or folders like those you will cut: int8 ranges are measured on them. "
                          "Without them the model stays float32."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="Calibrate on at most N photos, spread over the set.")] = 128,
) -> None:
    """Convert a .keras model to a LiteRT .tflite model for `cut` (int8 when given photos to calibrate on)."""
    _need_tensorflow("export")
    from .batch import plan
    from .runtime import ModelError, load_runtime

    if model.suffix.lower() != ".keras":
        fail(f"{model}: export needs a .keras model")
    if output.suffix.lower() != ".tflite":
        fail(f"{output}: the output must be a .tflite file")
    found = plan([str(p) for p in calibrate or []], None)
    for item, reason in found.errors:
        fail(f"{item}: {reason}")
    if calibrate and not found.jobs:
        fail(f"{', '.join(map(str, calibrate))}: no photos to calibrate on")
    try:
        runtime = load_runtime(model)
    except ModelError as exc:
        fail(str(exc))
    keras_model = runtime.model
    from .model import calibration_inputs, export_tflite

    calibration = None
    if calibrate:
        try:
            calibration = calibration_inputs([job.src for job in found.jobs], runtime.size, limit, runtime.aspect)
        except ValueError as exc:
            fail(f"{', '.join(map(str, calibrate))}: {exc}")
    try:
        export_tflite(keras_model, output, calibration)
    except ValueError as exc:  # e.g. a model without a fixed input size
        fail(f"{model}: {exc}")
    except OSError as exc:
        fail(f"{output}: cannot write ({(exc.strerror or str(exc)).lower()})")
    kind = "float32"
    if isinstance(calibration, list):  # keep aspect: photos at their own shapes, a few also at the others
        kind = f"int8, calibrated on {len(calibration)} inputs at {len({x.shape for x in calibration})} shapes"
    elif calibration is not None:
        kind = f"int8, calibrated on {len(calibration)} photo(s)"
    out.print(f"wrote {output} ({kind}, {output.stat().st_size / 1e6:.1f} MB)")


@app.command(name="eval")
def evaluate(
    data: Annotated[Path, typer.Option(help="Labelled data folder (same layouts as train).")],
    model: Annotated[
        Optional[list[Path]], typer.Option(help="Model(s) to score; repeat for a side-by-side table. Default: the run's or the shipped model.")
    ] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Report folder.")] = Path("reports/eval"),
    run: Annotated[Optional[Path], typer.Option(help="A training run: its model, its validation groups, its curve.")] = None,
    split: Annotated[str, typer.Option(help="all, val or train (val/train: the run's split, or --val-split/--seed).")] = "all",
    layout: Annotated[str, typer.Option(help="auto, aisegment, manifest or folders.")] = "auto",
    val_split: Annotated[float, typer.Option(help="Validation fraction when splitting without --run.")] = 0.1,
    seed: Annotated[int, typer.Option()] = 0,
    threshold: Annotated[Optional[float], typer.Option(help="Score hard masks cut at this alpha.")] = None,
    refine: Annotated[bool, typer.Option("--refine", help="Score the alphas as `cut --refine` writes them.")] = False,
    clean: Annotated[bool, typer.Option("--clean", help="Score the alphas as `cut --clean` writes them.")] = False,
    largest: Annotated[bool, typer.Option("--largest", help="Score the alphas as `cut --largest` writes them.")] = False,
    tta: Annotated[bool, typer.Option("--tta", help="Score the alphas as `cut --tta` writes them.")] = False,
    zoom: Annotated[bool, typer.Option("--zoom/--no-zoom", help="Score the alphas as `cut` writes them with (default) or without its closer look at small people.")] = True,
    limit: Annotated[int, typer.Option(help="Score at most N pairs, spread over the set (0 = all).")] = 0,
    degrade: Annotated[Optional[str], typer.Option(help="Score on photos made worse first, to see how robust a model is: "
                                                     "rotate:DEGREES, blur:SIGMA (pixels) or jpeg:QUALITY; the label follows.")] = None,
    threads: Annotated[Optional[int], typer.Option(help="Model threads.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON (for scripts).")] = False,
) -> None:
    """Score models on labelled photos and write a report with pictures."""
    from .data import DataError
    from .evaluation import Degradation, EvalError, evaluate as run_eval, remover_candidate, select_samples
    from .pipeline import CutOptions, Remover
    from .report import write_report
    from .runtime import ModelError

    try:
        degradation = Degradation.parse(degrade) if degrade else None
    except ValueError as exc:
        fail(f"--degrade: {exc}")

    models = list(model or [])
    if run is not None and not models:
        for name in ("model.tflite", "model.keras"):
            if (run / name).is_file():
                models = [run / name]
                break
        else:
            fail(f"{run}: no model.tflite or model.keras in the run folder")
    if run is not None and not (run / "split.json").is_file():
        fail(f"{run}: not a run folder (no split.json)")
    if run is not None and split == "all":
        split = "val"
    try:
        samples = select_samples(data, layout, split, run, val_split, seed, limit)
        candidates = []
        labels = _model_labels(models)
        for path, label in zip(models or [None], labels):
            options = CutOptions(threshold=threshold, refine=refine, clean=clean, largest=largest)
            remover = Remover(path, threads=threads, options=options, tta=tta, zoom=zoom)
            candidates.append(remover_candidate(remover, label))
    except (DataError, EvalError, ModelError) as exc:
        fail(str(exc))
    quiet = as_json
    from rich.progress import Progress

    with Progress(console=err, transient=True, disable=quiet or not sys.stderr.isatty()) as progress:
        task = progress.add_task("evaluating", total=len(samples))
        try:
            result = run_eval(samples, candidates, on_progress=lambda done, total: progress.update(task, completed=done),
                              degrade=degradation)
        except EvalError as exc:
            fail(str(exc))
    header = {"data": str(data), "split": split, "images": len(samples), "run": str(run) if run else "-",
              "segmentation": "prediction binarised at 0.5" + (f" (hard mask at {threshold})" if threshold else ""),
              "options": ", ".join(name for name, on in (("refine", refine), ("clean", clean), ("largest", largest), ("tta", tta),
                                                             ("no zoom", not zoom)) if on) or "none",
              "matting": "soft alpha over the whole image, at the ground truth's resolution",
              "photos": f"degraded ({degradation})" if degradation else "as they are"}
    index = write_report(result, out_dir, run, header)
    if as_json:
        import json

        out.print_json(json.dumps({"header": header, "models": result.summary}))
        return
    from rich.markup import escape
    from rich.table import Table

    from .metrics import METRIC_INFO

    table = Table(title=f"{len(samples)} image(s), split {split}" + (f", degraded ({degradation})" if degradation else ""))
    table.add_column("metric")
    for name in result.models:
        table.add_column(name, justify="right")
    for key, (_, higher) in METRIC_INFO.items():
        table.add_row(f"{key} {'(higher better)' if higher else '(lower better)'}",
                      *[f"{result.summary[m]['all'][key]:.4f}" for m in result.models])
    sources = sorted({s for m in result.models for s in result.summary[m]["by_source"]})
    if len(sources) > 1:
        for source in sources:
            table.add_row(escape(f"iou [{source}]"), *[f"{result.summary[m]['by_source'].get(source, {}).get('iou', float('nan')):.4f}"
                                               for m in result.models])
    table.add_row("model ms/image", *[f"{result.summary[m]['model_ms']:.1f}" for m in result.models])
    table.add_row("pipeline ms/image", *[f"{result.summary[m]['pipeline_ms']:.1f}" for m in result.models])
    out.print(table)
    if result.skipped:
        err.print(f"{len(result.skipped)} pair(s) skipped (listed in {out_dir / 'summary.json'})")
    out.print(f"report: {index}")


def main() -> None:
    app()
