"""The U-Net builds, learns shapes right, and its LiteRT export computes what Keras computes."""

from dataclasses import replace

import cv2
import numpy as np
import pytest

keras = pytest.importorskip("keras")

from bgremove.model import (  # noqa: E402
    ModelConfig, build_unet, calibration_inputs, export_tflite, has_context, head_of,
)
from bgremove.pipeline import to_model_input  # noqa: E402
from bgremove.runtime import KerasRuntime, LiteRTRuntime, ModelError, load_runtime  # noqa: E402


def test_classic_unet_shapes():
    model = build_unet(ModelConfig(encoder="classic", size=32, base_filters=4, depth=3))
    out = model.predict(np.random.rand(2, 32, 32, 3).astype("float32") * 255, verbose=0)
    assert out.shape == (2, 32, 32, 1)
    assert 0.0 <= out.min() and out.max() <= 1.0
    # Skip connections: every encoder level feeds the decoder.
    concat = [layer for layer in model.layers if "concat" in layer.name]
    assert len(concat) == 3


def test_size_must_fit_the_encoder():
    with pytest.raises(ValueError, match="multiple of 32"):
        build_unet(ModelConfig(encoder="mobilenetv2", size=100))
    with pytest.raises(ValueError, match="unknown encoder"):
        build_unet(ModelConfig(encoder="resnet", size=64))


def test_mobilenet_encoder_loads_imagenet_weights(pretrained_encoder):
    random_init = build_unet(ModelConfig(encoder="mobilenetv2", size=64, encoder_weights="none"))
    pretrained = build_unet(ModelConfig(encoder="mobilenetv2", size=64, encoder_weights=str(pretrained_encoder)))
    ref = keras.applications.MobileNetV2(input_shape=(None, None, 3), include_top=False, alpha=0.35,
                                         weights=str(pretrained_encoder))
    kernel = ref.get_layer("block_6_expand").get_weights()[0]
    np.testing.assert_array_equal(pretrained.get_layer("block_6_expand").get_weights()[0], kernel)
    assert not np.allclose(random_init.get_layer("block_6_expand").get_weights()[0], kernel)
    assert pretrained.output_shape == (None, 64, 64, 1)


def test_missing_encoder_weights_file_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="encoder weights file not found"):
        build_unet(ModelConfig(encoder="mobilenetv2", size=64, encoder_weights=str(tmp_path / "nope.h5")))


def test_tflite_export_matches_keras(tmp_path):
    model = build_unet(ModelConfig(encoder="mobilenetv2", size=64, encoder_weights="none"))
    model.save(tmp_path / "m.keras")
    export_tflite(model, tmp_path / "m.tflite")
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    want = model.predict(x, verbose=0)[..., 0]
    lite = LiteRTRuntime(tmp_path / "m.tflite")
    assert lite.size == (64, 64)
    np.testing.assert_allclose(lite.predict(x), want, atol=1e-4)
    keras_rt = load_runtime(tmp_path / "m.keras")
    assert isinstance(keras_rt, KerasRuntime)
    np.testing.assert_allclose(keras_rt.predict(x), want, atol=1e-5)
    with pytest.raises(ModelError, match="fixed at 64x64"):
        load_runtime(tmp_path / "m.tflite", size=128)


def test_bad_model_files_give_one_line(tmp_path):
    (tmp_path / "photo.tflite").write_bytes(b"\xff\xd8\xff\xe0 not a model")
    (tmp_path / "model.pkl").write_bytes(b"\x80\x04")
    (tmp_path / "broken.keras").write_bytes(b"PK\x03\x04 truncated")
    for name, pattern in [("photo.tflite", "not a valid LiteRT model"), ("model.pkl", "unsupported model format"),
                          ("broken.keras", "cannot load Keras model"), ("missing.tflite", "not found")]:
        with pytest.raises(ModelError, match=pattern) as info:
            load_runtime(tmp_path / name)
        assert "\n" not in str(info.value) and name in str(info.value)


def test_model_with_wrong_output_is_refused(tmp_path):
    inp = keras.Input((32, 32, 3))
    model = keras.Model(inp, keras.layers.Conv2D(3, 1)(inp))
    model.save(tmp_path / "other.keras")
    with pytest.raises(ModelError, match="not a one-channel alpha"):
        load_runtime(tmp_path / "other.keras")


