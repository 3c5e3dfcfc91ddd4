"""The node's parameters: one table that defines, validates and documents each of them.

Everything that reads a node parameter goes through here: the node declares the table with ROS
descriptors, ``depth_completion_node --help`` prints it, the command line and ``--params-file``
are checked against it before rclpy starts, and ``process_bag``, the demo, evaluation and the
training datasets load the same defaults, YAML files and overrides with :func:`load_parameters`.
No ROS types here (the ROS descriptor is built in ``node.py``), and no torch: ``--help`` and the
classical fill work on a machine without it.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from depth_completion_ros.backends.base import DEVICES, PRECISIONS, RUNTIMES
from depth_completion_ros.networks.registry import DATASETS, MODELS, NETWORK_INPUTS

#: the node's name, and so the section of a params file that is its own
NODE_NAME = "depth_completion"
#: parameters rclpy declares itself; accepted everywhere and meaningless offline
ROS_BUILTIN_PARAMETERS = ("use_sim_time", "start_type_description_service")
#: parameters settable while the node runs (``ros2 param set``), checked by this table like at
#: start-up; every other one is read-only (a change needs a restart: it rebuilds subscriptions,
#: the backend or the transform source)
RUNTIME_PARAMETERS = (
    "max_time_offset",
    "min_depth",
    "max_depth",
    "occlusion_window",
    "limit_to_lidar_support",
    "support_band",
    "support_margin",
    "publish_points",
    "publish_sparse",
    "publish_colored",
    "publish_confidence",
    "confidence_distance",
    "diagnostics_period",
    "no_pair_warning",
)


def is_ros_parameter(name: str) -> bool:
    """A parameter rclpy declares itself: use_sim_time, ..., and the QoS overrides of the
    subscriptions and publishers (``qos_overrides./image.subscription.reliability``)."""
    return name in ROS_BUILTIN_PARAMETERS or name.split(".", 1)[0] == "qos_overrides"


#: the parameters a camera of ``cameras`` sets for itself as ``NAME.<key>`` (the rest is shared:
#: one model, one depth range, one odometry)
CAMERA_KEYS = (
    "image_topic",
    "camera_info_topic",
    "output_namespace",
    "points_topic",
    "image_transport",
    "camera_model",
    "calibration_dir",
    "camera_index",
    "extrinsics",
    "cloud_in_camera_frame",
)
#: a camera's name: one ROS name token (it prefixes parameters and namespaces its outputs)
CAMERA_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")

#: per-point time fields whose unit and reference are known (deskew.KNOWN_TIME_FIELDS)
KNOWN_TIME_FIELD_NAMES = ("time", "t", "timestamp", "offset_time")
#: values of the ``model`` parameter: the classical fill and every registry network
MODEL_NAMES = ("classical", *MODELS)


class ParameterError(ValueError):
    """A node parameter is unknown or its value unusable; the message names it and the fix."""


@dataclass(frozen=True)
class Parameter:
    """One node parameter: its type is its default's (bool, int, float, str, list of floats)."""

    name: str
    default: object
    description: str
    choices: tuple[str, ...] = ()
    float_range: tuple[float, float] | None = None
    int_range: tuple[int, int] | None = None
    read_only: bool = True
    #: a list of strings (the default's type cannot say it when the default is empty)
    string_array: bool = False

    @property
    def kind(self) -> str:
        """The ROS parameter type, in words."""
        if self.string_array:
            return "string array"
        if isinstance(self.default, bool):
            return "bool"
        if isinstance(self.default, float):
            return "double"
        if isinstance(self.default, int):
            return "integer"
        if isinstance(self.default, list):
            return "double array"
        return "string"

    @property
    def limits(self) -> tuple[float, float] | None:
        return self.float_range or self.int_range

    def help_text(self) -> str:
        """The description with the allowed values, as ``--help`` and the descriptor say it."""
        extra = []
        if self.choices:
            extra.append(f"one of {', '.join(self.choices)}")
        if self.limits:
            extra.append(f"range [{self.limits[0]}, {self.limits[1]}]")
        if not self.read_only:
            extra.append("settable at runtime")
        return self.description + (f" ({'; '.join(extra)})" if extra else "")


