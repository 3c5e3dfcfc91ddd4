"""A user's own ROS 2 bag as training data (SelfDC on a robot), through the node's own code.

Pairs are formed as the node and ``process_bag`` form them (:class:`StampPairer` on header
stamps, ``max_time_offset``), CameraInfo and PointCloud2 are converted by ``messages.py``, and
the sparse input is the node's projection (``DepthPipeline.sparse_depth`` built from the node's
parameters), so training sees exactly what the node sees. Extrinsics: ``calibration_dir`` (a
KITTI date folder) or ``extrinsics`` (the node's parameter), else the bag's /tf_static.

The pair list is indexed once at construction (header stamps read straight from the CDR bytes,
no image decoded; kept in ``index_cache`` when set), then ``__getitem__`` decodes one pair.

A bag has no ground truth: ``holdout_fraction`` of each frame's projected LiDAR pixels (chosen
with ``seed`` and the frame index, the same in every epoch and split) is moved from ``sparse``
into ``holdout``; the network never sees them, and the "LiDAR hold-out" RMSE/MAE scores there.
Every split reads the whole bag.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import numpy as np

from depth_completion_ros.bag_io import BagError, BagReader, to_ros
from depth_completion_ros.calibration import CalibrationError, PinholeCamera
from depth_completion_ros.depth_io import write_bytes_atomic
from depth_completion_ros.messages import (
    MessageError,
    camera_info_to_camera,
    image_to_rgb,
    pointcloud2_to_array,
)
from depth_completion_ros.pairing import StampPairer
from depth_completion_ros.tools.process_bag import DEFAULT_TOPICS, pair_extrinsics, static_edges
from training.datasets.base import CachedMapsDataset, DatasetOptions, subsample
from training.datasets.node_params import (
    extrinsics_from_parameters,
    node_parameters,
    node_pipeline,
)
from training.sample import BadSample, Sample

TOPIC_TYPES = {
    "image": "sensor_msgs/msg/Image",
    "camera_info": "sensor_msgs/msg/CameraInfo",
    "points": "sensor_msgs/msg/PointCloud2",
}
INDEX_VERSION = 1


def cdr_header(data: bytes | memoryview) -> tuple[int, str]:
    """(stamp in ns, frame_id) of a CDR-serialised message that starts with std_msgs/Header
    (Image, CameraInfo, PointCloud2): read from the bytes without decoding the payload."""
    raw = bytes(data[:512])
    if len(raw) < 16:
        raise BagError("message too short to hold a std_msgs/Header")
    order = "<" if raw[1] & 1 else ">"  # encapsulation id: CDR_LE = 0x0001, CDR_BE = 0x0000
    sec, nanosec, length = struct.unpack_from(f"{order}iII", raw, 4)
    frame_id = raw[16 : 16 + max(length - 1, 0)].decode("utf-8", errors="replace")
    return sec * 1_000_000_000 + nanosec, frame_id


class RosBagFrames(CachedMapsDataset):
    """Image + CameraInfo + PointCloud2 pairs of a ROS 2 bag, with a LiDAR hold-out."""

    kind = "bag"
    default_crop = None

    def __init__(self, root: str | Path, split: str, options: DatasetOptions) -> None:
        super().__init__(root, split, options)
        unknown = set(options.topics) - set(TOPIC_TYPES)
        if unknown:
            raise ValueError(
                f"dataset option 'topics': unknown role(s) {sorted(unknown)}; roles are "
                f"{', '.join(TOPIC_TYPES)}"
            )
        self.topics = {**DEFAULT_TOPICS, **options.topics}
        self.config = node_parameters(options)
        self.pipeline = node_pipeline(options)
        self._reader: BagReader | None = None
        self._reader_pid = -1
        with BagReader(self.root) as reader:
            reader.require({self.topics[role]: kind for role, kind in TOPIC_TYPES.items()})
            self.bag_path = reader.path
            self.pairs, self.stats = self._load_or_index(reader)
        if not self.pairs:
            raise BagError(
                f"{self.bag_path}: no image/scan pair within max_time_offset "
                f"{self.config['max_time_offset']} s ({self.stats}); raise max_time_offset or "
                "check the topics' stamps"
            )
        errors = {pair["error"] for pair in self.pairs}
        if all(errors):  # no pair can be projected: every sample would be skipped
            raise CalibrationError(f"{self.bag_path}: {sorted(errors)[0]}")
        self.items = subsample(list(range(len(self.pairs))), options.max_samples, options.seed)

    # --- index ------------------------------------------------------------------------------

    def _signature(self) -> str:
        meta = (self.bag_path / "metadata.yaml").read_bytes()
        keys = ("max_time_offset", "calibration_dir", "camera_index", "extrinsics")
        text = json.dumps(
            [INDEX_VERSION, self.topics, {k: self.config[k] for k in keys}], sort_keys=True
        )
        return hashlib.sha256(meta + text.encode()).hexdigest()

    def _load_or_index(self, reader: BagReader) -> tuple[list[dict], dict]:
        cache_path = Path(self.options.index_cache) if self.options.index_cache else None
        signature = self._signature()
        if cache_path is not None and cache_path.is_file():
            try:
                saved = json.loads(cache_path.read_text())
                if saved.get("signature") == signature:
                    return saved["pairs"], saved["stats"]
            except (OSError, ValueError):
                pass  # a damaged cache is rebuilt
        pairs, stats = self._index(reader)
        if cache_path is not None:
            text = json.dumps({"signature": signature, "pairs": pairs, "stats": stats})
            write_bytes_atomic(cache_path, text.encode())
        return pairs, stats

    def _index(self, reader: BagReader) -> tuple[list[dict], dict]:
        """One pass over the bag: pair scans with images exactly as the node does."""
        T_fixed = extrinsics_from_parameters(self.config)
        edges = static_edges(reader) if T_fixed is None else {}
        pairer: StampPairer = StampPairer(float(self.config["max_time_offset"]))
        camera: dict | None = None
        pairs: list[dict] = []

        def keep(found) -> None:
            for pair in found:
                entry = {"image": pair.image, "cloud": pair.cloud, "camera": camera}
                entry["T"], entry["error"] = _extrinsics(T_fixed, edges, pair.cloud, pair.image)
                pairs.append(entry)

        for message in reader.messages(list(self.topics.values())):
            if message.topic == self.topics["camera_info"]:
                try:
                    cam = camera_info_to_camera(to_ros(message.data, message.msgtype))
                    camera = {"P": cam.P.ravel().tolist(), "width": cam.width, "height": cam.height}
                except (MessageError, CalibrationError) as exc:
                    camera = {"error": str(exc)}
                continue
            stamp, frame = cdr_header(message.data)
            token = {"t": message.timestamp, "stamp": stamp, "frame": frame}
            if message.topic == self.topics["image"]:
                keep(pairer.add_image(stamp * 1e-9, token))
            else:
                keep(pairer.add_cloud(stamp * 1e-9, token))
        keep(pairer.flush())
        s = pairer.stats
        stats = {"paired": s.paired, "rejected_offset": s.rejected_offset, "no_image": s.no_image}
        return pairs, stats

    # --- reading ----------------------------------------------------------------------------

    def name_of(self, index: int) -> str:
        return f"{self.bag_path.name}/{self.pairs[self.items[index]]['image']['stamp']}"

    def cache_key(self, index: int) -> str:
        """Cache key of a pair: ``<bag name>/<image header stamp in ns>``."""
        return self.name_of(index)

    def _message(self, topic: str, token: dict):
        if self._reader is None or self._reader_pid != os.getpid():
            self._reader = BagReader(self.bag_path)  # one per DataLoader worker process
            self._reader_pid = os.getpid()
        for message in self._reader.messages([topic], token["t"], token["t"] + 1):
            if cdr_header(message.data)[0] == token["stamp"]:
                return to_ros(message.data, message.msgtype)
        raise BagError(f"{self.bag_path}: message at {token['t']} ns on {topic} is gone")

    def read_rgb(self, index: int) -> np.ndarray:
        """Only the camera image of a pair (for the label and teacher jobs)."""
        pair = self.pairs[self.items[index]]
        return image_to_rgb(self._message(self.topics["image"], pair["image"]))

    def read(self, index: int) -> Sample:
        frame = self.items[index]
        pair = self.pairs[frame]
        name = self.name_of(index)
        camera = pair["camera"]
        if camera is None or "error" in camera:
            why = camera["error"] if camera else "no camera_info before this pair"
            raise BadSample("calibration", f"{self.topics['camera_info']}: {why}")
        if pair["error"]:
            raise BadSample("calibration", pair["error"])
        try:
            rgb = image_to_rgb(self._message(self.topics["image"], pair["image"]))
            points = pointcloud2_to_array(self._message(self.topics["points"], pair["cloud"]))
        except (MessageError, BagError) as exc:  # a bad encoding, a damaged chunk
            raise BadSample("unreadable", str(exc)) from exc
        cam = PinholeCamera(width=camera["width"], height=camera["height"], P=camera["P"])
        if rgb.shape[:2] != (cam.height, cam.width):
            raise BadSample(
                "size",
                f"image is {rgb.shape[1]}x{rgb.shape[0]} but camera_info says "
                f"{cam.width}x{cam.height}",
            )
        if len(points) == 0:
            raise BadSample("no_sparse", f"empty point cloud on {self.topics['points']}")
        projected = self.pipeline.sparse_depth(points, cam, np.asarray(pair["T"]).reshape(4, 4))
        rng = np.random.default_rng([self.options.seed, frame])
        sparse, holdout = split_holdout(projected, self.options.holdout_fraction, rng)
        return {
            "rgb": rgb,
            "sparse": sparse,
            "holdout": holdout,
            "K": cam.intrinsics.astype(np.float32),
            "name": name,
            "key": name,
        }

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_reader"], state["_reader_pid"] = None, -1  # readers do not cross processes
        return state

    def describe_extra(self) -> list[str]:
        return [
            f"pairs={self.stats}",
            f"topics={self.topics}",
            f"holdout_fraction={self.options.holdout_fraction}",
        ]


def _extrinsics(T_fixed, edges, cloud: dict, image: dict) -> tuple[list[float] | None, str]:
    """LiDAR -> camera transform of a pair, resolved as process_bag does, or why there is none."""
    try:
        T = pair_extrinsics(
            T_fixed,
            edges,
            cloud["frame"],
            image["frame"],
            "set the dataset option calibration_dir or extrinsics",
        )
    except CalibrationError as exc:
        return None, str(exc)
    return np.asarray(T).ravel().tolist(), ""


def split_holdout(
    sparse: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Move round(fraction x valid pixels) of ``sparse``'s points into a hold-out map."""
    valid = np.flatnonzero(sparse.reshape(-1) > 0)
    chosen = rng.choice(valid, size=int(round(fraction * valid.size)), replace=False)
    keep = sparse.copy().reshape(-1)
    holdout = np.zeros_like(keep)
    holdout[chosen] = keep[chosen]
    keep[chosen] = 0
    return keep.reshape(sparse.shape), holdout.reshape(sparse.shape)
