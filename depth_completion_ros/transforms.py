"""Where a pair's LiDAR -> camera transform comes from: one rule for the node, bags and training.

A fixed transform (``calibration_dir`` or ``extrinsics``) wins; else the identity when the cloud
is already in the image's frame; else a transform source. A source answers
``lookup(target, source, stamp)`` with the 4x4 taking points from ``source`` into ``target``,
None when it does not know, or a CalibrationError saying why.

The source of the node and of ``process_bag`` is one :class:`TransformBuffer`, fed with
``tf2_msgs/msg/TFMessage`` messages as they come (the node subscribes /tf_static, latched, and
/tf; process_bag reads both from the bag in bag order): what tf2_ros' Buffer does, in numpy, so
no tf2_ros is needed. Static transforms hold for ever; /tf samples are interpolated at the
scan's stamp (linear in translation, slerp in rotation, between the two nearest samples), or
the nearest one when the stamp is at most ``tolerance`` outside what was received.
"""

from __future__ import annotations

import bisect
import threading
from typing import Protocol

import numpy as np

from depth_completion_ros.calibration import (
    CalibrationError,
    extrinsics_from_values,
    quaternion_to_matrix,
)

NS = 1_000_000_000


def transform_to_matrix(transform) -> np.ndarray:
    """geometry_msgs/Transform -> 4x4 matrix (maps points from the child into the parent frame)."""
    t, q = transform.translation, transform.rotation
    return extrinsics_from_values([t.x, t.y, t.z, q.x, q.y, q.z, q.w])


class TransformSource(Protocol):
    #: what the source is, for messages ("/tf_static", "TF (tf2_ros)", ...)
    name: str

    def lookup(self, target: str, source: str, stamp: object = None) -> np.ndarray | None:
        """4x4 from ``source`` into ``target`` at ``stamp`` (None = latest), or None."""


