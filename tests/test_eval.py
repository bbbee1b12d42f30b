"""`bgremove eval` end to end: the report's files exist and its numbers are the metrics module's."""

import csv
import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from bgremove import Remover
from bgremove.cli import app
from bgremove.data import discover, read_mask
from bgremove.metrics import METRIC_INFO, all_metrics

from conftest import make_folders

runner = CliRunner()


def test_eval_report_matches_metrics_module(tmp_path: Path, tiny_tflite: Path):
    data = make_folders(tmp_path / "data", n=6, manifest=True)
    out = tmp_path / "report"
    result = runner.invoke(app, ["eval", "--data", str(data), "--model", str(tiny_tflite), "--out", str(out)])
    assert result.exit_code == 0, result.output
    for name in ["metrics.csv", "summary.json", "index.html", "examples_0.png", "worst_0.png"]:
        assert (out / name).is_file(), name
    with open(out / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6 and set(METRIC_INFO) <= set(rows[0])

    # Recompute one image by hand through the public API and the metrics module.
    sample = discover(data).samples[2]
    alpha = Remover(tiny_tflite).mask(sample.image).astype(np.float32) / 255.0
    gt = read_mask(sample.mask).astype(np.float32) / 255.0
    want = all_metrics(alpha, gt)
    row = next(r for r in rows if r["stem"] == sample.stem)
    for key in METRIC_INFO:
        assert abs(float(row[key]) - want[key]) < 1e-5, key

    summary = json.loads((out / "summary.json").read_text())
    mean_iou = np.mean([float(r["iou"]) for r in rows])
    assert abs(summary["models"]["model.tflite"]["all"]["iou"] - mean_iou) < 1e-6
    assert set(summary["models"]["model.tflite"]["by_source"]) == {"a", "b"}
    assert summary["models"]["model.tflite"]["model_ms"] > 0
    page = (out / "index.html").read_text()
    assert "examples_0.png" in page and "boundary_f" in page


def test_eval_run_scores_its_validation_groups_and_compares_models(trained_run: Path, tmp_path: Path):
    data = trained_run.parent / "data"
    out = tmp_path / "r"
    result = runner.invoke(app, ["eval", "--data", str(data), "--run", str(trained_run), "--model",
                                 str(trained_run / "model.tflite"), "--model", str(trained_run / "model.keras"),
                                 "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    split = json.loads((trained_run / "split.json").read_text())
    assert summary["header"]["split"] == "val"
    models = summary["models"]
    assert set(models) == {"model.tflite", "model.keras"}
    assert models["model.tflite"]["images"] == split["val_pairs"]
    # The same network through LiteRT (int8) and Keras (float32) scores about the same.
    assert abs(models["model.tflite"]["all"]["iou"] - models["model.keras"]["all"]["iou"]) < 0.01
    assert (out / "curve.png").is_file()


def test_eval_without_pairs_is_one_line(tmp_path: Path, tiny_tflite: Path):
    result = runner.invoke(app, ["eval", "--data", str(tmp_path), "--model", str(tiny_tflite)])
    assert result.exit_code == 2
    assert "no known layout" in result.output and "Traceback" not in result.output


def test_eval_scores_the_alpha_that_cut_writes(tmp_path: Path, tiny_tflite: Path):
    """With --threshold the scored alpha is hard, so on binary labels |error| equals error squared."""
    from bgremove import CutOptions

    data = make_folders(tmp_path / "data", n=4)
    for flags, options, tta in ((["--threshold", "0.5"], CutOptions(threshold=0.5), False),
                                (["--refine"], CutOptions(refine=True), False), (["--tta"], CutOptions(), True)):
        out = tmp_path / flags[0].strip("-")
        result = runner.invoke(app, ["eval", "--data", str(data), "--model", str(tiny_tflite), "--out", str(out), *flags])
        assert result.exit_code == 0, result.output
        with open(out / "metrics.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        sample = discover(data).samples[1]
        alpha = Remover(tiny_tflite, options=options, tta=tta).mask(sample.image).astype(np.float32) / 255.0
        gt = read_mask(sample.mask).astype(np.float32) / 255.0
        row = next(r for r in rows if r["stem"] == sample.stem)
        assert abs(float(row["sad"]) - all_metrics(alpha, gt)["sad"]) < 1e-5
        if options.threshold is not None:
            assert all(abs(float(r["mse"]) - float(r["mad"])) < 1e-6 for r in rows)


def test_degradations_change_the_photo_and_move_the_label_with_it():
    from bgremove.evaluation import Degradation
    from bgremove.images import Photo

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    gt = np.zeros((60, 80), np.float32)
    gt[10:50, 30:50] = 1.0
    for text in ("jpeg:20", "blur:2"):
        photo, label = Degradation.parse(text).apply(Photo(rgb), gt)
        photo = photo.rgb
        assert photo.shape == rgb.shape and photo.dtype == np.uint8
        assert np.abs(photo.astype(int) - rgb).mean() > 5, text  # the photo changed
        np.testing.assert_array_equal(label, gt)  # the person did not move
    same, label = Degradation.parse("rotate:0").apply(Photo(rgb), gt)
    np.testing.assert_array_equal(same.rgb, rgb)
    np.testing.assert_array_equal(label, gt)
    # A photo whose red channel (and own alpha) is its label stays aligned with the label when tilted, and
    # fills the frame.
    marked = np.dstack([(gt * 255).astype(np.uint8), np.full_like(rgb[..., 0], 99), rgb[..., 2]])
    turned, label = Degradation.parse("rotate:-12").apply(Photo(marked, alpha=(gt * 255).astype(np.uint8)), gt)
    tilted = turned.rgb
    assert np.abs(tilted[..., 0] / 255.0 - label).max() < 0.01
    np.testing.assert_array_equal(turned.alpha, tilted[..., 0])
    assert (tilted[..., 1] == 99).all()  # no empty corner: every pixel comes from inside the photo
    assert 0.0 < label.mean() != gt.mean() and np.abs(label - gt).mean() > 0.05


def test_eval_on_degraded_photos_and_a_bad_degradation(tmp_path: Path, tiny_tflite: Path):
    data = make_folders(tmp_path / "data", n=4)
    scores = {}
    for degrade in (None, "jpeg:5"):
        out = tmp_path / str(degrade)
        flags = ["--degrade", degrade] if degrade else []
        result = runner.invoke(app, ["eval", "--data", str(data), "--model", str(tiny_tflite), "--out", str(out),
                                     "--json", *flags])
        assert result.exit_code == 0, result.output
        summary = json.loads(result.output)
        assert summary["header"]["photos"] == ("degraded (jpeg:5)" if degrade else "as they are")
        scores[degrade] = summary["models"]["model.tflite"]["all"]["sad"]
    assert scores["jpeg:5"] != scores[None]  # the model saw other pixels
    shown = runner.invoke(app, ["eval", "--data", str(data), "--model", str(tiny_tflite), "--out", str(tmp_path / "t"),
                                "--degrade", "rotate:7"])
    assert shown.exit_code == 0 and "degraded (rotate:7)" in shown.output, shown.output
    for bad, reason in (("spin:3", "expected one of rotate:N"), ("jpeg:0", "jpeg takes quality 1-100"),
                        ("blur:x", "expected one of")):
        result = runner.invoke(app, ["eval", "--data", str(data), "--model", str(tiny_tflite), "--degrade", bad])
        assert result.exit_code == 2 and reason in result.output, result.output
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
