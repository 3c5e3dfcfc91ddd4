"""The network backend on any image size: which part of the image the network sees, at what
scale, and how its output comes back.

Cameras are simulated (the demo's street, a KITTI-like 64-beam LiDAR) at 640x480, 1242x375
and 1920x1200; the network is a probe whose output encodes its own pixel coordinates, so every
restored value can be traced to the network pixel it came from, and which must get input sizes
of the right multiple. KITTI's own frame runs the random-weight selfdc_r18 from conftest.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from depth_completion_ros.backends.network import (
    CONTEXT_ROWS,
    NetworkBackend,
    adjust_intrinsics,
    plan_geometry,
)
from depth_completion_ros.networks.registry import KITTI_FOCAL, get_model_spec
from depth_completion_ros.projection import ProjectionConfig, project_points
from depth_completion_ros.support import SupportConfig, outside_support

KITTI = get_model_spec("selfdc_r18").input_spec("kitti")


class Probe(nn.Module):
    """Output = 1 + y / 2 + x / 8 + 2000 * batch index (positive, distinct per pixel); records
    every call's inputs and output, and refuses sizes that are not multiples of 32."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict] = []
        self.scale = nn.Parameter(torch.ones(()))  # so .float()/.to() have something to move

    def forward(self, image: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        b, _, h, w = image.shape
        assert h % 32 == 0 and w % 32 == 0, (h, w)
        y = torch.arange(h, dtype=torch.float32).view(1, 1, h, 1)
        x = torch.arange(w, dtype=torch.float32).view(1, 1, 1, w)
        n = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1)
        out = (1 + y / 2 + x / 8 + 2000 * n) * self.scale
        self.calls.append({"image": image.clone(), "sparse": sparse.clone(), "out": out})
        return out


def probe_backend(**kwargs) -> NetworkBackend:
    return NetworkBackend(model="selfdc_r18", net=Probe(), device="cpu", **kwargs)


# --- simulated cameras ------------------------------------------------------------------------


CAMERAS = {  # name: (width, height, fx): a 65 deg VGA camera, KITTI's, a 88 deg 1920x1200
    "640x480": (640, 480, 500.0),
    "1242x375": (1242, 375, KITTI_FOCAL),
    "1920x1200": (1920, 1200, 1000.0),
}


@pytest.fixture(scope="module")
def street_scan():
    """One 64-beam scan of the demo's street and the LiDAR->camera transform of its rig."""
    from depth_completion_ros.simulation.lidar import LidarModel
    from depth_completion_ros.simulation.street_scene import CameraRig, make_street, scan_lidar

    scene = make_street(seed=3)
    pose = np.eye(4)
    pose[:3, 3] = (20.0, -1.75, CameraRig().lidar_height)
    points = scan_lidar(scene, LidarModel.hdl64(), pose, rng=np.random.default_rng(3))
    return points, CameraRig().T_velo_to_cam


