"""A user's own ROS 2 bag as training data (SelfDC on a robot), through the node's own code.

Pairs are formed as the node and ``process_bag`` form them (:class:`StampPairer` on header
stamps, ``max_time_offset``), and each pair goes through the node's own frame step
(:meth:`FrameProcessor.prepare`: the camera_info, image and cloud checks and conversions, the
extrinsics) and projection (``DepthPipeline.sparse_depth``), so training sees exactly what the
node sees; a frame the node would skip is a skipped sample, counted by the same stage.
Extrinsics: ``calibration_dir`` (a KITTI date folder) or ``extrinsics`` (the node's parameter),
else the bag's /tf_static.

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

from depth_completion_ros.bag_io import BagError, BagReader, read_static_transforms, to_ros
from depth_completion_ros.calibration import CalibrationError
from depth_completion_ros.depth_io import write_bytes_atomic
from depth_completion_ros.frame import FrameFailure, FrameInputs, FrameProcessor, FrameSource
from depth_completion_ros.kitti import KITTI_BAG_TOPICS
from depth_completion_ros.messages import (
    IMAGE_TYPES,
    MessageError,
    image_to_rgb,
    nanoseconds_to_seconds,
    transport_topic,
)
from depth_completion_ros.pairing import StampPairer
from depth_completion_ros.transforms import NoTransforms, pair_extrinsics
from training.datasets.base import CachedMapsDataset, DatasetOptions, subsample
from training.datasets.node_params import node_parameters
from training.sample import BadSample, Sample

TOPIC_TYPES = {
    "image": IMAGE_TYPES,  # raw or image_transport's compressed (jpeg/png)
    "camera_info": "sensor_msgs/msg/CameraInfo",
    "points": "sensor_msgs/msg/PointCloud2",
}
INDEX_VERSION = 2
#: what the dataset tells the user when no transform relates the cloud to the image
EXTRINSICS_FIX = "set the dataset option calibration_dir or extrinsics"


def cdr_header(data: bytes | memoryview) -> tuple[int, str]:
    """(stamp in ns, frame_id) of a CDR-serialised message that starts with std_msgs/Header
    (Image, CompressedImage, CameraInfo, PointCloud2): read from the bytes without decoding the
    payload."""
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
        self.topics = {
            role: options.topics.get(role, KITTI_BAG_TOPICS[role]) for role in TOPIC_TYPES
        }
        self.config = node_parameters(options)
        # image_transport compressed: '<image>/compressed', as the node subscribes
        self.topics["image"] = transport_topic(self.topics["image"], self.config["image_transport"])
        self._reader: BagReader | None = None
        self._reader_pid = -1
        with BagReader(self.root) as reader:
            reader.require({self.topics[role]: kind for role, kind in TOPIC_TYPES.items()})
            self.bag_path = reader.path
            static = read_static_transforms(reader)
            transforms = static if len(static) else NoTransforms("the bag (it has no /tf_static)")
            source = FrameSource({**self.topics, "odometry": ""}, transforms, EXTRINSICS_FIX)
            self.frames = FrameProcessor(self.config, source)
            self.pipeline = self.frames.pipeline
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
        """One pass over the bag: pair scans with images exactly as the node does (stamps in
        seconds by the node's own conversion); each pair keeps the camera_info before it."""
        pairer: StampPairer = StampPairer(float(self.config["max_time_offset"]))
        camera: dict | None = None
        pairs: list[dict] = []

        def keep(found) -> None:
            for pair in found:
                entry = {"image": pair.image, "cloud": pair.cloud, "camera": camera}
                entry["error"] = self._extrinsics_error(pair.cloud, pair.image)
                pairs.append(entry)

        for message in reader.messages(list(self.topics.values())):
            stamp, frame = cdr_header(message.data)
            token = {"t": message.timestamp, "stamp": stamp, "frame": frame}
            if message.topic == self.topics["camera_info"]:
                camera = token
            elif message.topic == self.topics["image"]:
                keep(pairer.add_image(nanoseconds_to_seconds(stamp), token))
            else:
                keep(pairer.add_cloud(nanoseconds_to_seconds(stamp), token))
        keep(pairer.flush())
        s = pairer.stats
        stats = {"paired": s.paired, "rejected_offset": s.rejected_offset, "no_image": s.no_image}
        return pairs, stats

    def _extrinsics_error(self, cloud: dict, image: dict) -> str:
        """'' when the pair's LiDAR -> camera transform resolves, else why not (at index time,
        so a bag where no pair can be projected fails at once instead of sample by sample)."""
        try:
            pair_extrinsics(
                self.frames.fixed_extrinsics,
                self.frames.source.transforms,
                cloud["frame"],
                image["frame"],
                EXTRINSICS_FIX,
                cloud_in_camera_frame=self.config["cloud_in_camera_frame"],
            )
        except CalibrationError as exc:
            return str(exc)
        return ""

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
        try:
            inputs = FrameInputs(
                self._message(self.topics["image"], pair["image"]),
                self._message(self.topics["points"], pair["cloud"]),
                self._message(self.topics["camera_info"], pair["camera"])
                if pair["camera"]
                else None,
            )
        except (MessageError, BagError) as exc:  # a damaged chunk
            raise BadSample("unreadable", str(exc)) from exc
        try:
            prepared = self.frames.prepare(inputs)
        except FrameFailure as exc:  # what the node would skip, by the same stage
            raise BadSample(exc.stage, str(exc)) from exc
        projected = self.pipeline.sparse_depth(
            prepared.points, prepared.camera, prepared.T_cam_lidar
        )
        rng = np.random.default_rng([self.options.seed, frame])
        sparse, holdout = split_holdout(projected, self.options.holdout_fraction, rng)
        return {
            "rgb": prepared.rgb,
            "sparse": sparse,
            "holdout": holdout,
            "K": prepared.camera.intrinsics.astype(np.float32),
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
