"""Fine-tuning (--init), per-source sampling, copy-paste compositing and photo degradations: the training-data knobs of #5."""

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from typer.testing import CliRunner  # noqa: E402

from bgremove import tfdata  # noqa: E402
from bgremove.cli import app  # noqa: E402
from bgremove.model import HEADS  # noqa: E402
from bgremove.runtime import load_runtime  # noqa: E402
from bgremove.training import TrainConfig, TrainingError, _inherit_from_init, _init_model, _warm_up  # noqa: E402

TINY = ["--encoder", "classic", "--encoder-weights", "none", "--base-filters", "4", "--depth", "2",
        "--batch-size", "4", "--lr", "0.003"]


def _labelled(n: int, label: int) -> tf.data.Dataset:
    """n uint8 pairs whose pixels all hold ``label``, so a drawn pair tells which source it came from."""
    images = np.full((n, 4, 4, 3), label, np.uint8)
    return tfdata.from_arrays(images, images[..., 0])


def _drawn(weighting: str, sizes=(900, 100)) -> Counter:
    parts = [_labelled(n, label) for label, n in enumerate(sizes)]
    ds = tfdata.mix_sources(parts, list(sizes), weighting, seed=3, shuffle=64)
    return Counter(int(image[0, 0, 0]) for image, _ in ds.as_numpy_iterator())


def test_sqrt_weighting_lifts_a_small_source_and_keeps_the_epoch_length():
    counts = _drawn("sqrt")
    assert sum(counts.values()) == 1000
    # sqrt(100) / (sqrt(900) + sqrt(100)) = 0.25 of the epoch, against its natural 0.10.
    assert 200 <= counts[1] <= 300, counts


def test_none_weighting_is_one_pass_over_every_pair():
    assert _drawn("none") == Counter({0: 900, 1: 100})


def test_equal_weighting_gives_each_source_half():
    counts = _drawn("equal")
    assert sum(counts.values()) == 1000 and 440 <= counts[1] <= 560, counts


def test_paste_puts_the_first_person_over_the_second_with_the_union_label():
    a_img = tf.fill([4, 4, 3], 0.9)
    b_img = tf.fill([4, 4, 3], 0.2)
    a_m = tf.constant(np.array([[1, 1, 0, 0]] * 4, np.float32)[..., None])
    b_m = tf.constant(np.array([[0, 0, 0, 1]] * 4, np.float32)[..., None])
    images, masks = tfdata.paste_pairs(tf.stack([a_img, b_img]), tf.stack([a_m, b_m]), prob=1.0)
    np.testing.assert_allclose(images[0, 0, :, 0], [0.9, 0.9, 0.2, 0.2])
    np.testing.assert_allclose(masks[0, 0, :, 0], [1, 1, 0, 1])
    np.testing.assert_allclose(images[1], b_img)  # the second pair passes unchanged
    kept_images, kept_masks = tfdata.paste_pairs(tf.stack([a_img, b_img]), tf.stack([a_m, b_m]), prob=0.0)
    np.testing.assert_allclose(kept_images[0], a_img)
    np.testing.assert_allclose(kept_masks[0], a_m)


def test_rotation_turns_image_and_mask_together_and_leaves_no_empty_corner():
    square = tf.random.uniform([8, 8, 4], seed=1)
    np.testing.assert_allclose(tfdata.rotate(square, tf.constant(0.0)), square)
    np.testing.assert_allclose(tfdata.rotate(square, tf.constant(90.0)), np.rot90(square.numpy()), atol=1e-5)
    # A tilted frame is zoomed in: every output pixel samples the inside of the input, never a fill value.
    frame = tf.concat([tf.fill([40, 64, 3], 0.5), tf.ones([40, 64, 1])], axis=-1)
    for degrees in (-15.0, 7.0, 15.0):
        tilted = tfdata.rotate(frame, tf.constant(degrees)).numpy()
        np.testing.assert_allclose(tilted, frame.numpy(), atol=1e-5)
    # A vertical bar (mask 1 where the image is bright) stays aligned with its label when tilted.
    bar = np.zeros([48, 48, 4], np.float32)
    bar[:, 20:28] = 1.0
    tilted = tfdata.rotate(tf.constant(bar), tf.constant(12.0)).numpy()
    np.testing.assert_allclose(tilted[..., 0], tilted[..., 3], atol=1e-6)
    assert not np.allclose(tilted, bar, atol=0.1)  # it did turn