def camera_frame(street_scan, name: str):
    """(rgb, sparse, K) of the scan seen by camera ``name`` (centred principal point)."""
    width, height, fx = CAMERAS[name]
    points, T = street_scan
    K = np.array([[fx, 0, (width - 1) / 2], [0, fx, (height - 1) / 2], [0, 0, 1.0]])
    if name == "1242x375":
        K[0, 2], K[1, 2] = 609.5593, 172.854  # KITTI's own
    P = np.hstack([K, np.zeros((3, 1))])
    sparse = project_points(points, T, P, width, height, ProjectionConfig())
    rgb = np.random.default_rng(height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return rgb, sparse, K


@pytest.mark.parametrize("mode", ["native", "resize"])
@pytest.mark.parametrize("name", list(CAMERAS))
def test_every_lidar_supported_pixel_gets_the_network(street_scan, name, mode):
    rgb, sparse, K = camera_frame(street_scan, name)
    supported = ~outside_support(sparse, SupportConfig())
    assert supported.mean() > 0.2, "the simulated LiDAR should cover a good part of the image"
    backend = probe_backend(input_mode=mode)
    out = backend.complete(rgb, sparse, K)
    coverage = (out[supported] > 0).mean()
    assert coverage >= 0.99, f"{name} {mode}: {coverage:.4f} of LiDAR-supported pixels"
    assert coverage == 1.0  # nothing is lost for geometric reasons
    height, width = sparse.shape
    if mode == "native" and height >= 352 and width >= 1216:
        # The rule before this one (the bottom 352 x centred 1216 crop) left supported pixels out.
        crop = np.zeros_like(supported)
        crop[height - 352 :, (width - 1216) // 2 : (width - 1216) // 2 + 1216] = True
        assert crop[supported].mean() < 0.99
    # The network saw the supported rows with their context, not the sky above them.
    g = backend.plan(*sparse.shape, backend.top_row(sparse), backend.scale(K))
    top = int(np.flatnonzero(supported.any(axis=1))[0])
    assert g.y0 <= max(top * g.sy - CONTEXT_ROWS, 0) + 1
    if name == "1920x1200":
        assert g.y0 > 0 and g.net_size[0] < g.rh  # the upper rows are not run
        if mode == "resize":  # fx 1000 -> KITTI's 721.5: 0.72 of the size
            assert (g.rh, g.rw) == (866, 1385)


def test_kitti_sized_frames_get_the_release_crop_and_edge_tiles():
    """KITTI's depth-completion sizes: the bottom 352 rows and centred 1216 columns (as the
    weights were evaluated) plus two 32-wide tiles for the columns left and right of it."""
    for height, width in ((375, 1242), (376, 1241), (370, 1224), (370, 1226), (374, 1238)):
        g = plan_geometry(height, width, KITTI, top_row=120)
        x0 = (width - 1216) // 2
        assert (g.y0, g.x0, g.ch, g.cw, g.net_size) == (height - 352, x0, 352, 1216, (352, 1216))
        assert g.tiles == ((0, 0, x0), (width - 32, x0 + 1216, width))
        assert g.tile_width == 32 and g.columns == (0, width)
    # The LiDAR reaching above the crop's rows: every row it supports is run instead.
    g = plan_geometry(375, 1242, KITTI, top_row=10)
    assert (g.y0, g.ch, g.top, g.net_size, g.tiles) == (0, 375, 4, (384, 1248), ())
    # No support at all (top_row = height): still the release crop.
    assert plan_geometry(375, 1242, KITTI, top_row=375).ch == 352


def test_kitti_frame_equals_the_release_crop(kitti_frame, r18_weights):
    """On KITTI's own frame the window is today's bottom-352 x centred-1216 crop, and its
    output equals the network run on that crop alone, as before this geometry existed; the
    13 columns on either side, NaN before, now get the edge tiles' output."""
    rgb, sparse, K = kitti_frame
    backend = NetworkBackend(model="selfdc_r18", checkpoint=r18_weights, device="cpu")
    out = backend.complete(rgb, sparse, K)
    # The pinned path: crop, ImageNet statistics on 0-1 values (the backend's arithmetic,
    # x * (1 / 255 / std) - mean / std, as before), metres, the network.

    def run(rows, cols):
        image = torch.from_numpy(rgb[rows, cols].copy()).permute(2, 0, 1)[None].float()
        image = image * backend._norm_a + backend._norm_b
        dep = torch.from_numpy(sparse[rows, cols].copy())[None, None]
        layout = torch.channels_last
        with torch.inference_mode():
            image, dep = (
                image.contiguous(memory_format=layout),
                dep.contiguous(memory_format=layout),
            )
            pred = backend.spec.predict(backend.net, image, dep, None)
        return pred[:, 0].clamp(min=0).numpy()

    want = run(slice(23, 375), slice(13, 1229))[0]
    diff = np.abs(out[23:, 13:1229] - want).max()
    assert diff <= 1e-6 * want.max(), diff  # float tolerance (bit-equal on this machine)
    left, right = run(slice(23, 375), slice(0, 32))[0], run(slice(23, 375), slice(1210, 1242))[0]
    # the tiles run as one batch of two: another summation order, the same values
    np.testing.assert_allclose(out[23:, :13], left[:, :13], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out[23:, 1229:], right[:, 19:], rtol=1e-4, atol=1e-4)
    assert (out[23:, :13] > 0).any() and (out[23:, 1229:] > 0).any()
    assert (out[:23] == 0).all()  # above the window: the pipeline's NaN (no LiDAR there)


# --- the mapping back onto the image, at its exact edges --------------------------------------


def bilinear(a: np.ndarray, v: np.ndarray, u: np.ndarray) -> np.ndarray:
    """``a`` sampled at (v, u) (arrays of the same shape) with bilinear weights, float64."""
    v0 = np.clip(np.floor(v).astype(int), 0, a.shape[0] - 1)
    u0 = np.clip(np.floor(u).astype(int), 0, a.shape[1] - 1)
    v1, u1 = np.minimum(v0 + 1, a.shape[0] - 1), np.minimum(u0 + 1, a.shape[1] - 1)
    fv, fu = v - v0, u - u0
    a = a.astype(np.float64)
    top = a[v0, u0] * (1 - fu) + a[v0, u1] * fu
    bottom = a[v1, u0] * (1 - fu) + a[v1, u1] * fu
    return top * (1 - fv) + bottom * fv


def network_canvas(backend: NetworkBackend, g) -> np.ndarray:
    """What the network answered over the resized image's window rows and covered columns,
    assembled from the probe's recorded outputs (window, then each tile's strip)."""
    calls = backend.net.calls
    window = calls[0]["out"][0, 0, g.top : g.top + g.ch, g.left : g.left + g.cw].numpy()
    c0, c1 = g.columns
    canvas = np.zeros((g.ch, c1 - c0), np.float32)
    canvas[:, g.x0 - c0 : g.x0 - c0 + g.cw] = window
    for i, (x, lo, hi) in enumerate(g.tiles):
        canvas[:, lo - c0 : hi - c0] = calls[1]["out"][i, 0, :, lo - x : hi - x].numpy()
    assert len(calls) == (2 if g.tiles else 1)
    return canvas


GEOMETRIES = {
    # name: (height, width, fx, input mode, what the plan must be)
    "cropped (KITTI crop + edge tiles)": (375, 1242, KITTI_FOCAL, "native", "tiles"),
    "padded (whole image, both axes)": (470, 630, 500.0, "native", "padded"),
    "resized up (fx 500 -> 721.5)": (480, 640, 500.0, "resize", "up"),
    "resized down (fx 1000 -> 721.5)": (1200, 1920, 1000.0, "resize", "down"),
    "resized, cropped + tiles (fx 700 -> 721.5)": (370, 1206, 700.0, "resize", "tiles"),
}


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_output_maps_back_at_its_exact_edges(name):
    height, width, fx, mode, kind = GEOMETRIES[name]
    K = np.array([[fx, 0, width / 2], [0, fx, height / 2], [0, 0, 1.0]])
    sparse = np.zeros((height, width), np.float32)
    top_row = 10 if kind == "padded" else height // 2  # LiDAR returns from this row down
    sparse[top_row::4, ::3] = 10.0
    rgb = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    backend = probe_backend(input_mode=mode)
    out = backend.complete(rgb, sparse, K)
    g = backend.plan(height, width, backend.top_row(sparse), backend.scale(K))
    if kind == "tiles":
        assert g.tiles and not any((g.top, g.bottom, g.left, g.right))
    elif kind == "padded":
        assert not g.resized and g.top > 0 and g.left > 0 and not g.tiles
    else:
        assert g.resized and (g.sy > 1) == (kind == "up")
    canvas = network_canvas(backend, g)
    c0, c1 = g.columns
    assert (c0, c1) == (0, g.rw)  # every column

    # Which rows and columns get a value: exactly those whose centre falls in the window.
    rows = np.flatnonzero((out > 0).any(axis=1))
    cols = np.flatnonzero((out > 0).any(axis=0))
    first_row = g.y0 if not g.resized else int(np.ceil(g.y0 / g.sy - 0.5))
    assert (rows[0], rows[-1], cols[0], cols[-1]) == (first_row, height - 1, 0, width - 1)
    assert len(rows) == height - first_row and len(cols) == width
    assert (out[:first_row] == 0).all() and (out[first_row:] > 0).all()
    # context above the LiDAR support's top (its top return less the support margin, 2 rows)
    assert first_row <= max(top_row - 2 - CONTEXT_ROWS / g.sy, 0) + 1

    # Each edge value equals the network's output there (bilinear between network pixels
    # when resized; the probe's output is linear, so any misplacement shows).
    edge_r = np.array([first_row, first_row + 1, height - 2, height - 1])
    edge_c = np.array([0, 1, g.x0 // max(g.sx, 1e-9), width // 2, width - 2, width - 1]).astype(int)
    for r in edge_r:
        for c in np.r_[edge_c, np.arange(0, width, 7)]:
            v = (r + 0.5) * g.sy - 0.5 - g.y0
            u = (c + 0.5) * g.sx - 0.5 - c0
            if g.resized:
                want = bilinear(canvas, np.clip([v], 0, g.ch - 1), np.clip([u], 0, c1 - c0 - 1))[0]
            else:
                want = canvas[int(round(v)), int(round(u))]
            assert out[r, c] == pytest.approx(want, rel=1e-5), (name, r, c)
    for c in edge_c:
        for r in np.r_[edge_r, np.arange(first_row, height, 5)]:
            v = np.clip((r + 0.5) * g.sy - 0.5 - g.y0, 0, g.ch - 1)
            u = np.clip((c + 0.5) * g.sx - 0.5 - c0, 0, c1 - c0 - 1)
            want = bilinear(canvas, np.array([v]), np.array([u]))[0]
            assert out[r, c] == pytest.approx(want, rel=1e-5), (name, r, c)
    if not g.resized:  # native: the whole block is the network's output, pixel for pixel
        np.testing.assert_array_equal(out[g.y0 : g.y0 + g.ch, c0:c1], canvas)

    # The inputs went where the outputs came from: the window's sparse depth (network units)
    # is the (resized) sparse depth at the window's pixels, and so is each tile's.
    window_in = backend.net.calls[0]["sparse"][0, 0, g.top : g.top + g.ch, g.left : g.left + g.cw]
    if not g.resized:
        np.testing.assert_array_equal(window_in.numpy(), sparse[g.y0 :, g.x0 : g.x0 + g.cw])
        for i, (x, _, _) in enumerate(g.tiles):
            tile_in = backend.net.calls[1]["sparse"][i, 0].numpy()
            np.testing.assert_array_equal(tile_in, sparse[g.y0 :, x : x + g.tile_width])
    else:
        assert window_in.max().item() == 10.0 and (window_in > 0).sum() > 0


def test_intrinsics_follow_the_window_and_each_tile():
    """A 3D point lands at the same network pixel through the geometry as through the K the
    network is given, for the window and for each edge tile (resized and not)."""
    K = np.array([[700.0, 0, 603.0], [0, 700.0, 185.0], [0, 0, 1.0]])
    rng = np.random.default_rng(1)
    pts = np.column_stack([rng.uniform(-5, 5, 30), rng.uniform(-1, 2, 30), rng.uniform(3, 40, 30)])
    uv = (K @ pts.T).T
    uv = uv[:, :2] / uv[:, 2:]
    cases = [
        (375, 1242, 1.0, True),
        (370, 1206, KITTI_FOCAL / 700.0, True),
        (370, 1206, 1.0, False),
    ]
    for height, width, scale, tiled in cases:  # crop + tiles, resized + tiles, padded
        g = plan_geometry(height, width, KITTI, top_row=200, scale=scale)
        assert bool(g.tiles) == tiled and (tiled or g.left > 0)
        u_r = (uv[:, 0] + 0.5) * g.sx - 0.5
        v_r = (uv[:, 1] + 0.5) * g.sy - 0.5
        for tile, (du, dv) in [(None, (g.x0 - g.left, g.y0 - g.top))] + [
            (x, (x, g.y0)) for x, _, _ in g.tiles
        ]:
            K2 = adjust_intrinsics(K, g, tile)
            p = (K2 @ pts.T).T
            np.testing.assert_allclose(p[:, 0] / p[:, 2], u_r - du, atol=1e-9)
            np.testing.assert_allclose(p[:, 1] / p[:, 2], v_r - dv, atol=1e-9)


def test_network_input_rule_and_its_parameters():
    """auto = the weights' rule (KITTI native, NYU resized to half its Kinect's focal
    length); resize follows network_focal; describe() says which."""
    assert probe_backend().input_mode == "native"
    nyu = NetworkBackend(
        model="selfdc_r18", net=Probe(), device="cpu", dataset="nyu", input_mode="auto"
    )
    assert nyu.input_mode == "resize" and nyu.scale(np.diag([518.857901, 518.857901, 1])) == 0.5
    custom = probe_backend(input_mode="resize", input_focal=500.0)
    assert custom.scale(np.diag([1000.0, 1000.0, 1.0])) == 0.5
    assert "resized to fx 500" in custom.describe()
    from depth_completion_ros.backends.base import BackendError

    with pytest.raises(BackendError, match="network_input"):
        probe_backend(input_mode="fit")
    with pytest.raises(BackendError, match="network_focal"):
        probe_backend(input_focal=-1.0)
    # Without support (the pipeline publishes every pixel) the network sees every row.
    whole = probe_backend(support=None)
    sparse = np.zeros((480, 640), np.float32)
    sparse[400:, :] = 5.0
    out = whole.complete(np.zeros((480, 640, 3), np.uint8), sparse, np.diag([500.0, 500, 1]))
    assert (out > 0).all()
    from depth_completion_ros.frame import pipeline_from_parameters
    from depth_completion_ros.parameters import load_parameters

    config = load_parameters(
        overrides={"model": "selfdc_r18", "network_input": "resize", "network_focal": 600.0}
    )
    assert config["network_input"] == "resize"
    with pytest.raises(Exception, match="needs a checkpoint"):
        pipeline_from_parameters(config)
