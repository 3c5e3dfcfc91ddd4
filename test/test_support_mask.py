"""Depth is published only where the LiDAR supports it: real KITTI frames through DepthPipeline
(classical and a network backend), the band rules on hand-made scans, and the parameters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from depth_completion_ros.backends.classical import ClassicalBackend
from depth_completion_ros.depth_io import read_kitti_depth, read_rgb
from depth_completion_ros.frame import pipeline_around, pipeline_from_parameters
from depth_completion_ros.parameters import ParameterError, defaults, load_parameters
from depth_completion_ros.pipeline import DepthPipeline
from depth_completion_ros.projection import ProjectionConfig, project_points
from depth_completion_ros.support import SupportConfig, outside_support, support_rows


def _node_defaults() -> dict:
    return defaults()


def _top_return(points, calibration, window: int = 5) -> np.ndarray:
    """Per column, the highest plain projected return within ``window`` columns."""
    camera = calibration.camera
    hits = (
        project_points(
            points,
            calibration.T_cam_lidar,
            camera.P,
            camera.width,
            camera.height,
            ProjectionConfig(occlusion_window=0),
        )
        > 0
    )
    first = np.where(hits.any(axis=0), hits.argmax(axis=0), camera.height)
    padded = np.pad(first, window // 2, mode="edge")
    return np.lib.stride_tricks.sliding_window_view(padded, window).min(axis=1)


@pytest.fixture(scope="module")
def real(kitti_scan, kitti_calibration, kitti_image_path: Path, kitti_groundtruth_path: Path):
    """(rgb, scan, camera, T, ground truth) of the real ground-truth frame."""
    return (
        read_rgb(kitti_image_path),
        kitti_scan,
        kitti_calibration.camera,
        kitti_calibration.T_cam_lidar,
        read_kitti_depth(kitti_groundtruth_path),
    )


@pytest.fixture(scope="module")
def classical_result(real):
    rgb, scan, camera, T, _ = real
    return DepthPipeline(ClassicalBackend()).run(rgb, scan, camera, T)


def test_nothing_is_published_above_the_top_return(real, classical_result, kitti_calibration):
    dense = classical_result.dense
    top = _top_return(real[1], kitti_calibration)
    rows = np.arange(dense.shape[0])[:, None]
    published = np.isfinite(dense)
    assert not published[: int(top.min()) - SupportConfig().margin].any()  # the sky is NaN
    above = (published & (rows < top[None, :])).sum() / published.sum()
    print(f"published pixels above the top return (5-column window): {above:.4f}")
    assert above < 0.015
    # no published pixel lies more than the margin above a return of a nearby band
    band, margin = SupportConfig().band, SupportConfig().margin
    sparse_top = np.where(
        (classical_result.sparse > 0).any(axis=0), (classical_result.sparse > 0).argmax(axis=0), 999
    )
    padded = np.pad(sparse_top, 2 * band, constant_values=999)
    near_top = np.lib.stride_tricks.sliding_window_view(padded, 4 * band + 1).min(axis=1)
    first_published = np.where(published.any(axis=0), published.argmax(axis=0), 999)
    assert (first_published >= near_top - margin).all()


def test_ground_truth_stays_covered(real, classical_result):
    gt = real[4]
    coverage = np.isfinite(classical_result.dense[gt > 0]).mean()
    print(f"KITTI ground-truth pixels with a published depth: {coverage:.4f}")
    assert coverage >= 0.99


def test_switching_it_off_restores_the_whole_image(real, classical_result):
    rgb, scan, camera, T, _ = real
    full = DepthPipeline(ClassicalBackend(), support=None).run(rgb, scan, camera, T).dense
    assert np.isfinite(full).all()  # the classical fill extrapolates to the top
    limited = classical_result.dense
    assert np.isnan(limited).mean() > 0.2
    shown = np.isfinite(limited)
    np.testing.assert_array_equal(limited[shown], full[shown])


def test_every_backend_goes_through_it(real, r18_weights: Path):
    """A network backend built from node parameters gets the same mask as the classical fill;
    switched off, the network's window covers every row instead of the supported ones."""
    rgb, scan, camera, T, _ = real
    config = _node_defaults() | {"model": "selfdc_r18", "checkpoint": str(r18_weights)}
    pipeline = pipeline_from_parameters(config)
    limited = pipeline.run(rgb, scan, camera, T)
    expected = outside_support(limited.sparse, SupportConfig())
    assert np.isnan(limited.dense[expected]).all()
    # the same window unmasked: the mask only hides, it changes no published value
    unmasked = pipeline_around(pipeline.backend, config | {"limit_to_lidar_support": False})
    same_window = unmasked.run(rgb, scan, camera, T).dense
    shown = ~expected & np.isfinite(same_window)
    assert shown.sum() > 0.5 * shown.size
    np.testing.assert_array_equal(limited.dense[shown], same_window[shown])
    # the release's crop (rows 23-374) predicts above the scan too; the mask made that NaN
    sky = expected.copy()
    sky[:23] = False
    assert np.isfinite(same_window[sky]).mean() > 0.9
    # switched off in the parameters: the window covers the rows above the crop as well
    full = pipeline_from_parameters(config | {"limit_to_lidar_support": False})
    full = full.run(rgb, scan, camera, T).dense
    # (the rest: random weights' values outside [min_depth, max_depth])
    assert np.isnan(same_window[:23]).all() and np.isfinite(full[:23]).mean() > 0.9


