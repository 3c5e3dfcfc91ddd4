"""Teacher models as functions of images: Depth Anything V2's input-size rule, batching and kinds,
licence notes, and how class-less segments become a fixed-size label map (hand-computed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.segmenters import (
    OverSegmenter,
    area_rank_labels,
    build_segmenter,
    masks_to_labels,
    segments_to_labels,
)
from training.teachers import (
    NC_LICENCE,
    SMALL_LICENCE,
    UNKNOWN_LICENCE,
    DepthTeacher,
    depth_input_size,
    depth_licence,
)
from training.tiny_models import build_depth_anything


@pytest.fixture(scope="module")
def da_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_depth_anything(tmp_path_factory.mktemp("da") / "tiny")


@pytest.fixture(scope="module")
def da_metric(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_depth_anything(tmp_path_factory.mktemp("da_metric") / "tiny", metric=True)


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((375, 1242), (518, 1722)),  # KITTI: 1242 * 518/375 = 1715.6 -> 123 * 14
        ((480, 640), (518, 686)),  # NYU: 640 * 518/480 = 690.7 -> 49 * 14
        ((1242, 375), (1722, 518)),  # portrait
        ((100, 100), (518, 518)),
        ((228, 304), (518, 686)),  # 304 * 518/228 = 690.7
    ],
)
def test_depth_input_size_is_da_v2_rule(size, expected) -> None:
    assert depth_input_size(*size, 518) == expected
    assert depth_input_size(375, 1242, 140) == (140, 462)  # 463.7 -> 33 * 14


def test_depth_licence_from_name() -> None:
    assert depth_licence("depth-anything/Depth-Anything-V2-Small-hf") == SMALL_LICENCE
    assert depth_licence("/models/depth_anything_v2_vits") == SMALL_LICENCE
    for name in ("depth-anything/Depth-Anything-V2-Base-hf", "Depth-Anything-V2-Large-hf"):
        assert depth_licence(name) == NC_LICENCE
    assert depth_licence("/tmp/my_model") == UNKNOWN_LICENCE


def test_predict_keeps_order_and_sizes_across_batches(da_model: Path, kitti_frame, nyu_frames):
    """Images of two input sizes, interleaved: each map comes back at its own image's size and
    place, and the batch size does not change the values."""
    import cv2

    kitti = np.ascontiguousarray(kitti_frame[0])
    nyu = np.ascontiguousarray(cv2.imread(str(nyu_frames / "b" / "rgb.png"))[:, :, ::-1])
    images = [kitti, nyu, kitti[:, ::-1].copy(), nyu[::-1].copy()]
    one = DepthTeacher(da_model, "cpu", input_size=70, batch_size=1).predict(images)
    four = DepthTeacher(da_model, "cpu", input_size=70, batch_size=4).predict(images)
    assert [m.shape for m in one] == [im.shape[:2] for im in images]
    for a, b in zip(one, four, strict=True):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert not np.allclose(one[0], one[2])  # a flipped image is another input
    assert one[0].std() > 1e-3  # the tiny model's maps vary over the image


def test_kinds_relative_and_metric(da_model: Path, da_metric: Path, kitti_frame) -> None:
    relative = DepthTeacher(da_model, "cpu", input_size=70)
    assert relative.kind == "disparity" and relative.meta()["kind"] == "disparity"
    assert relative.predict_disparity([kitti_frame[0]])[0].shape == kitti_frame[0].shape[:2]
    metric = DepthTeacher(da_metric, "cpu", input_size=70)
    assert metric.kind == "depth" and metric.meta()["kind"] == "depth"
    with pytest.raises(ValueError, match="metric Depth Anything"):
        metric.predict_disparity([kitti_frame[0]])


def test_bad_models_and_settings(tmp_path: Path, da_model: Path) -> None:
    from transformers import Dinov2Config, Dinov2Model

    Dinov2Model(
        Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=1)
    ).save_pretrained(tmp_path / "dinov2")
    with pytest.raises(ValueError, match="holds a 'dinov2' model, not 'depth_anything'"):
        DepthTeacher(tmp_path / "dinov2", "cpu")
    with pytest.raises(ValueError, match="cannot load a model config from"):
        DepthTeacher(tmp_path / "missing", "cpu")
    with pytest.raises(ValueError, match="multiple of 14"):
        DepthTeacher(da_model, "cpu", input_size=500)


def test_area_rank_labels_by_hand() -> None:
    assert area_rank_labels([5, 20, 1, 20], 3).tolist() == [2, 0, -1, 1]  # ties: input order
    assert area_rank_labels([], 3).tolist() == []


def test_masks_to_labels_by_hand() -> None:
    """4 x 4: a big mask (10 px), a medium one inside it (4 px), a small one (2 px) that
    overlaps both, and a 1-pixel mask past K = 3."""
    big = np.zeros((4, 4), bool)
    big[:, :2] = True
    big[0, 2:] = True  # 10 px
    medium = np.zeros((4, 4), bool)
    medium[1:3, :2] = True  # 4 px
    small = np.zeros((4, 4), bool)
    small[2, 1:3] = True  # 2 px
    tiny = np.zeros((4, 4), bool)
    tiny[3, 3] = True  # 1 px, rank 3 >= K
    labels = masks_to_labels([small, big, tiny, medium], 3, (4, 4))
    expected = np.array(
        [
            [0, 0, 0, 0],
            [1, 1, -1, -1],
            [1, 2, 2, -1],
            [0, 0, -1, -1],
        ]
    )
    np.testing.assert_array_equal(labels, expected)
    assert labels.dtype == np.int64
    assert (masks_to_labels([], 3, (2, 2)) == -1).all()
    with pytest.raises(ValueError, match="mask 0 is"):
        masks_to_labels([np.ones((2, 3), bool)], 3, (2, 2))


def test_segments_to_labels_by_hand() -> None:
    # areas 3: 4, 7: 3, then a tie 5: 1, 9: 1 broken by id order (np.unique sorts ids)
    segments = np.array([[7, 7, 7], [3, 3, 9], [3, 3, 5]])
    np.testing.assert_array_equal(
        segments_to_labels(segments, 3), [[1, 1, 1], [0, 0, -1], [0, 0, 2]]
    )


def test_over_segmentation_on_kitti(kitti_frame) -> None:
    rgb = kitti_frame[0]
    felz = OverSegmenter("felzenszwalb", num_classes=64)
    raw = felz.segments(rgb)
    labels = felz.segment(rgb)
    assert labels.shape == rgb.shape[:2] and labels.dtype == np.int64
    assert labels.min() >= -1 and labels.max() == 63  # more than 64 segments on a street
    assert raw.max() + 1 > 64
    assert 0.5 < (labels >= 0).mean() < 1.0  # the 64 largest cover most of the image
    slic = OverSegmenter("slic", num_classes=16)
    labels = slic.segment(rgb)
    assert labels.min() >= -1 and labels.max() <= 15 and (labels >= 0).mean() > 0.5
    assert felz.meta()["weights_free"] and felz.meta()["source"] == "felzenszwalb"


def test_build_segmenter_errors() -> None:
    with pytest.raises(ValueError, match="needs --model"):
        build_segmenter("sam")
    with pytest.raises(ValueError, match="weights-free"):
        build_segmenter("slic", model="x")
    with pytest.raises(ValueError, match="not one of"):
        build_segmenter("watershed")
    with pytest.raises(ValueError, match="num_classes"):
        build_segmenter("felzenszwalb", num_classes=0)