PARAMETERS: tuple[Parameter, ...] = (
    Parameter(
        "cameras",
        [],
        "several cameras, one model: their names; each camera NAME takes NAME.image_topic "
        "(default NAME/image), NAME.camera_info_topic (NAME/camera_info), NAME.output_namespace "
        "(NAME), and NAME.<" + ", ".join(CAMERA_KEYS[5:]) + ", or another of the first four> "
        "(default: the node's value); frames of cameras of one size share a forward pass; "
        "[] = one camera, from the parameters without a prefix",
        string_array=True,
    ),
    Parameter(
        "batch_cameras",
        True,
        "with several cameras: frames of cameras with the same network input go through one "
        "forward pass (faster on a GPU; on a CPU about as fast as one by one, and the batch's "
        "activations take more memory); false = one frame at a time, one model all the same",
    ),
    Parameter("image_topic", "image", "camera image topic (rgb8, bgr8, mono8, rgba8, bgra8)"),
    Parameter(
        "image_transport",
        "raw",
        "how the image arrives: raw = sensor_msgs/Image on image_topic; compressed = "
        "sensor_msgs/CompressedImage (jpeg/png) on '<image_topic>/compressed', as image_transport "
        "names it (decoded with OpenCV)",
        choices=("raw", "compressed"),
    ),
    Parameter("camera_info_topic", "camera_info", "CameraInfo of the image topic"),
    Parameter(
        "camera_model",
        "rectified",
        "what the image is: rectified = an image_rect (points projected with the CameraInfo's "
        "P, as depth_image_proc assumes); raw = an image_raw, points projected with K and the "
        "distortion D (plumb_bob, rational_polynomial, equidistant) onto the raw pixels, so the "
        "depth aligns with the raw image and its camera_info; binning and roi are honoured "
        "either way",
        choices=("rectified", "raw"),
    ),
    Parameter("points_topic", "points", "LiDAR PointCloud2 topic (float32 x, y, z)"),
    Parameter(
        "output_namespace",
        "",
        "namespace of the outputs, relative to the node's ('' = the node's own: depth/image, ...; "
        "'front' = front/depth/image, ...)",
    ),
    Parameter(
        "points_scale",
        0.0,
        "metres per unit of the cloud's x, y, z; 0 = float32/float64 fields are metres and "
        "integer fields are refused (0.001 for INT16/INT32 millimetres)",
        float_range=(0.0, 1000.0),
    ),
    Parameter(
        "input_reliability",
        "best_effort",
        "QoS reliability of the three subscriptions; must be compatible with the publishers "
        "(best_effort accepts both, reliable needs reliable publishers)",
        choices=("best_effort", "reliable"),
    ),
    Parameter(
        "odometry_topic",
        "",
        "nav_msgs/Odometry topic whose twist deskews each scan: every point moved to where it "
        "was at the image's stamp, the twist interpolated between messages at the point's time "
        "(its child frame must be the cloud's frame or reach it through TF); '' = no deskewing",
    ),
    Parameter(
        "points_time_field",
        "auto",
        "the cloud's per-point time field, for deskewing: 'auto' = the first present of time "
        "(Velodyne, float32 s relative), t (Ouster, uint32 ns relative), timestamp (Hesai, "
        "RoboSense float64 s / Livox float64 ns, absolute), offset_time (Livox, uint32 ns "
        "relative); a field name (then set points_time_unit and points_time_reference); '' = "
        "none: time from azimuth (the sweep_* parameters)",
    ),
    Parameter(
        "points_time_unit",
        "auto",
        "unit of points_time_field's values; 'auto' = the known layout's",
        choices=("auto", "s", "ms", "us", "ns"),
    ),
    Parameter(
        "points_time_reference",
        "auto",
        "whether points_time_field counts from the cloud's header stamp (relative) or is a "
        "time of its own (absolute, same clock as the stamps); 'auto' = the known layout's",
        choices=("auto", "relative", "absolute"),
    ),
    Parameter(
        "sweep_direction",
        "cw",
        "without a time field: the LiDAR's turning direction seen from above (+z); cw = "
        "clockwise (Velodyne, KITTI), ccw = counter-clockwise",
        choices=("cw", "ccw"),
    ),
    Parameter(
        "sweep_period",
        0.1,
        "without a time field: seconds per turn (0.1 = 10 Hz)",
        float_range=(0.001, 10.0),
    ),
    Parameter(
        "sweep_reference_angle",
        0.0,
        "without a time field: the azimuth (rad, counter-clockwise from the cloud frame's +x) "
        "the LiDAR faces at the cloud's header stamp",
        float_range=(-6.2832, 6.2832),
    ),
    Parameter(
        "sweep_stamp",
        "middle",
        "without a time field: where the header stamp lies in the sweep (middle: KITTI, half a "
        "turn each side of the reference angle; start; end)",
        choices=("middle", "start", "end"),
    ),
    Parameter("input_depth", 5, "QoS history depth of the subscriptions", int_range=(1, 100)),
    Parameter("output_depth", 2, "QoS history depth of the (reliable) outputs", int_range=(1, 100)),
    Parameter(
        "max_time_offset",
        0.05,
        "largest |image stamp - scan stamp| (s) accepted as a pair; the offset is computed in "
        "float64 seconds (sec + 1e-9 nanosec) and an offset equal to this value is accepted",
        float_range=(1e-4, 10.0),
    ),
    Parameter(
        "calibration_dir",
        "",
        "KITTI date folder with calib_cam_to_cam.txt and calib_velo_to_cam.txt (extrinsics)",
    ),
    Parameter("camera_index", 2, "KITTI camera of calibration_dir (0-3)", int_range=(0, 3)),
    Parameter(
        "extrinsics",
        [0.0],
        "LiDAR->camera optical transform: 16 (4x4), 12 (3x4) or 7 (x y z qx qy qz qw) values; "
        "[0.0] = unset",
    ),
    Parameter(
        "cloud_in_camera_frame",
        False,
        "without calibration_dir/extrinsics: take a cloud whose header.frame_id is empty as "
        "being in the image's optical frame; false = such a cloud is refused (counted under "
        "failed:extrinsics), since an empty frame_id names no frame",
    ),
    Parameter(
        "transform_tolerance",
        0.1,
        "TF (/tf): how far (s) the scan's stamp may lie outside the received samples of a "
        "moving transform, the nearest sample then being used; inside them it is interpolated",
        float_range=(0.0, 10.0),
    ),
    Parameter("model", "classical", "completion model", choices=MODEL_NAMES),
    Parameter(
        "checkpoint",
        "",
        "weights file for a network model (.pth/.pt/.safetensors; .onnx with runtime:=onnxruntime)",
    ),
    Parameter("device", "auto", "where a network runs", choices=DEVICES),
    Parameter("precision", "fp32", "network precision", choices=PRECISIONS),
    Parameter(
        "runtime",
        "torch",
        "what runs a network: torch (checkpoint = .pth/.safetensors weights) or onnxruntime "
        "(checkpoint = an export_model .onnx file; TensorRT, CUDA or CPU provider by device)",
        choices=RUNTIMES,
    ),
    Parameter("dataset", "kitti", "input conventions the weights expect", choices=DATASETS),
    Parameter("compile", False, "torch.compile the network (slow first frame)"),
    Parameter(
        "network_input",
        "auto",
        "scale of the network's input: native = the camera's own pixels; resize = scaled so "
        "the focal length becomes network_focal (objects at the size the weights were trained "
        "on); auto = as the weights' release ran (KITTI weights native, NYU weights resize). "
        "Either way the network sees every row from just above the LiDAR's top return down",
        choices=NETWORK_INPUTS,
    ),
    Parameter(
        "network_focal",
        0.0,
        "focal length (px) network_input:=resize scales fx to; 0 = the weights' (KITTI 721.5, "
        "NYU 259.4: its 518.9 px Kinect at half size)",
        float_range=(0.0, 100000.0),
    ),
    Parameter("min_depth", 0.1, "smallest published depth (m)", float_range=(0.0, 1000.0)),
    Parameter("max_depth", 100.0, "largest published depth (m)", float_range=(0.1, 1000.0)),
    Parameter(
        "occlusion_window",
        12,
        "pixels searched on each side by the occlusion filter (0 = off)",
        int_range=(0, 64),
    ),
    Parameter(
        "limit_to_lidar_support",
        True,
        "publish depth only between the highest and lowest LiDAR return of each column band "
        "(NaN above and below: sky, bridges); false = the whole image",
    ),
    Parameter(
        "support_band",
        3,
        "columns per band when finding the LiDAR's highest and lowest return (a band needs 2 "
        "returns in itself and its 2 neighbours); about the LiDAR's column spacing in pixels",
        int_range=(1, 256),
    ),
    Parameter(
        "support_margin",
        2,
        "pixels published beyond the LiDAR's highest and lowest return",
        int_range=(0, 1000),
    ),
    Parameter("publish_points", True, "publish the organised XYZRGB cloud on 'depth/points'"),
    Parameter("publish_sparse", False, "publish the projected LiDAR depth on 'sparse_depth/image'"),
    Parameter("publish_colored", False, "publish a colour-mapped rgb8 view on 'depth/colored'"),
    Parameter(
        "publish_confidence",
        False,
        "publish a 0-1 confidence per depth pixel on 'depth/confidence' (32FC1, NaN where the "
        "depth is NaN): NLSPN's confidence head for selfdc/selfdc_r18 (torch), else "
        "exp(-d / confidence_distance) with d the pixel distance to the nearest LiDAR return",
    ),
    Parameter(
        "confidence_distance",
        5.0,
        "pixels from the nearest LiDAR return at which the distance-based confidence falls to "
        "1/e (5 px: about one HDL-64 scan-line gap at KITTI's fx 721; scale it with fx)",
        float_range=(0.1, 1000.0),
    ),
    Parameter(
        "diagnostics_period",
        5.0,
        "seconds between status lines in the log (and /diagnostics messages)",
        float_range=(0.5, 3600.0),
    ),
    Parameter(
        "no_pair_warning",
        3.0,
        "warn when no pair has formed for this many seconds",
        float_range=(0.5, 3600.0),
    ),
)

