"""ROS 2 bags with ``rosbags``: atomic writing, checked reading, and the rosbags <-> rclpy adapter.

Why one module: every tool reads or writes bags, and the bag is where two message worlds meet.
Messages are stored as CDR bytes, the same bytes rclpy sends over DDS, so the adapter is just
``rclpy.serialization`` on those bytes (no field copying, exact round trips). Types that have no
rclpy package on PyPI (``tf2_msgs/msg/TFMessage``) go through rosbags' own typestore instead.

Bags are written the way ``ros2 bag record`` writes them (metadata version 8, CDR, mcap or sqlite3,
message definitions and RIHS01 type hashes from the ROS 2 Kilted typestore), into a hidden
temporary folder that is renamed into place only after the bag was closed cleanly: a crash or an
error never leaves a folder that looks like a complete bag.
"""

from __future__ import annotations

import contextlib
import importlib
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from types import TracebackType

import numpy as np
from rosbags.interfaces import (
    Qos,
    QosDurability,
    QosHistory,
    QosLiveliness,
    QosReliability,
    QosTime,
)
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from depth_completion_ros.messages import (
    camera_info_to_camera,
    image_to_depth,
    image_to_rgb,
    stamp_to_nanoseconds,
)
from depth_completion_ros.transforms import StaticTransforms

BAG_VERSION = 8  # rosbag2 metadata version that Jazzy and newer read (Kilted writes 9)
STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
TF_TYPE = "tf2_msgs/msg/TFMessage"


class BagError(RuntimeError):
    """A bag cannot be read or written; the message names the bag, topic or field."""


# --- typestore and the rosbags <-> rclpy adapter ---------------------------------------------


@lru_cache(maxsize=1)
def typestore():
    """The ROS 2 Kilted typestore (message definitions and hashes for writing, TF decoding)."""
    return get_typestore(Stores.ROS2_KILTED)


@cache
def ros_message_class(msgtype: str) -> type:
    """``pkg/msg/Name`` -> the rclpy message class, or BagError if that package is missing."""
    parts = msgtype.split("/")
    if len(parts) != 3 or parts[1] != "msg":
        raise BagError(f"message type {msgtype!r} is not of the form 'package/msg/Name'")
    try:
        module = importlib.import_module(f"{parts[0]}.msg")
        return getattr(module, parts[2])
    except (ImportError, AttributeError) as exc:
        raise BagError(
            f"message type {msgtype!r} has no Python package in this environment ({exc}); "
            "install its ROS package or leave the topic out"
        ) from exc


def to_ros(data: bytes | memoryview, msgtype: str):
    """Bag CDR bytes -> rclpy message (``sensor_msgs.msg.Image`` etc.)."""
    from rclpy.serialization import deserialize_message

    return deserialize_message(bytes(data), ros_message_class(msgtype))


def from_ros(msg) -> bytes:
    """rclpy message -> CDR bytes for a bag."""
    from rclpy.serialization import serialize_message

    return serialize_message(msg)


def msgtype_of(msg) -> str:
    """The ``pkg/msg/Name`` of an rclpy message instance."""
    module = type(msg).__module__.split(".")[0]
    return f"{module}/msg/{type(msg).__name__}"


def decode(data: bytes | memoryview, msgtype: str):
    """Bag CDR bytes -> rosbags message object (for types rclpy lacks, e.g. TFMessage)."""
    store = typestore()
    if msgtype not in store.types:
        raise BagError(f"message type {msgtype!r} is unknown to the ROS 2 Kilted typestore")
    return store.deserialize_cdr(bytes(data), msgtype)


def encode(msg, msgtype: str) -> bytes:
    """rosbags message object -> CDR bytes."""
    return bytes(typestore().serialize_cdr(msg, msgtype))


# --- TF -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StampedTransform:
    """``T`` (4x4) maps points from ``child`` into ``parent``, as TF's parent -> child."""

    parent: str
    child: str
    stamp_ns: int
    T: np.ndarray


