"""Keep-aspect models: the shapes, the model at any shape, its LiteRT entry points, training in shape batches."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from bgremove.shapes import all_shapes, model_shape, nearest_shape


def test_shapes_follow_the_photo_with_the_square_pixel_count():
    assert all_shapes(352, "keep") == [(480, 256), (416, 320), (352, 352), (320, 416), (256, 480)]
    for size in (256, 320, 352, 384, 512):
        for rows, cols in all_shapes(size, "keep"):
            assert rows % 32 == 0 and cols % 32 == 0
            assert abs(rows * cols / size**2 - 1) < 0.1
    assert model_shape(480, 854, 352, "keep") == (256, 480)  # a 16:9 video frame
    assert model_shape(800, 600, 352, "keep") == (416, 320)  # a 3:4 portrait
    assert model_shape(1000, 1000, 352, "keep") == (352, 352)
    assert model_shape(480, 854, 352, "stretch") == (352, 352)
    assert all_shapes(352) == [(352, 352)]
    # Ratios, not differences: 2:1 and 1:2 are equally far from the square.
    assert nearest_shape(100, 300, [(64, 128), (64, 64)]) == (64, 128)
    assert nearest_shape(300, 100, [(128, 64), (64, 64)]) == (128, 64)
    # Very tall or wide photos get the most extreme shape, never an error.
    assert model_shape(10_000, 10, 352, "keep") == (480, 256)
    assert model_shape(1, 5_000, 352, "keep") == (256, 480)


keras = pytest.importorskip("keras")

from bgremove.model import ModelConfig, build_unet, calibration_inputs, export_tflite, input_size  # noqa: E402
from bgremove.pipeline import Remover, to_model_input  # noqa: E402
from bgremove.runtime import LiteRTRuntime, load_runtime  # noqa: E402


def _copy_weights(src, dst) -> None:
    theirs = {layer.name: layer for layer in src.layers}
    for layer in dst.layers:
        if layer.weights:
            layer.set_weights(theirs[layer.name].get_weights())


@pytest.mark.parametrize("head", ["subpixel", "unet"])
def test_keep_aspect_model_computes_what_the_square_model_computes(head: str):
    """Same layers and weights: the open-size model's own upsampling and pixel shuffle equal Keras'
    UpSampling2D and the square model's reshapes, and it takes the landscape and portrait shapes too."""
    square = build_unet(ModelConfig(size=64, head=head))
    keep = build_unet(ModelConfig(size=64, head=head, aspect="keep"))
    _copy_weights(square, keep)
    # Random weights for the zero-initialised detail layer, so the pixel arrangement is tested.
    if head == "subpixel":
        detail = np.random.default_rng(1).normal(size=[w.shape for w in square.get_layer("alpha_detail").weights][0])
        for model in (square, keep):
            model.get_layer("alpha_detail").set_weights([detail.astype("float32"), np.zeros(4, "float32")])
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(keep(x), square(x), atol=1e-5)
    assert keep.input_shape == (None, None, None, 3) and input_size(keep) == (64, "keep")
    assert input_size(square) is None
    for rows, cols in all_shapes(64, "keep"):
        assert keep(np.zeros((1, rows, cols, 3), "float32")).shape == (1, rows, cols, 1)


