"""Training end to end on tiny synthetic data: run folder, learning, resume, bad samples, strategies."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from typer.testing import CliRunner  # noqa: E402

from bgremove.cli import app  # noqa: E402
from bgremove.runtime import load_runtime  # noqa: E402

TINY = ["--encoder", "classic", "--encoder-weights", "none", "--base-filters", "4", "--depth", "2",
        "--size", "32", "--batch-size", "4", "--lr", "0.003"]


def history(run: Path) -> list[dict]:
    with open(run / "history.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_run_folder_and_learning(trained_run: Path):
    for name in ["config.json", "split.json", "history.csv", "curve.png", "skipped.csv", "state.json",
                 "checkpoints/last.keras", "checkpoints/best.keras", "model.keras", "model.tflite"]:
        assert (trained_run / name).is_file(), name
    rows = history(trained_run)
    assert [int(r["epoch"]) for r in rows] == list(range(1, 13))
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    assert {"iou", "accuracy", "val_iou", "val_loss", "lr", "images_per_s"} <= set(rows[0])
    split = json.loads((trained_run / "split.json").read_text())
    assert split["val_groups"] and split["val_pairs"] > 0
    assert (trained_run / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tflite_export_gives_the_keras_alpha(trained_run: Path, tmp_path: Path):
    """The run's model.tflite is int8 (calibrated on its training photos) and follows the Keras model;
    `bgremove export` without photos gives the float32 model, equal to Keras."""
    from conftest import synthetic_pair

    from bgremove.pipeline import to_model_input

    x = np.stack([to_model_input(synthetic_pair(50 + i)[0][..., ::-1], (32, 32)) for i in range(4)])
    keras_alpha = load_runtime(trained_run / "model.keras").predict(x)
    lite = load_runtime(trained_run / "model.tflite")
    kinds = {t["dtype"] for t in lite.interpreter.get_tensor_details()}
    assert np.int8 in kinds
    lite_alpha = lite.predict(x)
    assert np.abs(lite_alpha - keras_alpha).mean() < 0.03
    both = (lite_alpha > 0.5) & (keras_alpha > 0.5)
    either = (lite_alpha > 0.5) | (keras_alpha > 0.5)
    assert both.sum() / either.sum() > 0.9
    result = CliRunner().invoke(app, ["export", str(trained_run / "model.keras"), "-o", str(tmp_path / "f.tflite")])
    assert result.exit_code == 0, result.output
    assert "float32" in result.output
    np.testing.assert_allclose(load_runtime(tmp_path / "f.tflite").predict(x), keras_alpha, atol=1e-4)


def test_cli_export_calibrates_on_photos_and_reports_bad_input(trained_run: Path, folders_data: Path, tmp_path: Path):
    runner = CliRunner()
    model = str(trained_run / "model.keras")
    result = runner.invoke(app, ["export", model, "-o", str(tmp_path / "q.tflite"),
                                 "--calibrate", str(folders_data / "images"), "--limit", "5"])
    assert result.exit_code == 0, result.output
    assert "int8, calibrated on 5 photo(s)" in result.output
    assert np.int8 in {t["dtype"] for t in load_runtime(tmp_path / "q.tflite").interpreter.get_tensor_details()}
    for args, message in [
        ([str(trained_run / "model.tflite"), "-o", str(tmp_path / "x.tflite")], "export needs a .keras model"),
        ([model, "-o", str(tmp_path / "x.onnx")], "must be a .tflite file"),
        ([model, "-o", str(tmp_path / "x.tflite"), "--calibrate", str(tmp_path / "nope")], "no such file or folder"),
        ([str(tmp_path / "missing.keras"), "-o", str(tmp_path / "x.tflite")], "model file not found"),
    ]:
        result = runner.invoke(app, ["export", *args])
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output
        assert not (tmp_path / "x.tflite").exists()


def test_cli_train_resume_and_skipped_samples(folders_data: Path, tmp_path: Path):
    (folders_data / "images" / "img_005.jpg").write_bytes(b"\xff\xd8\xff broken")
    run = tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--data", str(folders_data), "--out", str(run), "--epochs", "2",
                                 "--degrade-prob", "0.5", *TINY])
    assert result.exit_code == 0, result.output
    assert "skipped 1 unusable file" in result.output
    assert json.loads((run / "config.json").read_text())["degrade_prob"] == 0.5
    with open(run / "skipped.csv", newline="") as fh:
        skipped = list(csv.DictReader(fh))
    assert [Path(r["path"]).name for r in skipped] == ["img_005.jpg"]
    assert len(history(run)) == 2

    again = runner.invoke(app, ["train", "--data", str(folders_data), "--out", str(run), *TINY])
    assert again.exit_code == 2 and "already holds a run" in again.output

    # A checkpoint written by an older version, compiled with Keras' own IoU (which truncates soft targets).
    import keras

    last = run / "checkpoints" / "last.keras"
    old = keras.saving.load_model(last)
    steps = int(old.optimizer.iterations.numpy())
    old.compile(optimizer=old.optimizer, loss=old.loss, metrics=[keras.metrics.BinaryIoU([1], name="iou")])
    old.save(last)

    resumed = runner.invoke(app, ["train", "--data", str(folders_data), "--resume", str(run), "--epochs", "4"])
    assert resumed.exit_code == 0, resumed.output
    assert "resuming" in resumed.output and "at epoch 3" in resumed.output
    assert [int(r["epoch"]) for r in history(run)] == [1, 2, 3, 4]
    assert json.loads((run / "state.json").read_text())["epochs_done"] == 4
    assert json.loads((run / "config.json").read_text())["degrade_prob"] == 0.5  # the run's own recipe goes on
    now = keras.saving.load_model(last)
    assert "MaskIoU" in json.dumps(now.get_compile_config()["metrics"])  # today's metrics
    assert int(now.optimizer.iterations.numpy()) == 2 * steps  # the optimizer went on where it was


def test_cli_train_on_aisegment_layout(aisegment_data: Path, tmp_path: Path):
    result = CliRunner().invoke(
        app, ["train", "--data", str(aisegment_data), "--out", str(tmp_path / "r"), "--epochs", "1",
              "--val-split", "0.34", *TINY])
    assert result.exit_code == 0, result.output
    assert "aisegment layout" in result.output
    assert "1 file(s) without a partner" in result.output
    split = json.loads((tmp_path / "r" / "split.json").read_text())
    assert len(split["val_groups"]) == 1 and split["val_pairs"] == 4


def test_cli_train_reports_bad_data_in_one_line(tmp_path: Path):
    # --encoder-weights none: without ../shared the missing ImageNet weights would be reported first.
    result = CliRunner().invoke(app, ["train", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "r"),
                                      "--encoder-weights", "none"])
    assert result.exit_code == 2
    assert "not a folder" in result.output and "Traceback" not in result.output


def test_mirrored_strategy_on_two_logical_cpus(folders_data: Path, tmp_path: Path):
    """MirroredStrategy over two logical CPU devices; needs a fresh process to split the CPU."""
    script = f"""
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from bgremove.training import TrainConfig, train
cfg = TrainConfig(data={str(folders_data)!r}, out={str(tmp_path / 'm')!r}, epochs=1, batch_size=4, size=32,
                  encoder="classic", encoder_weights="none", base_filters=4, depth=2, strategy="mirrored",
                  val_split=0.25)
