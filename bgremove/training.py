"""``bgremove train``: fit the U-Net on labelled pairs, with checkpoints, resume and a learning curve.

A run folder holds everything about one run::

    config.json         the TrainConfig (read back by --resume)
    split.json          the validation groups, so eval can score the run on data it never saw
    history.csv         one row per epoch (loss, accuracy, IoU, val_*, lr, seconds, images/s)
    curve.png           the learning curve, redrawn every epoch
    skipped.csv         pairs that could not be used, and why
    state.json          epochs done and early-stopping state
    checkpoints/last.keras, checkpoints/best.keras   (model + optimizer state, written atomically)
    model.keras, model.tflite                        the final (best) model
"""

from __future__ import annotations

import csv
import functools
import json
import math
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from .data import Discovery, discover, load_all, split_by_group
from .fileio import atomic_path, atomic_write_bytes
from .shapes import ASPECTS, model_shape

Reporter = Callable[[str], None]
STRATEGIES = ("default", "mirrored", "multiworker")
WEIGHTINGS = ("sqrt", "equal", "none")
QUANTIZE = ("int8", "none")
# Cache decoded pairs in memory at this multiple of the training size, so crops keep their detail.
CACHE_SCALE = 1.25


class TrainingError(Exception):
    """A run cannot start or continue; the message says why."""


@dataclass
class TrainConfig:
    data: str
    out: str = "runs/bgremove"
    layout: str = "auto"
    epochs: int = 30
    batch_size: int = 16
    size: int = 0  # square input side (multiple of 32); 0: the --init model's, else 256
    lr: float = 1e-3
    encoder: str = "mobilenetv2"
    encoder_weights: str = "imagenet"
    base_filters: int = 16
    depth: int = 4
    # MobileNetV2 decoder widths, coarsest (1/16) to finest (1/1); the last two run at 1/2 and full
    # resolution and cost most of the model's time.
    decoder_filters: tuple[int, ...] = (96, 64, 48, 32, 16)
    # Full-resolution level: unet, light, subpixel or lean (see model.ModelConfig); "auto" is the --init model's
    # (so fine-tuning the shipped model keeps its architecture), else unet.
    head: str = "auto"
    val_split: float = 0.1
    seed: int = 0
    dice_weight: float = 1.0
    # Weight of the edge term (model.edge_loss): sharper, better placed edges; 0 = off.
    edge_weight: float = 0.0
    # Momentum of an exponential moving average of the weights (Polyak averaging), which validation,
    # the checkpoints and the exported model use; 0 = off. 0.99 averages over about the last 100 steps.
    ema: float = 0.0
    patience: int = 8
    strategy: str = "default"
    cache: str = "auto"  # auto | memory | stream
    cache_limit_gb: float = 4.0
    workers: int = 4
    limit: int = 0  # use at most this many training pairs (0 = all); for quick trials
    bn_momentum: float = 0.9
    # Every batch norm layer in inference mode (its statistics, scale and offset as they are): for
    # fine-tuning, where batches of one shape (--aspect keep) or of one kind of photo would otherwise pull
    # the statistics away from what the model sees at inference.
    freeze_bn: bool = False
    source_weighting: str = "sqrt"  # how often each source is drawn; see tfdata.mix_sources
    paste_prob: float = 0.25  # copy-paste compositing; see tfdata.paste_pairs
    degrade_prob: float = 0.0  # rotation, blur and JPEG recompression, each this often; see tfdata.AugmentConfig
    degrade_kinds: str = "rotate,blur,jpeg"  # which of them; tfdata.DEGRADATIONS also has defocus, taken by name only
    init: str = ""  # start from this .keras model's weights (fine-tuning) instead of the ImageNet encoder
    quantize: str = "int8"  # model.tflite: int8 (calibrated on training photos; ~1.6x faster) or none (float32)
    # stretch: every photo squeezed to size x size; keep: each at the shape nearest its aspect (shapes.py);
    # auto: the --init model's, else stretch.
    aspect: str = "auto"
    # Knowledge distillation: a .keras model whose mirror-averaged alpha makes up ``teacher_weight`` of
    # every training target (tfdata.with_teacher); "" = none.
    teacher: str = ""
    teacher_weight: float = 0.5
    # MobileNetV2: the global-context gate at the bottleneck (model.ModelConfig.context); None: the --init
    # model's, else off.
    context: bool | None = None

    def model_config(self):
        from .model import ModelConfig

        return ModelConfig(
            encoder=self.encoder,
            size=self.size or 256,
            encoder_weights=self.encoder_weights,
            base_filters=self.base_filters,
            depth=self.depth,
            decoder_filters=tuple(self.decoder_filters),
            head="unet" if self.head == "auto" else self.head,
            bn_momentum=self.bn_momentum,
            aspect="stretch" if self.aspect == "auto" else self.aspect,
            context=bool(self.context),
        )