def test_blur_keeps_the_brightness_and_softens_the_detail():
    rng = np.random.default_rng(0)
    flat = tf.fill([20, 24, 3], 0.4)
    np.testing.assert_allclose(tfdata.gaussian_blur(flat, tf.constant(1.5)), flat, atol=1e-6)
    noise = tf.constant(rng.uniform(0, 1, (20, 24, 3)), tf.float32)
    soft = tfdata.gaussian_blur(noise, tf.constant(1.5)).numpy()
    assert soft.shape == (20, 24, 3)
    assert abs(soft.mean() - noise.numpy().mean()) < 0.02
    assert soft.std() < 0.4 * noise.numpy().std()


def test_degraded_crops_keep_their_shape_range_and_labels():
    rng = np.random.default_rng(0)
    image = tf.constant(rng.uniform(0, 1, (60, 50, 3)), tf.float32)
    mask = tf.constant((rng.uniform(0, 1, (60, 50, 1)) > 0.5).astype(np.float32))
    always = tfdata.AugmentConfig(degrade_prob=1.0, full_view_prob=1.0, flip=False, noise_std=0.0,
                                  brightness=0.0, contrast=(1, 1.001), saturation=(1, 1.001), hue=0.0, grayscale_prob=0.0)
    never = replace(always, degrade_prob=0.0)
    clean_image, clean_mask = tfdata.augment(image, mask, tf.constant([48, 40]), never)
    for _ in range(3):
        out, label = tfdata.augment(image, mask, tf.constant([48, 40]), always)
        assert out.shape == (48, 40, 3) and label.shape == (48, 40, 1)
        assert 0.0 <= float(tf.reduce_min(out)) and float(tf.reduce_max(out)) <= 1.0
        assert 0.0 <= float(tf.reduce_min(label)) and float(tf.reduce_max(label)) <= 1.0
        assert float(tf.reduce_mean(tf.abs(out - clean_image))) > 0.02
    # Blur and JPEG change the photo alone; a tilt moves the label, defocus softens it.
    for kinds, label_moves in ((("blur", "jpeg"), False), (("rotate",), True), (("defocus",), True)):
        moved = []
        for _ in range(3):  # three draws: a tilt of a hair's breadth would hardly move the label
            out, label = tfdata.augment(image, mask, tf.constant([48, 40]), replace(always, degrade_kinds=kinds))
            assert float(tf.reduce_mean(tf.abs(out - clean_image))) > 0.02, kinds
            moved.append(float(tf.reduce_max(tf.abs(label - clean_mask))) > 0.1)
        assert any(moved) == label_moves, (kinds, moved)
    # Defocus blurs the label exactly as the photo: a photo that is its own mask stays so.
    own_mask = tf.concat([mask] * 3, axis=-1)
    out, label = tfdata.augment(own_mask, mask, tf.constant([48, 40]), replace(always, degrade_kinds=("defocus",)))
    assert 0.05 < float(tf.reduce_mean(label * (1 - label)))  # soft now
    for channel in range(3):
        np.testing.assert_allclose(out[..., channel], label[..., 0], atol=2e-3)  # contrast 1.0005 at most
    assert tfdata.AugmentConfig().degrade_prob == 0.0  # off unless asked for (train --degrade-prob)
    assert "defocus" not in tfdata.AugmentConfig().degrade_kinds  # chosen by name only


def test_init_model_carries_the_weights_to_another_input_size(trained_run: Path):
    source = trained_run / "model.keras"
    cfg = TrainConfig(data="-", size=64, encoder="classic", base_filters=4, depth=2)
    model, fresh = _init_model(cfg, source)
    assert fresh == []
    assert model.input_shape[1:3] == (64, 64)
    for a, b in zip(model.get_weights(), load_runtime(source).model.get_weights()):
        np.testing.assert_array_equal(a, b)
    same_size, _ = _init_model(TrainConfig(data="-", size=32, encoder="classic", base_filters=4, depth=2), source)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(same_size.predict(x, verbose=0)[..., 0], load_runtime(source).predict(x), atol=1e-5)

    with pytest.raises(TrainingError, match="do not match"):
        _init_model(TrainConfig(data="-", size=32, encoder="classic", base_filters=8, depth=2), source)