class NoTransforms:
    """A source that knows nothing (no /tf_static in the bag, no tf2_ros in the node)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def lookup(self, target: str, source: str, stamp: object = None) -> np.ndarray | None:
        return None


def stamp_to_ns(stamp: object) -> int | None:
    """A stamp (builtin_interfaces/Time or anything with sec/nanosec, int ns, float s, None) ->
    int nanoseconds; None and time 0 mean "the latest", as in TF."""
    if stamp is None:
        return None
    if isinstance(stamp, (int, np.integer)):
        ns = int(stamp)
    elif isinstance(stamp, (float, np.floating)):
        ns = round(float(stamp) * NS)
    else:
        ns = int(stamp.sec) * NS + int(stamp.nanosec)
    return ns or None


def matrix_to_quaternion(R: np.ndarray) -> np.ndarray:
    """3x3 rotation -> unit quaternion (x, y, z, w), w >= 0."""
    m = np.asarray(R, dtype=np.float64)
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        q = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, s / 4]
    else:
        i = int(np.argmax(np.diag(m)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(1.0 + m[i, i] - m[j, j] - m[k, k])
        q = [0.0, 0.0, 0.0, (m[k, j] - m[j, k]) / s]
        q[i], q[j], q[k] = s / 4, (m[j, i] + m[i, j]) / s, (m[k, i] + m[i, k]) / s
    q = np.array(q)
    return q / np.linalg.norm(q) * (1.0 if q[3] >= 0 else -1.0)


def slerp(q0: np.ndarray, q1: np.ndarray, a: float) -> np.ndarray:
    """Spherical interpolation from unit quaternion ``q0`` (a = 0) to ``q1`` (a = 1)."""
    dot = float(np.dot(q0, q1))
    if dot < 0.0:  # the shorter way round
        q1, dot = -q1, -dot
    if dot > 0.9995:  # nearly equal: linear, renormalised
        q = q0 + a * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = np.arccos(dot)
    return (np.sin((1 - a) * theta) * q0 + np.sin(a * theta) * q1) / np.sin(theta)


class _Edge:
    """child -> parent: a fixed transform (/tf_static), or /tf samples sorted by stamp."""

    def __init__(self, parent: str, static: np.ndarray | None = None) -> None:
        self.parent = parent
        self.static = static
        self.stamps: list[int] = []
        self.samples: list[tuple[np.ndarray, np.ndarray]] = []  # (translation, quaternion)

    def span(self) -> str:
        return f"{self.stamps[0] / NS:.3f} .. {self.stamps[-1] / NS:.3f} s"


class TransformBuffer:
    """A TF tree fed by ``tf2_msgs/msg/TFMessage`` messages: tf2_ros' Buffer, in numpy.

    ``add_message(msg, static)`` takes a TFMessage as rclpy or rosbags decodes it (anything with
    ``transforms[i].header``, ``child_frame_id`` and ``transform``); ``lookup(target, source,
    stamp)`` composes the edges up to the frames' nearest common ancestor, each at ``stamp``:
    static ones as they are, /tf ones interpolated between the two nearest samples, or the
    nearest sample when ``stamp`` is at most ``tolerance`` seconds outside the samples
    (``stamp`` None or 0 = the latest). /tf samples older than ``cache_time`` before an edge's
    newest are dropped; one that far older than the newest (a bag looped, a clock reset)
    restarts the edge's history. Thread-safe: the node feeds it from its callbacks while its
    worker looks up.
    """

    def __init__(
        self, name: str = "TF (/tf_static, /tf)", tolerance: float = 0.1, cache_time: float = 10.0
    ) -> None:
        self.name = name
        self.tolerance_ns = round(tolerance * NS)
        self.cache_ns = round(cache_time * NS)
        self.edges: dict[str, _Edge] = {}
        #: transforms refused (no frame names, a frame its own parent, NaN, zero quaternion)
        self.rejected = 0
        self.last_rejection = ""
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.edges)

    # --- feeding ------------------------------------------------------------------------------

    def add_message(self, msg, static: bool) -> int:
        """Every transform of a TFMessage (``static``: it came on /tf_static); returns how many
        were taken."""
        taken = 0
        for item in msg.transforms:
            t, q = item.transform.translation, item.transform.rotation
            taken += self.set_transform(
                item.header.frame_id,
                item.child_frame_id,
                stamp_to_ns(item.header.stamp) or 0,
                (t.x, t.y, t.z),
                (q.x, q.y, q.z, q.w),
                static,
            )
        return taken

    def add_matrix(
        self,
        parent: str,
        child: str,
        T_parent_child: np.ndarray,
        stamp_ns: int = 0,
        static: bool = True,
    ) -> bool:
        """A 4x4 mapping points from ``child`` into ``parent`` (e.g. bag_io.StampedTransform)."""
        T = np.asarray(T_parent_child, dtype=np.float64)
        return self.set_transform(
            parent, child, stamp_ns, T[:3, 3], matrix_to_quaternion(T[:3, :3]), static
        )

    def set_transform(
        self,
        parent: str,
        child: str,
        stamp_ns: int,
        translation,
        quaternion,
        static: bool,
    ) -> bool:
        parent, child = parent.lstrip("/"), child.lstrip("/")  # tf2 strips a leading slash
        t = np.asarray(translation, dtype=np.float64)
        q = np.asarray(quaternion, dtype=np.float64)
        norm = float(np.linalg.norm(q))
        problem = ""
        if not parent or not child:
            problem = "an empty frame id"
        elif parent == child:
            problem = "the same frame as parent and child"
        elif not (np.all(np.isfinite(t)) and np.isfinite(norm)) or norm < 1e-9:
            problem = "NaN/inf values or a zero quaternion"
        if problem:
            with self._lock:
                self.rejected += 1
                self.last_rejection = f"transform '{parent}' -> '{child}' refused: {problem}"
            return False
        q = q / norm
        with self._lock:
            edge = self.edges.get(child)
            if static:
                T = np.eye(4)
                T[:3, :3] = quaternion_to_matrix(*q)
                T[:3, 3] = t
                self.edges[child] = _Edge(parent, T)
                return True
            if edge is None or edge.parent != parent or edge.static is not None:
                edge = self.edges[child] = _Edge(parent)
            if edge.stamps and stamp_ns < edge.stamps[-1] - self.cache_ns:
                edge.stamps.clear()  # time went back (bag looped, clock reset): start again
                edge.samples.clear()
            i = bisect.bisect_left(edge.stamps, stamp_ns)
            if i < len(edge.stamps) and edge.stamps[i] == stamp_ns:
                edge.samples[i] = (t, q)
            else:
                edge.stamps.insert(i, stamp_ns)
                edge.samples.insert(i, (t, q))
            old = bisect.bisect_left(edge.stamps, edge.stamps[-1] - self.cache_ns)
            if old:
                del edge.stamps[:old], edge.samples[:old]
        return True

    # --- looking up ---------------------------------------------------------------------------

    def newest_ns(self) -> int:
        """The oldest of the moving transforms' newest stamps: every /tf edge is known up to
        here (-1 when there is none)."""
        with self._lock:
            newest = [e.stamps[-1] for e in self.edges.values() if e.static is None and e.stamps]
        return min(newest) if newest else -1

    def describe(self) -> str:
        """What the buffer holds, for error messages."""
        with self._lock:
            if not self.edges:
                note = f"; {self.last_rejection}" if self.last_rejection else ""
                return f"no transform received yet{note}"
            edges = [
                f"{e.parent} -> {child} ({'static' if e.static is not None else e.span()})"
                for child, e in sorted(self.edges.items())
            ]
        return "it holds " + ", ".join(edges)

    def _chain(self, frame: str) -> list[str]:
        chain = [frame]
        while frame in self.edges and len(chain) < 64:  # 64: a cycle cannot loop for ever
            frame = self.edges[frame].parent
            if frame in chain:
                break
            chain.append(frame)
        return chain

    def _edge_matrix(self, child: str, stamp: int | None) -> np.ndarray:
        edge = self.edges[child]
        if edge.static is not None:
            return edge.static
        stamps = edge.stamps
        if stamp is None or stamp >= stamps[-1]:
            i = j = len(stamps) - 1
            late = 0 if stamp is None else stamp - stamps[-1]
            if late > self.tolerance_ns:
                raise CalibrationError(
                    f"TF '{edge.parent}' -> '{child}' at {stamp / NS:.3f} s: its newest sample "
                    f"is {late / NS:.3f} s older ({edge.span()}), more than transform_tolerance "
                    f"{self.tolerance_ns / NS:g} s; is its /tf publisher running, and are the "
                    "clocks the same (use_sim_time for bags)?"
                )
        elif stamp <= stamps[0]:
            i = j = 0
            early = stamps[0] - stamp
            if early > self.tolerance_ns:
                raise CalibrationError(
                    f"TF '{edge.parent}' -> '{child}' at {stamp / NS:.3f} s: that is "
                    f"{early / NS:.3f} s before its oldest sample ({edge.span()}, the last "
                    f"{self.cache_ns / NS:g} s are kept), more than transform_tolerance "
                    f"{self.tolerance_ns / NS:g} s"
                )
        else:
            j = bisect.bisect_left(stamps, stamp)
            i = j - 1
        (t0, q0), (t1, q1) = edge.samples[i], edge.samples[j]
        a = 0.0 if i == j else (stamp - stamps[i]) / (stamps[j] - stamps[i])
        T = np.eye(4)
        T[:3, :3] = quaternion_to_matrix(*slerp(q0, q1, a))
        T[:3, 3] = t0 + a * (t1 - t0)
        return T

    def _to_ancestor(self, chain: list[str], ancestor: str, stamp: int | None) -> np.ndarray:
        T = np.eye(4)
        for frame in chain[: chain.index(ancestor)]:
            T = self._edge_matrix(frame, stamp) @ T
        return T

    def lookup(self, target: str, source: str, stamp: object = None) -> np.ndarray | None:
        """4x4 from ``source`` into ``target`` at ``stamp``; None when no chain of transforms
        relates the two frames; a CalibrationError when one does but not at ``stamp``."""
        target, source = target.lstrip("/"), source.lstrip("/")
        when = stamp_to_ns(stamp)
        with self._lock:
            source_chain, target_chain = self._chain(source), self._chain(target)
            common = next((f for f in source_chain if f in target_chain), None)
            if common is None:
                return None
            T_common_source = self._to_ancestor(source_chain, common, when)
            T_common_target = self._to_ancestor(target_chain, common, when)
        return np.linalg.inv(T_common_target) @ T_common_source


class StaticTransforms(TransformBuffer):
    """Fixed transforms only, e.g. a bag's /tf_static read up front."""

    def __init__(self) -> None:
        super().__init__("/tf_static")

    def add(self, parent: str, child: str, T_parent_child: np.ndarray) -> None:
        self.add_matrix(parent, child, T_parent_child, static=True)