def test_int8_export_stays_close_to_the_float_model(tmp_path):
    """Full-integer quantization: less than half the file, and an alpha that follows the float model's."""
    from conftest import synthetic_pair

    model = build_unet(ModelConfig(encoder="mobilenetv2", size=64, encoder_weights="none"))
    photos = []
    for i in range(12):
        bgr, _ = synthetic_pair(i, 64, 64)
        path = tmp_path / f"p{i}.png"
        cv2.imwrite(str(path), bgr)
        photos.append(path)
    calibration = calibration_inputs(photos, (64, 64), limit=8)
    assert calibration.shape == (8, 64, 64, 3) and calibration.dtype == np.float32
    export_tflite(model, tmp_path / "f.tflite")
    export_tflite(model, tmp_path / "q.tflite", calibration)
    assert (tmp_path / "q.tflite").stat().st_size < 0.5 * (tmp_path / "f.tflite").stat().st_size
    x = np.stack([to_model_input(synthetic_pair(100 + i, 64, 64)[0][..., ::-1], (64, 64)) for i in range(3)])
    got = LiteRTRuntime(tmp_path / "q.tflite").predict(x)
    assert got.shape == (3, 64, 64) and got.dtype == np.float32
    # An untrained model's alpha is near 0.5 everywhere; how closely a trained one is followed is in test_train.
    np.testing.assert_allclose(got, LiteRTRuntime(tmp_path / "f.tflite").predict(x), atol=0.02)
    # The sigmoid stays float: an int8 one tops out at 255/256, so opaque pixels would never reach 255.
    saturated = np.full((1, 64, 64, 3), 255, np.float32)
    bias = model.get_layer("alpha").weights[1]
    bias.assign(np.full(bias.shape, 30.0, np.float32))
    export_tflite(model, tmp_path / "sat.tflite", calibration)
    assert LiteRTRuntime(tmp_path / "sat.tflite").predict(saturated).min() > 0.999
    with pytest.raises(ValueError, match="calibration images are"):
        export_tflite(model, tmp_path / "bad.tflite", calibration[:, :32, :32])


def test_calibration_skips_unreadable_photos_and_needs_one(tmp_path):
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), np.full((40, 30, 3), 90, np.uint8))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a photo")
    inputs = calibration_inputs([bad, good, bad], (32, 32))
    assert inputs.shape == (1, 32, 32, 3)
    np.testing.assert_allclose(inputs, 90)
    with pytest.raises(ValueError, match="no readable photos"):
        calibration_inputs([bad], (32, 32))
    # Spread evenly over a long list, not its first files.
    many = [good] + [bad] * 9  # the first ten files hold one photo; every tenth file is one
    assert calibration_inputs(many * 10, (32, 32), limit=10).shape[0] == 10


@pytest.mark.parametrize("head", ["subpixel", "lean", "lean-half"])
def test_subpixel_head_lays_each_cells_four_alphas_out_as_pixels(tmp_path, head):
    """No layer runs at full resolution; the detail layer's channel 2*i + j of a half-resolution cell is
    pixel (i, j) of it, added to a bilinearly upsampled smooth logit, in Keras and in both LiteRT exports."""
    model = build_unet(ModelConfig(encoder="mobilenetv2", size=64, encoder_weights="none", head=head))
    assert [layer.name for layer in model.layers if layer.weights and layer.output.shape[1] == 64] == []
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    smooth, detail = model.get_layer("alpha"), model.get_layer("alpha_detail")
    assert not detail.get_weights()[0].any()  # a fresh head starts as the smooth alpha alone
    # Smooth logit 0 and detail logits -3, -1, 1, 3 for the four pixels of every cell, whatever the features.
    smooth.set_weights([np.zeros_like(w) for w in smooth.get_weights()])
    kernel = detail.get_weights()[0]
    detail.set_weights([np.zeros_like(kernel), np.array([-3.0, -1.0, 1.0, 3.0], np.float32)])
    got = model.predict(x, verbose=0)[..., 0]
    cell = 1 / (1 + np.exp(-np.array([[-3.0, -1.0], [1.0, 3.0]])))
    np.testing.assert_allclose(got, np.broadcast_to(np.tile(cell, (32, 32)), got.shape), atol=1e-6)
    # Trained-like weights everywhere: LiteRT computes the same alpha, float32 and int8.
    rng = np.random.default_rng(1)
    for layer in (smooth, detail):
        layer.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") for w in layer.get_weights()])
    want = model.predict(x, verbose=0)[..., 0]
    assert np.abs(want[:, 0::2] - want[:, 1::2]).mean() > 0.01  # the pixels of a cell differ
    export_tflite(model, tmp_path / "f.tflite")
    np.testing.assert_allclose(LiteRTRuntime(tmp_path / "f.tflite").predict(x), want, atol=1e-4)
    export_tflite(model, tmp_path / "q.tflite", x)
    np.testing.assert_allclose(LiteRTRuntime(tmp_path / "q.tflite").predict(x), want, atol=0.03)


