"""Per-point time and 6-DoF motion: each LiDAR point moved to where it was at the image's stamp.

A spinning LiDAR takes a tenth of a second per turn; the robot moves and turns meanwhile, and the
camera is exposed at one instant somewhere in (or near) that sweep. Three pieces, pure numpy, no
ROS imports (messages are read duck-typed, as :mod:`depth_completion_ros.odometry` does):

- **When each point was seen.** From the cloud's per-point time field when it has one (the
  drivers' layouts in :data:`KNOWN_TIME_FIELDS`, or any field with its unit and reference given
  by parameters), else from its azimuth (:class:`AzimuthTiming`: direction, period, the angle
  faced at the stamp, and where in the sweep the stamp lies).
- **How the sensor moved.** :class:`OdometryBuffer` keeps the recent nav_msgs/Odometry messages;
  :func:`lidar_twists` turns those around the sweep into the LiDAR's own linear and angular
  velocity (rotated from the odometry's child frame, with the lever arm omega x r), and the twist
  at any instant is interpolated linearly between messages (held beyond the first and last).
- **The correction.** :class:`SweepDeskew` integrates that twist into the sensor's pose (exact
  SE(3) steps of at most 2 ms) around the image's stamp and moves each point by the pose at its
  own time: linear and angular motion in all six degrees of freedom.

Without a time field, with the default azimuth timing, one constant twist without roll or pitch
rate and the image at the scan's stamp, the correction is :func:`projection.deskew`'s first-order
one, bit for bit what earlier releases computed (it differs from the exact one by at most
0.5 |omega| |v| (T/2)^2, 6 mm at 10 m/s and 0.5 rad/s).
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from depth_completion_ros.projection import deskew as first_order_deskew

# --- per-point time ---------------------------------------------------------------------------

#: seconds per unit
TIME_UNITS: dict[str, float] = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
#: largest |point time - scan stamp| (s) taken as a time; beyond it the field's unit or
#: reference is wrong (the scan is then not deskewed, and the cause says so)
MAX_POINT_TIME_OFFSET = 1.0


class NoMotion(Exception):
    """No usable odometry or point times for a scan (it is processed without deskewing);
    ``cause`` is a short key for counting and throttling, the message names the fix."""

    def __init__(self, cause: str, text: str) -> None:
        super().__init__(text)
        self.cause = cause


@dataclass(frozen=True)
class TimeLayout:
    """A driver's per-point time field."""

    field: str
    kinds: str  # numpy dtype kinds it comes in: 'f' float, 'u'/'i' integer
    unit: str  # a TIME_UNITS key, or 's|ns': seconds or nanoseconds, told apart by magnitude
    reference: str  # 'relative' (to the header stamp) or 'absolute'
    drivers: str


#: the per-point time fields drivers publish, in the order ``points_time_field: auto`` tries them
KNOWN_TIME_FIELDS: tuple[TimeLayout, ...] = (
    TimeLayout("time", "f", "s", "relative", "Velodyne (velodyne_pointcloud)"),
    TimeLayout("t", "ui", "ns", "relative", "Ouster (ouster-ros)"),
    TimeLayout(
        "timestamp",
        "fui",
        "s|ns",
        "absolute",
        "Hesai and RoboSense (float64 s), Livox livox_ros_driver2 (float64 ns)",
    ),
    TimeLayout("offset_time", "ui", "ns", "relative", "Livox (CustomMsg points)"),
)
_KNOWN = {layout.field: layout for layout in KNOWN_TIME_FIELDS}


@dataclass(frozen=True)
class TimeFieldSpec:
    """What the parameters say about the time field: ``field`` 'auto' (a known layout when
    present), '' (none: time from azimuth) or a name; ``unit`` and ``reference`` 'auto' (the
    known layout's) or a TIME_UNITS key / 'relative' / 'absolute'."""

    field: str = "auto"
    unit: str = "auto"
    reference: str = "auto"


@dataclass(frozen=True)
class TimeField:
    """The time field a cloud is read with."""

    name: str
    unit: str
    reference: str

    def describe(self) -> str:
        unit = "s or ns by magnitude" if self.unit == "s|ns" else self.unit
        return f"field '{self.name}' ({unit}, {self.reference})"


