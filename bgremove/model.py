"""The U-Net: an encoder (contracting path), a decoder (expansive path) and skip connections.

Two encoders share one decoder recipe:

* ``classic`` — the convolutional U-Net of Ronneberger et al. (2015), with configurable width and depth;
  small, trains from scratch, good for tests and tiny data sets.
* ``mobilenetv2`` — Keras' MobileNetV2 (alpha 0.35) as the encoder, optionally started from ImageNet
  weights; the decoder taps the standard expansion layers at 1/2 … 1/16 of the input resolution.

Every model takes RGB in [0, 255] (float) and returns a sigmoid alpha at the input resolution, so the
runtime feeds the same tensor to a ``.keras`` and a ``.tflite`` model and never needs to know the
encoder's normalisation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np
from keras import layers

from .shapes import ASPECTS

ENCODERS = ("mobilenetv2", "classic")
HEADS = ("unet", "light", "subpixel", "lean", "lean-half")
SUBPIXEL_HEADS = ("subpixel", "lean", "lean-half")

# MobileNetV2 layers whose outputs feed the decoder, finest first (1/2, 1/4, 1/8, 1/16), and the bottleneck (1/32).
MOBILENET_SKIPS = ("block_1_expand_relu", "block_3_expand_relu", "block_6_expand_relu", "block_13_expand_relu")
MOBILENET_BOTTLENECK = "block_16_project"


@dataclass
class ModelConfig:
    encoder: str = "mobilenetv2"
    size: int = 256
    # MobileNetV2 width multiplier; the shipped ImageNet weights are for 0.35.
    alpha: float = 0.35
    # Decoder widths from the coarsest level (1/16) to the finest (1/1).
    decoder_filters: tuple[int, ...] = (96, 64, 48, 32, 16)
    # Classic U-Net: filters of the first level (doubled at each level) and number of poolings.
    base_filters: int = 16
    depth: int = 4
    encoder_weights: str = "none"  # "imagenet", "none" or a path to a .weights.h5 file
    # MobileNetV2 full-resolution level: "unet" is a full decoder block on the upsampled features and the
    # RGB input; "light" squeezes the features to 8 channels before upsampling and refines them with one
    # separable conv, for ~30 % less model time (the full-resolution block is half of the int8 model's time);
    # "subpixel" works at half resolution only and adds detail to each 2x2 cell's four alphas (see
    # _subpixel_alpha), for ~35 % less; "lean" is subpixel with a cheaper decoder (see _separable_conv's
    # pointwise_first) and one conv at half resolution, for ~45 % less; "lean-half" makes only the
    # half-resolution level and the head lean, for ~40 % less, so a subpixel model fine-tuned into it keeps
    # its coarser levels as trained.
    head: str = "unet"
    # Batch-norm momentum of every layer. Keras' MobileNetV2 uses 0.999, whose moving statistics lag
    # fine-tuned weights by thousands of steps, so inference-mode accuracy trails training badly.
    bn_momentum: float = 0.9
    # "stretch": a fixed square input; "keep": any input size, fed at the shape nearest each photo's aspect
    # with about size x size pixels (see shapes.py).
    aspect: str = "stretch"
    # MobileNetV2: gate the bottleneck's channels by what the whole photo holds (see _global_context).
    context: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "decoder_filters" in known:
            known["decoder_filters"] = tuple(known["decoder_filters"])
        return cls(**known)


def _separable_conv(x, filters: int, name: str, suffix: str | int = "", pointwise_first: bool = False):
    """A 3x3 separable conv ``{name}_conv{suffix}``, or turned around (``pointwise_first``): a 1x1 conv
    ``{name}_pw{suffix}`` to ``filters`` channels, then the 3x3 depthwise conv ``{name}_dw{suffix}`` on those.

    A decoder conv takes more channels than it gives (the upsampled features plus the skip), and int8
    depthwise convs are what XNNPACK runs slowest (measured: 2.1 ms for 96 channels at 176x176, against
    0.7 ms for the 1x1 conv from 96 to 32 channels), so filtering the fewer output channels saves most of
    the decoder's time. training._convert_separable relies on these names.
    """
    if pointwise_first:
        x = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_pw{suffix}")(x)
        return layers.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"{name}_dw{suffix}")(x)
    return layers.SeparableConv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{suffix}")(x)


def _conv_block(x, filters: int, name: str, separable: bool = False, pointwise_first: bool = False, convs: int = 2):
    """``convs`` (two) times 3x3 conv + batch norm + ReLU, the U-Net's basic unit (see _separable_conv)."""
    for i in range(1, convs + 1):
        if separable or pointwise_first:
            x = _separable_conv(x, filters, name, i, pointwise_first)
        else:
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
        x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = layers.ReLU(name=f"{name}_relu{i}")(x)
    return x