def test_context_gate_scales_the_bottleneck_by_the_whole_photo_and_starts_as_identity(tmp_path):
    """--context: each bottleneck channel times 2 * sigmoid(conv(its mean over the photo)), for any input
    size; with the gate's conv at zero (as built) the model computes exactly what it did without it."""
    cfg = ModelConfig(encoder="mobilenetv2", size=64, encoder_weights="none", head="subpixel", aspect="keep")
    plain, gated = build_unet(cfg), build_unet(replace(cfg, context=True))
    assert (has_context(plain), has_context(gated)) == (False, True)
    for layer in plain.layers:
        if layer.weights:
            gated.get_layer(layer.name).set_weights(layer.get_weights())
    x = np.random.default_rng(0).uniform(0, 255, (2, 96, 64, 3)).astype("float32")
    np.testing.assert_array_equal(gated.predict(x, verbose=0), plain.predict(x, verbose=0))
    conv = gated.get_layer("dec_context")
    rng = np.random.default_rng(1)
    conv.set_weights([rng.normal(0, 0.3, w.shape).astype("float32") for w in conv.get_weights()])
    probe = keras.Model(gated.input, [gated.get_layer("block_16_project").output,
                                      gated.get_layer("dec_context_gate").output])
    bottleneck, out = probe.predict(x, verbose=0)
    kernel, bias = conv.get_weights()
    gate = 2 / (1 + np.exp(-(bottleneck.mean(axis=(1, 2)) @ kernel[0, 0] + bias)))
    np.testing.assert_allclose(out, bottleneck * gate[:, None, None, :], rtol=1e-4, atol=1e-4)
    assert gate.std() > 0.05  # the gates differ by channel and photo
    want = gated.predict(x[:1], verbose=0)[..., 0]
    export_tflite(gated, tmp_path / "f.tflite")
    np.testing.assert_allclose(LiteRTRuntime(tmp_path / "f.tflite").predict(x[:1]), want, atol=1e-4)
    with pytest.raises(ValueError, match="--context needs the mobilenetv2 encoder"):
        build_unet(ModelConfig(encoder="classic", size=32, context=True))


@pytest.mark.parametrize("head, lean_levels", [("lean", ["dec0", "dec1", "dec2", "dec3"]), ("lean-half", ["dec3"])])
def test_lean_decoder_filters_the_fewer_channels_and_has_one_conv_at_half_resolution(head, lean_levels):
    """Every lean decoder conv is a 1x1 conv to its width and then a 3x3 depthwise conv on that width (not
    on the wider concatenation it reads); the half-resolution level has a single one. lean-half keeps the
    coarser levels' separable convs, so a subpixel model fine-tuned into it keeps them as trained."""
    from keras import layers

    cfg = ModelConfig(encoder="mobilenetv2", size=64, encoder_weights="none", head=head)
    model = build_unet(cfg)
    assert head_of(model) == head
    decoder = [layer for layer in model.layers if layer.name.startswith(("dec", "head_pw", "head_dw"))]
    separable = [f"{level}_conv{i}" for level in ("dec0", "dec1", "dec2") if level not in lean_levels for i in (1, 2)]
    assert [layer.name for layer in decoder if isinstance(layer, layers.SeparableConv2D)] == separable
    widths = dict(zip(["dec0", "dec1", "dec2", "dec3", "head"], cfg.decoder_filters))
    depthwise = [layer for layer in decoder if isinstance(layer, layers.DepthwiseConv2D)]
    convs = {level: (1,) if level == "dec3" else (1, 2) for level in lean_levels}
    assert [layer.name for layer in depthwise] == [
        f"{level}_dw{i}" for level in lean_levels for i in convs[level]] + ["head_dw"]
    for layer in depthwise:
        assert layer.input.shape[-1] == widths[layer.name.split("_")[0]], layer.name
    assert model.get_layer("dec3_pw1").input.shape[-1] == 48 + 48  # the upsampled features and the skip
    assert model.output.shape == (None, 64, 64, 1)


def test_edge_loss_wants_sharp_edges_in_the_right_place():
    """The edge term is 0 for the mask itself; a blurred edge costs less than none, and a sharp edge two
    pixels off costs more than a blurred one in the right place. SegmentationLoss adds it with its weight."""
    from bgremove.model import SegmentationLoss, edge_loss

    mask = np.zeros((1, 32, 32, 1), np.float32)
    mask[:, 8:24, 10:22] = 1.0
    blurred = cv2.GaussianBlur(mask[0, ..., 0], (0, 0), 1.5)[np.newaxis, ..., np.newaxis]
    shifted = np.roll(mask, 2, axis=2)

    def cost(pred):
        return float(edge_loss(mask, pred)[0])

    assert cost(mask) == 0.0
    assert 0 < cost(blurred) < cost(np.zeros_like(mask)) < cost(shifted)
    pred = np.clip(blurred, 0.01, 0.99)
    plain, with_edges = SegmentationLoss(1.0), SegmentationLoss(1.0, edge_weight=5.0)
    np.testing.assert_allclose(float(with_edges(mask, pred)) - float(plain(mask, pred)),
                               5.0 * float(edge_loss(mask, pred)[0]), rtol=1e-5)
    assert SegmentationLoss.from_config(with_edges.get_config()).edge_weight == 5.0