res = train(cfg)
print("STATUS", res.status, tf.distribute.MirroredStrategy().num_replicas_in_sync)
"""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "STATUS finished 2" in proc.stdout
    assert (tmp_path / "m" / "model.tflite").is_file()


def test_multiworker_strategy_with_a_one_worker_cluster(folders_data: Path, tmp_path: Path):
    """--strategy multiworker reads TF_CONFIG; a cluster of one local worker runs the same training code."""
    import socket

    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    tf_config = json.dumps({"cluster": {"worker": [f"localhost:{port}"]}, "task": {"type": "worker", "index": 0}})
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_CONFIG": tf_config}
    proc = subprocess.run(
        [sys.executable, "-m", "bgremove", "train", "--data", str(folders_data), "--out", str(tmp_path / "mw"),
         "--epochs", "1", "--strategy", "multiworker", "--val-split", "0.25", "--quantize", "none", *TINY],
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]
    assert "finished: 1 epoch(s)" in proc.stdout
    # --quantize none: a float32 model.tflite that computes what model.keras computes.
    lite = load_runtime(tmp_path / "mw" / "model.tflite")
    assert np.int8 not in {t["dtype"] for t in lite.interpreter.get_tensor_details()}
    x = np.random.default_rng(2).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(lite.predict(x), load_runtime(tmp_path / "mw" / "model.keras").predict(x), atol=1e-4)


def test_unknown_quantization_or_head_is_one_line(folders_data: Path, tmp_path: Path):
    for args, message in [(["--quantize", "int4"], "unknown quantization 'int4'; choose one of int8, none"),
                          (["--head", "huge"], "unknown head 'huge'; choose one of auto, unet, light, subpixel"),
                          (["--degrade-kinds", "blur,spin"], "unknown degradation in 'blur,spin'; choose from rotate, blur, defocus, jpeg")]:
        result = CliRunner().invoke(app, ["train", "--data", str(folders_data), "--out", str(tmp_path / "q"),
                                          *args, *TINY])
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_short_real_training_on_shared_people(people_data: Path, tmp_path: Path, pretrained_encoder):
    """A few minutes on real photos with the ImageNet encoder: validation IoU must clearly beat chance."""
    result = CliRunner().invoke(
        app, ["train", "--data", str(people_data), "--out", str(tmp_path / "real"), "--epochs", "3",
              "--limit", "320", "--size", "128", "--batch-size", "16", "--lr", "0.002",
              "--encoder-weights", str(pretrained_encoder)])
    assert result.exit_code == 0, result.output
    rows = history(tmp_path / "real")
    for row in rows:
        print(f"\nreal data, epoch {row['epoch']}: iou {row['iou']}  val_iou {row['val_iou']}  "
              f"train images/s {row['images_per_s']}")
    assert float(rows[-1]["val_iou"]) > 0.6


def test_resume_with_more_patience_continues_an_early_stopped_run(folders_data: Path, tmp_path: Path):
    run = tmp_path / "es"
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--data", str(folders_data), "--out", str(run), "--epochs", "2",
                                 "--patience", "1", *TINY])
    assert result.exit_code == 0, result.output
    # Make it a run that early stopping ended at epoch 2 of 4 (which epoch stops depends on the data).
    state = json.loads((run / "state.json").read_text())
    (run / "state.json").write_text(json.dumps({**state, "wait": 1, "early_stopped": True}))
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "epochs": 4}))

    same = runner.invoke(app, ["train", "--data", str(folders_data), "--resume", str(run)])
    assert same.exit_code == 0, same.output
    assert "early-stopped" in same.output and len(history(run)) == 2  # the old patience is spent

    more = runner.invoke(app, ["train", "--data", str(folders_data), "--resume", str(run), "--patience", "5"])
    assert more.exit_code == 0, more.output
    assert [int(r["epoch"]) for r in history(run)] == [1, 2, 3, 4]
    assert json.loads((run / "config.json").read_text())["patience"] == 5


def test_several_sources_are_followed_by_their_mean_iou(tmp_path: Path):
    """Sources a and b in the manifest: history logs each one's IoU, and the best epoch follows their mean."""
    from conftest import make_folders

    data = make_folders(tmp_path / "data", n=24, manifest=True)
    run = tmp_path / "src"
    result = CliRunner().invoke(app, ["train", "--data", str(data), "--out", str(run), "--epochs", "2",
                                      "--val-split", "0.25", *TINY])
    assert result.exit_code == 0, result.output
    assert "per-source mean" in result.output
    rows = history(run)
    for row in rows:
        a, b, mean = float(row["val_iou_a"]), float(row["val_iou_b"]), float(row["val_source_iou"])
        assert 0.0 <= a <= 1.0 and 0.0 <= b <= 1.0
        assert abs(mean - (a + b) / 2) < 1e-5
    state = json.loads((run / "state.json").read_text())
    assert state["monitor"] == "val_source_iou"
    assert abs(state["best"] - max(float(r["val_source_iou"]) for r in rows)) < 1e-5


