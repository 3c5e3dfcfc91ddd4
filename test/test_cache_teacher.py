"""``python -m training.cache_teacher`` on the real KITTI and NYU images with a tiny random-weight
Depth Anything V2: layout, float16, equality with a direct model call, resume, sharding, bad
images, wrong models; and the image sources a job can be given."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from training import cache_teacher
from training.cache import Manifest, read_meta, read_teacher_map, teacher_path
from training.image_sources import list_images
from training.teachers import depth_input_size, preprocess_depth
from training.tiny_models import build_depth_anything

REPO = Path(__file__).resolve().parents[1]
DRIVE = "2011_09_26_drive_0001_sync"


@pytest.fixture(scope="module")
def da_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_depth_anything(tmp_path_factory.mktemp("da") / "tiny")


@pytest.fixture
def image_dir(tmp_path: Path, data_root: Path) -> Path:
    """Real KITTI and NYU images in nested folders (links into the shared data)."""
    root = tmp_path / "images"
    seq = data_root / "kitti_raw_seq/2011_09_26/2011_09_26_drive_0000_sync/image_02/data"
    (root / "kitti").mkdir(parents=True)
    for name in ("0000000000.png", "0000000001.png", "0000000002.png"):
        (root / "kitti" / name).symlink_to(seq / name)
    (root / "nyu" / "a").mkdir(parents=True)
    (root / "nyu" / "a" / "rgb_00000.jpg").symlink_to(data_root / "nyu_frames/a/rgb/rgb_00000.jpg")
    (root / "nyu" / "b.png").symlink_to(data_root / "nyu_frames/b/rgb.png")
    return root


def run(model: Path, images: str | Path, out: Path, *extra: str) -> int:
    args = ["--model", str(model), "--images", str(images), "--out", str(out), "--device", "cpu"]
    return cache_teacher.main([*args, *extra])


def keys(out: Path) -> list[str]:
    return sorted(entry["key"] for entry in Manifest.entries(out))


def test_cache_layout_dtype_and_meta(da_model: Path, image_dir: Path, tmp_path: Path, capsys):
    out = tmp_path / "cache"
    assert run(da_model, image_dir, out, "--input-size", "70", "--batch-size", "2") == 0
    assert "5 written, 0 already done, 0 skipped of 5 images" in capsys.readouterr().out
    import cv2

    for rel in ("kitti/0000000000", "kitti/0000000002", "nyu/a/rgb_00000", "nyu/b"):
        path = teacher_path(out, Path(rel))
        stored = np.load(path, allow_pickle=False)
        assert stored.dtype == np.float16
        image = cv2.imread(str(next(image_dir.glob(f"{rel}.*"))))
        assert stored.shape == image.shape[:2]
        assert np.isfinite(stored).all() and stored.astype(np.float32).std() > 0
    meta = read_meta(out)
    assert meta["kind"] == "disparity" and meta["model"] == str(da_model)
    assert meta["input_size"] == 70 and meta["dtype"] == "float16"
    assert meta["licence"].startswith("unknown")
    assert keys(out) == [
        "kitti/0000000000",
        "kitti/0000000001",
        "kitti/0000000002",
        "nyu/a/rgb_00000",
        "nyu/b",
    ]


def test_cached_map_equals_direct_model_call(
    da_model: Path, kitti_dc_frame: Path, kitti_frame, tmp_path: Path
):
    """The KITTI split's first image through the command (default 518 input) against the model
    called by hand on the image read independently, with the one preprocessing function."""
    from transformers import AutoModelForDepthEstimation

    rgb = kitti_frame[0]
    out = tmp_path / "cache"
    assert run(da_model, f"kitti:{kitti_dc_frame}:train", out, "--max-images", "1") == 0
    rel = Path("raw/2011_09_26") / DRIVE / "image_02/data/0000000005"
    assert keys(out) == [rel.as_posix()]
    cached = read_teacher_map(teacher_path(out, rel))
    model = AutoModelForDepthEstimation.from_pretrained(str(da_model)).eval()
    size = depth_input_size(*rgb.shape[:2], 518)
    assert size == (518, 1722)
    with torch.no_grad():
        pred = model(pixel_values=preprocess_depth([rgb], size)).predicted_depth
        full = torch.nn.functional.interpolate(
            pred[:, None], rgb.shape[:2], mode="bilinear", align_corners=True
        )[0, 0].numpy()
    assert cached.shape == (375, 1242)
    np.testing.assert_allclose(cached, full.astype(np.float16).astype(np.float32), atol=1e-3)


def test_resume_skips_finished_and_redoes_deleted(
    da_model: Path, image_dir: Path, tmp_path: Path, capsys
):
    out = tmp_path / "cache"
    assert run(da_model, image_dir, out, "--input-size", "70") == 0
    capsys.readouterr()
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.npy")}
    assert run(da_model, image_dir, out, "--input-size", "70") == 0
    assert "0 written, 5 already done" in capsys.readouterr().out
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("*.npy")}
    deleted = teacher_path(out, Path("kitti/0000000001"))
    deleted.unlink()
    assert run(da_model, image_dir, out, "--input-size", "70") == 0
    assert "1 written, 4 already done" in capsys.readouterr().out
    assert deleted.is_file()
    # another input size into the same cache is refused, naming the setting
    assert run(da_model, image_dir, out, "--input-size", "140") == 2
    assert "input_size: cache has 70, this run 140" in capsys.readouterr().err


def test_two_ranks_cover_every_image_once(
    da_model: Path, image_dir: Path, tmp_path: Path, monkeypatch
):
    out = tmp_path / "cache"
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in ("1", "0"):
        monkeypatch.setenv("RANK", rank)
        assert run(da_model, image_dir, out, "--input-size", "70") == 0
    per_rank = [
        [
            json.loads(line)["key"]
            for line in (out / f"manifest.rank{r}.jsonl").read_text().splitlines()
        ]
        for r in (0, 1)
    ]
    assert len(per_rank[0]) == 3 and len(per_rank[1]) == 2
    assert sorted(per_rank[0] + per_rank[1]) == keys(out) and len(set(keys(out))) == 5
    assert len(list(out.rglob("*.npy"))) == 5


def test_unreadable_image_skipped_and_counted(
    da_model: Path, image_dir: Path, tmp_path: Path, capsys, caplog
):
    broken = image_dir / "kitti" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "cache"
    with caplog.at_level(logging.WARNING):
        assert run(da_model, image_dir, out, "--input-size", "70") == 0
    assert "5 written, 0 already done, 1 skipped (unreadable: 1) of 6" in capsys.readouterr().out
    assert f"{broken}: cannot be decoded as an image" in caplog.text
    assert "kitti/broken" not in keys(out) and len(keys(out)) == 5


def test_wrong_model_folder_fails_clearly(tmp_path: Path, image_dir: Path, capsys) -> None:
    from transformers import Dinov2Config, Dinov2Model

    folder = tmp_path / "dinov2"
    config = Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=1)
    Dinov2Model(config).save_pretrained(folder)
    assert run(folder, image_dir, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "holds a 'dinov2' model, not 'depth_anything'" in err
    assert "Depth-Anything-V2-Small-hf" in err
    assert run(tmp_path / "nothing", image_dir, tmp_path / "out") == 2
    assert "cannot load a model config from" in capsys.readouterr().err
    assert run(folder, tmp_path / "no_images", tmp_path / "out") == 2
    assert "not found" in capsys.readouterr().err


def test_command_line_nyu_and_licence_note(tmp_path: Path, nyu_frames: Path) -> None:
    """The real entry point in its own process, with a model folder named like a Large model
    (CC-BY-NC-4.0: the note must be printed)."""
    model = build_depth_anything(tmp_path / "Depth-Anything-V2-Large-tiny")
    out = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "training.cache_teacher", "--model", str(model)]
    cmd += ["--images", f"nyu:{nyu_frames}", "--out", str(out), "--input-size", "70"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "CC-BY-NC-4.0" in result.stderr
    assert "4 written" in result.stdout
    assert keys(out) == ["a/rgb/rgb_00000", "a/rgb/rgb_00050", "a/rgb/rgb_00100", "b/rgb"]
    assert read_teacher_map(teacher_path(out, Path("b/rgb"))).shape == (480, 640)


def test_image_sources(kitti_dc_frame: Path, nyu_frames: Path, tmp_path: Path) -> None:
    kitti = list_images(f"kitti:{kitti_dc_frame}:train")
    assert kitti.root == kitti_dc_frame
    assert [p.relative_to(kitti_dc_frame).as_posix() for p in kitti.paths] == [
        f"raw/2011_09_26/{DRIVE}/image_0{c}/data/0000000005.png" for c in (2, 3)
    ]
    assert all(p.is_file() for p in kitti.paths)
    nyu = list_images(f"nyu:{nyu_frames}")
    assert [p.name for p in nyu.paths] == [
        "rgb_00000.jpg",
        "rgb_00050.jpg",
        "rgb_00100.jpg",
        "rgb.png",
    ]
    assert len(list_images(nyu_frames).paths) == 8  # a plain folder: depth PNGs too
    with pytest.raises(ValueError, match="is not one of"):
        list_images(f"kitti:{kitti_dc_frame}:test")
    with pytest.raises(FileNotFoundError, match="data_depth_velodyne"):
        list_images(f"kitti:{tmp_path}:train")
    with pytest.raises(ValueError, match="no images found"):
        list_images(tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        list_images(tmp_path / "missing")


def test_sparse_to_dense_h5_files(da_model: Path, nyu_frames: Path, tmp_path: Path) -> None:
    """NYU in the Sparse-to-Dense layout (``rgb`` 3 x H x W uint8 in .h5), built from a real
    frame: the map has the image's size and equals the one of the same image as a PNG."""
    import cv2
    import h5py

    rgb = cv2.imread(str(nyu_frames / "b" / "rgb.png"))[:, :, ::-1]
    root = tmp_path / "nyu"
    (root / "train" / "scene").mkdir(parents=True)
    with h5py.File(root / "train" / "scene" / "00001.h5", "w") as f:
        f["rgb"] = np.ascontiguousarray(rgb.transpose(2, 0, 1))
        f["depth"] = np.ones(rgb.shape[:2], np.float32)
    (root / "train" / "scene" / "rgb_copy.png").symlink_to(nyu_frames / "b" / "rgb.png")
    out = tmp_path / "cache"
    assert run(da_model, f"nyu:{root}", out, "--input-size", "70") == 0
    from_h5 = read_teacher_map(teacher_path(out, Path("train/scene/00001")))
    from_png = read_teacher_map(teacher_path(out, Path("train/scene/rgb_copy")))
    assert from_h5.shape == (480, 640)
    np.testing.assert_array_equal(from_h5, from_png)