PARAMETERS = tuple(
    dataclasses.replace(p, read_only=p.name not in RUNTIME_PARAMETERS) for p in PARAMETERS
)
TABLE: dict[str, Parameter] = {p.name: p for p in PARAMETERS}


def defaults() -> dict[str, object]:
    """Every parameter at its default (lists copied, so a caller may change them)."""
    return {
        p.name: list(p.default) if isinstance(p.default, list) else p.default for p in PARAMETERS
    }


# --- checks ---------------------------------------------------------------------------------


def check_parameter(param: Parameter, value: object, source: str = "") -> object:
    """``value`` checked against ``param``'s type, range and choices; returned coerced (an
    integer given for a double becomes a float, as rclpy needs)."""
    where = f" ({source})" if source else ""
    kind = param.kind
    wrong = ParameterError(
        f"parameter '{param.name}'{where}: {value!r} is not {'an' if kind[0] in 'ai' else 'a'} "
        f"{kind}; default {param.default!r}: {param.description}"
    )
    if kind == "bool":
        if not isinstance(value, bool):
            raise wrong
    elif kind == "double":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise wrong
        value = float(value)
    elif kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong
    elif kind == "double array":
        if not isinstance(value, list | tuple) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value
        ):
            raise wrong
        value = [float(v) for v in value]
    elif kind == "string array":
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise wrong
        value = list(value)
    elif not isinstance(value, str):
        raise wrong
    limits = param.limits
    if limits and not (limits[0] <= value <= limits[1]):
        raise ParameterError(
            f"parameter '{param.name}'{where}: {value!r} is outside its range "
            f"[{limits[0]}, {limits[1]}]: {param.description}"
        )
    if param.choices and value not in param.choices:
        raise ParameterError(
            f"parameter '{param.name}'{where}: {value!r} is not one of: {', '.join(param.choices)}"
        )
    return value