@keras.saving.register_keras_serializable(package="bgremove")
class Upsample2x(layers.Layer):
    """Bilinear x2, as UpSampling2D, for inputs of unknown size: Keras' UpSampling2D checks its output size
    as Python numbers, which fails while tracing a keep-aspect model (Keras 3.15). Same op, same values."""

    def call(self, x):
        import tensorflow as tf

        return tf.image.resize(x, tf.shape(x)[1:3] * 2, method="bilinear")

    def compute_output_shape(self, shape):
        return (shape[0], *(None if d is None else 2 * d for d in shape[1:3]), shape[3])


@keras.saving.register_keras_serializable(package="bgremove")
class PixelShuffle(layers.Layer):
    """Channel 2*i + j of each cell -> pixel (i, j) of its 2x2 block (depth to space), for any input size."""

    def call(self, x):
        import tensorflow as tf

        return tf.nn.depth_to_space(x, 2)

    def compute_output_shape(self, shape):
        return (shape[0], *(None if d is None else 2 * d for d in shape[1:3]), shape[3] // 4)


@keras.saving.register_keras_serializable(package="bgremove")
class InputSize(layers.Layer):
    """Passes the image through unchanged; its config records the square size and the aspect handling a
    model of any input size was trained for, so the runtime feeds it what it learnt on."""

    def __init__(self, size: int, aspect: str, **kwargs):
        super().__init__(**kwargs)
        self.size, self.aspect = int(size), aspect

    def call(self, x):
        return x

    def get_config(self):
        return {**super().get_config(), "size": self.size, "aspect": self.aspect}


def input_size(model: keras.Model) -> tuple[int, str] | None:
    """(size, aspect) recorded in a model of any input size (see InputSize); None for a fixed-size model."""
    for layer in model.layers:
        if isinstance(layer, InputSize):
            return layer.size, layer.aspect
    return None


def _upsample(x, name: str, dynamic: bool):
    if dynamic:
        return Upsample2x(name=name)(x)
    return layers.UpSampling2D(2, interpolation="bilinear", name=name)(x)


def _up_block(x, skip, filters: int, name: str, separable: bool, dynamic: bool = False, **conv_options):
    """Upsample x2, concatenate the skip from the encoder, refine."""
    x = _upsample(x, f"{name}_up", dynamic)
    if skip is not None:
        x = layers.Concatenate(name=f"{name}_concat")([x, skip])
    return _conv_block(x, filters, name, separable=separable, **conv_options)


def resolve_encoder_weights(spec: str) -> str | None:
    """Map ``--encoder-weights`` to a weights file (Keras' own download is unavailable offline)."""
    if spec in ("none", "", None):
        return None
    if spec == "imagenet":
        from .paths import find_pretrained_encoder

        path = find_pretrained_encoder()
        if path is None:
            raise FileNotFoundError(
                "ImageNet encoder weights not found: pass --encoder-weights PATH to "
                "mobilenet_v2_0.35_no_top.weights.h5 or set BGREMOVE_PRETRAINED"
            )
        return str(path)
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"{spec}: encoder weights file not found")
    return str(path)