def test_cli_fine_tunes_from_a_model_and_rejects_bad_init_files(trained_run: Path, manifest_data: Path,
                                                                  tmp_path: Path):
    runner = CliRunner()
    run = tmp_path / "ft"
    result = runner.invoke(app, ["train", "--data", str(manifest_data), "--out", str(run), "--epochs", "1",
                                 "--size", "48", "--init", str(trained_run / "model.keras"), "--edge-weight", "2",
                                 *TINY])
    assert result.exit_code == 0, result.output
    assert "sources drawn per epoch: a 6 pairs" in result.output
    assert (run / "model.tflite").is_file()
    config = json.loads((run / "config.json").read_text())
    assert config["init"] == str(trained_run / "model.keras") and config["head"] == "unet"
    # The edge term is in the checkpoint's loss, so --resume trains with it too.
    assert config["edge_weight"] == 2.0
    import keras

    assert keras.saving.load_model(run / "checkpoints" / "last.keras").loss.edge_weight == 2.0

    for bad, reason in [(trained_run / "model.tflite", "needs a .keras model"),
                        (tmp_path / "missing.keras", "not found")]:
        result = runner.invoke(app, ["train", "--data", str(manifest_data), "--out", str(tmp_path / "x"),
                                     "--init", str(bad), *TINY])
        assert result.exit_code == 2 and reason in result.output, result.output
        assert "Traceback" not in result.output