def test_the_per_source_pass_gives_what_keras_validation_gives():
    """fit() runs no validation of its own when the per-source callback does the pass: same figures."""
    import keras
    import tensorflow as tf

    from bgremove.model import ModelConfig, SegmentationLoss, build_unet, segmentation_metrics
    from bgremove.training import _source_iou_callback

    rng = np.random.default_rng(1)
    images = rng.uniform(0, 255, (10, 32, 32, 3)).astype("float32")
    # Soft targets (a resized mask's edges, a matte, a --teacher's blend): both cut them at 0.5.
    masks = np.clip(rng.normal(0.4, 0.4, (10, 32, 32, 1)), 0, 1).astype("float32")
    val_ds = tf.data.Dataset.from_tensor_slices((images, masks)).batch(4)
    model = build_unet(ModelConfig(encoder="classic", size=32, base_filters=4, depth=2))
    model.compile(loss=SegmentationLoss(dice_weight=1.0), metrics=segmentation_metrics())
    callback = _source_iou_callback(val_ds, ["a"] * 6 + ["b"] * 4)
    callback.set_model(model)
    logs: dict = {}
    callback.on_epoch_end(0, logs)
    keras_logs = model.evaluate(val_ds, verbose=0, return_dict=True)
    assert logs["val_loss"] == pytest.approx(keras_logs["loss"], rel=1e-4)
    assert logs["val_iou"] == pytest.approx(keras_logs["iou"], abs=1e-6)
    assert logs["val_accuracy"] == pytest.approx(keras_logs["accuracy"], abs=1e-6)
    pred = keras.ops.convert_to_numpy(model(images, training=False)) >= 0.5
    truth = masks >= 0.5
    assert logs["val_accuracy"] == pytest.approx((pred == truth).mean(), abs=1e-9)
    a, b = slice(0, 6), slice(6, 10)
    assert logs["val_iou_a"] == pytest.approx((pred[a] & truth[a]).sum() / (pred[a] | truth[a]).sum())
    assert logs["val_iou_b"] == pytest.approx((pred[b] & truth[b]).sum() / (pred[b] | truth[b]).sum())
    assert logs["val_source_iou"] == pytest.approx((logs["val_iou_a"] + logs["val_iou_b"]) / 2)


