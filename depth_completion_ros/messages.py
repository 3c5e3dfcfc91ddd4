"""sensor_msgs Image / CameraInfo / PointCloud2 <-> numpy, written to the message definitions.

No cv_bridge or sensor_msgs_py (neither installs from PyPI): buffers are viewed with
``np.frombuffer`` (zero-copy on the way in) and filled with one ``array.array`` copy on the way out.
No Python loops over pixels or points.
"""

from __future__ import annotations

import array

import cv2
import numpy as np
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField
from std_msgs.msg import Header

from depth_completion_ros.calibration import CalibrationError, PinholeCamera
from depth_completion_ros.deskew import TimeField, TimeFieldSpec, point_times, resolve_time_field
from depth_completion_ros.distortion import (
    DistortionError,
    SensorWindow,
    image_size,
    reduce_to_image,
)

#: message classes by their type name (as bags and frame.OUTPUTS name them)
MESSAGE_CLASSES = {
    "sensor_msgs/msg/Image": Image,
    "sensor_msgs/msg/CompressedImage": CompressedImage,
    "sensor_msgs/msg/CameraInfo": CameraInfo,
    "sensor_msgs/msg/PointCloud2": PointCloud2,
}


class MessageError(ValueError):
    """A message cannot be converted; the text names the field and what would work."""


# --- images ---------------------------------------------------------------------------------

#: colour encodings the node accepts: channels and the channel order to reach RGB
COLOR_ENCODINGS: dict[str, tuple[int, tuple[int, ...]]] = {
    "rgb8": (3, (0, 1, 2)),
    "bgr8": (3, (2, 1, 0)),
    "rgba8": (4, (0, 1, 2)),
    "bgra8": (4, (2, 1, 0)),
    "mono8": (1, (0, 0, 0)),
}
DEPTH_ENCODINGS: dict[str, np.dtype] = {"32FC1": np.dtype("<f4"), "16UC1": np.dtype("<u2")}


def _image_array(msg: Image, dtype: np.dtype, channels: int) -> np.ndarray:
    """View an Image's buffer as H x W x C, honouring ``step`` padding and endianness."""
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    row_bytes = width * channels * dtype.itemsize
    if height == 0 or width == 0:
        raise MessageError(f"image is empty ({width}x{height})")
    if step < row_bytes:
        raise MessageError(f"image step {step} is smaller than width*pixel size {row_bytes}")
    if len(msg.data) < step * (height - 1) + row_bytes:
        raise MessageError(
            f"image data holds {len(msg.data)} bytes, expected {step * height} for "
            f"{width}x{height} {msg.encoding} with step {step}"
        )
    if msg.is_bigendian and dtype.itemsize > 1:
        dtype = dtype.newbyteorder(">")
    buffer = np.frombuffer(msg.data, dtype=np.uint8, count=step * height)
    rows = buffer.reshape(height, step)[:, :row_bytes]
    return rows.view(dtype).reshape(height, width, channels)


def image_to_rgb(msg: Image | CompressedImage) -> np.ndarray:
    """A colour or mono Image, or a jpeg/png CompressedImage -> H x W x 3 uint8 RGB (a new
    contiguous array)."""
    if isinstance(msg, CompressedImage):
        return compressed_image_to_rgb(msg)
    encoding = msg.encoding.lower()
    if encoding not in COLOR_ENCODINGS:
        raise MessageError(
            f"unsupported image encoding {msg.encoding!r}; supported: "
            f"{', '.join(COLOR_ENCODINGS)} (debayer raw images first, e.g. with image_proc)"
        )
    channels, order = COLOR_ENCODINGS[encoding]
    pixels = _image_array(msg, np.dtype(np.uint8), channels)
    if order == (0, 1, 2) and channels == 3:
        return np.ascontiguousarray(pixels)
    return np.ascontiguousarray(pixels[..., list(order)])