def test_init_model_carries_what_matches_into_a_narrower_decoder(tmp_path: Path):
    from bgremove.model import ModelConfig, build_unet

    source = tmp_path / "wide.keras"
    wide = build_unet(ModelConfig(size=32, encoder_weights="none"))
    wide.save(source)
    lines: list[str] = []
    cfg = TrainConfig(data="-", size=64, encoder_weights="none", decoder_filters=(96, 64, 48, 16, 8))
    narrow, fresh = _init_model(cfg, source, report=lines.append)
    assert {"alpha", "dec3_conv1", "dec_full_bn2"} <= set(fresh) and "dec2_conv1" not in fresh
    assert len(lines) == 1 and lines[0].endswith("new (trained from scratch): alpha, dec3, dec_full"), lines
    for name in ("Conv1", "block_16_project", "dec0_conv1", "dec2_bn2"):
        for a, b in zip(narrow.get_layer(name).get_weights(), wide.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    assert narrow.get_layer("dec_full_conv2").get_weights()[-1].shape[-1] == 8
    x = np.random.default_rng(0).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    assert narrow.predict(x, verbose=0).shape == (1, 64, 64, 1)


def test_light_head_is_fine_tuned_from_a_unet_head_model(tmp_path: Path):
    """--head light: the decoder up to half resolution carries over, the new full-resolution level starts
    fresh, and the full-resolution work shrinks (fewer channels cross to full resolution)."""
    from bgremove.model import ModelConfig, build_unet

    source = tmp_path / "unet.keras"
    unet = build_unet(ModelConfig(size=32, encoder_weights="none"))
    unet.save(source)
    lines: list[str] = []
    light, fresh = _init_model(TrainConfig(data="-", size=64, encoder_weights="none", head="light"), source,
                               report=lines.append)
    assert set(fresh) == {"head_squeeze", "head_squeeze_bn", "head_conv", "head_bn"}
    assert lines[0].endswith("new (trained from scratch): head_bn, head_conv, head_squeeze, head_squeeze_bn"), lines
    for name in ("dec3_conv2", "alpha"):  # the alpha layer reads 16 channels in both heads
        for a, b in zip(light.get_layer(name).get_weights(), unet.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    assert not any(layer.name.startswith("dec_full") for layer in light.layers)
    full_res = [layer for layer in light.layers if layer.name in ("head_up", "head_concat")]
    assert [layer.output.shape[-1] for layer in full_res] == [8, 11]  # 8 features + the RGB skip
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    assert light.predict(x, verbose=0).shape == (2, 64, 64, 1)
    with pytest.raises(ValueError, match="unknown head 'huge'"):
        build_unet(ModelConfig(size=32, head="huge"))


def test_subpixel_head_is_fine_tuned_from_a_unet_head_model(tmp_path: Path):
    """--head subpixel: everything up to half resolution and the alpha layer (now the smooth half-resolution
    logit) carry over; the head and the per-pixel detail layer start fresh."""
    from bgremove.model import ModelConfig, build_unet

    source = tmp_path / "unet.keras"
    unet = build_unet(ModelConfig(size=32, encoder_weights="none"))
    unet.save(source)
    sub, fresh = _init_model(TrainConfig(data="-", size=64, encoder_weights="none", head="subpixel"), source)
    assert set(fresh) == {"head_rgb", "head_conv", "head_bn", "alpha_detail"}
    assert sub.get_layer("alpha_detail").get_weights()[0].shape == (1, 1, 16, 4)
    for name in ("dec3_conv2", "alpha"):
        for a, b in zip(sub.get_layer(name).get_weights(), unet.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    out = sub.predict(x, verbose=0)
    assert out.shape == (2, 64, 64, 1) and 0 <= out.min() and out.max() <= 1


def _random_subpixel_model(path: Path):
    """A subpixel model with distinct random weights everywhere (so a wrong transfer shows), saved to path."""
    from bgremove.model import ModelConfig, build_unet

    sub = build_unet(ModelConfig(size=32, encoder_weights="none", head="subpixel"))
    rng = np.random.default_rng(0)
    for layer in sub.layers:
        layer.set_weights([rng.normal(0, 0.3, w.shape).astype("float32") for w in layer.get_weights()])
    sub.save(path)
    return sub


def test_lean_head_is_fine_tuned_from_a_subpixel_model(tmp_path: Path):
    """--head lean from a subpixel model: each separable decoder conv becomes a 1x1 conv with its pointwise
    kernel and a depthwise conv whose filters are the old ones averaged by the pointwise weights; the
    converted convs and their batch norms are what the warm-up fits, everything else carries over as is."""
    source = tmp_path / "sub.keras"
    sub = _random_subpixel_model(source)
    lines: list[str] = []
    lean, fresh = _init_model(TrainConfig(data="-", size=64, encoder_weights="none", head="lean"), source,
                              report=lines.append)
    assert lines == ["init: the separable convs of dec0, dec1, dec2, dec3, head turned pointwise-first "
                     "(the warm-up fits them)"]
    dw, pw = sub.get_layer("dec2_conv1").get_weights()  # (3, 3, 112, 1), (1, 1, 112, 48)
    np.testing.assert_array_equal(lean.get_layer("dec2_pw1").get_weights()[0], pw)
    share = np.abs(pw[0, 0, :, 5]) / np.abs(pw[0, 0, :, 5]).sum()
    want = (dw[:, :, :, 0] * share).sum(axis=-1)  # output channel 5's filter
    np.testing.assert_allclose(lean.get_layer("dec2_dw1").get_weights()[0][:, :, 5, 0], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(lean.get_layer("head_pw").get_weights()[0], sub.get_layer("head_conv").get_weights()[1])
    assert "dec3_pw2" not in {layer.name for layer in lean.layers}  # one conv at half resolution
    assert {"dec2_pw1", "dec2_dw1", "dec2_bn1", "head_dw", "head_bn", "dec3_bn1"} <= set(fresh)
    assert not {"head_rgb", "alpha", "alpha_detail", "dec3_bn2", "Conv1"} & set(fresh)
    for name in ("head_rgb", "alpha", "alpha_detail", "dec2_bn1", "block_1_expand"):
        for a, b in zip(lean.get_layer(name).get_weights(), sub.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)


def test_lean_half_head_converts_only_the_half_resolution_level_and_the_head(tmp_path: Path):
    """--head lean-half from a subpixel model keeps dec0-dec2's trained separable convs and their batch
    norms as they are: only dec3 and the head are turned around and fitted in the warm-up."""
    source = tmp_path / "sub.keras"
    sub = _random_subpixel_model(source)
    lines: list[str] = []
    half, fresh = _init_model(TrainConfig(data="-", size=64, encoder_weights="none", head="lean-half"), source,
                              report=lines.append)
    assert lines == ["init: the separable convs of dec3, head turned pointwise-first (the warm-up fits them)"]
    assert set(fresh) == {"dec3_pw1", "dec3_dw1", "dec3_bn1", "head_pw", "head_dw", "head_bn"}
    np.testing.assert_array_equal(half.get_layer("dec3_pw1").get_weights()[0], sub.get_layer("dec3_conv1").get_weights()[1])
    for name in ("dec0_conv1", "dec2_conv2", "dec2_bn2", "head_rgb", "alpha_detail"):
        for a, b in zip(half.get_layer(name).get_weights(), sub.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)

def test_fine_tuning_keeps_the_init_models_head_unless_told(manifest_data: Path, tmp_path: Path):
    """`train --init` of a subpixel model without --head must not swap in a unet head; --head overrides it."""
    from bgremove.model import ModelConfig, build_unet, head_of

    assert [head_of(build_unet(ModelConfig(size=32, encoder_weights="none", head=h))) for h in HEADS] == list(HEADS)
    source = tmp_path / "sub.keras"
    build_unet(ModelConfig(size=32, encoder_weights="none", head="subpixel")).save(source)
    run = tmp_path / "ft"
    args = ["train", "--data", str(manifest_data), "--size", "32", "--epochs", "1", "--batch-size", "4",
            "--quantize", "none", "--init", str(source)]
    result = CliRunner().invoke(app, [*args, "--out", str(run)])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "config.json").read_text())["head"] == "subpixel"
    assert head_of(load_runtime(run / "model.keras").model) == "subpixel"
    assert "new (trained from scratch)" not in result.output  # every layer carried over
    # --head (and --size, --aspect) given by the user win over the init model's own; unset ones are inherited.
    init = load_runtime(source).model
    asked = _inherit_from_init(TrainConfig(data="-", head="light", size=64), init)
    assert (asked.head, asked.size, asked.aspect) == ("light", 64, "stretch")
    inherited = _inherit_from_init(TrainConfig(data="-"), init)
    assert (inherited.head, inherited.size, inherited.aspect) == ("subpixel", 32, "stretch")


def test_context_gate_is_added_by_init_starting_where_the_model_was_and_kept_by_later_fine_tuning(tmp_path: Path):
    """--context on a model without the gate: every layer carries over, the gate alone is new (the warm-up
    fits it) and the model computes what the --init model did; fine-tuning a gated model keeps the gate
    unless --no-context."""
    from bgremove.model import ModelConfig, build_unet, has_context

    source = tmp_path / "plain.keras"
    build_unet(ModelConfig(size=32, encoder_weights="none", head="subpixel")).save(source)
    init = load_runtime(source).model
    assert _inherit_from_init(TrainConfig(data="-"), init).context is False
    cfg = _inherit_from_init(TrainConfig(data="-", context=True, encoder_weights="none"), init)
    model, fresh = _init_model(cfg, source)
    assert has_context(model) and fresh == ["dec_context"]
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_array_equal(model.predict(x, verbose=0), init.predict(x, verbose=0))
    assert _inherit_from_init(TrainConfig(data="-"), model).context is True
    assert _inherit_from_init(TrainConfig(data="-", context=False), model).context is False


def test_cli_rejects_bad_decoder_widths(tmp_path: Path):
    result = CliRunner().invoke(app, ["train", "--data", str(tmp_path), "--decoder-filters", "96,64,x"])
    assert result.exit_code == 2 and "--decoder-filters: expected five positive widths" in result.output
    assert "Traceback" not in result.output


def test_warm_up_trains_only_the_new_layers_and_unfreezes_them_all(tmp_path: Path):
    from bgremove.model import ModelConfig, build_unet

    source = tmp_path / "wide.keras"
    build_unet(ModelConfig(size=32, encoder_weights="none")).save(source)
    cfg = TrainConfig(data="-", size=32, encoder_weights="none", decoder_filters=(96, 64, 48, 16, 8), lr=1e-3)
    model, fresh = _init_model(cfg, source)
    before = {layer.name: [w.copy() for w in layer.get_weights()] for layer in model.layers if layer.weights}
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    masks = (images[..., :1] > 128).astype("float32")
    lines: list[str] = []
    _warm_up(model, fresh, tf.data.Dataset.from_tensor_slices((images, masks)).batch(4), cfg, lines.append)
    assert len(lines) == 1 and lines[0].startswith("warm-up: the new layers alone, one pass at lr 1.0e-02")
    for layer in model.layers:
        if not layer.weights:
            continue
        assert layer.trainable
        same = all(np.array_equal(a, b) for a, b in zip(before[layer.name], layer.get_weights()))
        assert same == (layer.name not in fresh), layer.name  # batch-norm statistics of frozen layers too
