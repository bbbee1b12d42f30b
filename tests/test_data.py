"""Data layouts, group splits and bad samples, on tiny trees built in a temp folder."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from bgremove.data import DataError, Sample, discover, load_all, read_pair, split_by_group


def test_folders_layout_pairs_by_stem(folders_data: Path):
    (folders_data / "images" / "lonely.jpg").write_bytes((folders_data / "images" / "img_000.jpg").read_bytes())
    found = discover(folders_data)
    assert found.layout == "folders"
    assert len(found.samples) == 12
    assert [p.name for p in found.unmatched] == ["lonely.jpg"]
    assert all(s.image.stem == s.mask.stem for s in found.samples)


def test_manifest_layout_reads_groups_and_sources(manifest_data: Path):
    found = discover(manifest_data)
    assert found.layout == "manifest"
    assert {s.group for s in found.samples} == {f"g{i}" for i in range(6)}
    assert {s.source for s in found.samples} == {"a", "b"}


def test_aisegment_layout_uses_matte_alpha(aisegment_data: Path):
    found = discover(aisegment_data)
    assert found.layout == "aisegment"
    assert len(found.samples) == 12
    assert len({s.group for s in found.samples}) == 3
    assert [p.name for p in found.unmatched] == ["orphan.jpg"]
    image, mask = read_pair(found.samples[0])
    assert image.shape[:2] == mask.shape
    # The label is the 4th channel: binary 0/255 with both values present.
    assert set(np.unique(mask)) == {0, 255}


def test_layout_can_be_forced_and_is_checked(folders_data: Path):
    assert discover(folders_data, "folders").layout == "folders"
    with pytest.raises(DataError, match="AISegment"):
        discover(folders_data, "aisegment")


def test_no_pairs_is_a_clear_error(tmp_path: Path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(DataError, match="no image/mask pairs"):
        discover(tmp_path)
    with pytest.raises(DataError, match="no known layout"):
        discover(tmp_path / "images")


def test_split_keeps_groups_whole_and_is_deterministic():
    samples = [Sample(Path(f"{i}.jpg"), Path(f"{i}.png"), f"seq{i // 10}", "video") for i in range(70)]
    samples += [Sample(Path(f"p{i}.jpg"), Path(f"p{i}.png"), f"p{i}", "portrait") for i in range(100)]
    train, val = split_by_group(samples, 0.1, seed=3)
    assert not {s.group for s in train} & {s.group for s in val}
    assert len(train) + len(val) == len(samples)
    # Each source gets its share: 1 of 7 sequences, 10 of 100 portraits.
    assert {s.group for s in val if s.source == "video"} and len({s.group for s in val if s.source == "video"}) == 1
    assert len([s for s in val if s.source == "portrait"]) == 10
    assert split_by_group(samples, 0.1, seed=3) == (train, val)
    assert split_by_group(samples, 0.1, seed=4) != (train, val)


def test_bad_samples_are_skipped_with_reasons(folders_data: Path):
    (folders_data / "images" / "img_001.jpg").write_bytes(b"not a jpeg")
    cv2.imwrite(str(folders_data / "masks" / "img_002.png"), np.zeros((10, 10), np.uint8))
    loaded = load_all(discover(folders_data).samples, 32, workers=2)
    assert len(loaded.samples) == 10
    assert np.stack(loaded.images).shape == (10, 32, 32, 3) and np.stack(loaded.masks).shape == (10, 32, 32)
    reasons = dict((p.name, r) for p, r in loaded.skipped)
    assert "cannot read image" in reasons["img_001.jpg"]
    assert "mask is 10x10" in reasons["img_002.jpg"]
