"""Shared fixtures: tiny synthetic people (an ellipse 'body' and a circle 'head' on a textured
background) in each data layout, and small trained models built once per session."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import cv2
import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]


def synthetic_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """The cool, noisy RGB background of synthetic_pair: no figure on it."""
    bg = rng.integers(0, 90, size=(height, width, 3)).astype(np.uint8)
    bg[..., 2] = np.clip(bg[..., 2].astype(int) + 120, 0, 255)  # blue-ish
    return bg


def synthetic_pair(seed: int, width: int = 48, height: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image and its 0/255 mask: a warm-coloured figure on a cool, noisy background."""
    rng = np.random.default_rng(seed)
    bg = synthetic_background(rng, width, height)
    mask = np.zeros((height, width), np.uint8)
    cx = int(rng.integers(width // 3, 2 * width // 3))
    cv2.ellipse(mask, (cx, int(height * 0.7)), (width // 5, height // 3), 0, 0, 360, 255, -1)
    cv2.circle(mask, (cx, int(height * 0.3)), max(3, width // 9), 255, -1)
    person = np.zeros_like(bg)
    person[...] = (200 + rng.integers(0, 40), 120 + rng.integers(0, 40), 60)
    image = np.where(mask[..., None] > 0, person, bg)
    return cv2.cvtColor(image, cv2.COLOR_RGB2BGR), mask  # BGR for cv2.imwrite


def make_folders(root: Path, n: int = 12, size=(48, 64), manifest: bool = False) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = ["stem,source,group,label_kind,width,height"]
    for i in range(n):
        image, mask = synthetic_pair(i, *size)
        stem = f"img_{i:03d}"
        cv2.imwrite(str(root / "images" / f"{stem}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        cv2.imwrite(str(root / "masks" / f"{stem}.png"), mask)
        source = "a" if i % 3 else "b"
        rows.append(f"{stem},{source},g{i // 2},manual,{size[0]},{size[1]}")
    if manifest:
        (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


def make_aisegment(root: Path, groups: int = 3, per_group: int = 4, size=(48, 64)) -> Path:
    """The AISegment Matting Human tree: JPEG clips and RGBA mattes whose alpha is the label."""
    base = root / "matting_human_half"
    i = 0
    for g in range(groups):
        group = f"18031518{g:02d}"
        clip_dir = base / "clip_img" / group / "clip_00000000"
        matte_dir = base / "matting" / group / "matting_00000000"
        clip_dir.mkdir(parents=True)
        matte_dir.mkdir(parents=True)
        for k in range(per_group):
            image, mask = synthetic_pair(100 + i, *size)
            name = f"{group}-{k:08d}"
            cv2.imwrite(str(clip_dir / f"{name}.jpg"), image)
            rgba = np.dstack([image, mask])
            rgba[mask == 0, :3] = 0
            cv2.imwrite(str(matte_dir / f"{name}.png"), rgba)
            i += 1
    # An image without its matte: counted, not fatal.
    cv2.imwrite(str(base / "clip_img" / "1803151800" / "clip_00000000" / "orphan.jpg"), synthetic_pair(999)[0])
    return root


def sigint_reaches_child() -> None:
    """``preexec_fn`` for a child a test stops with SIGINT, as Ctrl-C would. Started in the background
    (``pytest &``, nohup), pytest and its children inherit SIGINT ignored, and the child would never see it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)

@pytest.fixture
def folders_data(tmp_path: Path) -> Path:
    return make_folders(tmp_path / "data")


@pytest.fixture
def manifest_data(tmp_path: Path) -> Path:
    return make_folders(tmp_path / "data", manifest=True)


@pytest.fixture
def aisegment_data(tmp_path: Path) -> Path:
    return make_aisegment(tmp_path / "aiseg")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A tiny classic U-Net trained for 12 epochs through the real training code (shared by tests).

    Enough images and epochs that the best epoch (by validation IoU, as in any run) is a confident model:
    with 16 images and 6 epochs an unsure first epoch sometimes scored best on its 4 validation images
    (32 images hold 8 out for validation).
    """
    from bgremove.training import TrainConfig, train

    root = tmp_path_factory.mktemp("trained")
    data = make_folders(root / "data", n=32)
    cfg = TrainConfig(data=str(data), out=str(root / "run"), epochs=12, batch_size=4, size=32, lr=5e-3,
                      encoder="classic", encoder_weights="none", base_filters=4, depth=2, val_split=0.25,
                      bn_momentum=0.7, patience=12)
    result = train(cfg)
    assert result.status == "finished"
    return root / "run"


@pytest.fixture(scope="session")
def keep_run(tmp_path_factory) -> Path:
    """A tiny MobileNetV2 U-Net trained with --aspect keep on portrait, square and landscape photos
    (model.keras takes any shape; model.tflite one entry point per shape)."""
    from bgremove.training import TrainConfig, train

    root = tmp_path_factory.mktemp("keep")
    data = make_folders(root / "data", n=8, size=(48, 64), manifest=True)
    for i, size in enumerate([(96, 54), (64, 64), (120, 64), (50, 90)] * 2):  # (width, height)
        image, mask = synthetic_pair(200 + i, *size)
        cv2.imwrite(str(data / "images" / f"wide_{i}.jpg"), image)
        cv2.imwrite(str(data / "masks" / f"wide_{i}.png"), mask)
        with open(data / "manifest.csv", "a") as fh:
            fh.write(f"wide_{i},a,w{i},manual,{size[0]},{size[1]}\n")
    cfg = TrainConfig(data=str(data), out=str(root / "run"), epochs=2, batch_size=4, size=64, lr=3e-3,
                      encoder_weights="none", head="subpixel", aspect="keep", val_split=0.2)
    result = train(cfg)
    assert result.status == "finished"
    return root / "run"


@pytest.fixture(scope="session")
def tiny_tflite(trained_run: Path) -> Path:
    return trained_run / "model.tflite"


def shared_dir(relative: str) -> Path | None:
    from bgremove.paths import find_shared

    return find_shared(relative)


@pytest.fixture
def people_data() -> Path:
    path = shared_dir("data/people")
    if path is None:
        pytest.skip("shared/data/people not found beside the project; skipping real-data test")
    return path


@pytest.fixture
def pretrained_encoder() -> Path:
    from bgremove.paths import find_pretrained_encoder

    path = find_pretrained_encoder()
    if path is None:
        pytest.skip("shared/pretrained encoder weights not found; skipping")
    return path


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