def compressed_image_to_rgb(msg: CompressedImage) -> np.ndarray:
    """A CompressedImage (jpeg or png, image_transport's ``compressed``) -> H x W x 3 uint8 RGB.

    Decoded with OpenCV; the channel order follows compressed_image_transport's format string:
    ``"<encoding>; <codec> compressed <order>"`` (e.g. ``"rgb8; jpeg compressed bgr8"``) holds
    BGR data when the order is bgr*, RGB data otherwise; a bare ``"jpeg"``/``"png"`` (older
    publishers) holds BGR. A payload OpenCV cannot decode is a MessageError.
    """
    text = msg.format.strip()
    head, sep, tail = text.partition(";")
    if "compresseddepth" in text.lower().replace(" ", ""):
        raise MessageError(
            f"compressed image format {msg.format!r} is a compressedDepth (depth) image; the "
            "node needs the colour image (image_transport 'compressed', jpeg or png)"
        )
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size == 0:
        raise MessageError(f"compressed image ({msg.format!r}) has no data")
    decoded = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if decoded is None:
        raise MessageError(
            f"compressed image ({msg.format!r}, {data.size} bytes) cannot be decoded by OpenCV: "
            "the jpeg/png payload is damaged or of another codec"
        )
    if decoded.dtype != np.uint8:
        raise MessageError(
            f"compressed image ({msg.format!r}) decodes to {decoded.dtype} pixels; 8-bit colour "
            "or mono images are supported (publish rgb8/bgr8/mono8)"
        )
    if decoded.ndim == 2 or decoded.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(decoded.reshape(*decoded.shape[:2], 1), 3, axis=2))
    if decoded.shape[2] not in (3, 4):
        raise MessageError(f"compressed image decodes to {decoded.shape[2]} channels")
    bgr = not sep or "compressed bgr" in tail.lower()
    if not sep and head.lower() not in ("", "jpeg", "jpg", "png"):
        raise MessageError(
            f"unsupported compressed image format {msg.format!r}; expected jpeg or png "
            "(image_transport's 'compressed', e.g. 'rgb8; jpeg compressed bgr8')"
        )
    return np.ascontiguousarray(decoded[..., [2, 1, 0]] if bgr else decoded[..., :3])


#: message types an image topic may hold (raw and image_transport's compressed)
IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")


def transport_topic(topic: str, image_transport: str) -> str:
    """The topic an image arrives on: ``topic`` itself (raw), or image_transport's
    ``<topic>/compressed`` (compressed; a topic already ending in /compressed is kept)."""
    if image_transport == "compressed" and not topic.rstrip("/").endswith("/compressed"):
        return topic.rstrip("/") + "/compressed"
    return topic


def rgb_to_compressed_image(
    rgb: np.ndarray, codec: str = "jpeg", header: Header | None = None, jpeg_quality: int = 95
) -> CompressedImage:
    """H x W x 3 uint8 RGB -> CompressedImage as compressed_image_transport writes it: BGR
    data, format ``"rgb8; jpeg compressed bgr8"`` (or png, lossless)."""
    if codec not in ("jpeg", "png"):
        raise MessageError(f"codec must be jpeg or png, got {codec!r}")
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if codec == "jpeg" else []
    ok, payload = cv2.imencode(".jpg" if codec == "jpeg" else ".png", rgb[..., ::-1], params)
    if not ok:
        raise MessageError(f"OpenCV could not encode a {rgb.shape} image as {codec}")
    msg = CompressedImage()
    if header is not None:
        msg.header = header
    msg.format = f"rgb8; {codec} compressed bgr8"
    msg.data = _to_uint8_array(payload)
    return msg


def image_to_depth(msg: Image) -> np.ndarray:
    """A depth Image (32FC1 metres or 16UC1 millimetres) -> H x W float32 metres, NaN = none."""
    if msg.encoding not in DEPTH_ENCODINGS:
        raise MessageError(
            f"unsupported depth encoding {msg.encoding!r}; expected 32FC1 (m) or 16UC1 (mm)"
        )
    raw = _image_array(msg, DEPTH_ENCODINGS[msg.encoding], 1)[..., 0]
    if msg.encoding == "16UC1":
        depth = raw.astype(np.float32) / 1000.0
        depth[raw == 0] = np.nan
        return depth
    return raw.astype(np.float32)


def _to_uint8_array(data: np.ndarray) -> array.array:
    buffer = array.array("B")
    buffer.frombytes(np.ascontiguousarray(data).reshape(-1).view(np.uint8).data)
    return buffer


