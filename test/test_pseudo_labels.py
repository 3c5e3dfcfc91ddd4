"""``python -m training.pseudo_labels`` on real KITTI images: the weights-free over-segmentations,
tiny random-weight SAM and OneFormer; label range, sizes, meta (K), resume, bad arguments."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training import pseudo_labels
from training.cache import Manifest, read_meta, read_segments, segments_path
from training.segmenters import OverSegmenter, SamSegmenter
from training.tiny_models import build_depth_anything, build_oneformer, build_sam

DRIVE = "2011_09_26_drive_0001_sync"
REL = Path("raw/2011_09_26") / DRIVE / "image_02/data/0000000005"


@pytest.fixture
def kitti_dir(tmp_path: Path, data_root: Path) -> Path:
    """Two real KITTI frames in a folder (links into the shared data)."""
    seq = data_root / "kitti_raw_seq/2011_09_26/2011_09_26_drive_0000_sync/image_02/data"
    root = tmp_path / "images"
    root.mkdir()
    for name in ("0000000000.png", "0000000001.png"):
        (root / name).symlink_to(seq / name)
    return root


def run(method: str, images: str | Path, out: Path, *extra: str) -> int:
    args = ["--method", method, "--images", str(images), "--out", str(out), "--device", "cpu"]
    return pseudo_labels.main([*args, *extra])


def check_labels(labels: np.ndarray, shape: tuple[int, int], num_classes: int) -> None:
    assert labels.shape == shape and labels.dtype == np.int64
    assert labels.min() >= -1 and labels.max() <= num_classes - 1


def test_felzenszwalb_real_run_equals_direct_call(
    kitti_dc_frame: Path, kitti_frame, tmp_path: Path
) -> None:
    out = tmp_path / "felz"
    images = f"kitti:{kitti_dc_frame}:train"
    assert run("felzenszwalb", images, out, "--max-images", "1", "--num-classes", "32") == 0
    labels = read_segments(segments_path(out, REL))
    check_labels(labels, (375, 1242), 32)
    assert labels.max() == 31 and (labels == -1).any()  # a street has more than 32 segments
    direct = OverSegmenter("felzenszwalb", num_classes=32).segment(kitti_frame[0])
    np.testing.assert_array_equal(labels, direct)
    meta = read_meta(out)
    assert meta["source"] == "felzenszwalb" and meta["weights_free"] is True
    assert meta["num_classes"] == 32 and meta["labels"] == "area_rank"
    assert meta["params"] == {"scale": 200.0, "sigma": 0.8, "min_size": 200}


def test_slic_resume_and_deleted_output(kitti_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "slic"
    assert run("slic", kitti_dir, out, "--num-classes", "16") == 0
    assert "2 written, 0 already done" in capsys.readouterr().out
    for name in ("0000000000", "0000000001"):
        labels = read_segments(segments_path(out, Path(name)))
        check_labels(labels, (375, 1242), 16)
        assert (labels >= 0).mean() > 0.5
    assert read_meta(out)["params"]["n_segments"] == 16
    assert run("slic", kitti_dir, out, "--num-classes", "16") == 0
    assert "0 written, 2 already done" in capsys.readouterr().out
    segments_path(out, Path("0000000001")).unlink()
    assert run("slic", kitti_dir, out, "--num-classes", "16") == 0
    assert "1 written, 1 already done" in capsys.readouterr().out
    assert {e["key"] for e in Manifest.entries(out)} == {"0000000000", "0000000001"}
    # another K into the same cache is refused
    assert run("slic", kitti_dir, out, "--num-classes", "8") == 2
    assert "num_classes: cache has 16, this run 8" in capsys.readouterr().err


def test_sam_tiny_model_on_kitti(kitti_dc_frame: Path, kitti_frame, tmp_path: Path) -> None:
    model = build_sam(tmp_path / "sam")
    out = tmp_path / "sam_labels"
    options = ["--points-per-side", "8", "--pred-iou-thresh", "-1"]
    options += ["--stability-score-thresh", "0.5", "--num-classes", "8"]
    images = f"kitti:{kitti_dc_frame}:train"
    assert run("sam", images, out, "--model", str(model), "--max-images", "1", *options) == 0
    labels = read_segments(segments_path(out, REL))
    check_labels(labels, (375, 1242), 8)
    assert (labels >= 0).any()  # at least one mask survived the filters
    meta = read_meta(out)
    assert meta["source"] == "sam" and meta["num_classes"] == 8 and not meta["weights_free"]
    segmenter = SamSegmenter(
        model, "cpu", 8, points_per_side=8, pred_iou_thresh=-1, stability_score_thresh=0.5
    )
    np.testing.assert_array_equal(labels, segmenter.segment(kitti_frame[0]))


def test_oneformer_tiny_model_on_kitti(kitti_dc_frame: Path, tmp_path: Path) -> None:
    model = build_oneformer(tmp_path / "oneformer", num_labels=5)
    out = tmp_path / "of_labels"
    images = f"kitti:{kitti_dc_frame}:train"
    assert run("oneformer", images, out, "--model", str(model), "--max-images", "1") == 0
    labels = read_segments(segments_path(out, REL))
    check_labels(labels, (375, 1242), 5)
    assert labels.min() >= 0  # semantic: every pixel gets a class
    meta = read_meta(out)
    assert meta["source"] == "oneformer" and meta["num_classes"] == 5
    assert meta["class_names"] == [f"class{i}" for i in range(5)]


def test_bad_arguments_fail_clearly(tmp_path: Path, kitti_dir: Path, capsys) -> None:
    assert run("sam", kitti_dir, tmp_path / "out") == 2
    assert "needs --model" in capsys.readouterr().err
    depth = build_depth_anything(tmp_path / "da")
    assert run("sam", kitti_dir, tmp_path / "out", "--model", str(depth)) == 2
    assert "holds a 'depth_anything' model, not 'sam'" in capsys.readouterr().err
    assert run("oneformer", kitti_dir, tmp_path / "out", "--model", str(depth)) == 2
    assert "not 'oneformer'" in capsys.readouterr().err
    assert run("felzenszwalb", kitti_dir, tmp_path / "out", "--model", str(depth)) == 2
    assert "weights-free" in capsys.readouterr().err
    assert run("slic", kitti_dir, tmp_path / "out", "--max-images", "0") == 2
    assert "--max-images must be >= 1" in capsys.readouterr().err
    assert run("slic", tmp_path / "missing", tmp_path / "out") == 2
    assert "image folder" in capsys.readouterr().err