def _matrix_to_quaternion(R: np.ndarray) -> tuple[float, float, float, float]:
    from scipy.spatial.transform import Rotation

    x, y, z, w = Rotation.from_matrix(R).as_quat()
    return float(x), float(y), float(z), float(w)


def tf_message_bytes(transforms: Iterable[StampedTransform]) -> bytes:
    """A ``tf2_msgs/msg/TFMessage`` holding ``transforms``, as CDR bytes."""
    store = typestore()
    Time = store.types["builtin_interfaces/msg/Time"]
    Header = store.types["std_msgs/msg/Header"]
    Vector3 = store.types["geometry_msgs/msg/Vector3"]
    Quaternion = store.types["geometry_msgs/msg/Quaternion"]
    Transform = store.types["geometry_msgs/msg/Transform"]
    TransformStamped = store.types["geometry_msgs/msg/TransformStamped"]
    TFMessage = store.types[TF_TYPE]
    items = []
    for tf in transforms:
        T = np.asarray(tf.T, dtype=np.float64)
        x, y, z, w = _matrix_to_quaternion(T[:3, :3])
        stamp = Time(sec=tf.stamp_ns // 1_000_000_000, nanosec=tf.stamp_ns % 1_000_000_000)
        items.append(
            TransformStamped(
                header=Header(stamp=stamp, frame_id=tf.parent),
                child_frame_id=tf.child,
                transform=Transform(
                    translation=Vector3(x=float(T[0, 3]), y=float(T[1, 3]), z=float(T[2, 3])),
                    rotation=Quaternion(x=x, y=y, z=z, w=w),
                ),
            )
        )
    return encode(TFMessage(transforms=items), TF_TYPE)


def parse_tf_message(data: bytes | memoryview) -> list[StampedTransform]:
    """``tf2_msgs/msg/TFMessage`` CDR bytes -> transforms."""
    from scipy.spatial.transform import Rotation

    out = []
    for item in decode(data, TF_TYPE).transforms:
        r, t = item.transform.rotation, item.transform.translation
        T = np.eye(4)
        T[:3, :3] = Rotation.from_quat([r.x, r.y, r.z, r.w]).as_matrix()
        T[:3, 3] = (t.x, t.y, t.z)
        stamp = int(item.header.stamp.sec) * 1_000_000_000 + int(item.header.stamp.nanosec)
        out.append(StampedTransform(item.header.frame_id, item.child_frame_id, stamp, T))
    return out


def read_static_transforms(reader: BagReader) -> StaticTransforms:
    """The bag's /tf_static as a transform tree (empty when the bag has none)."""
    static = StaticTransforms()
    if "/tf_static" in reader.topics:
        for message in reader.messages(["/tf_static"]):
            for tf in parse_tf_message(message.data):
                static.add(tf.parent, tf.child, tf.T)
    return static


# --- QoS as rosbag2 records it ----------------------------------------------------------------

_UNSPECIFIED = QosTime(0, 0)  # rmw's "use the default" (infinite deadline/lifespan/lease)


def qos_profile(durability: str = "volatile", depth: int = 10) -> Qos:
    """A reliable keep-last profile; ``transient_local`` for latched topics like /tf_static."""
    return Qos(
        history=QosHistory.KEEP_LAST,
        depth=depth,
        reliability=QosReliability.RELIABLE,
        durability=(
            QosDurability.TRANSIENT_LOCAL
            if durability == "transient_local"
            else QosDurability.VOLATILE
        ),
        deadline=_UNSPECIFIED,
        lifespan=_UNSPECIFIED,
        liveliness=QosLiveliness.AUTOMATIC,
        liveliness_lease_duration=_UNSPECIFIED,
        avoid_ros_namespace_conventions=False,
    )


# --- reading --------------------------------------------------------------------------------


@dataclass(frozen=True)
class BagMessage:
    """One stored message: raw CDR bytes plus where and when it was recorded."""

    topic: str
    msgtype: str
    timestamp: int  # ns, the bag's receive time
    data: bytes | memoryview


class BagReader:
    """A ROS 2 bag opened for reading; every failure is a BagError naming the bag."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise BagError(f"bag not found: {self.path}")
        if self.path.is_file() and self.path.suffix in (".mcap", ".db3"):
            self.path = self.path.parent  # accept the storage file, read its folder
        if not (self.path / "metadata.yaml").is_file():
            raise BagError(
                f"{self.path}: not a ROS 2 bag folder (no metadata.yaml); pass the folder that "
                "'ros2 bag record' or kitti_to_bag wrote"
            )
        self._reader = Reader(self.path)
        try:
            self._reader.open()
        except Exception as exc:  # rosbags raises several kinds for damaged bags
            raise BagError(f"{self.path}: cannot open bag: {exc}") from exc

    def __enter__(self) -> BagReader:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        if self._reader.is_open:
            self._reader.close()

    @property
    def topics(self) -> dict[str, str]:
        """topic -> message type."""
        return {c.topic: c.msgtype for c in self._reader.connections}

    @property
    def message_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for c in self._reader.connections:
            counts[c.topic] = counts.get(c.topic, 0) + c.msgcount
        return counts

    @property
    def start_time(self) -> int:
        return int(self._reader.start_time)

    @property
    def end_time(self) -> int:
        return int(self._reader.end_time)

    def qos(self, topic: str) -> list[Qos]:
        for c in self._reader.connections:
            if c.topic == topic:
                return list(getattr(c.ext, "offered_qos_profiles", []) or [])
        return []

    def require(self, topics: dict[str, str | tuple[str, ...]]) -> None:
        """Fail with a clear message when a topic is absent or has another type (a tuple:
        any of these types)."""
        available = self.topics
        for topic, msgtype in topics.items():
            kinds = (msgtype,) if isinstance(msgtype, str) else tuple(msgtype)
            expected = " or ".join(kinds)
            if topic not in available:
                listing = ", ".join(f"{t} ({m})" for t, m in sorted(available.items())) or "none"
                raise BagError(
                    f"{self.path}: topic {topic!r} ({expected}) is not in the bag; it has: "
                    f"{listing}"
                )
            if available[topic] not in kinds:
                raise BagError(
                    f"{self.path}: topic {topic!r} holds {available[topic]}, expected {expected}"
                )

    def messages(
        self,
        topics: Iterable[str] | None = None,
        start: int | None = None,
        stop: int | None = None,
    ) -> Iterator[BagMessage]:
        """Messages in recording order, optionally only some topics and a time window (ns)."""
        wanted = set(topics) if topics is not None else None
        connections = [c for c in self._reader.connections if wanted is None or c.topic in wanted]
        if wanted is not None and not connections:
            return
        try:
            for connection, timestamp, data in self._reader.messages(connections, start, stop):
                yield BagMessage(connection.topic, connection.msgtype, int(timestamp), data)
        except BagError:
            raise
        except Exception as exc:  # truncated chunks, bad CRCs, sqlite errors ...
            raise BagError(f"{self.path}: bag is damaged or truncated: {exc}") from exc


# --- writing --------------------------------------------------------------------------------


class BagWriter:
    """Writes a bag into a hidden temporary folder and renames it into place on success.

    Use as a context manager; an exception inside the block discards the partial bag.
    """

    def __init__(self, path: str | Path, storage: str = "mcap", overwrite: bool = False) -> None:
        if storage not in STORAGES:
            raise BagError(f"unknown storage {storage!r}; choose one of {', '.join(STORAGES)}")
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise BagError(f"output bag {self.path} exists already (use --overwrite to replace it)")
        self.overwrite = overwrite
        self.storage = storage
        self._staging: Path | None = None
        self._writer: Writer | None = None
        self._connections: dict[str, object] = {}
        self.counts: dict[str, int] = {}

    def __enter__(self) -> BagWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._staging = Path(
            tempfile.mkdtemp(prefix=f".{self.path.name}.partial-", dir=self.path.parent)
        )
        # the inner folder carries the final name, so storage file names match it
        self._writer = Writer(
            self._staging / self.path.name,
            version=BAG_VERSION,
            storage_plugin=STORAGES[self.storage],
        )
        self._writer.open()
        return self

    def add_topic(
        self,
        topic: str,
        msgtype: str,
        qos: Qos | None = None,
        msgdef: str | None = None,
        digest: str | None = None,
    ) -> None:
        """Declare a topic (type definitions from the typestore unless given)."""
        assert self._writer is not None, "use BagWriter as a context manager"
        if topic in self._connections:
            return
        kwargs: dict = {"offered_qos_profiles": [qos or qos_profile()]}
        if msgdef and digest:
            kwargs.update(msgdef=msgdef, rihs01=digest)
        elif msgtype in typestore().types:
            kwargs["typestore"] = typestore()
        else:
            raise BagError(f"cannot write topic {topic!r}: message type {msgtype!r} is unknown")
        self._connections[topic] = self._writer.add_connection(topic, msgtype, **kwargs)
        self.counts[topic] = 0

    def write(self, topic: str, timestamp: int, data: bytes | memoryview) -> None:
        if topic not in self._connections:
            raise BagError(f"topic {topic!r} was not declared with add_topic")
        self._writer.write(self._connections[topic], int(timestamp), data)  # type: ignore[union-attr]
        self.counts[topic] += 1

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        staging, writer = self._staging, self._writer
        self._writer = None
        try:
            if exc_type is None:
                writer.close()
                if self.path.exists():
                    trash = staging / ".replaced"
                    self.path.rename(trash)
                (staging / self.path.name).rename(self.path)
            else:
                with contextlib.suppress(Exception):  # the original error matters more
                    writer.abort()
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def connection_definitions(reader: BagReader) -> dict[str, tuple[str, str, str]]:
    """topic -> (msgtype, msgdef, digest) as stored, to copy topics into another bag unchanged."""
    out = {}
    for c in reader._reader.connections:
        out[c.topic] = (c.msgtype, c.msgdef.data, c.digest)
    return out


# --- RGB-D frames of a depth bag -----------------------------------------------------------


def messages_by_stamp(reader: BagReader, topic: str) -> dict[int, object]:
    """Every message of ``topic``, decoded, by its header stamp in nanoseconds."""
    out = {}
    for m in reader.messages([topic]):
        msg = to_ros(m.data, m.msgtype)
        out[stamp_to_nanoseconds(msg.header.stamp)] = msg
    return out


def load_rgbd_frames(reader: BagReader, image_topic: str, depth_topic: str, info_topic: str):
    """(stamp, rgb, depth, camera, frame_id) for every depth image with its colour image (the
    RGB-D export and TSDF fusion read depth bags through this)."""
    reader.require(
        {
            image_topic: "sensor_msgs/msg/Image",
            depth_topic: "sensor_msgs/msg/Image",
            info_topic: "sensor_msgs/msg/CameraInfo",
        }
    )
    images, infos = messages_by_stamp(reader, image_topic), messages_by_stamp(reader, info_topic)
    frames = []
    for stamp, depth in sorted(messages_by_stamp(reader, depth_topic).items()):
        if stamp in images and stamp in infos:
            camera = camera_info_to_camera(infos[stamp])
            frames.append(
                (
                    stamp,
                    image_to_rgb(images[stamp]),
                    image_to_depth(depth),
                    camera,
                    depth.header.frame_id,
                )
            )
    if not frames:
        raise BagError(
            f"{reader.path}: no {depth_topic} image has a {image_topic} image with the same stamp"
        )
    return frames


__all__ = [
    "BagError",
    "BagMessage",
    "BagReader",
    "BagWriter",
    "StampedTransform",
    "connection_definitions",
    "decode",
    "encode",
    "from_ros",
    "msgtype_of",
    "parse_tf_message",
    "qos_profile",
    "ros_message_class",
    "tf_message_bytes",
    "to_ros",
    "load_rgbd_frames",
    "messages_by_stamp",
    "read_static_transforms",
    "typestore",
]