def camera_parameter(name: str) -> tuple[str, str] | None:
    """``'front.image_topic'`` -> ``('front', 'image_topic')``: a parameter a camera of
    ``cameras`` sets for itself; None for any other name."""
    camera, sep, key = name.partition(".")
    if sep and key in CAMERA_KEYS and CAMERA_NAME.fullmatch(camera):
        return camera, key
    return None


def table_entry(name: str) -> Parameter | None:
    """The table's entry for ``name``; a camera's own parameter (``NAME.key``) is checked like
    the node's ``key`` (and is read-only while the node runs); None for an unknown name."""
    if name in TABLE:
        return TABLE[name]
    split = camera_parameter(name)
    if split is None:
        return None
    return dataclasses.replace(TABLE[split[1]], name=name, read_only=True)


def unknown_parameter(name: str, source: str = "") -> ParameterError:
    """The error for a name the node does not declare, with the closest known names."""
    where = f" ({source})" if source else ""
    close = difflib.get_close_matches(name, list(TABLE), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(TABLE)}"
    return ParameterError(f"unknown node parameter '{name}'{where}{hint}")


def check_parameters(values: dict, source: str = "") -> dict:
    """Every name known and every value valid; returns the values coerced (ROS built-ins kept
    as they are)."""
    checked = {}
    for name, value in values.items():
        entry = table_entry(name)
        if is_ros_parameter(name):
            checked[name] = value
        elif entry is None:
            raise unknown_parameter(name, source)
        else:
            checked[name] = check_parameter(entry, value, source)
    return checked


