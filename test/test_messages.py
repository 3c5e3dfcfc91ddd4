"""Image / CameraInfo / PointCloud2 <-> numpy with the real message classes (no mocks)."""

from __future__ import annotations

import array
import warnings

import numpy as np
import pytest
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import Header

from depth_completion_ros.calibration import PinholeCamera
from depth_completion_ros.depth_io import read_rgb
from depth_completion_ros.messages import (
    MessageError,
    camera_info_to_camera,
    camera_to_camera_info,
    image_to_depth,
    image_to_rgb,
    numpy_to_image,
    organised_xyzrgb_cloud,
    pack_rgb,
    pointcloud2_to_array,
    xyz_array_to_pointcloud2,
)

RNG = np.random.default_rng(7)


def _image(pixels: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False) -> Image:
    """Build an Image by hand, with ``pad`` bytes of junk at the end of every row."""
    pixels = np.ascontiguousarray(pixels)
    if bigendian:
        pixels = pixels.astype(pixels.dtype.newbyteorder(">"))
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, -1).view(np.uint8).reshape(height, -1)
    junk = np.full((height, pad), 0xAB, np.uint8)
    data = np.hstack([rows, junk])
    return Image(
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=int(bigendian),
        step=int(data.shape[1]),
        data=data.tobytes(),
    )


@pytest.fixture(scope="module")
def kitti_rgb(kitti_image_path) -> np.ndarray:
    return read_rgb(kitti_image_path)


# --- images ---------------------------------------------------------------------------------


@pytest.mark.parametrize("pad", [0, 6])
def test_colour_encodings_reach_rgb(kitti_rgb: np.ndarray, pad: int) -> None:
    rgb = kitti_rgb[:40, :61]  # odd width: padding cannot hide behind alignment
    alpha = np.full(rgb.shape[:2] + (1,), 200, np.uint8)
    cases = {
        "rgb8": rgb,
        "bgr8": rgb[..., ::-1],
        "rgba8": np.concatenate([rgb, alpha], axis=2),
        "bgra8": np.concatenate([rgb[..., ::-1], alpha], axis=2),
    }
    for encoding, pixels in cases.items():
        out = image_to_rgb(_image(pixels, encoding, pad))
        assert out.dtype == np.uint8 and out.flags.c_contiguous
        np.testing.assert_array_equal(out, rgb, err_msg=encoding)
    grey = rgb[..., 1]
    out = image_to_rgb(_image(grey, "mono8", pad))
    np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, axis=2))


def test_numpy_to_image_round_trip(kitti_rgb: np.ndarray) -> None:
    header = Header(frame_id="camera")
    header.stamp.sec, header.stamp.nanosec = 12, 345
    msg = numpy_to_image(kitti_rgb, "rgb8", header)
    assert (msg.height, msg.width, msg.step) == (375, 1242, 1242 * 3)
    assert msg.header.frame_id == "camera" and msg.header.stamp.nanosec == 345
    np.testing.assert_array_equal(image_to_rgb(msg), kitti_rgb)


def test_depth_32fc1_round_trip_keeps_nan() -> None:
    depth = RNG.uniform(1, 80, (37, 53)).astype(np.float32)
    depth[3, 4] = np.nan
    msg = numpy_to_image(depth, "32FC1")
    assert msg.step == 53 * 4 and msg.is_bigendian == 0
    np.testing.assert_array_equal(image_to_depth(msg), depth)  # NaN compares equal here


def test_depth_32fc1_with_padding_and_big_endian() -> None:
    depth = RNG.uniform(1, 80, (9, 11)).astype(np.float32)
    np.testing.assert_array_equal(image_to_depth(_image(depth, "32FC1", pad=4)), depth)
    msg = _image(depth, "32FC1", pad=8, bigendian=True)
    np.testing.assert_array_equal(image_to_depth(msg), depth)


def test_depth_16uc1_millimetres_zero_is_nan() -> None:
    raw = np.array([[0, 1000, 2500], [65535, 1, 0]], np.uint16)
    depth = image_to_depth(_image(raw, "16UC1", pad=2))
    assert depth.dtype == np.float32
    np.testing.assert_allclose(depth[0, 1:], [1.0, 2.5])
    np.testing.assert_allclose(depth[1, :2], [65.535, 0.001])
    assert np.isnan(depth[0, 0]) and np.isnan(depth[1, 2])
    np.testing.assert_allclose(image_to_depth(numpy_to_image(raw, "16UC1"))[0, 2], 2.5)