def _mobilenet_unet(cfg: ModelConfig, inputs):
    x = layers.Rescaling(1 / 127.5, offset=-1, name="mobilenet_preprocess")(inputs)
    weights = resolve_encoder_weights(cfg.encoder_weights)
    encoder = keras.applications.MobileNetV2(
        input_tensor=x, include_top=False, alpha=cfg.alpha, weights=None
    )
    if weights is not None:
        # Load into a stand-alone copy and transfer by layer name: the weights file holds the plain encoder.
        ref = keras.applications.MobileNetV2(
            input_shape=(None, None, 3), include_top=False, alpha=cfg.alpha, weights=weights
        )
        for layer in ref.layers:
            if layer.weights:
                encoder.get_layer(layer.name).set_weights(layer.get_weights())
    skips = [encoder.get_layer(name).output for name in MOBILENET_SKIPS]
    x = encoder.get_layer(MOBILENET_BOTTLENECK).output
    if cfg.context:
        x = _global_context(x)
    lean = cfg.head in ("lean", "lean-half")
    dynamic = cfg.aspect != "stretch"
    for i, (skip, filters) in enumerate(zip(reversed(skips), cfg.decoder_filters)):
        half = i == len(skips) - 1
        # lean: one conv at half resolution (the head adds another), where a conv costs 4x the level below.
        convs = 1 if lean and half else 2
        pointwise_first = cfg.head == "lean" or (lean and half)
        x = _up_block(x, skip, filters, f"dec{i}", separable=True, dynamic=dynamic,
                      pointwise_first=pointwise_first, convs=convs)
    # Last level at full resolution: the RGB input itself is the skip, so edges can follow the photo.
    rgb = layers.Rescaling(1 / 255.0, name="rgb_skip")(inputs)
    if cfg.head == "unet":
        return _up_block(x, rgb, cfg.decoder_filters[-1], "dec_full", separable=True, dynamic=dynamic)
    if cfg.head in SUBPIXEL_HEADS:
        return _subpixel_head(x, rgb, cfg.decoder_filters[-1], pointwise_first=lean)
    # Light head: few channels cross to full resolution, where every op costs 4x the half-resolution one.
    x = layers.Conv2D(8, 1, use_bias=False, name="head_squeeze")(x)
    x = layers.BatchNormalization(name="head_squeeze_bn")(x)
    x = layers.ReLU(name="head_squeeze_relu")(x)
    x = _upsample(x, "head_up", dynamic)
    x = layers.Concatenate(name="head_concat")([x, rgb])
    x = _separable_conv(x, cfg.decoder_filters[-1], "head")
    x = layers.BatchNormalization(name="head_bn")(x)
    return layers.ReLU(name="head_relu")(x)


def _global_context(x):
    """Scale each bottleneck channel by a gate in (0, 2) computed from the channel means of the whole
    photo (squeeze-and-excitation, Hu et al. 2018; MobileNetV3's LR-ASPP segmentation head gates the same
    way): whether a cushion or a banner next to someone is part of them depends on the scene, which no
    convolution sees whole. The gate's conv starts at zero, so a model fine-tuned into this (``--init``)
    starts with every gate at exactly 1, as it was.
    """
    gate = layers.GlobalAveragePooling2D(keepdims=True, name="dec_context_pool")(x)
    gate = layers.Conv2D(x.shape[-1], 1, kernel_initializer="zeros", name="dec_context")(gate)
    gate = layers.Activation("sigmoid", name="dec_context_sigmoid")(gate)
    gate = layers.Rescaling(2.0, name="dec_context_scale")(gate)
    return layers.Multiply(name="dec_context_gate")([x, gate])


def has_context(model: keras.Model) -> bool:
    """Whether a built or loaded model has the global-context gate (``ModelConfig.context``)."""
    return any(layer.name == "dec_context" for layer in model.layers)


def _subpixel_head(x, rgb, filters: int, pointwise_first: bool = False):
    """Half-resolution features plus the full-resolution photo, folded into 2x2 cells (a learned 2x2
    stride-2 conv sees every one of its pixels): the photo still steers the edges, but no layer runs at
    full resolution. See _subpixel_alpha for how the features become a full-resolution alpha.
    """
    cells = layers.Conv2D(16, 2, strides=2, use_bias=False, name="head_rgb")(rgb)
    x = layers.Concatenate(name="head_concat")([x, cells])
    x = _separable_conv(x, filters, "head", pointwise_first=pointwise_first)
    x = layers.BatchNormalization(name="head_bn")(x)
    return layers.ReLU(name="head_relu")(x)