def test_ema_validates_and_keeps_the_averaged_weights_and_trains_on_its_own():
    """--ema: at the end of an epoch the callbacks between the pair see the moving average of the weights
    (first step: the weights; then m * average + (1 - m) * weights), and training goes on from its own."""
    import keras
    import tensorflow as tf

    from bgremove.model import ModelConfig, SegmentationLoss, build_unet
    from bgremove.training import _ema_callbacks

    rng = np.random.default_rng(2)
    images = rng.uniform(0, 255, (12, 32, 32, 3)).astype("float32")
    masks = (rng.uniform(size=(12, 32, 32, 1)) > 0.6).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices((images, masks)).batch(4)
    model = build_unet(ModelConfig(encoder="classic", size=32, base_filters=4, depth=2))
    momentum = 0.5
    model.compile(optimizer=keras.optimizers.Adam(0.01, use_ema=True, ema_momentum=momentum),
                  loss=SegmentationLoss(dice_weight=1.0))

    def weights():
        return [keras.ops.convert_to_numpy(v).copy() for v in model.trainable_variables]

    steps, seen_at_epoch_end, after = [], [], []

    class Steps(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            steps.append(weights())

    class Between(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen_at_epoch_end.append(weights())

    class After(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            after.append(weights())

    averaged_in, own_back = _ema_callbacks()
    model.fit(ds, epochs=2, verbose=0, shuffle=False, callbacks=[Steps(), averaged_in, Between(), own_back, After()])
    assert len(steps) == 6
    average = steps[0]
    for step in steps[1:3]:
        average = [momentum * a + (1 - momentum) * w for a, w in zip(average, step)]
    for got, want in zip(seen_at_epoch_end[0], average):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    for got, own in zip(after[0], steps[2]):  # training goes on from its own weights
        np.testing.assert_array_equal(got, own)
    assert max(np.abs(a - b).max() for a, b in zip(seen_at_epoch_end[0], after[0])) > 1e-4


def test_cli_train_with_ema_keeps_it_on_resume(folders_data: Path, tmp_path: Path):
    import keras

    run = tmp_path / "ema"
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--data", str(folders_data), "--out", str(run), "--epochs", "1",
                                 "--ema", "0.9", *TINY])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "config.json").read_text())["ema"] == 0.9
    optimizer = keras.saving.load_model(run / "checkpoints" / "last.keras").optimizer
    assert optimizer.use_ema and optimizer.ema_momentum == pytest.approx(0.9)
    resumed = runner.invoke(app, ["train", "--data", str(folders_data), "--resume", str(run), "--epochs", "2"])
    assert resumed.exit_code == 0, resumed.output
    assert [int(r["epoch"]) for r in history(run)] == [1, 2]
    assert keras.saving.load_model(run / "checkpoints" / "last.keras").optimizer.use_ema