def test_unsupported_encoding_is_named() -> None:
    msg = _image(np.zeros((4, 4), np.uint8), "bayer_rggb8")
    with pytest.raises(MessageError, match="bayer_rggb8"):
        image_to_rgb(msg)
    with pytest.raises(MessageError, match="rgb8"):
        image_to_depth(_image(np.zeros((4, 4, 3), np.uint8), "rgb8"))


def test_short_image_data_raises() -> None:
    msg = _image(np.zeros((4, 5, 3), np.uint8), "rgb8")
    msg.data = bytes(4 * 5 * 3 - 1)
    with pytest.raises(MessageError, match="bytes"):
        image_to_rgb(msg)
    msg = _image(np.zeros((4, 5), np.float32), "32FC1")
    msg.step = 5 * 4 - 1  # step shorter than a row
    with pytest.raises(MessageError, match="step"):
        image_to_depth(msg)


# --- camera info ----------------------------------------------------------------------------


def test_camera_info_round_trip(kitti_calibration) -> None:
    camera = kitti_calibration.camera
    msg = camera_to_camera_info(camera, Header(frame_id="cam2"))
    assert isinstance(msg, CameraInfo) and msg.header.frame_id == "cam2"
    back = camera_info_to_camera(msg)
    assert (back.width, back.height) == (1242, 375)
    np.testing.assert_array_equal(back.P, camera.P)
    np.testing.assert_array_equal(back.K, camera.K)
    np.testing.assert_array_equal(back.R, camera.R)
    np.testing.assert_array_equal(back.D, camera.D)
    assert back.distortion_model == camera.distortion_model


@pytest.mark.parametrize(("field", "index"), [("p", 0), ("p", 6), ("k", 2)])
def test_camera_info_with_nan_or_inf_names_the_field(kitti_calibration, field, index) -> None:
    msg = camera_to_camera_info(kitti_calibration.camera)
    values = np.array(getattr(msg, field))
    values[index] = np.nan if index else np.inf
    setattr(msg, field, values)
    with pytest.raises(MessageError, match=rf"field '{field}' holds NaN/inf at {field}\[{index}\]"):
        camera_info_to_camera(msg)


def test_camera_info_with_zero_size_names_the_fields(kitti_calibration) -> None:
    msg = camera_to_camera_info(kitti_calibration.camera)
    msg.width = 0
    with pytest.raises(MessageError, match="camera_info fields width/height"):
        camera_info_to_camera(msg)


def test_camera_info_with_zero_p_raises() -> None:
    msg = camera_to_camera_info(PinholeCamera(640, 480, np.eye(3, 4) * 500))
    msg.p = np.zeros(12)
    with pytest.raises(MessageError, match="P"):
        camera_info_to_camera(msg)


# --- point clouds ---------------------------------------------------------------------------

_DT = {
    "f4": PointField.FLOAT32,
    "f8": PointField.FLOAT64,
    "u2": PointField.UINT16,
    "i2": PointField.INT16,
    "i4": PointField.INT32,
}


def _cloud(
    columns: dict[str, np.ndarray],
    kinds: dict[str, str],
    order: list[str],
    height: int = 1,
    point_pad: int = 0,
    row_pad: int = 0,
    bigendian: bool = False,
) -> PointCloud2:
    """Pack columns into a PointCloud2 in ``order`` with padding, built byte by byte."""
    endian = ">" if bigendian else "<"
    dtype = np.dtype([(name, endian + kinds[name]) for name in order])
    point_step = dtype.itemsize + point_pad
    count = len(next(iter(columns.values())))
    width = count // height
    records = np.zeros(
        count,
        np.dtype(
            {
                "names": order,
                "formats": [dtype[n] for n in order],
                "offsets": [dtype.fields[n][1] for n in order],
                "itemsize": point_step,
            }
        ),
    )
    for name in order:
        records[name] = columns[name]
    rows = records.view(np.uint8).reshape(height, width * point_step)
    data = np.hstack([rows, np.full((height, row_pad), 0x7F, np.uint8)])
    return PointCloud2(
        height=height,
        width=width,
        fields=[
            PointField(name=n, offset=dtype.fields[n][1], datatype=_DT[kinds[n]], count=1)
            for n in order
        ],
        is_bigendian=bigendian,
        point_step=point_step,
        row_step=width * point_step + row_pad,
        data=data.tobytes(),
        is_dense=False,
    )