#: what an empty frame_id is told to do
EMPTY_FRAME_FIX = (
    "set the cloud's header.frame_id (its driver's frame parameter), or, when the cloud really "
    "is in the camera's optical frame, set 'cloud_in_camera_frame' true"
)


def pair_extrinsics(
    fixed: np.ndarray | None,
    transforms: TransformSource,
    source: str,
    target: str,
    fix: str,
    stamp: object = None,
    cloud_in_camera_frame: bool = False,
) -> np.ndarray:
    """LiDAR -> camera transform of one pair: ``fixed`` when set, else the identity when the
    cloud is in the image's frame (or has no frame_id and ``cloud_in_camera_frame`` says so),
    else ``transforms``' at ``stamp``; a CalibrationError ending in ``fix`` when none connects
    them. An empty frame_id is refused unless ``cloud_in_camera_frame``: it names no frame, so
    taking it as the camera's would project every point from the wrong place without a word."""
    if fixed is not None:
        return fixed
    if not source:
        if cloud_in_camera_frame:
            return np.eye(4)
        raise CalibrationError(
            f"the cloud's header.frame_id is empty (the image is in '{target}'), so no transform "
            f"relates it to the camera: {EMPTY_FRAME_FIX}; or {fix}"
        )
    if source == target:
        return np.eye(4)
    T = transforms.lookup(target, source, stamp)
    if T is None:
        known = getattr(transforms, "describe", None)
        detail = f" ({known()})" if known is not None else ""
        raise CalibrationError(
            f"the cloud is in frame '{source}', the image in '{target}', and {transforms.name} "
            f"does not connect them{detail}: {fix}"
        )
    return T