@dataclass
class TrainResult:
    run_dir: Path
    status: str  # finished | early-stopped | interrupted | nan
    epochs_done: int
    best: dict = field(default_factory=dict)
    train_pairs: int = 0
    val_pairs: int = 0
    skipped: int = 0


def _strategy(name: str):
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise TrainingError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")


def _write_json(path: Path, data) -> None:
    atomic_write_bytes(path, json.dumps(data, indent=2).encode())


def plot_curve(history_csv: Path, out_png: Path) -> None:
    """Loss and IoU per epoch, train and validation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(history_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return
    epochs = [int(r["epoch"]) for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("loss", "iou")):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = [float(r[prefix + key]) for r in rows if r.get(prefix + key) not in (None, "")]
            if values:
                ax.plot(epochs[: len(values)], values, style, marker="o", ms=3, label=(prefix or "train_") + key)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def _append_history(path: Path, row: dict) -> None:
    """One row per epoch; a resumed run that logs new columns rewrites the file with the wider header."""
    rows: list[dict] = []
    fields = list(row)
    if path.exists():
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            old_fields = list(reader.fieldnames or [])
            if set(fields) <= set(old_fields):
                fields = old_fields
            else:
                rows = list(reader)
                fields = old_fields + [f for f in fields if f not in old_fields]
    if rows or not path.exists():
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields, restval="")
            writer.writeheader()
            writer.writerows(rows)
    with open(path, "a", newline="") as fh:
        csv.DictWriter(fh, fieldnames=fields, restval="").writerow(row)


def _source_iou_callback(val_ds, sources: list[str]):
    """The validation pass, with IoU per source and their mean as ``val_iou_<source>`` and ``val_source_iou``.

    Keras' val_iou pools every pixel, so 130 close-up portraits outweigh 70 frames of a small
    full-body figure many times over; the mean over sources weighs each kind of photo the same, and
    is what early stopping, the learning-rate schedule and the best checkpoint follow. The pooled
    val_loss, val_accuracy and val_iou come from the same predictions, so fit() runs no validation.
    Prediction and mask are both cut at 0.5, as ``bgremove eval`` does (Keras' own accuracy and IoU
    count a resized mask's soft edge pixels as background or as errors).
    """
    import keras

    names = sorted(set(sources))
    index = np.array([names.index(s) for s in sources])

    class SourceIoU(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            inter = np.zeros(len(names))
            union = np.zeros(len(names))
            loss_sum = correct = pixels = 0.0
            start = 0
            for images, masks in val_ds:
                probs = self.model(images, training=False)
                loss_sum += float(self.model.loss(masks, probs)) * len(probs)
                pred = keras.ops.convert_to_numpy(probs) >= 0.5
                truth = keras.ops.convert_to_numpy(masks) >= 0.5
                correct += float((pred == truth).sum())
                pixels += pred.size
                which = index[start : start + len(pred)]
                start += len(pred)
                np.add.at(inter, which, (pred & truth).sum(axis=(1, 2, 3)))
                np.add.at(union, which, (pred | truth).sum(axis=(1, 2, 3)))
            ious = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
            if logs is not None:
                logs["val_loss"] = loss_sum / max(start, 1)
                logs["val_accuracy"] = correct / max(pixels, 1)
                logs["val_iou"] = float(inter.sum() / max(union.sum(), 1))
                for name, iou in zip(names, ious):
                    logs[f"val_iou_{name}"] = float(iou)
                logs["val_source_iou"] = float(ious.mean())

    return SourceIoU()


def _make_callbacks(run: Path, state: dict, monitor: str, train_pairs: int, cfg: TrainConfig, report: Reporter):
    import keras

    ckpt_dir = run / "checkpoints"
    history_csv = run / "history.csv"

    class RunKeeper(keras.callbacks.Callback):
        """Per epoch: history row, curve, last/best checkpoints and state, all written atomically."""

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = dict(logs or {})
            seconds = time.perf_counter() - self.t0
            if not all(math.isfinite(float(v)) for v in logs.values()):
                state["nan"] = True
                self.model.stop_training = True
                return
            lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            row = {"epoch": epoch + 1, **{k: round(float(v), 6) for k, v in logs.items()}, "lr": lr,
                   "seconds": round(seconds, 1), "images_per_s": round(train_pairs / seconds, 2)}
            _append_history(history_csv, row)
            with atomic_path(ckpt_dir / "last.keras") as tmp:
                self.model.save(tmp)
            value = float(logs.get(monitor, np.nan))
            improved = state.get("best") is None or value > state["best"]
            if improved:
                state.update(best=value, best_epoch=epoch + 1, wait=0, best_logs=row)
                with atomic_path(ckpt_dir / "best.keras") as tmp:
                    self.model.save(tmp)
            else:
                state["wait"] = state.get("wait", 0) + 1
            state["epochs_done"] = epoch + 1
            _write_json(run / "state.json", state)
            try:
                plot_curve(history_csv, run / "curve.png")
            except Exception as err:  # noqa: BLE001 - a plotting problem must not stop training
                report(f"warning: could not draw the learning curve: {err}")
            parts = [f"epoch {epoch + 1}/{cfg.epochs}", f"loss {logs.get('loss', 0):.4f}", f"iou {logs.get('iou', 0):.4f}"]
            if "val_iou" in logs:
                parts.append(f"val_iou {logs['val_iou']:.4f}")
            if "val_source_iou" in logs:
                parts.append(f"per source {logs['val_source_iou']:.4f} (" + ", ".join(
                    f"{k.removeprefix('val_iou_')} {v:.3f}" for k, v in logs.items() if k.startswith("val_iou_")) + ")")
            parts += [f"{seconds:.0f}s", f"{train_pairs / seconds:.1f} img/s"]
            report("  ".join(parts) + ("  *best*" if improved else ""))
            if state["wait"] >= cfg.patience:
                state["early_stopped"] = True
                self.model.stop_training = True

    class LrOnPlateau(keras.callbacks.Callback):
        """Halve the learning rate after 3 epochs without improvement (state survives --resume)."""

        def on_epoch_end(self, epoch, logs=None):
            if state.get("wait", 0) and state["wait"] % 3 == 0:
                lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
                self.model.optimizer.learning_rate.assign(max(lr * 0.5, 1e-6))
                report(f"learning rate -> {max(lr * 0.5, 1e-6):.2e}")

    return [RunKeeper(), LrOnPlateau()]


def _ema_callbacks() -> tuple:
    """With --ema: the end of each epoch (validation, checkpoints, the best model) sees the averaged
    weights, and training goes on from its own. The first callback goes before all others, the second
    after them. Keras' own validation pass (one source) gets the averaged weights the same way.

    A run stopped mid-epoch saves its own weights; one resumed from an epoch's end goes on from the
    averaged ones, which after an epoch of averaging are close to its own.
    """
    import keras

    saved: list = []

    def average_in(model) -> None:
        if not saved:
            saved.extend(keras.ops.convert_to_numpy(v) for v in model.trainable_variables)
            model.optimizer.finalize_variable_values(model.trainable_variables)

    def own_back(model) -> None:
        for variable, value in zip(model.trainable_variables, saved):
            variable.assign(value)
        saved.clear()

    class AveragedIn(keras.callbacks.Callback):
        def on_test_begin(self, logs=None):
            average_in(self.model)

        def on_test_end(self, logs=None):
            own_back(self.model)

        def on_epoch_end(self, epoch, logs=None):
            average_in(self.model)

    class OwnBack(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            own_back(self.model)

    return AveragedIn(), OwnBack()


def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file's header, without decoding it; (1, 1) if unreadable (the loader
    then reports the file)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.height, image.width
    except Exception:  # noqa: BLE001
        return 1, 1


def _prepare_data(cfg: TrainConfig, run: Path, report: Reporter):
    found: Discovery = discover(Path(cfg.data), cfg.layout)
    if found.unmatched:
        report(f"{len(found.unmatched)} file(s) without a partner (listed in skipped.csv)")
    train, val = split_by_group(found.samples, cfg.val_split, cfg.seed)
    if cfg.limit and cfg.limit < len(train):
        # A random subset, not the first files: those would all come from one source.
        import random

        train = sorted(random.Random(cfg.seed).sample(train, cfg.limit), key=lambda s: str(s.image))
    _write_json(run / "split.json", {"layout": found.layout, "val_groups": sorted({s.group for s in val}),
                                     "train_pairs": len(train), "val_pairs": len(val)})
    return found, train, val


def _check_keras_model(path: Path, option: str, why_not_tflite: str) -> None:
    """What can be told of a --init or --teacher model without TensorFlow."""
    if not path.is_file():
        raise TrainingError(f"{path}: {option} model not found")
    if path.suffix != ".keras":
        raise TrainingError(f"{path}: {option} needs a .keras model ({why_not_tflite})")


def _load_keras_model(path: Path, option: str):
    import keras

    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise TrainingError(f"{path}: cannot load the {option} model ({type(exc).__name__}: {exc})") from None


def _check_init(path: Path) -> None:
    _check_keras_model(path, "--init", "a .tflite file holds no trainable weights")


def _load_init(path: Path):
    return _load_keras_model(path, "--init")


def _check_teacher(cfg: TrainConfig) -> None:
    """What can be told of --teacher without TensorFlow, before the run folder is made."""
    _check_keras_model(Path(cfg.teacher), "--teacher", "a .tflite file cannot run inside training")
    if not 0.0 < cfg.teacher_weight <= 1.0:
        raise TrainingError(f"--teacher-weight {cfg.teacher_weight}: must be above 0 and at most 1")


def _load_teacher(cfg: TrainConfig):
    """The --teacher model, checked to take every input shape this run trains at."""
    path = Path(cfg.teacher)
    teacher = _load_keras_model(path, "--teacher")
    fixed = tuple(teacher.input_shape[1:3])
    if fixed != (None, None) and (cfg.aspect != "stretch" or fixed != (cfg.size, cfg.size)):
        wanted = f"{cfg.size}x{cfg.size}" if cfg.aspect == "stretch" else "every keep-aspect shape"
        raise TrainingError(f"{path}: the --teacher takes {fixed[0]}x{fixed[1]} inputs only; this run trains at "
                            f"{wanted} (give it a keep-aspect teacher, or train at the teacher's size)")
    if teacher.output_shape[-1] != 1:
        raise TrainingError(f"{path}: the --teacher gives {teacher.output_shape[-1]} channels, not one alpha")
    teacher.trainable = False
    return teacher


def _init_model(cfg: TrainConfig, path: Path, report: Reporter = lambda _: None, source=None):
    """A fresh U-Net of cfg's shape carrying the weights of the model in ``path`` (any input size).

    Layers are matched by name; those whose shapes differ (a narrower decoder, say) start fresh, so a
    model can be fine-tuned into a cheaper or wider variant of itself. The encoder must carry over whole.
    ``source`` is that model when the caller has already loaded it.
    """
    from .model import build_unet

    if source is None:
        source = _load_init(path)
    model = build_unet(replace(cfg.model_config(), encoder_weights="none"))
    theirs = {layer.name: layer for layer in source.layers if layer.weights}
    carried, converted, fresh = [], [], []
    for layer in model.layers:
        if not layer.weights:
            continue
        other = theirs.get(layer.name)
        if other is not None and [w.shape for w in other.weights] == [w.shape for w in layer.weights]:
            layer.set_weights(other.get_weights())
            carried.append(layer.name)
        elif _convert_separable(layer, theirs):
            converted.append(layer.name)
        else:
            fresh.append(layer.name)
    encoder_fresh = [name for name in fresh if not name.startswith(("dec", "head", "alpha"))]
    if encoder_fresh or not carried:
        raise TrainingError(f"{path}: its layers do not match a {cfg.encoder} U-Net as configured "
                            f"(give the --encoder/--base-filters/--depth it was trained with)")
    refit = []  # for the warm-up, besides the fresh layers
    if converted:
        blocks = sorted({re.sub(r"_(pw|dw)\d*$", "", name) for name in converted})
        report(f"init: the separable convs of {', '.join(blocks)} turned pointwise-first (the warm-up fits them)")
        # Their batch norms saw the old convs' outputs: the warm-up refits them too.
        norms = {re.sub(r"_(pw|dw)(\d*)$", r"_bn\2", name) for name in converted}
        refit = converted + [name for name in carried if name in norms]
    if fresh:
        levels = sorted({re.sub(r"_(conv|bn)\d+$", "", name) for name in fresh})
        report(f"init: {len(carried)} layers from {path}; new (trained from scratch): {', '.join(levels)}")
    return model, fresh + refit


def _convert_separable(layer, theirs: dict) -> bool:
    """Fill a pointwise-first conv pair (``X_pw``, ``X_dw``; see model._separable_conv) from the separable
    conv ``X_conv`` of the --init model, so a model can be fine-tuned into its lean variant.

    The 1x1 conv takes the old pointwise kernel as is. Each output channel's 3x3 filter starts as the
    average of the old per-input filters, weighted by how much each input feeds that channel. So the pair
    starts from what the old conv learnt rather than from random weights; its output statistics still
    change, so the batch norm after it is refitted in the warm-up (before it, run 8's alpha converted this
    way was empty; after one pass the loss was 0.26). False when there is no such conv of fitting shape.
    """
    match = re.fullmatch(r"(.+)_(pw|dw)(\d*)", layer.name)
    other = theirs.get(f"{match[1]}_conv{match[3]}") if match else None
    if other is None or len(other.weights) != 2:
        return False
    depthwise, pointwise = other.get_weights()  # (3, 3, in, 1), (1, 1, in, out)
    if match[2] == "pw":
        weights = pointwise
    else:
        share = np.abs(pointwise[0, 0])  # (in, out)
        share = share / np.maximum(share.sum(axis=0, keepdims=True), 1e-12)
        weights = np.einsum("hwi,io->hwo", depthwise[..., 0], share)[..., np.newaxis]
    if [tuple(w.shape) for w in layer.weights] != [weights.shape]:
        return False
    layer.set_weights([weights])
    return True


def _freeze_batch_norm(model) -> int:
    """Put every BatchNormalization layer in inference mode for good (Keras runs a non-trainable batch norm
    with its moving statistics, as keras.io's fine-tuning guide advises). The flag is saved with the
    checkpoints, so --resume keeps it."""
    import keras

    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in norms:
        layer.trainable = False
    return len(norms)


def _loss(cfg: TrainConfig):
    """The loss the run trains with, as configured; the warm-up uses the same."""
    from .model import SegmentationLoss

    return SegmentationLoss(cfg.dice_weight, cfg.edge_weight)


def _warm_up(model, fresh: list[str], train_ds, cfg: TrainConfig, report: Reporter, verbose: int = 0,
             steps: int | None = None) -> None:
    """One pass over the data training only the layers --init could not fill, at 10x the learning rate.

    New layers start from small random weights, so the model's output sits near 0.5 everywhere; at a
    fine-tuning learning rate they take tens of epochs to grow confident, and meanwhile their gradients
    shake the trained layers. As in keras.io's transfer-learning guide: train the new part alone first.
    Not an epoch of the run: nothing is checkpointed until the first real epoch ends.
    """
    import keras

    was = {layer.name: layer.trainable for layer in model.layers}
    for layer in model.layers:
        layer.trainable = layer.name in fresh  # frozen batch-norm layers also keep their statistics
    model.compile(optimizer=keras.optimizers.Adam(cfg.lr * 10), loss=_loss(cfg))
    t0 = time.perf_counter()
    try:
        history = model.fit(train_ds, epochs=1, verbose=verbose, shuffle=False, steps_per_epoch=steps)
    except KeyboardInterrupt:
        raise TrainingError("interrupted while warming up the new layers; nothing was saved yet") from None
    finally:
        for layer in model.layers:
            layer.trainable = was[layer.name]
    report(f"warm-up: the new layers alone, one pass at lr {cfg.lr * 10:.1e}: "
           f"loss {history.history['loss'][-1]:.4f} ({time.perf_counter() - t0:.0f}s)")


def _inherit_from_init(cfg: TrainConfig, init_model) -> TrainConfig:
    """Fine-tuning keeps the --init model's head, input size, aspect handling and context gate, unless asked
    otherwise: a user who fine-tunes the shipped model should get the shipped model's shape, not the defaults'."""
    from .model import has_context, head_of, input_size

    recorded = input_size(init_model)
    if cfg.context is None:
        cfg = replace(cfg, context=has_context(init_model))
    if cfg.head == "auto":
        cfg = replace(cfg, head=head_of(init_model))
    if cfg.size == 0:
        cfg = replace(cfg, size=recorded[0] if recorded else init_model.input_shape[1] or 256)
    if cfg.aspect == "auto":
        cfg = replace(cfg, aspect=recorded[1] if recorded else "stretch")
    return cfg


def train(
    cfg: TrainConfig, report: Reporter = lambda _: None, resume: bool = False, live_bar: bool = False
) -> TrainResult:
    """Train (or resume) one run; returns how it ended. Raises TrainingError/DataError for unusable input.

    ``live_bar`` shows Keras' own per-step progress bar (for a terminal) besides the per-epoch lines.
    """
    from .runtime import import_tensorflow

    import_tensorflow()  # first, quietly: keras would import it with its start-up chatter
    import keras

    from . import tfdata
    from .model import HEADS, build_unet, calibration_inputs, export_tflite, segmentation_metrics

    if cfg.head not in ("auto", *HEADS):
        raise TrainingError(f"unknown head {cfg.head!r}; choose one of auto, {', '.join(HEADS)}")

    run = Path(cfg.out)
    state: dict = {}
    if cfg.source_weighting not in WEIGHTINGS:
        raise TrainingError(f"unknown source weighting {cfg.source_weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
    if cfg.aspect not in ("auto", *ASPECTS):
        raise TrainingError(f"unknown aspect {cfg.aspect!r}; choose one of auto, {', '.join(ASPECTS)}")
    if cfg.quantize not in QUANTIZE:
        raise TrainingError(f"unknown quantization {cfg.quantize!r}; choose one of {', '.join(QUANTIZE)}")
    kinds = tuple(k.strip() for k in cfg.degrade_kinds.split(",") if k.strip())
    if not set(kinds) <= set(tfdata.DEGRADATIONS):
        raise TrainingError(f"unknown degradation in {cfg.degrade_kinds!r}; choose from {', '.join(tfdata.DEGRADATIONS)}")
    init_source = None  # the --init model, loaded once: its head is needed before the run folder is written
    if not resume and cfg.init:
        _check_init(Path(cfg.init))
        init_source = _load_init(Path(cfg.init))
        cfg = _inherit_from_init(cfg, init_source)
    elif not resume and cfg.encoder == "mobilenetv2":
        from .model import resolve_encoder_weights

        resolve_encoder_weights(cfg.encoder_weights)  # a wrong path fails now, not after decoding the data
    if not resume and cfg.head == "auto":
        cfg = replace(cfg, head="unet")
    if not resume and cfg.size == 0:
        cfg = replace(cfg, size=256)
    if resume:
        if not (run / "config.json").is_file():
            raise TrainingError(f"{run}: not a run folder (no config.json)")
        saved = json.loads((run / "config.json").read_text())
        # The saved config wins, except where the data now lives, a new epoch budget and a new patience.
        epochs = cfg.epochs if cfg.epochs != TrainConfig.epochs else saved["epochs"]
        patience = cfg.patience if cfg.patience != TrainConfig.patience else saved.get("patience", cfg.patience)
        cfg = TrainConfig(**{**saved, "out": str(run), "data": cfg.data, "epochs": epochs, "patience": patience})
        if (run / "state.json").is_file():
            state = json.loads((run / "state.json").read_text())
        if state.get("early_stopped") and state.get("wait", 0) < cfg.patience:
            state["early_stopped"] = False  # more patience given: the run may go on
        if not (run / "checkpoints" / "last.keras").is_file():
            raise TrainingError(f"{run}: no checkpoint to resume from")
    else:
        if (run / "checkpoints" / "last.keras").exists():
            raise TrainingError(f"{run}: already holds a run; pass --resume {run} or choose another --out")
    if cfg.aspect == "auto":  # no --init, or a run from before --aspect
        cfg = replace(cfg, aspect="stretch")
    if cfg.teacher:
        _check_teacher(cfg)
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    _write_json(run / "config.json", asdict(cfg))
    # Before any TensorFlow op: the multi-worker strategy configures collective ops at start-up only.
    strategy = _strategy(cfg.strategy)
    teacher = _load_teacher(cfg) if cfg.teacher else None  # before the data: a wrong teacher fails fast

    found, train_samples, val_samples = _prepare_data(cfg, run, report)
    load_size = int(round(cfg.size * CACHE_SCALE))
    skipped: list[tuple[Path, str]] = [(p, "no matching image/mask") for p in found.unmatched]
    est_bytes = (len(train_samples) + len(val_samples)) * load_size * load_size * 4
    in_memory = cfg.cache == "memory" or (cfg.cache == "auto" and est_bytes < cfg.cache_limit_gb * 2**30)
    report(f"{len(train_samples)} training pairs, {len(val_samples)} validation pairs "
           f"({found.layout} layout, {'cached in memory' if in_memory else 'streamed from disk'})")

    aug = tfdata.AugmentConfig(paste_prob=cfg.paste_prob, degrade_prob=cfg.degrade_prob, degrade_kinds=kinds)
    sources = sorted({s.source for s in train_samples})
    keep = cfg.aspect != "stretch"
    # Training pairs are cached larger than the model's shape, so crops keep their detail.
    train_shape = ((lambda h, w: tuple(round(d * CACHE_SCALE) for d in model_shape(h, w, cfg.size, cfg.aspect)))
                   if keep else load_size)
    val_sources: list[str] = []
    if in_memory:
        t0 = time.perf_counter()
        tr = load_all(train_samples, train_shape, cfg.workers)
        va = load_all(val_samples, (lambda h, w: model_shape(h, w, cfg.size, cfg.aspect)) if keep else cfg.size,
                      cfg.workers)
        skipped += tr.skipped + va.skipped
        report(f"decoded {len(tr.samples) + len(va.samples)} pairs in {time.perf_counter() - t0:.1f}s")
        n_train, n_val = len(tr.samples), len(va.samples)
        parts, sizes = [], []
        groups = tr.groups()  # (source, shape) -> indices: each one array
        for src in sources:
            picks = [idx for (source, _), idx in groups.items() if source == src]
            if picks:
                stacks = [tfdata.from_arrays(*tr.stacked(idx)) for idx in picks]
                parts.append(functools.reduce(lambda a, b: a.concatenate(b), stacks))
                sizes.append(sum(map(len, picks)))
        by_shape: dict[tuple, list[int]] = {}
        for i, image in enumerate(va.images):
            by_shape.setdefault(image.shape[:2], []).append(i)
        val_parts = [tfdata.from_arrays(*va.stacked(idx)) for idx in by_shape.values()]
        val_sources = [va.samples[i].source for idx in by_shape.values() for i in idx]
        del tr, va
    else:
        bad: list[tuple[Path, str]] = []
        n_train, n_val = len(train_samples), len(val_samples)
        by_source = [[s for s in train_samples if s.source == src] for src in sources]
        on_error = lambda p, r: bad.append((p, r))  # noqa: E731
        parts = [tfdata.from_files(group, train_shape, on_error=on_error) for group in by_source]
        sizes = [len(group) for group in by_source]
        if keep:  # one stream per shape, so each batch has one shape; sized from the image headers
            val_groups: dict[tuple, list] = {}
            for sample in val_samples:
                val_groups.setdefault(model_shape(*_image_size(sample.image), cfg.size, cfg.aspect), []).append(sample)
            val_parts = [tfdata.from_files(group, shape, on_error=on_error) for shape, group in val_groups.items()]
        else:
            val_parts = [tfdata.from_files(val_samples, cfg.size, on_error=on_error)] if n_val else []
    if len(sizes) > 1 and cfg.source_weighting != "none":
        shares = tfdata.source_shares(sizes, cfg.source_weighting)
        report("sources drawn per epoch: " + ", ".join(
            f"{src} {n} pairs {100 * w:.0f}%" for src, n, w in zip(sources, sizes, shares)))
    train_raw = tfdata.mix_sources(parts, sizes, cfg.source_weighting, cfg.seed, shuffle=2048) if n_train else None
    with open(run / "skipped.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "reason"])
        writer.writerows([(str(p), r) for p, r in skipped])
    if skipped:
        report(f"skipped {len(skipped)} unusable file(s); see {run / 'skipped.csv'}")
    if n_train == 0:
        raise TrainingError(f"{cfg.data}: no usable training pairs")

    keras.utils.set_random_seed(cfg.seed)
    replicas = strategy.num_replicas_in_sync
    # Replicas need equal shares of every batch: round the batch up and drop ragged last batches.
    batch = -(-cfg.batch_size // replicas) * replicas
    ragged_ok = replicas == 1
    train_ds = tfdata.training_pipeline(train_raw, cfg.size, batch, aug,
                                        drop_remainder=not ragged_ok and n_train >= batch, aspect=cfg.aspect)
    if teacher is not None:
        train_ds = tfdata.with_teacher(train_ds, teacher, cfg.teacher_weight)
        report(f"teacher: {cfg.teacher} (with its mirror image), {cfg.teacher_weight:g} of every training target")
    # Keep-aspect batches come from an endless stream (see tfdata.training_pipeline): count an epoch's steps.
    steps = -(-n_train // batch) if keep else None
    val_batch = batch if ragged_ok else min(batch, n_val // replicas * replicas)
    if val_parts and val_batch == 0:
        report(f"warning: {n_val} validation pair(s) cannot be shared by {replicas} replicas; validating on none")
    val_ds = None
    if val_parts and val_batch:
        val_ds = functools.reduce(lambda a, b: a.concatenate(b), [
            tfdata.validation_pipeline(part, None if keep else cfg.size, val_batch, drop_remainder=not ragged_ok)
            for part in val_parts])
    monitor = "val_iou" if val_ds is not None else "iou"
    extra_callbacks = []
    per_source = val_ds is not None and len(set(val_sources)) > 1
    if per_source:
        extra_callbacks.append(_source_iou_callback(val_ds, val_sources))
        monitor = "val_source_iou"
    if state.get("monitor", "val_iou") != monitor and state.get("best") is not None:
        # A run resumed with another measure of progress: its old best is not comparable.
        report(f"now following {monitor} (was {state.get('monitor', 'val_iou')}): the best epoch starts afresh")
        state.update(best=None, wait=0)
    state["monitor"] = monitor

    with strategy.scope():
        if resume:
            model = keras.saving.load_model(run / "checkpoints" / "last.keras", safe_mode=True)
            # The optimizer and its state go on; the loss and metrics are today's: a checkpoint from an
            # older version may hold a metric since mended (Keras' IoU read soft targets as background).
            model.compile(optimizer=model.optimizer, loss=_loss(cfg), metrics=segmentation_metrics())
        else:
            if cfg.init:
                model, fresh = _init_model(cfg, Path(cfg.init), report, source=init_source)
                if fresh:
                    _warm_up(model, fresh, train_ds, cfg, report, verbose=1 if live_bar else 0, steps=steps)
            else:
                model = build_unet(cfg.model_config())
            if cfg.freeze_bn:
                report(f"batch norm frozen: {_freeze_batch_norm(model)} layers keep their statistics")
            model.compile(
                optimizer=keras.optimizers.Adam(cfg.lr, use_ema=cfg.ema > 0, ema_momentum=cfg.ema or 0.99),
                loss=_loss(cfg),
                metrics=segmentation_metrics(),
            )
    initial_epoch = int(state.get("epochs_done", 0))
    if resume:
        report(f"resuming {run} at epoch {initial_epoch + 1}")
    callbacks = extra_callbacks + _make_callbacks(run, state, monitor, n_train, cfg, report)
    if model.optimizer.use_ema:  # from the checkpoint's optimizer on --resume
        averaged_in, own_back = _ema_callbacks()
        callbacks = [averaged_in, *callbacks, own_back]
    status = "finished"
    if initial_epoch < cfg.epochs and not state.get("early_stopped"):
        try:
            # With several sources, the per-source callback makes the validation pass (one pass, not two).
            model.fit(train_ds, validation_data=None if per_source else val_ds, epochs=cfg.epochs,
                      initial_epoch=initial_epoch, steps_per_epoch=steps,
                      callbacks=callbacks, verbose=1 if live_bar else 0, shuffle=False)
        except KeyboardInterrupt:
            # Keep this epoch's progress; the epoch counter stays at the last completed epoch.
            with atomic_path(run / "checkpoints" / "last.keras") as tmp:
                model.save(tmp)
            status = "interrupted"
    if state.get("nan"):
        status = "nan"
    elif state.get("early_stopped") and status != "interrupted":
        status = "early-stopped"
    best = run / "checkpoints" / "best.keras"
    if best.is_file() and status != "nan":
        # The best epoch so far becomes the run's model, also after Ctrl-C, so a stopped run is usable.
        # Loaded uncompiled: the shipped file needs no optimizer state (checkpoints keep it for --resume).
        final = keras.saving.load_model(best, compile=False, safe_mode=True)
        with atomic_path(run / "model.keras") as tmp:
            final.save(tmp)
        calibration = None
        if cfg.quantize == "int8":
            calibration = calibration_inputs([s.image for s in train_samples], (cfg.size, cfg.size),
                                             aspect=cfg.aspect)
        export_tflite(final, run / "model.tflite", calibration)
    if not in_memory and bad:
        with open(run / "skipped.csv", "a", newline="") as fh:
            csv.writer(fh).writerows([(str(p), r) for p, r in bad])
        skipped += bad
    return TrainResult(run, status, int(state.get("epochs_done", 0)), state.get("best_logs", {}),
                       n_train, n_val, len(skipped))