@pytest.fixture(scope="module")
def scan(kitti_scan: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(kitti_scan[:600])


def _columns(scan: np.ndarray) -> dict[str, np.ndarray]:
    return {"x": scan[:, 0], "y": scan[:, 1], "z": scan[:, 2], "intensity": scan[:, 3]}


def test_round_trip_of_the_real_scan(kitti_scan: np.ndarray) -> None:
    msg = xyz_array_to_pointcloud2(kitti_scan, Header(frame_id="velo"))
    assert msg.point_step == 16 and msg.width == len(kitti_scan) and msg.is_dense
    np.testing.assert_array_equal(pointcloud2_to_array(msg, with_intensity=True), kitti_scan)
    np.testing.assert_array_equal(pointcloud2_to_array(msg), kitti_scan[:, :3])


def test_shuffled_fields_extra_fields_and_point_padding(scan: np.ndarray) -> None:
    columns = _columns(scan) | {"ring": np.arange(len(scan)) % 64}
    kinds = {"x": "f4", "y": "f4", "z": "f4", "intensity": "f4", "ring": "u2"}
    msg = _cloud(columns, kinds, ["ring", "intensity", "z", "x", "y"], point_pad=6)
    np.testing.assert_array_equal(pointcloud2_to_array(msg, with_intensity=True), scan)


def test_organised_cloud_with_row_padding(scan: np.ndarray) -> None:
    kinds = {"x": "f4", "y": "f4", "z": "f4", "intensity": "f4"}
    msg = _cloud(_columns(scan), kinds, ["x", "y", "z", "intensity"], height=4, row_pad=12)
    assert msg.height == 4 and msg.row_step > msg.width * msg.point_step
    np.testing.assert_array_equal(pointcloud2_to_array(msg, with_intensity=True), scan)


def test_nan_points_dropped_and_missing_intensity_reads_zero(scan: np.ndarray) -> None:
    xyz = scan[:, :3].copy()
    xyz[[3, 50], 1] = np.nan
    xyz[7, 2] = np.inf
    kinds = {"x": "f4", "y": "f4", "z": "f4"}
    msg = _cloud({"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2]}, kinds, ["z", "y", "x"])
    keep = np.ones(len(xyz), bool)
    keep[[3, 7, 50]] = False
    np.testing.assert_array_equal(pointcloud2_to_array(msg), xyz[keep])
    out = pointcloud2_to_array(msg, with_intensity=True)
    assert out.shape == (len(xyz) - 3, 4) and not out[:, 3].any()


def test_big_endian_float64_cloud(scan: np.ndarray) -> None:
    xyz = scan[:, :3].astype(np.float64) + 1e-9  # float64 values, read back as float32
    kinds = {"x": "f8", "y": "f8", "z": "f8", "intensity": "f4"}
    columns = {"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2], "intensity": scan[:, 3]}
    msg = _cloud(columns, kinds, ["x", "y", "z", "intensity"], bigendian=True)
    out = pointcloud2_to_array(msg, with_intensity=True)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[:, :3], xyz.astype(np.float32))
    np.testing.assert_array_equal(out[:, 3], scan[:, 3])


def test_int16_millimetres_need_points_scale(scan: np.ndarray) -> None:
    """INT16 mm read as metres gave points 1000x too far (then blamed on the extrinsics)."""
    scan = scan[np.abs(scan[:, :3]).max(axis=1) < 32.0]  # INT16 mm reach 32.767 m
    mm = np.round(scan[:, :3] * 1000.0).astype(np.int16)
    kinds = {"x": "i2", "y": "i2", "z": "i2", "intensity": "f4"}
    columns = {"x": mm[:, 0], "y": mm[:, 1], "z": mm[:, 2], "intensity": scan[:, 3]}
    msg = _cloud(columns, kinds, ["x", "y", "z", "intensity"])
    with pytest.raises(MessageError, match="point field 'x' is INT16.*points_scale"):
        pointcloud2_to_array(msg)
    out = pointcloud2_to_array(msg, scale=0.001)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, mm * np.float32(0.001), rtol=1e-6)
    np.testing.assert_allclose(out, scan[:, :3], atol=0.0006)  # mm rounding


def test_int32_centimetres_and_scaled_floats(scan: np.ndarray) -> None:
    cm = np.round(scan[:, :3] * 100.0).astype(np.int32)
    kinds = {"x": "i4", "y": "i4", "z": "i4"}
    msg = _cloud({"x": cm[:, 0], "y": cm[:, 1], "z": cm[:, 2]}, kinds, ["z", "x", "y"])
    np.testing.assert_allclose(pointcloud2_to_array(msg, scale=0.01), cm * 0.01, rtol=1e-6)
    floats = xyz_array_to_pointcloud2(scan[:, :3] * 1000.0)  # float32 millimetres
    np.testing.assert_allclose(pointcloud2_to_array(floats, scale=1e-3), scan[:, :3], rtol=1e-5)
    with pytest.raises(MessageError, match="points_scale must be a positive"):
        pointcloud2_to_array(floats, scale=0.0)


def test_field_list_that_does_not_fit_the_data_is_named(scan: np.ndarray) -> None:
    """A FLOAT64 z at offset 8 of a 16-byte point: numpy said 'NumPy dtype descriptor requires
    24 bytes', naming neither the field nor the message."""
    msg = xyz_array_to_pointcloud2(scan)
    msg.fields[2].datatype = PointField.FLOAT64
    msg.fields[2].offset = 12
    with pytest.raises(MessageError, match=r"point field 'z' \(FLOAT64, 8 bytes at offset 12\)"):
        pointcloud2_to_array(msg)
    msg = xyz_array_to_pointcloud2(scan)
    for field in msg.fields[:3]:
        field.datatype = PointField.FLOAT64  # offsets 0, 4, 8 stay: the fields overlap
    with pytest.raises(MessageError, match="point fields 'x' and 'y' overlap"):
        pointcloud2_to_array(msg)
    msg = xyz_array_to_pointcloud2(scan)
    msg.fields[1].datatype = 11
    with pytest.raises(MessageError, match="point field 'y' has unknown datatype 11"):
        pointcloud2_to_array(msg)


def test_float64_beyond_float32_range_is_dropped_silently(scan: np.ndarray) -> None:
    xyz = scan[:, :3].astype(np.float64)
    xyz[5, 0] = 1e300
    kinds = {"x": "f8", "y": "f8", "z": "f8"}
    msg = _cloud({"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2]}, kinds, ["x", "y", "z"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = pointcloud2_to_array(msg)
    assert len(out) == len(xyz) - 1


def test_missing_axis_is_named(scan: np.ndarray) -> None:
    kinds = {"x": "f4", "y": "f4", "intensity": "f4"}
    msg = _cloud(
        {"x": scan[:, 0], "y": scan[:, 1], "intensity": scan[:, 3]}, kinds, ["x", "y", "intensity"]
    )
    with pytest.raises(MessageError, match="no z field"):
        pointcloud2_to_array(msg)


def test_short_cloud_data_raises(scan: np.ndarray) -> None:
    msg = xyz_array_to_pointcloud2(scan)
    msg.data = bytes(len(msg.data) - 1)
    with pytest.raises(MessageError, match="too few"):
        pointcloud2_to_array(msg)


def test_empty_cloud_gives_zero_rows() -> None:
    msg = xyz_array_to_pointcloud2(np.zeros((0, 3), np.float32))
    assert pointcloud2_to_array(msg).shape == (0, 3)
    assert pointcloud2_to_array(msg, with_intensity=True).shape == (0, 4)


# --- organised XYZRGB output ----------------------------------------------------------------


def test_organised_xyzrgb_cloud(kitti_rgb: np.ndarray) -> None:
    rgb = kitti_rgb[100:130, 200:250]
    height, width = rgb.shape[:2]
    xyz = RNG.uniform(-5, 5, (height, width, 3)).astype(np.float32)
    xyz[4, 6] = np.nan
    msg = organised_xyzrgb_cloud(xyz, rgb, Header(frame_id="cam"))
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (height, width, 16, 16 * width)
    assert [(f.name, f.offset, f.datatype) for f in msg.fields] == [
        ("x", 0, PointField.FLOAT32),
        ("y", 4, PointField.FLOAT32),
        ("z", 8, PointField.FLOAT32),
        ("rgb", 12, PointField.FLOAT32),
    ]
    assert not msg.is_dense and msg.header.frame_id == "cam"
    record = np.frombuffer(bytes(msg.data), "<f4").reshape(height, width, 4)
    np.testing.assert_array_equal(record[..., :3], xyz)  # NaN stays in place
    assert np.isnan(record[4, 6, :3]).all()
    bits = record[..., 3].copy().view(np.uint32)
    decoded = np.stack([(bits >> 16) & 255, (bits >> 8) & 255, bits & 255], axis=-1)
    np.testing.assert_array_equal(decoded, rgb)
    assert not (bits >> 24).any()
    # the reader drops the NaN point and keeps the rest in row-major order
    assert pointcloud2_to_array(msg).shape == (height * width - 1, 3)


def test_pack_rgb_bits() -> None:
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]]], np.uint8)
    bits = pack_rgb(rgb).view(np.uint32)
    assert bits.tolist() == [[0xFF0000, 0x00FF00, 0x0000FF, 0xFFFFFF]]