def _subpixel_alpha(x, size: int | None):
    """Half-resolution features to a full-resolution alpha: a smooth logit, upsampled bilinearly, plus a
    detail logit per pixel of each 2x2 cell (sub-pixel convolution, Shi et al. 2016).

    The four pixels of a cell come from one feature vector; alone they leave a 2-pixel grid along edges
    (measured: twice the jumps between cells as within them), which the smooth term removes. The detail
    layer starts at zero, so a fresh head begins as a clean half-resolution alpha. The smooth layer has
    the unet head's shape and name, so --init carries a trained alpha layer over. ``size`` None: any input
    size (keep aspect), with the same arrangement of the four pixels.
    """
    smooth = layers.Conv2D(1, 1, name="alpha")(x)
    smooth = _upsample(smooth, "alpha_up", dynamic=size is None)
    detail = layers.Conv2D(4, 1, kernel_initializer="zeros", name="alpha_detail")(x)
    if size is None:
        detail = PixelShuffle(name="alpha_pixels")(detail)
        logits = layers.Add(name="alpha_logits")([smooth, detail])
        return layers.Activation("sigmoid", dtype="float32", name="alpha_sigmoid")(logits)
    half = size // 2
    detail = layers.Reshape((half, half, 2, 2), name="alpha_cells")(detail)  # channel 2*i + j: pixel (i, j)
    detail = layers.Permute((1, 3, 2, 4), name="alpha_rows")(detail)
    detail = layers.Reshape((size, size, 1), name="alpha_pixels")(detail)
    logits = layers.Add(name="alpha_logits")([smooth, detail])
    return layers.Activation("sigmoid", dtype="float32", name="alpha_sigmoid")(logits)


def _classic_unet(cfg: ModelConfig, inputs):
    x = layers.Rescaling(1 / 255.0, name="scale")(inputs)
    skips = []
    for level in range(cfg.depth):
        x = _conv_block(x, cfg.base_filters * 2**level, f"enc{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{level}")(x)
    x = _conv_block(x, cfg.base_filters * 2**cfg.depth, "bottleneck")
    for level in reversed(range(cfg.depth)):
        x = _up_block(x, skips[level], cfg.base_filters * 2**level, f"dec{level}", separable=False)
    return x


def head_of(model: keras.Model) -> str:
    """Which full-resolution level (``ModelConfig.head``) a built or loaded model has."""
    names = {layer.name for layer in model.layers}
    if "alpha_detail" in names:
        if "head_pw" not in names:
            return "subpixel"
        return "lean" if "dec0_pw1" in names else "lean-half"
    return "light" if "head_squeeze" in names else "unet"


def build_unet(cfg: ModelConfig) -> keras.Model:
    """Build the U-Net for ``cfg``; input (size, size, 3) RGB in [0, 255], output (size, size, 1) alpha
    (with aspect keep: any (H, W) that are multiples of 32)."""
    if cfg.encoder not in ENCODERS:
        raise ValueError(f"unknown encoder {cfg.encoder!r}; choose one of {', '.join(ENCODERS)}")
    if cfg.head not in HEADS:
        raise ValueError(f"unknown head {cfg.head!r}; choose one of {', '.join(HEADS)}")
    multiple = 32 if cfg.encoder == "mobilenetv2" else 2**cfg.depth
    if cfg.size % multiple:
        raise ValueError(f"--size must be a multiple of {multiple} for the {cfg.encoder} encoder")
    if cfg.aspect not in ASPECTS:
        raise ValueError(f"unknown aspect {cfg.aspect!r}; choose one of {', '.join(ASPECTS)}")
    dynamic = cfg.aspect != "stretch"
    if dynamic and cfg.encoder != "mobilenetv2":
        raise ValueError("--aspect keep needs the mobilenetv2 encoder")
    if cfg.context and cfg.encoder != "mobilenetv2":
        raise ValueError("--context needs the mobilenetv2 encoder")
    if dynamic:
        inputs = keras.Input((None, None, 3), name="image")
        x = InputSize(cfg.size, cfg.aspect, name="input_size")(inputs)
        x = _mobilenet_unet(cfg, x)
    else:
        inputs = keras.Input((cfg.size, cfg.size, 3), name="image")
        x = _mobilenet_unet(cfg, inputs) if cfg.encoder == "mobilenetv2" else _classic_unet(cfg, inputs)
    if cfg.encoder == "mobilenetv2" and cfg.head in SUBPIXEL_HEADS:
        alpha = _subpixel_alpha(x, None if dynamic else cfg.size)
    else:
        alpha = layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", name="alpha")(x)
    model = keras.Model(inputs, alpha, name=f"bgremove_unet_{cfg.encoder}")
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = cfg.bn_momentum
    return model


# ---------------------------------------------------------------- loss and metrics


@keras.saving.register_keras_serializable(package="bgremove")
def dice_loss(y_true, y_pred, smooth: float = 1.0):
    """Soft Dice per image; balances the loss when the person covers only a few percent of the frame."""
    axes = (1, 2, 3)
    inter = keras.ops.sum(y_true * y_pred, axis=axes)
    total = keras.ops.sum(y_true, axis=axes) + keras.ops.sum(y_pred, axis=axes)
    return 1.0 - (2.0 * inter + smooth) / (total + smooth)