def test_keep_aspect_export_has_one_entry_point_per_shape(tmp_path: Path):
    model = build_unet(ModelConfig(size=64, head="subpixel", aspect="keep"))
    model.save(tmp_path / "m.keras")
    export_tflite(model, tmp_path / "f.tflite")
    photos = []
    for i, (h, w) in enumerate([(60, 100), (80, 60), (64, 64), (50, 120)]):
        path = tmp_path / f"p{i}.png"
        keras.utils.save_img(path, np.random.default_rng(i).integers(0, 255, (h, w, 3)).astype("uint8"))
        photos.append(path)
    calibration = calibration_inputs(photos, (64, 64), aspect="keep")
    assert {x.shape[:2] for x in calibration} == set(all_shapes(64, "keep"))
    export_tflite(model, tmp_path / "q.tflite", calibration)
    for name, tolerance in (("f", 1e-4), ("q", 0.03)):
        lite = LiteRTRuntime(tmp_path / f"{name}.tflite")
        assert lite.aspect == "keep" and lite.size == (64, 64)
        assert sorted(lite.shapes) == sorted(all_shapes(64, "keep"))
        assert lite.shape_for(480, 854) == (64, 96) and lite.shape_for(800, 600) == (96, 64)
        for rows, cols in lite.shapes:
            x = np.random.default_rng(rows).uniform(0, 255, (2, rows, cols, 3)).astype("float32")
            got, want = lite.predict(x), model(x)[..., 0]
            assert got.shape == (2, rows, cols)
            assert np.abs(got - want).mean() < tolerance
        with pytest.raises(ValueError, match="takes"):
            lite.predict(np.zeros((1, 64, 128, 3), "float32"))
    keras_rt = load_runtime(tmp_path / "m.keras")
    assert keras_rt.aspect == "keep" and keras_rt.shape_for(480, 854) == (64, 96)
    # A keep-aspect model at another square size: its shapes follow.
    assert load_runtime(tmp_path / "m.keras", size=96).shape_for(480, 854) == all_shapes(96, "keep")[-1]


def test_the_pipeline_feeds_each_photo_at_its_shape(keep_run: Path):
    rng = np.random.default_rng(3)
    wide = rng.integers(0, 255, (60, 150, 3)).astype("uint8")
    tall = rng.integers(0, 255, (150, 70, 3)).astype("uint8")
    for kind in ("tflite", "keras"):
        remover = Remover(keep_run / f"model.{kind}")
        runtime = remover.runtime
        assert runtime.aspect == "keep"
        for photo in (wide, tall):
            x = remover.model_input(remover.load(photo))
            assert x.shape[:2] == runtime.shape_for(*photo.shape[:2]) != (64, 64)
            want = runtime.predict(to_model_input(photo, x.shape[:2])[None])[0]
            np.testing.assert_allclose(remover.predict_small([x])[0], want, atol=1e-6)
        # One call with photos of two shapes: each gets its own alpha, in order.
        both = remover.predict_small([remover.model_input(remover.load(p)) for p in (wide, tall, wide)])
        assert [a.shape for a in both] == [(64, 96), (96, 64), (64, 96)]
        cut = remover.cut(wide)
        assert cut.shape == (60, 150, 4)


def test_training_batches_one_shape_at_a_time():
    import tensorflow as tf

    from bgremove import tfdata

    shapes = all_shapes(64, "keep")
    parts = []
    for k, (rows, cols) in enumerate(shapes):  # cached at 1.25x the model's shape, as training does
        n = 3 + 2 * k
        images = np.full((n, round(rows * 1.25), round(cols * 1.25), 3), 40 * k, np.uint8)
        masks = np.full((n, round(rows * 1.25), round(cols * 1.25)), 255, np.uint8)
        parts.append(tfdata.from_arrays(images, masks))
    ds = parts[0].concatenate(parts[1]).concatenate(parts[2]).shuffle(64, seed=0)
    aug = tfdata.AugmentConfig(paste_prob=0.5)
    batches = list(tfdata.training_pipeline(ds, 64, 4, aug, aspect="keep").take(20))
    seen = set()
    for images, masks in batches:
        assert images.shape[0] <= 4 and tuple(images.shape[1:3]) in shapes
        assert masks.shape[:3] == images.shape[:3]
        seen.add(tuple(images.shape[1:3]))
    assert seen == set(shapes)
    assert isinstance(batches[0][0], tf.Tensor)