def resolve_time_field(fields: Mapping[str, np.dtype], spec: TimeFieldSpec) -> TimeField | None:
    """The field of a cloud with ``fields`` (name -> numpy dtype) that holds per-point time, or
    None (no time: azimuth). Raises NoMotion ('time') when a named field is missing or its unit
    is unknown."""
    if not spec.field:
        return None
    if spec.field == "auto":
        layout = next(
            (k for k in KNOWN_TIME_FIELDS if k.field in fields and fields[k.field].kind in k.kinds),
            None,
        )
        if layout is None:
            return None
        name = layout.field
    else:
        name, layout = spec.field, _KNOWN.get(spec.field)
        if name not in fields:
            raise NoMotion(
                "time",
                f"the cloud has no time field '{name}' (fields: {', '.join(sorted(fields))}): "
                "set points_time_field to one of them, 'auto' or '' (time from azimuth)",
            )
    unit = spec.unit if spec.unit != "auto" else layout.unit if layout else ""
    reference = spec.reference if spec.reference != "auto" else layout.reference if layout else ""
    if not unit or not reference:
        raise NoMotion(
            "time",
            f"the unit or reference of time field '{name}' is unknown: set points_time_unit "
            "and points_time_reference",
        )
    return TimeField(name, unit, reference)


def point_times(values: np.ndarray, field: TimeField, stamp_ns: int) -> np.ndarray:
    """A time field's values -> float64 seconds relative to the header stamp (``stamp_ns``)."""
    values = np.asarray(values)
    unit = field.unit
    if unit == "s|ns":  # whichever unit puts the points nearer the header stamp
        sample = float(values[len(values) // 2]) if len(values) else 0.0
        if field.reference == "absolute":
            near_s = abs(sample - stamp_ns * 1e-9) <= abs(sample * 1e-9 - stamp_ns * 1e-9)
        else:
            near_s = abs(sample) <= abs(sample * 1e-9)
        unit = "s" if near_s else "ns"
    scale = TIME_UNITS[unit]
    if field.reference == "relative":
        return values.astype(np.float64) * scale
    if values.dtype.kind in "ui" and unit == "ns":  # exact in integers
        return (values.astype(np.int64) - np.int64(stamp_ns)).astype(np.float64) * 1e-9
    return (values.astype(np.float64) - stamp_ns * (1e-9 / scale)) * scale


@dataclass(frozen=True)
class AzimuthTiming:
    """When a point was seen, from its azimuth, for clouds without a time field.

    The LiDAR turns ``direction`` ('cw' or 'ccw', seen from above, +z) once per ``period`` s
    and faces ``reference_angle`` (rad, counter-clockwise from +x) at the header stamp, which
    marks the ``stamp_at`` ('middle', 'start' or 'end') of its sweep. KITTI's HDL-64E: clockwise,
    0.1 s, forward, middle (the defaults).
    """

    direction: str = "cw"
    period: float = 0.1
    reference_angle: float = 0.0
    stamp_at: str = "middle"

    @property
    def span(self) -> tuple[float, float]:
        """The sweep's first and last instant, s relative to the header stamp."""
        start = {"middle": -0.5, "start": 0.0, "end": -1.0}[self.stamp_at] * self.period
        return start, start + self.period

    def times(self, points: np.ndarray) -> np.ndarray:
        """Float64 seconds relative to the header stamp of each point (N x 2+)."""
        x = np.asarray(points[:, 0], np.float64)
        y = np.asarray(points[:, 1], np.float64)
        turned = np.arctan2(y, x) - self.reference_angle
        if self.direction == "cw":
            turned = -turned
        low = {"middle": -np.pi, "start": 0.0, "end": -2.0 * np.pi}[self.stamp_at]
        turned = np.mod(turned - low, 2.0 * np.pi) + low
        return turned * (self.period / (2.0 * np.pi))


# --- odometry ---------------------------------------------------------------------------------


def _seconds(stamp) -> float:
    return stamp.sec + 1e-9 * stamp.nanosec


@dataclass(frozen=True)
class Twist:
    """One odometry message: stamp (s), the frame its twist is in, linear (m/s) and angular
    (rad/s) velocity of that frame in its own axes (nav_msgs/Odometry's child_frame_id)."""

    stamp: float
    frame: str
    linear: tuple[float, float, float]
    angular: tuple[float, float, float]

    @classmethod
    def from_odometry(cls, msg) -> Twist:
        t = msg.twist.twist
        return cls(
            _seconds(msg.header.stamp),
            msg.child_frame_id,
            (float(t.linear.x), float(t.linear.y), float(t.linear.z)),
            (float(t.angular.x), float(t.angular.y), float(t.angular.z)),
        )


class OdometryBuffer:
    """The recent odometry, ordered by stamp: what the motion during a sweep is interpolated
    from. The node's callback adds while its worker takes snapshots, so it holds a lock; messages
    older than ``span`` s before the newest are dropped (a stamp far behind is a new recording
    or a looped bag: the buffer restarts)."""

    def __init__(self, span: float = 2.0) -> None:
        self.span = float(span)
        self._twists: list[Twist] = []
        self._lock = threading.Lock()

    def add(self, msg) -> None:
        """Add a nav_msgs/Odometry (or a :class:`Twist`)."""
        twist = msg if isinstance(msg, Twist) else Twist.from_odometry(msg)
        with self._lock:
            twists = self._twists
            if twists and twist.stamp < twists[-1].stamp - self.span:
                twists.clear()  # time went back: a looped bag, a new recording
            bisect.insort(twists, twist, key=lambda k: k.stamp)
            newest = twists[-1].stamp
            drop = bisect.bisect_left(twists, newest - self.span, key=lambda k: k.stamp)
            del twists[:drop]

    def snapshot(self) -> tuple[Twist, ...]:
        with self._lock:
            return tuple(self._twists)

    def __len__(self) -> int:
        return len(self._twists)


def twists_of(odometry) -> tuple[Twist, ...]:
    """An Odometry message, an :class:`OdometryBuffer`, a sequence of Twists or None -> Twists."""
    if odometry is None:
        return ()
    if isinstance(odometry, OdometryBuffer):
        return odometry.snapshot()
    if isinstance(odometry, tuple | list):
        return tuple(odometry)
    return (Twist.from_odometry(odometry),)


@dataclass(frozen=True)
class LidarTwists:
    """The LiDAR's own velocity at some instants: ``stamps`` (K, s relative to the scan's
    stamp, increasing), ``linear`` (K x 3, m/s) and ``angular`` (K x 3, rad/s), LiDAR axes."""

    stamps: np.ndarray
    linear: np.ndarray
    angular: np.ndarray

    def at(self, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(linear, angular) at ``times``, interpolated linearly (held beyond the ends)."""
        times = np.asarray(times, np.float64)
        if len(self.stamps) == 1:
            shape = (len(times), 3)
            return np.broadcast_to(self.linear[0], shape), np.broadcast_to(self.angular[0], shape)
        linear = np.stack([np.interp(times, self.stamps, c) for c in self.linear.T], axis=1)
        angular = np.stack([np.interp(times, self.stamps, c) for c in self.angular.T], axis=1)
        return linear, angular

    @property
    def constant(self) -> bool:
        return bool(
            (self.linear == self.linear[0]).all() and (self.angular == self.angular[0]).all()
        )


#: Transform lookup: (child frame, LiDAR frame) -> 4x4 taking child coordinates into the
#: LiDAR's, or None when unknown
Lookup = Callable[[str, str], "np.ndarray | None"]


def lidar_twists(
    odometry,
    scan_header,
    lookup: Lookup,
    topic: str,
    span: tuple[float, float] = (0.0, 0.0),
    max_age: float = 0.5,
) -> LidarTwists:
    """The LiDAR's velocity around a scan, from the odometry messages within ``max_age`` s of
    the interval ``span`` (s relative to the scan's stamp: its points' times and the image's).

    Each twist is moved from the odometry's child frame into the cloud's: rotated, plus the
    lever arm (the LiDAR's origin r in the child frame moves at v + omega x r). Raises
    :class:`NoMotion` when there is no odometry, when the nearest message is more than
    ``max_age`` s from the scan's stamp, when its frame cannot be related to the cloud's, or
    when a twist is not finite.
    """
    twists = twists_of(odometry)
    if not twists:
        raise NoMotion("none", f"no odometry received on {topic} yet (parameter odometry_topic)")
    scan = _seconds(scan_header.stamp)
    nearest = min(twists, key=lambda k: abs(scan - k.stamp))
    offset = scan - nearest.stamp
    if not abs(offset) <= max_age:
        raise NoMotion(
            "stale",
            f"the latest odometry on {topic} is {offset:+.3f} s from the scan's stamp (more "
            f"than {max_age:g} s): is the odometry publishing, and are the clocks in sync?",
        )
    lo, hi = scan + span[0] - max_age, scan + span[1] + max_age
    used = [k for k in twists if lo <= k.stamp <= hi] or [nearest]
    lidar = scan_header.frame_id
    moves: dict[str, tuple[np.ndarray, np.ndarray] | None] = {}
    stamps, linear, angular = [], [], []
    for twist in used:
        v, w = np.array(twist.linear, np.float64), np.array(twist.angular, np.float64)
        if not (np.isfinite(v).all() and np.isfinite(w).all()):
            raise NoMotion("nan", f"the odometry on {topic} has a non-finite twist")
        child = twist.frame
        if child and lidar and child != lidar:
            if child not in moves:
                T = lookup(child, lidar)
                moves[child] = None if T is None else (T[:3, :3], -T[:3, :3].T @ T[:3, 3])
            move = moves[child]
            if move is None:
                raise NoMotion(
                    "frame",
                    f"the odometry on {topic} is in frame '{child}', the cloud in '{lidar}', and "
                    "no transform between them is known: publish it on /tf_static or /tf (the "
                    "node reads both; a bag's are read from it) or publish the odometry with "
                    "child_frame_id the cloud's frame",
                )
            R, r = move
            v, w = R @ (v + np.cross(w, r)), R @ w
        stamps.append(twist.stamp - scan)
        linear.append(v)
        angular.append(w)
    return LidarTwists(np.array(stamps), np.array(linear), np.array(angular))


# --- the correction ---------------------------------------------------------------------------

#: longest step (s) of the pose integration; the twist is taken constant within a step
MAX_STEP = 0.002


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cross product of N x 3 arrays (np.cross is several times slower)."""
    out = np.empty(np.broadcast_shapes(a.shape, b.shape))
    out[..., 0] = a[..., 1] * b[..., 2] - a[..., 2] * b[..., 1]
    out[..., 1] = a[..., 2] * b[..., 0] - a[..., 0] * b[..., 2]
    out[..., 2] = a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]
    return out


def se3_exp(angular: np.ndarray, linear: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact pose (R: K x 3 x 3, t: K x 3) after moving with the constant body twists
    (``angular`` * dt, ``linear`` * dt), each K x 3: Rodrigues and SE(3)'s V matrix."""
    phi, rho = np.asarray(angular, np.float64), np.asarray(linear, np.float64)
    theta = np.linalg.norm(phi, axis=1)
    small = theta < 1e-6
    safe = np.where(small, 1.0, theta)
    a = np.where(small, 1.0 - theta**2 / 6.0, np.sin(safe) / safe)
    b = np.where(small, 0.5 - theta**2 / 24.0, (1.0 - np.cos(safe)) / safe**2)
    c = np.where(small, 1.0 / 6.0 - theta**2 / 120.0, (safe - np.sin(safe)) / safe**3)
    K = np.zeros((len(phi), 3, 3))
    K[:, 0, 1], K[:, 0, 2], K[:, 1, 2] = -phi[:, 2], phi[:, 1], -phi[:, 0]
    K[:, 1, 0], K[:, 2, 0], K[:, 2, 1] = phi[:, 2], -phi[:, 1], phi[:, 0]
    K2 = K @ K
    eye = np.eye(3)[None]
    R = eye + a[:, None, None] * K + b[:, None, None] * K2
    V = eye + b[:, None, None] * K + c[:, None, None] * K2
    return R, np.einsum("kij,kj->ki", V, rho)


def move_to(
    points: np.ndarray, times: np.ndarray, target: float, twists: LidarTwists
) -> np.ndarray:
    """N x 3 points, each seen at ``times`` (s) in the LiDAR's frame of that instant -> float64
    points in the LiDAR's frame at ``target`` (s), the pose integrated from ``twists``.

    The poses on a grid of steps of at most :data:`MAX_STEP` around ``target`` are composed of
    exact SE(3) steps with the twist at each step's middle; a point then moves by its step's pose
    and the rest of its step to second order (|omega| dt <= 0.01 rad at 5 rad/s: under 0.2 mm
    at 100 m).
    """
    times = np.asarray(times, np.float64)
    lo, hi = min(float(times.min()), target), max(float(times.max()), target)
    before = int(np.ceil((target - lo) / MAX_STEP - 1e-9))
    after = int(np.ceil((hi - target) / MAX_STEP - 1e-9))
    steps = max(before + after, 1)
    step = MAX_STEP
    if before + after == 0:
        before, step = 0, max(hi - lo, 1e-6)
    nodes = target + (np.arange(steps + 1) - before) * step
    linear, angular = twists.at(nodes[:-1] + step / 2)
    dR, dt = se3_exp(angular * step, linear * step)
    R = np.empty((steps + 1, 3, 3))
    t = np.empty((steps + 1, 3))
    R[before], t[before] = np.eye(3), 0.0
    for j in range(before, steps):  # forward: P[j+1] = P[j] exp(xi h)
        R[j + 1] = R[j] @ dR[j]
        t[j + 1] = R[j] @ dt[j] + t[j]
    for j in range(before - 1, -1, -1):  # backward: P[j] = P[j+1] exp(xi h)^-1
        inverse = dR[j].T
        R[j] = R[j + 1] @ inverse
        t[j] = t[j + 1] - R[j] @ dt[j]
    index = np.clip(np.floor((times - nodes[0]) / step).astype(np.intp), 0, steps - 1)
    delta = (times - nodes[index])[:, None]
    phi = angular[index] * delta
    rho = linear[index] * delta
    p = np.asarray(points[:, :3], np.float64)
    cross = _cross(phi, p)
    q = p + cross + 0.5 * _cross(phi, cross) + rho + 0.5 * _cross(phi, rho)
    return np.einsum("nij,nj->ni", R[index], q) + t[index]


@dataclass(frozen=True)
class SweepDeskew:
    """A scan's correction, built by the frame step and applied by ``DepthPipeline``: every
    point moved to where it was at the image's stamp.

    ``times``: each point's time (s relative to the scan's stamp), None = from its azimuth
    (``timing``); ``target``: the image's stamp relative to the scan's; ``twists``: the LiDAR's
    velocity (:func:`lidar_twists`).
    """

    twists: LidarTwists
    target: float = 0.0
    times: np.ndarray | None = None
    timing: AzimuthTiming = AzimuthTiming()

    @property
    def first_order(self) -> bool:
        """Today's correction applies, bit for bit (see the module's docstring)."""
        return (
            self.times is None
            and self.timing == AzimuthTiming()
            and self.target == 0.0
            and self.twists.constant
            and self.twists.angular[0, 0] == 0.0
            and self.twists.angular[0, 1] == 0.0
        )

    def apply(self, points: np.ndarray) -> np.ndarray:
        """A new float32 N x 3+ array (extra columns copied) of the corrected points."""
        points = np.asarray(points)
        if self.first_order:
            return first_order_deskew(
                points,
                tuple(float(v) for v in self.twists.linear[0]),
                float(self.twists.angular[0, 2]),
                self.timing.period,
            )
        times = self.timing.times(points) if self.times is None else self.times
        if len(times) != len(points):
            raise ValueError(f"{len(times)} point times for {len(points)} points")
        out = points.astype(np.float32, copy=True)
        if len(points):
            out[:, :3] = move_to(points, times, self.target, self.twists)
        return out


def check_times(times: np.ndarray, field: TimeField, topic: str) -> None:
    """Point times that cannot be this scan's (NaN, or more than MAX_POINT_TIME_OFFSET s from
    its stamp) raise NoMotion ('time'), naming the parameters that set unit and reference."""
    if not len(times):
        return
    low, high = float(np.min(times)), float(np.max(times))
    if not (np.isfinite(low) and np.isfinite(high)) or max(-low, high) > MAX_POINT_TIME_OFFSET:
        raise NoMotion(
            "time",
            f"the point times of the cloud on {topic} ({field.describe()}) run from {low:+.6g} "
            f"to {high:+.6g} s around its stamp: check points_time_unit and "
            "points_time_reference (or set points_time_field to '' to time points by azimuth)",
        )