def edge_loss(y_true, y_pred):
    """Mean squared difference of the Sobel gradients (across and down) of the alpha and the mask, per image.

    BCE and Dice sum over all pixels, so an edge a pixel too soft or a little ragged costs them almost
    nothing; this term is all edges, and asks for them as sharp as the mask's and in the same place, as
    the gradient error metric does. Squared, not absolute: with L1, a soft edge in the right place would
    cost more than no edge at all.
    """
    sobel = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32) / 4  # a unit step gives 1
    kernel = np.stack([sobel, sobel.T], axis=-1)[:, :, np.newaxis, :]  # (3, 3, 1 channel, 2 directions)
    grad_true = keras.ops.conv(keras.ops.cast(y_true, "float32"), kernel, padding="same")
    grad_pred = keras.ops.conv(keras.ops.cast(y_pred, "float32"), kernel, padding="same")
    return keras.ops.mean(keras.ops.square(grad_true - grad_pred), axis=(1, 2, 3))


@keras.saving.register_keras_serializable(package="bgremove")
class SegmentationLoss(keras.losses.Loss):
    """Binary cross-entropy (the seed's loss) plus optional weighted Dice and edge (see edge_loss) terms."""

    def __init__(self, dice_weight: float = 1.0, edge_weight: float = 0.0, name: str = "bce_dice", **kwargs):
        super().__init__(name=name, **kwargs)
        self.dice_weight = dice_weight
        self.edge_weight = edge_weight

    def call(self, y_true, y_pred):
        loss = keras.ops.mean(keras.losses.binary_crossentropy(y_true, y_pred), axis=(1, 2))
        if self.dice_weight:
            loss = loss + self.dice_weight * dice_loss(y_true, y_pred)
        if self.edge_weight:
            loss = loss + self.edge_weight * edge_loss(y_true, y_pred)
        return loss

    def get_config(self):
        return {**super().get_config(), "dice_weight": self.dice_weight, "edge_weight": self.edge_weight}


def _mask_accuracy(y_true, y_pred, threshold: float = 0.5):
    agree = keras.ops.equal(y_true >= 0.5, y_pred >= threshold)
    return keras.ops.mean(keras.ops.cast(agree, "float32"), axis=-1)


@keras.saving.register_keras_serializable(package="bgremove")
class MaskAccuracy(keras.metrics.MeanMetricWrapper):
    """Pixel accuracy with prediction and target both cut at 0.5, as ``bgremove eval`` does: a soft target
    (a resized mask's edges, a matte, a --teacher's blend) is a person where it is at least half one.
    Keras' BinaryAccuracy compares the target as it is, so a soft pixel is always an error."""

    def __init__(self, name: str = "accuracy", threshold: float = 0.5, dtype=None):
        super().__init__(_mask_accuracy, name=name, dtype=dtype, threshold=threshold)
        self.threshold = threshold

    def get_config(self):
        return {"name": self.name, "threshold": self.threshold, "dtype": self.dtype}