def test_paste_within_a_batch():
    import tensorflow as tf

    from bgremove import tfdata

    images = tf.stack([tf.fill([4, 4, 3], 1.0), tf.fill([4, 4, 3], 0.0)])
    masks = tf.stack([tf.pad(tf.ones([2, 4, 1]), [[0, 2], [0, 0], [0, 0]]), tf.zeros([4, 4, 1])])
    pasted_images, pasted_masks = tfdata.paste_within(images, masks, prob=2.0)  # every pair gets a paste
    # The second pair has the first one's person (top half, value 1) over its own background (0).
    np.testing.assert_array_equal(pasted_images[1, :2], 1.0)
    np.testing.assert_array_equal(pasted_images[1, 2:], 0.0)
    np.testing.assert_array_equal(pasted_masks[1, :, :, 0], [[1] * 4] * 2 + [[0] * 4] * 2)
    kept = tfdata.paste_within(images, masks, prob=0.0)
    np.testing.assert_array_equal(kept[0], images)
    one = tfdata.paste_within(images[:1], masks[:1], prob=2.0)  # nothing to paste from
    np.testing.assert_array_equal(one[1], masks[:1])


def test_keep_aspect_run_writes_a_keep_aspect_model(keep_run: Path):
    """The run's own files (resuming one is in the --freeze-bn test below)."""
    config = json.loads((keep_run / "config.json").read_text())
    assert config["aspect"] == "keep"
    lite = LiteRTRuntime(keep_run / "model.tflite")
    assert sorted(lite.shapes) == sorted(all_shapes(64, "keep"))
    assert np.int8 in {t["dtype"] for t in lite.interpreter.get_tensor_details()}
    keras_model = load_runtime(keep_run / "model.keras").model
    assert input_size(keras_model) == (64, "keep")
    with open(keep_run / "history.csv") as fh:
        rows = fh.read().splitlines()
    assert len(rows) == 3 and all(math.isfinite(float(v)) for v in rows[-1].split(",")[1:])


def test_freeze_bn_and_teacher_are_kept_through_training_and_resume(keep_run: Path, tmp_path: Path):
    """Fine-tuning a keep-aspect model with --freeze-bn and a --teacher, then resuming it: the batch norms
    never move, and the teacher goes on teaching (tests/test_distill.py checks the targets it makes)."""
    from typer.testing import CliRunner

    from bgremove.cli import app

    data = json.loads((keep_run / "config.json").read_text())["data"]
    run = tmp_path / "frozen"
    # No --size or --aspect: fine-tuning keeps the --init model's (64, keep).
    args = ["train", "--data", data, "--out", str(run), "--init", str(keep_run / "model.keras"),
            "--freeze-bn", "--epochs", "1", "--batch-size", "4", "--lr", "0.01", "--val-split", "0.2",
            "--quantize", "none", "--teacher", str(keep_run / "model.keras"), "--teacher-weight", "0.7"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "batch norm frozen" in result.output
    assert f"teacher: {keep_run / 'model.keras'} (with its mirror image), 0.7 of every training target" in result.output
    config = json.loads((run / "config.json").read_text())
    assert (config["size"], config["aspect"], config["head"]) == (64, "keep", "subpixel")
    assert (config["teacher"], config["teacher_weight"]) == (str(keep_run / "model.keras"), 0.7)
    result = CliRunner().invoke(app, ["train", "--data", data, "--resume", str(run), "--epochs", "2"])
    assert result.exit_code == 0, result.output
    assert "resuming" in result.output and "teacher:" in result.output
    with open(run / "history.csv") as fh:
        assert len(fh.read().splitlines()) == 3
    before = load_runtime(keep_run / "model.keras").model
    after = keras.saving.load_model(run / "checkpoints" / "last.keras")
    norms = [layer.name for layer in before.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and not any(after.get_layer(name).trainable for name in norms)
    for name in norms:
        for old, new in zip(before.get_layer(name).get_weights(), after.get_layer(name).get_weights()):
            np.testing.assert_array_equal(old, new)
    assert not np.array_equal(before.get_layer("head_conv").get_weights()[0], after.get_layer("head_conv").get_weights()[0])