def _reference_xyzrgb_bytes(xyz: np.ndarray, rgb: np.ndarray) -> bytes:
    """The cloud's data written the plain way: a (H, W, 4) little-endian float32 record array,
    rgb packed with uint32 shifts."""
    height, width = xyz.shape[:2]
    record = np.empty((height, width, 4), "<f4")
    record[..., :3] = xyz
    rgb = rgb.astype(np.uint32)
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    record[..., 3] = packed.astype("<u4").view("<f4")
    return record.tobytes()


def test_organised_xyzrgb_cloud_bytes_match_the_plain_layout(kitti_rgb: np.ndarray) -> None:
    """Full KITTI size, with NaN, inf, -0.0 and NaN payloads: every byte as the reference writes it."""
    rgb = kitti_rgb
    height, width = rgb.shape[:2]
    xyz = RNG.uniform(-80, 80, (height, width, 3)).astype(np.float32)
    xyz[RNG.random((height, width)) < 0.3] = np.nan
    xyz[0, 0] = (np.inf, -np.inf, -0.0)
    xyz.view(np.uint32)[1, 1, 0] = 0x7FC00123  # a NaN with a payload is copied, not rewritten
    msg = organised_xyzrgb_cloud(xyz, rgb)
    assert isinstance(msg.data, array.array) and msg.data.typecode == "B"
    assert bytes(msg.data) == _reference_xyzrgb_bytes(xyz, rgb)
    assert len(msg.data) == msg.row_step * msg.height