@keras.saving.register_keras_serializable(package="bgremove")
class MaskIoU(keras.metrics.BinaryIoU):
    """Person IoU with the target cut at 0.5 (Keras truncates a soft target to an integer: 0.97 counts as
    background, and with --teacher every target is soft)."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(keras.ops.cast(y_true >= 0.5, "float32"), y_pred, sample_weight)


def segmentation_metrics() -> list:
    return [MaskAccuracy(name="accuracy", threshold=0.5), MaskIoU(target_class_ids=[1], threshold=0.5, name="iou")]


# ---------------------------------------------------------------- export


def calibration_inputs(photos: list[Path], size: tuple[int, int], limit: int = 128,
                       aspect: str = "stretch") -> np.ndarray | list[np.ndarray]:
    """Up to ``limit`` photos, spread evenly over the list, as the model sees them (see pipeline.to_model_input).

    int8 export measures each layer's range of values on these, so they should look like what will be cut.
    Files that cannot be read are passed over. With aspect keep, each photo comes at its own shape (a list).
    """
    from .images import ImageError, open_photo
    from .pipeline import to_model_input
    from .shapes import all_shapes, model_shape

    photos = list(photos)
    step = max(1, len(photos) / max(1, limit))
    picked = [photos[int(i * step)] for i in range(min(limit, len(photos)))]
    inputs, rgbs = [], []
    for path in picked:
        try:
            rgb = open_photo(path).rgb
        except ImageError:
            continue
        if len(rgbs) < 8:
            rgbs.append(rgb)
        inputs.append(to_model_input(rgb, model_shape(*rgb.shape[:2], size[0], aspect) if aspect != "stretch" else size))
    if not inputs:
        raise ValueError(f"no readable photos to calibrate the int8 model on (tried {len(picked)})")
    if aspect != "stretch":
        # Every entry point needs values to measure: a shape no photo has gets a few photos stretched to it.
        seen = {x.shape[:2] for x in inputs}
        for shape in all_shapes(size[0], aspect):
            if shape not in seen:
                inputs += [to_model_input(rgb, shape) for rgb in rgbs]
    return np.stack(inputs) if aspect == "stretch" else inputs


def export_tflite(model: keras.Model, path: Path, calibration: np.ndarray | list[np.ndarray] | None = None) -> Path:
    """Convert to a LiteRT flatbuffer with a fixed batch of 1 (what ``cut`` feeds it).

    With ``calibration`` images (see calibration_inputs) the weights and activations are stored as int8
    (full-integer quantization): XNNPACK runs it about 1.6x faster on a CPU and the file is ~2.3x smaller,
    while the alpha stays within about 0.003 IoU of the float model. Input and output stay float32, so
    every runtime feeds both kinds alike. The final sigmoid stays float: int8 holds at most 255/256,
    which would leave every opaque pixel at alpha 254.

    A keep-aspect model gets one entry point (signature ``alpha_<rows>x<cols>``) per shape it takes, each
    of fixed size: XNNPACK runs a fixed-size graph whole, while an open size leaves the resize ops out of
    it (measured: 16.6 against 10.2 ms). The entry points share the weights. Calibration images may have
    any of those shapes.
    """
    import tensorflow as tf

    from .shapes import all_shapes

    recorded = input_size(model)
    dynamic = None in model.input_shape[1:3]
    if dynamic and recorded is None:
        raise ValueError("export needs a model with a fixed input size")
    shapes = all_shapes(*recorded) if dynamic else [tuple(model.input_shape[1:3])]
    keys = {shape: f"alpha_{shape[0]}x{shape[1]}" for shape in shapes}
    import contextlib
    import io
    import tempfile
    import warnings

    from .runtime import quiet_stderr

    # The converter prints every captured variable, and int8 conversion logs its settings from C++.
    with contextlib.redirect_stdout(io.StringIO()), quiet_stderr(), warnings.catch_warnings(), \
            tempfile.TemporaryDirectory() as saved:
        if dynamic:
            archive = keras.export.ExportArchive()
            archive.track(model)
            for (rows, cols), key in keys.items():
                archive.add_endpoint(key, lambda x: model(x, training=False),
                                     input_signature=[tf.TensorSpec((1, rows, cols, 3), tf.float32, name="image")])
            archive.write_out(saved, verbose=False)
            converter = tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=list(keys.values()))
        else:
            # from_keras_model keeps the Keras 3 variables (a hand-made concrete function loses them).
            converter = tf.lite.TFLiteConverter.from_keras_model(model)
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")  # inside the debugger
        if calibration is None:
            data = converter.convert()
        else:
            for image in calibration:
                if image.shape[2:] != (3,) or image.shape[:2] not in keys:
                    raise ValueError(f"calibration images are {image.shape}, the model takes "
                                     f"{' or '.join(f'{r}x{c}' for r, c in keys)} (rows x cols) RGB")
            converter.optimizations = [tf.lite.Optimize.DEFAULT]

            def images():
                if not dynamic:
                    return ([image[np.newaxis].astype(np.float32)] for image in calibration)
                return ((keys[image.shape[:2]], {"image": image[np.newaxis].astype(np.float32)})
                        for image in calibration)

            converter.representative_dataset = images
            # The debugger's converter is the one API that can leave chosen op types unquantized.
            float_sigmoid = tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=["LOGISTIC"])
            debugger = tf.lite.experimental.QuantizationDebugger(
                converter=converter, debug_dataset=images, debug_options=float_sigmoid)
            data = debugger.get_nondebug_quantized_model()
    path = Path(path)
    from .fileio import atomic_write_bytes

    atomic_write_bytes(path, data)
    return path