def check_relations(config: dict) -> None:
    """The rules between parameters (min_depth < max_depth; a custom points_time_field needs its
    unit and reference), on whichever of them ``config`` holds."""
    low, high = config.get("min_depth"), config.get("max_depth")
    if low is not None and high is not None and low >= high:
        raise ParameterError(
            f"parameters 'min_depth' ({low}) must be smaller than 'max_depth' ({high})"
        )
    field = config.get("points_time_field")
    if field not in (None, "", "auto") and field not in KNOWN_TIME_FIELD_NAMES:
        for name in ("points_time_unit", "points_time_reference"):
            if config.get(name) == "auto":
                raise ParameterError(
                    f"parameter '{name}' must be set (not 'auto') for points_time_field "
                    f"'{field}': only the drivers' fields ({', '.join(KNOWN_TIME_FIELD_NAMES)}) "
                    "have a known unit and reference"
                )


def check_cameras(config: dict) -> None:
    """``cameras``: valid, distinct names; every ``NAME.key`` names one of them; no two cameras
    publish into one namespace."""
    cameras = config.get("cameras")
    if cameras is None:
        return
    for name in cameras:
        if not CAMERA_NAME.fullmatch(name):
            raise ParameterError(
                f"parameter 'cameras': {name!r} is not a camera name (a letter, then letters, "
                "digits or '_'): it prefixes the camera's parameters and namespaces its outputs"
            )
    if len(set(cameras)) != len(cameras):
        raise ParameterError(f"parameter 'cameras': a name appears twice in {cameras}")
    for name in config:
        split = camera_parameter(name)
        if split is not None and split[0] not in cameras:
            raise ParameterError(
                f"parameter '{name}' is for camera '{split[0]}', which is not in 'cameras' "
                f"({cameras}); add it there or fix the prefix"
            )
    if cameras and "image_topic" in config:
        spaces = [c["output_namespace"] for _, c in camera_configs(config)]
        if len(set(spaces)) != len(spaces):
            raise ParameterError(
                f"parameters '<camera>.output_namespace': two cameras publish into one "
                f"namespace ({spaces}); give each its own"
            )


def camera_configs(config: dict) -> list[tuple[str, dict]]:
    """(camera name, its parameters) for every camera: the node's parameters with the camera's
    own ``NAME.key`` values, topics defaulting to ``NAME/image``, ``NAME/camera_info`` and
    outputs to namespace ``NAME``; ``[('', config)]`` without ``cameras``."""
    shared = {k: v for k, v in config.items() if camera_parameter(k) is None}
    if not config.get("cameras"):
        return [("", shared)]
    out = []
    for camera in config["cameras"]:
        own = {
            "image_topic": f"{camera}/image",
            "camera_info_topic": f"{camera}/camera_info",
            "output_namespace": camera,
        }
        for name, value in config.items():
            split = camera_parameter(name)
            if split is not None and split[0] == camera:
                own[split[1]] = value
        out.append((camera, {**shared, **own}))
    return out


def validate(config: dict) -> dict:
    """A complete parameter dict checked value by value and between values; returned coerced."""
    missing = [name for name in TABLE if name not in config]
    if missing:
        raise ParameterError(f"parameters missing: {', '.join(missing)}")
    checked = check_parameters(config)
    check_relations(checked)
    check_cameras(checked)
    return checked


# --- reading ----------------------------------------------------------------------------------