def numpy_to_image(pixels: np.ndarray, encoding: str, header: Header | None = None) -> Image:
    """H x W (x C) array -> Image with the given encoding (rgb8, mono8, 32FC1, 16UC1, ...)."""
    pixels = np.ascontiguousarray(pixels)
    if pixels.dtype.byteorder == ">":
        pixels = pixels.astype(pixels.dtype.newbyteorder("<"))
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(pixels.shape[0]), int(pixels.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(pixels.strides[0])
    msg.data = _to_uint8_array(pixels)
    return msg


# --- camera info ----------------------------------------------------------------------------


def camera_info_to_camera(msg: CameraInfo, camera_model: str = "rectified") -> PinholeCamera:
    """CameraInfo -> the PinholeCamera of the image it describes, read as image_geometry reads it.

    ``camera_model`` "rectified" (the default, depth_image_proc's assumption): the image is
    rectified and P projects onto it. "raw": the image is the distorted raw image; points land
    on it through K and D (plumb_bob, rational_polynomial, equidistant). Binning (0 = 1) and a
    roi (all zero = the full image) give the image's own K and P (principal point moved by the
    roi offset, then scaled by 1/binning) and size (roi size / binning; for a rectified image
    with roi.do_rectify, the rectified roi's); the CameraInfo's own values are kept in
    ``camera.sensor`` for the camera_info published with the depth.
    """
    if camera_model not in ("rectified", "raw"):
        raise MessageError(f"camera_model must be rectified or raw, got {camera_model!r}")
    rectified = camera_model == "rectified"
    P = np.asarray(msg.p, dtype=np.float64).reshape(3, 4)
    K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    for name, matrix in (("p", P), ("k", K)):
        bad = np.flatnonzero(~np.isfinite(matrix))
        if bad.size:
            raise MessageError(
                f"camera_info field '{name}' holds NaN/inf at {name}[{', '.join(map(str, bad))}]: "
                "the camera driver publishes a broken calibration; fix its calibration file"
            )
    if rectified and not np.any(P):
        raise MessageError(
            "camera_info has an all-zero projection matrix P: the camera is not calibrated "
            "(calibrate it, or publish CameraInfo with P filled)"
        )
    if not rectified and not np.any(K):
        raise MessageError(
            "camera_info has an all-zero K, and camera_model is raw (projection with K and D): "
            "the camera is not calibrated (calibrate it, or publish CameraInfo with K filled)"
        )
    D = np.asarray(msg.d, dtype=np.float64)
    R = np.asarray(msg.r, dtype=np.float64).reshape(3, 3)
    roi = msg.roi
    window = SensorWindow(
        width=int(msg.width),
        height=int(msg.height),
        K=K,
        P=P,
        binning_x=int(msg.binning_x) or 1,
        binning_y=int(msg.binning_y) or 1,
        roi=(
            int(roi.x_offset),
            int(roi.y_offset),
            int(roi.width),
            int(roi.height),
            bool(roi.do_rectify),
        ),
    )
    width, height, sensor = window.width, window.height, None
    if not window.is_full_frame:
        x, y, w, h, _ = window.roi
        if any(window.roi[:4]) and (w == 0 or h == 0 or x + w > width or y + h > height):
            raise MessageError(
                f"camera_info roi (x_offset {x}, y_offset {y}, width {w}, height {h}) is empty "
                f"or reaches beyond the {width}x{height} sensor"
            )
        K, P = reduce_to_image(window)
        try:
            width, height = image_size(window, rectified, D, msg.distortion_model, R)
        except DistortionError as exc:
            raise MessageError(f"camera_info roi with do_rectify: {exc}") from exc
        sensor = window
    try:
        return PinholeCamera(
            width=width,
            height=height,
            P=P,
            K=K,
            D=D,
            R=R,
            distortion_model=msg.distortion_model,
            rectified=rectified,
            sensor=sensor,
        )
    except CalibrationError as exc:
        fields = "width/height/p" if rectified else "width/height/k/d/distortion_model"
        raise MessageError(f"camera_info fields {fields}: {exc}") from exc


def camera_to_camera_info(camera: PinholeCamera, header: Header | None = None) -> CameraInfo:
    """PinholeCamera -> CameraInfo: the output depth image's calibration, the one its image
    came with (full-resolution K, P, binning and roi when the image is binned or a roi)."""
    msg = CameraInfo()
    if header is not None:
        msg.header = header
    sensor = camera.sensor  # binned or a roi: the CameraInfo as it came (full resolution)
    K, P = (camera.K, camera.P) if sensor is None else (sensor.K, sensor.P)
    msg.width, msg.height = (camera.width, camera.height) if sensor is None else sensor.size
    msg.distortion_model = camera.distortion_model
    msg.d = [float(x) for x in np.asarray(camera.D).ravel()]
    msg.k = np.asarray(K, dtype=np.float64).ravel()
    msg.r = np.asarray(camera.R, dtype=np.float64).ravel()
    msg.p = np.asarray(P, dtype=np.float64).ravel()
    if sensor is not None:
        msg.binning_x, msg.binning_y = int(sensor.binning_x), int(sensor.binning_y)
        x, y, w, h, do_rectify = sensor.roi
        msg.roi.x_offset, msg.roi.y_offset = int(x), int(y)
        msg.roi.width, msg.roi.height, msg.roi.do_rectify = int(w), int(h), bool(do_rectify)
    return msg


# --- point clouds ---------------------------------------------------------------------------

_FIELD_DTYPES: dict[int, str] = {
    PointField.INT8: "i1",
    PointField.UINT8: "u1",
    PointField.INT16: "i2",
    PointField.UINT16: "u2",
    PointField.INT32: "i4",
    PointField.UINT32: "u4",
    PointField.FLOAT32: "f4",
    PointField.FLOAT64: "f8",
}
_FIELD_TYPE_NAMES: dict[int, str] = {
    PointField.INT8: "INT8",
    PointField.UINT8: "UINT8",
    PointField.INT16: "INT16",
    PointField.UINT16: "UINT16",
    PointField.INT32: "INT32",
    PointField.UINT32: "UINT32",
    PointField.FLOAT32: "FLOAT32",
    PointField.FLOAT64: "FLOAT64",
}
_AXES = ("x", "y", "z")


def _cloud_dtype(msg: PointCloud2, names: tuple[str, ...], scale: float | None) -> np.dtype:
    """A structured dtype that picks ``names`` out of each point_step-sized record; every field
    must lie inside the record, x/y/z must not overlap, and integer x/y/z need a ``scale``."""
    fields = {f.name: f for f in msg.fields}
    endian = ">" if msg.is_bigendian else "<"
    point_step = int(msg.point_step)
    formats, offsets, spans = [], [], {}
    for name in names:
        field = fields[name]
        if field.datatype not in _FIELD_DTYPES:
            raise MessageError(
                f"point field {name!r} has unknown datatype {field.datatype} (PointField "
                "datatypes are 1-8: INT8, UINT8, INT16, UINT16, INT32, UINT32, FLOAT32, FLOAT64)"
            )
        kind = _FIELD_TYPE_NAMES[field.datatype]
        if field.count != 1:
            raise MessageError(f"point field {name!r} ({kind}) has count {field.count}, expected 1")
        dtype = np.dtype(endian + _FIELD_DTYPES[field.datatype])
        start, end = int(field.offset), int(field.offset) + dtype.itemsize
        if end > point_step:
            raise MessageError(
                f"point field {name!r} ({kind}, {dtype.itemsize} bytes at offset {start}) ends at "
                f"byte {end}, beyond point_step {point_step}: the cloud's field list does not "
                "match its data (wrong datatype or offsets in the driver)"
            )
        if name in _AXES:
            for other, (other_start, other_end) in spans.items():
                if start < other_end and other_start < end:
                    raise MessageError(
                        f"point fields {other!r} and {name!r} overlap (bytes {other_start}-"
                        f"{other_end - 1} and {start}-{end - 1}, {kind}): the offsets do not fit "
                        "the datatype"
                    )
            spans[name] = (start, end)
            if dtype.kind in "iu" and scale is None:
                raise MessageError(
                    f"point field {name!r} is {kind}: integer coordinates have no unit; set the "
                    "parameter points_scale to metres per unit (0.001 for millimetres, 0.01 for "
                    "centimetres)"
                )
        formats.append(dtype)
        offsets.append(start)
    return np.dtype(
        {"names": list(names), "formats": formats, "offsets": offsets, "itemsize": point_step}
    )


def _cloud_records(msg: PointCloud2, dtype: np.dtype) -> np.ndarray:
    """The cloud's width x height points as one record array of ``dtype`` (row_step padding
    removed); a data buffer too short for them is refused."""
    width, height = int(msg.width), int(msg.height)
    row_step = int(msg.row_step) or width * msg.point_step
    if row_step < width * msg.point_step or len(msg.data) < row_step * (height - 1) + (
        width * msg.point_step
    ):
        raise MessageError(
            f"point cloud data holds {len(msg.data)} bytes, too few for {width}x{height} points "
            f"of {msg.point_step} bytes (row_step {msg.row_step})"
        )
    raw = np.frombuffer(msg.data, dtype=np.uint8)
    if row_step == width * msg.point_step:
        return raw[: width * height * msg.point_step].view(dtype)
    rows = raw[: row_step * height].reshape(height, row_step)[:, : width * msg.point_step]
    return np.ascontiguousarray(rows).reshape(-1).view(dtype)


def pointcloud2_to_array(
    msg: PointCloud2, with_intensity: bool = False, scale: float | None = None
) -> np.ndarray:
    """PointCloud2 -> N x 3 (or N x 4 with intensity) float32; NaN/inf points are dropped.

    Works for any field order and point_step, organised or not, with or without intensity
    (missing intensity reads as 0), and row_step padding. x, y, z may be FLOAT32 or FLOAT64
    (metres); integer coordinates (e.g. INT16 millimetres) need ``scale``, metres per unit, which
    multiplies x, y and z of any type. A field list that does not fit the data is refused with a
    message naming the field.
    """
    if scale is not None and not (np.isfinite(scale) and scale > 0):
        raise MessageError(f"points_scale must be a positive number of metres per unit: {scale}")
    names = {f.name for f in msg.fields}
    missing = [axis for axis in _AXES if axis not in names]
    if missing:
        raise MessageError(
            f"point cloud has no {'/'.join(missing)} field(s) (fields: {sorted(names) or 'none'}); "
            "a Velodyne-type cloud with float32 x, y, z is required"
        )
    wanted = _AXES + (("intensity",) if with_intensity and "intensity" in names else ())
    dtype = _cloud_dtype(msg, wanted, scale)
    width, height = int(msg.width), int(msg.height)
    count = width * height
    if count == 0:
        return np.zeros((0, 4 if with_intensity else 3), dtype=np.float32)
    records = _cloud_records(msg, dtype)
    out = np.empty((count, len(wanted) if not with_intensity else 4), dtype=np.float32)
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf: dropped
        for column, name in enumerate(wanted):
            if scale is not None and name in _AXES:
                out[:, column] = records[name] * scale
            else:
                out[:, column] = records[name]
    if with_intensity and len(wanted) == 3:
        out[:, 3] = 0.0
    if np.isfinite(out[:, :3]).all():  # the common case, checked without a per-row reduction
        return out
    # a row is finite iff x*0 + y*0 + z*0 is (0 for finite values, NaN for NaN or inf)
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(out[:, :3] @ np.zeros(3, np.float32))
    return out[finite]


def xyz_array_to_pointcloud2(
    points: np.ndarray, header: Header | None = None, with_intensity: bool | None = None
) -> PointCloud2:
    """N x 3 / N x 4 (x, y, z[, intensity]) float32 -> unorganised PointCloud2."""
    points = np.ascontiguousarray(points, dtype=np.float32)
    if points.ndim != 2 or points.shape[1] not in (3, 4):
        raise MessageError(f"points must be N x 3 or N x 4, got shape {points.shape}")
    if with_intensity is None:
        with_intensity = points.shape[1] == 4
    names = ("x", "y", "z", "intensity")[: 4 if with_intensity else 3]
    points = points[:, : len(names)]
    msg = PointCloud2()
    if header is not None:
        msg.header = header
    msg.height, msg.width = 1, int(points.shape[0])
    msg.fields = [
        PointField(name=name, offset=4 * i, datatype=PointField.FLOAT32, count=1)
        for i, name in enumerate(names)
    ]
    msg.is_bigendian = False
    msg.point_step = 4 * len(names)
    msg.row_step = msg.point_step * msg.width
    msg.is_dense = bool(np.isfinite(points).all())
    msg.data = _to_uint8_array(np.ascontiguousarray(points, dtype="<f4"))
    return msg


def pointcloud2_times(
    msg: PointCloud2, spec: TimeFieldSpec = TimeFieldSpec(), scale: float | None = None
) -> tuple[np.ndarray, TimeField] | None:
    """Per-point time of a cloud: float64 seconds relative to its header stamp, one per point
    that :func:`pointcloud2_to_array` returns (NaN/inf points dropped alike), and the field read;
    None when the cloud has no time field (``spec``: which field, unit and reference; 'auto'
    finds the drivers' layouts, :data:`deskew.KNOWN_TIME_FIELDS`). A named field that is
    missing, or of unknown unit, raises :class:`deskew.NoMotion`."""
    fields = {
        f.name: np.dtype(_FIELD_DTYPES[f.datatype])
        for f in msg.fields
        if f.datatype in _FIELD_DTYPES
    }
    field = resolve_time_field(fields, spec)
    if field is None:
        return None
    if int(msg.width) * int(msg.height) == 0:
        return np.zeros(0), field
    dtype = _cloud_dtype(msg, (*_AXES, field.name), scale)
    records = _cloud_records(msg, dtype)
    times = point_times(records[field.name], field, stamp_to_nanoseconds(msg.header.stamp))
    with np.errstate(over="ignore", invalid="ignore"):  # the rows pointcloud2_to_array keeps
        xyz = np.empty((len(records), 3), dtype=np.float32)
        for column, name in enumerate(_AXES):
            xyz[:, column] = records[name] * scale if scale is not None else records[name]
        finite = np.isfinite(xyz).all(axis=1)
    return (times if finite.all() else times[finite]), field


_DTYPE_FIELDS = {np.dtype(code).str[1:]: datatype for datatype, code in _FIELD_DTYPES.items()}


def structured_to_pointcloud2(
    records: np.ndarray, header: Header | None = None, is_dense: bool = False
) -> PointCloud2:
    """A numpy structured array (one record per point, any field types PointField knows, packed
    or with padding) -> PointCloud2 with those fields at their offsets; a 2-D array gives an
    organised cloud (height = rows). How drivers' layouts (Ouster, Hesai, Velodyne, Livox) are
    written in tests and simulations."""
    records = np.ascontiguousarray(records)
    height, width = records.shape if records.ndim == 2 else (1, records.size)
    msg = PointCloud2()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(height), int(width)
    fields = []
    for name in records.dtype.names:
        dtype, offset = records.dtype.fields[name][:2]
        if dtype.byteorder == ">":
            raise MessageError(f"field {name!r} is big-endian; write little-endian records")
        fields.append(
            PointField(
                name=name, offset=int(offset), datatype=_DTYPE_FIELDS[dtype.str[1:]], count=1
            )
        )
    msg.fields = fields
    msg.is_bigendian = False
    msg.point_step = int(records.dtype.itemsize)
    msg.row_step = msg.point_step * msg.width
    msg.is_dense = bool(is_dense)
    msg.data = _to_uint8_array(records)
    return msg


def _rgb_to_packed_bytes(first: int) -> list[int]:
    """cv2.mixChannels pairs (source channel, destination byte) that write R, G, B and a zero
    (source -1) to bytes first+2, +1, +0, +3: a little-endian uint32 0x00RRGGBB, in one pass."""
    return [0, first + 2, 1, first + 1, 2, first, -1, first + 3]


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8 -> H x W float32 whose bits are 0x00RRGGBB (PCL's packed ``rgb`` field).

    One OpenCV channel mix: no uint32 copy of the image and no shifted temporaries.
    """
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    packed = np.empty(rgb.shape[:2] + (4,), dtype=np.uint8)
    if packed.size:
        cv2.mixChannels([rgb], [packed], _rgb_to_packed_bytes(0))
    return packed.view("<f4")[..., 0]


def organised_xyzrgb_cloud(
    xyz: np.ndarray, rgb: np.ndarray, header: Header | None = None
) -> PointCloud2:
    """H x W x 3 points (NaN = invalid) + H x W x 3 colours -> organised XYZRGB PointCloud2.

    The layout of depth_image_proc's point_cloud_xyzrgb (x, y, z, rgb as float32), which RViz
    and PCL read; invalid pixels stay in place as NaN so the cloud keeps the image's shape.

    The points and colours are written straight into the message's own buffer (x, y, z by one
    OpenCV channel copy, rgb bytes by one channel mix), and the buffer is handed to the message
    as is: no record array, no packed-colour temporaries, no copy of 7 MB per frame.
    """
    xyz = np.ascontiguousarray(xyz, dtype=np.float32)
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    height, width = xyz.shape[:2]
    if xyz.shape != (height, width, 3) or rgb.shape != (height, width, 3):
        raise MessageError(f"xyz {xyz.shape} and rgb {rgb.shape} must both be H x W x 3")
    data = array.array("B", [0]) * (16 * height * width)  # zeroed; written below
    if height and width:
        # float32 records x, y, z, (alpha 1.0, overwritten next); native order is little-endian
        # on every ROS 2 platform, as is_bigendian=False says
        record = np.frombuffer(data, dtype=np.float32).reshape(height, width, 4)
        if cv2.cvtColor(xyz, cv2.COLOR_RGB2RGBA, dst=record) is not record:
            raise RuntimeError("OpenCV did not write into the cloud buffer")  # never seen
        record_bytes = record.view(np.uint8)  # H x W x 16: bytes 12..15 are the rgb field
        cv2.mixChannels([rgb], [record_bytes], _rgb_to_packed_bytes(12))
    msg = PointCloud2()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(height), int(width)
    msg.fields = [
        PointField(name=name, offset=4 * i, datatype=PointField.FLOAT32, count=1)
        for i, name in enumerate(("x", "y", "z", "rgb"))
    ]
    msg.is_bigendian = False
    msg.point_step = 16
    msg.row_step = 16 * width
    msg.is_dense = False
    # The generated ``data`` setter stores array.array('B', value), a full copy, unless field
    # checks are on (ROS_PYTHON_CHECK_FIELDS=1); with them on, and on Humble, it stores an
    # array.array('B') as is, which is what assigning its slot does.
    msg._data = data
    return msg


def stamp_to_seconds(stamp) -> float:
    """builtin_interfaces/Time -> float seconds: sec + 1e-9 * nanosec, the one conversion that
    pairing uses everywhere (so a stamp offset equal to max_time_offset is decided alike)."""
    return float(stamp.sec) + 1e-9 * float(stamp.nanosec)


def nanoseconds_to_seconds(nanoseconds: int) -> float:
    """Integer nanoseconds -> float seconds, bit-equal to :func:`stamp_to_seconds` of the same
    stamp (``ns * 1e-9`` is not: 1000062500000 * 1e-9 = 1000.0625000000001)."""
    sec, nanosec = divmod(int(nanoseconds), 1_000_000_000)
    return float(sec) + 1e-9 * float(nanosec)


def stamp_to_nanoseconds(stamp) -> int:
    """builtin_interfaces/Time -> integer nanoseconds (exact, for equality checks)."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def seconds_to_nanoseconds(seconds: float) -> int:
    """Float seconds -> integer nanoseconds (rounded, so stamps survive a round trip)."""
    return int(round(seconds * 1e9))


def make_header(nanoseconds: int, frame_id: str) -> Header:
    """std_msgs/Header for a stamp in integer nanoseconds."""
    msg = Header(frame_id=frame_id)
    msg.stamp.sec, msg.stamp.nanosec = divmod(int(nanoseconds), 1_000_000_000)
    return msg


__all__ = [
    "MessageError",
    "image_to_rgb",
    "compressed_image_to_rgb",
    "rgb_to_compressed_image",
    "transport_topic",
    "IMAGE_TYPES",
    "image_to_depth",
    "numpy_to_image",
    "camera_info_to_camera",
    "camera_to_camera_info",
    "pointcloud2_to_array",
    "pointcloud2_times",
    "structured_to_pointcloud2",
    "xyz_array_to_pointcloud2",
    "organised_xyzrgb_cloud",
    "pack_rgb",
    "stamp_to_seconds",
    "stamp_to_nanoseconds",
    "seconds_to_nanoseconds",
    "make_header",
]