def test_organised_xyzrgb_cloud_takes_any_layout_of_its_inputs(kitti_rgb: np.ndarray) -> None:
    """float64 points, non-contiguous views and read-only colours give the same bytes."""
    rgb = kitti_rgb[10:40:2, 300:360]  # strided view
    rgb_readonly = np.ascontiguousarray(rgb)
    rgb_readonly.flags.writeable = False
    xyz64 = RNG.uniform(-5, 5, (60, 15, 3)).transpose(1, 0, 2)  # float64, not C-contiguous
    expected = _reference_xyzrgb_bytes(xyz64.astype(np.float32), rgb)
    assert bytes(organised_xyzrgb_cloud(xyz64, rgb).data) == expected
    assert bytes(organised_xyzrgb_cloud(xyz64, rgb_readonly).data) == expected


def test_organised_xyzrgb_cloud_empty_and_mismatched() -> None:
    msg = organised_xyzrgb_cloud(np.zeros((0, 5, 3), np.float32), np.zeros((0, 5, 3), np.uint8))
    assert (msg.height, msg.width, len(msg.data)) == (0, 5, 0)
    with pytest.raises(MessageError, match="H x W x 3"):
        organised_xyzrgb_cloud(np.zeros((4, 5, 3), np.float32), np.zeros((4, 6, 3), np.uint8))


def test_pack_rgb_matches_shifts_for_every_value() -> None:
    values = np.arange(256, dtype=np.uint8)
    rgb = np.stack(np.meshgrid(values, values[::-1], values[::3], indexing="ij"), axis=-1)
    rgb = rgb.reshape(256, -1, 3)[:, ::3]  # non-contiguous as well
    shifted = (
        (rgb[..., 0].astype(np.uint32) << 16)
        | (rgb[..., 1].astype(np.uint32) << 8)
        | rgb[..., 2].astype(np.uint32)
    )
    packed = pack_rgb(rgb)
    assert packed.dtype == np.float32 and packed.shape == rgb.shape[:2]
    np.testing.assert_array_equal(packed.view(np.uint32), shifted)