def test_a_stray_return_does_not_open_the_sky():
    sparse = np.zeros((100, 80), np.float32)
    sparse[50::4, :] = 10.0  # scan lines from row 50 down
    sparse[5, 40] = 30.0  # one stray return far above
    first, last = support_rows(sparse, SupportConfig(band=3, margin=2))
    assert (first == 48).all() and (last == 99).all()
    sparse[5, 44] = 30.0  # two returns in neighbouring bands do count as support
    first, _ = support_rows(sparse, SupportConfig(band=3, margin=2))
    assert first[42] == 3 and (first[:30] == 48).all() and (first[57:] == 48).all()


def test_gaps_between_sparse_columns_make_no_holes():
    sparse = np.zeros((100, 160), np.float32)
    sparse[40:90:3, ::11] = 20.0  # a return every 11 columns: many 8-column bands get none
    first, last = support_rows(sparse, SupportConfig(band=8, margin=0))
    assert (first <= 40).all() and (last >= 88).all()
    # pairs of columns 16 apart: with 4-column bands, some bands and both neighbours have none
    sparse = np.zeros((100, 160), np.float32)
    sparse[40:90:3, 0::16] = sparse[40:90:3, 1::16] = 20.0
    first, last = support_rows(sparse, SupportConfig(band=4, margin=0))
    assert (first[:146] <= 40).all() and (last[:146] >= 88).all()  # 145: the last return


def test_band_and_margin_and_empty_input():
    sparse = np.zeros((60, 64), np.float32)
    sparse[20:40:2, :32] = 5.0  # returns on the left half only
    mask = outside_support(sparse, SupportConfig(band=4, margin=3))
    assert not mask[17:42, :28].any() and mask[:17, :28].all() and mask[42:, :28].all()
    assert mask[:, 40:].all()  # no returns, no support
    assert outside_support(sparse, SupportConfig(band=4, margin=1000))[:, 44:].all()
    assert outside_support(np.zeros((10, 12), np.float32)).all()
    with pytest.raises(ValueError, match="band"):
        SupportConfig(band=0)
    with pytest.raises(ValueError, match="margin"):
        SupportConfig(margin=-1)


@pytest.mark.parametrize(
    ("name", "value"),
    [("support_band", 0), ("support_margin", -3), ("support_band", 2.5)],
)
def test_bad_parameters_are_refused_by_name(name: str, value) -> None:
    """The parameter table (process_bag, training) and the node's own declaration refuse bad
    values."""
    with pytest.raises(ParameterError, match=name):
        load_parameters(None, {name: value})

    import rclpy
    from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
    from rclpy.parameter import Parameter

    from depth_completion_ros.node import DepthCompletionNode

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=99)
    try:
        with pytest.raises(
            (InvalidParameterValueException, InvalidParameterTypeException), match=name
        ):
            DepthCompletionNode(context=context, parameter_overrides=[Parameter(name, value=value)])
    finally:
        rclpy.try_shutdown(context=context)


def test_limit_parameter_must_be_boolean() -> None:
    with pytest.raises(ParameterError, match="limit_to_lidar_support"):
        load_parameters(None, {"limit_to_lidar_support": "no"})


def test_node_defaults_are_the_support_defaults() -> None:
    """The demo marks the unsupported region with SupportConfig(); the node must agree."""
    defaults = _node_defaults()
    assert defaults["limit_to_lidar_support"] is True
    assert defaults["support_band"] == SupportConfig().band
    assert defaults["support_margin"] == SupportConfig().margin
