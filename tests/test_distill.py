"""Knowledge distillation (train --teacher): the blended targets and the errors. A run with a teacher
and its resume: tests/test_aspect.py (test_freeze_bn_and_teacher_are_kept_through_training_and_resume)."""

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bgremove.cli import app

pytest.importorskip("tensorflow")


def test_targets_blend_the_mask_with_the_teachers_mirror_averaged_alpha(keep_run: Path):
    import keras
    import tensorflow as tf

    import bgremove.model  # noqa: F401 - registers the custom layers
    from bgremove.tfdata import with_teacher

    teacher = keras.saving.load_model(keep_run / "model.keras", compile=False)
    rng = np.random.default_rng(0)
    batches = [(rng.uniform(0, 255, (2, h, w, 3)).astype(np.float32),
                (rng.uniform(size=(2, h, w, 1)) > 0.5).astype(np.float32)) for h, w in [(64, 64), (96, 32)]]
    ds = tf.data.Dataset.from_generator(
        lambda: iter(batches), output_signature=(tf.TensorSpec((None, None, None, 3)), tf.TensorSpec((None, None, None, 1))))
    got = [y for _, y in with_teacher(ds, teacher, 0.25).as_numpy_iterator()]
    for (images, masks), targets in zip(batches, got):
        plain = teacher.predict(images, verbose=0)
        mirrored = teacher.predict(images[:, :, ::-1], verbose=0)[:, :, ::-1]
        assert not np.allclose(plain, mirrored, atol=1e-3)  # the mirror adds something
        np.testing.assert_allclose(targets, 0.75 * masks + 0.25 * (plain + mirrored) / 2, atol=1e-5)


def test_a_teacher_that_cannot_teach_is_a_one_line_error(keep_run: Path, trained_run: Path, tmp_path: Path):
    data = json.loads((keep_run / "config.json").read_text())["data"]
    base = ["train", "--data", data, "--init", str(keep_run / "model.keras"), "--epochs", "1"]
    cases = [
        (tmp_path / "missing.keras", "--teacher model not found"),
        (keep_run / "model.tflite", "--teacher needs a .keras model"),
        # trained_run's classic U-Net takes 32x32 only; this run trains a keep-aspect model at several shapes.
        (trained_run / "model.keras", "the --teacher takes 32x32 inputs only"),
    ]
    for i, (teacher, reason) in enumerate(cases):
        result = CliRunner().invoke(app, [*base, "--out", str(tmp_path / f"run{i}"), "--teacher", str(teacher)])
        assert result.exit_code != 0
        assert reason in result.output and str(teacher) in result.output
        assert "Traceback" not in result.output
        assert not (tmp_path / f"run{i}" / "checkpoints" / "last.keras").exists()