def parse_assignment(text: str) -> tuple[str, object]:
    """``name:=value`` -> (name, value parsed as YAML, as rcl parses ``-p``)."""
    name, sep, raw = text.partition(":=")
    if not sep or not name:
        raise ParameterError(f"expected NAME:=VALUE, got {text!r}")
    try:
        return name, yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return name, raw


def node_sections(document: object, path: str) -> list[tuple[str, dict, bool]]:
    """(key, parameters, is_this_node's_own) of a params file's ros__parameters sections that
    apply to this node: its own (``depth_completion`` or ``/ns/depth_completion``) and the
    wildcards ``/**`` and ``*``, in file order."""
    if not isinstance(document, dict):
        raise ParameterError(f"parameter file {path}: not a YAML mapping of node names")
    sections = []
    for key, body in document.items():
        if not isinstance(body, dict) or "ros__parameters" not in body:
            continue
        parameters = body["ros__parameters"]
        if not isinstance(parameters, dict):
            raise ParameterError(f"parameter file {path}: {key}.ros__parameters is not a mapping")
        own = str(key).strip("/").split("/")[-1] == NODE_NAME
        wildcard = str(key).strip("/") in ("**", "*")
        if own or wildcard:
            sections.append((str(key), parameters, own))
    return sections


def read_params_file(path: str | Path) -> tuple[dict, dict[str, object]]:
    """A ``--params-file`` YAML: (the document, this node's parameters checked and coerced).

    Wildcard sections may hold other nodes' parameters (ignored here); an unknown name in the
    node's own section is an error, as a typo there would otherwise be ignored by rclpy.
    """
    file = Path(path)
    if not file.is_file():
        raise ParameterError(f"--params-file {path}: no such file")
    try:
        document = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ParameterError(f"--params-file {path}: cannot read it as YAML: {exc}") from exc
    sections = node_sections(document or {}, str(path))
    if not sections:
        raise ParameterError(
            f"parameter file {path}: no '{NODE_NAME}: ros__parameters:' (or '/**') section"
        )
    values: dict[str, object] = {}
    for key, parameters, own in sections:
        for name, value in flatten_parameters(parameters).items():
            if is_ros_parameter(name):
                continue
            entry = table_entry(name)
            if entry is None:
                if own:
                    raise unknown_parameter(name, f"{path}, section {key}")
                continue
            values[name] = check_parameter(entry, value, f"{path}, section {key}")
    return document, values


def flatten_parameters(parameters: dict, prefix: str = "") -> dict[str, object]:
    """Nested mappings of a ros__parameters section as rcl reads them: ``front: {image_topic:
    x}`` is the parameter ``front.image_topic``."""
    flat: dict[str, object] = {}
    for name, value in parameters.items():
        full = f"{prefix}{name}"
        if isinstance(value, dict):
            flat.update(flatten_parameters(value, f"{full}."))
        else:
            flat[full] = value
    return flat


def load_parameters(
    params_file: str | Path | None = None,
    overrides: dict[str, object] | None = None,
    overrides_source: str = "-p",
) -> dict:
    """Defaults <- a ``--params-file`` YAML (as the node reads it) <- overrides, validated;
    ``overrides_source`` names where the overrides came from in error messages.

    ROS built-ins (use_sim_time, ...) are dropped: they mean nothing outside a node.
    """
    config = defaults()
    if params_file:
        config.update(read_params_file(params_file)[1])
    config.update(check_parameters(overrides or {}, overrides_source))
    for name in [n for n in config if is_ros_parameter(n)]:
        config.pop(name)
    return validate(config)


def check_update(config: dict, changes: dict[str, object]) -> dict:
    """Changes to a running node's parameters (``ros2 param set``): each must be runtime-settable
    and valid, and the result must satisfy the rules between parameters; returns the changes
    coerced, or raises ParameterError with the reason (the running values are then kept)."""
    checked = {}
    for name, value in changes.items():
        entry = table_entry(name)
        if entry is None:
            raise unknown_parameter(name, "ros2 param set")
        if entry.read_only:
            raise ParameterError(
                f"parameter '{name}' is read-only while the node runs: set it at start-up "
                f"(runtime-settable: {', '.join(RUNTIME_PARAMETERS)})"
            )
        checked[name] = check_parameter(entry, value, "ros2 param set")
    check_relations({**config, **checked})
    return checked
