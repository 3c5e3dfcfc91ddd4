"""One frame, one function: a paired image + scan (+ camera_info, odometry) in, the output
messages and the accounting out.

The node, ``process_bag`` and the demo call :meth:`FrameProcessor.process`; they differ only in
where frames come from and where outputs go, and in the data of a :class:`FrameSource` (topic
names for messages, where transforms come from, what to tell the user to fix). The error policy
is the same everywhere: anything that goes wrong with one frame is a :class:`FrameFailure`,
counted by cause and skipped; only unusable parameters (at construction) are fatal.
No ROS imports: messages are converted by :mod:`depth_completion_ros.messages`.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from depth_completion_ros import deskew, odometry
from depth_completion_ros.backends import BackendError, make_backend
from depth_completion_ros.backends.base import DepthCompletionBackend
from depth_completion_ros.calibration import (
    CalibrationError,
    PinholeCamera,
    extrinsics_from_values,
    load_kitti_calibration,
)
from depth_completion_ros.messages import (
    MessageError,
    camera_info_to_camera,
    camera_to_camera_info,
    image_to_rgb,
    numpy_to_image,
    organised_xyzrgb_cloud,
    pointcloud2_times,
    pointcloud2_to_array,
    stamp_to_nanoseconds,
)
from depth_completion_ros.parameters import ParameterError
from depth_completion_ros.pipeline import DepthPipeline, FrameResult, InputError, check_image_size
from depth_completion_ros.projection import ProjectionConfig, SensorMotion
from depth_completion_ros.support import SupportConfig
from depth_completion_ros.transforms import TransformSource, pair_extrinsics
from depth_completion_ros.visualization import colorize_depth

#: every output: relative topic -> (message type, the parameter that enables it or None = always)
OUTPUTS: dict[str, tuple[str, str | None]] = {
    "depth/image": ("sensor_msgs/msg/Image", None),
    "depth/camera_info": ("sensor_msgs/msg/CameraInfo", None),
    "depth/points": ("sensor_msgs/msg/PointCloud2", "publish_points"),
    "sparse_depth/image": ("sensor_msgs/msg/Image", "publish_sparse"),
    "depth/colored": ("sensor_msgs/msg/Image", "publish_colored"),
    "depth/confidence": ("sensor_msgs/msg/Image", "publish_confidence"),
}
#: how many failure messages a run keeps as examples (counts are kept for every cause)
FAILURE_EXAMPLES = 20


def enabled_outputs(config: dict) -> dict[str, str]:
    """The outputs these parameters publish: relative topic -> message type."""
    return {topic: kind for topic, (kind, flag) in OUTPUTS.items() if flag is None or config[flag]}


# --- the node's parameters -> the pipeline and the fixed extrinsics -------------------------


def pipeline_from_parameters(config: dict) -> DepthPipeline:
    """The DepthPipeline for a (validated) node parameter dict."""
    try:
        backend = make_backend(
            model=config["model"],
            checkpoint=config["checkpoint"],
            device=config["device"],
            precision=config["precision"],
            dataset=config["dataset"],
            compile=config["compile"],
            max_depth=config["max_depth"],
            network_input=config["network_input"],
            network_focal=config["network_focal"],
            support=support_from_parameters(config),
            runtime=config["runtime"],
        )
    except BackendError as exc:
        raise ParameterError(f"parameter 'model'/'checkpoint': {exc}") from exc
    return pipeline_around(backend, config)


def pipeline_around(backend, config: dict) -> DepthPipeline:
    """The DepthPipeline of ``config``'s range, projection and support around a built backend
    (at start-up, and again when those parameters change at runtime: the weights stay loaded)."""
    return DepthPipeline(
        backend,
        ProjectionConfig(
            min_depth=max(config["min_depth"], 0.05),
            max_depth=config["max_depth"],
            occlusion_window=config["occlusion_window"],
        ),
        min_depth=config["min_depth"],
        max_depth=config["max_depth"],
        support=support_from_parameters(config),
        confidence_distance=config["confidence_distance"],
    )


def support_from_parameters(config: dict) -> SupportConfig | None:
    """limit_to_lidar_support, support_band, support_margin -> SupportConfig (None = off)."""
    if not config["limit_to_lidar_support"]:
        return None
    return SupportConfig(band=config["support_band"], margin=config["support_margin"])


def extrinsics_from_parameters(config: dict) -> tuple[np.ndarray | None, str]:
    """LiDAR -> camera optical transform from calibration_dir or extrinsics (None when neither
    is set), and where it came from, for the log."""
    if config["calibration_dir"]:
        try:
            calibration = load_kitti_calibration(config["calibration_dir"], config["camera_index"])
        except CalibrationError as exc:
            raise ParameterError(f"parameter 'calibration_dir': {exc}") from exc
        return calibration.T_cam_lidar, f"KITTI files in {config['calibration_dir']}"
    values = [float(v) for v in config["extrinsics"]]
    if values and values != [0.0]:
        try:
            return extrinsics_from_values(values), "the 'extrinsics' parameter"
        except CalibrationError as exc:
            raise ParameterError(f"parameter 'extrinsics': {exc}") from exc
    return None, "none set (the cloud's frame must be the image's, or reachable by transforms)"


# --- one frame ------------------------------------------------------------------------------


def cause_of(text: str) -> str:
    """A message without its numbers and quoted values: the same fault with other values (a
    stamp, a count, a size) shares a key; another fault gets its own."""
    return re.sub(r"'[^']*'|\"[^\"]*\"|[-+]?\d[\d.e+-]*", "#", text)


class FrameFailure(Exception):
    """One frame failed at one ``stage`` (camera_info, image, points, extrinsics, pipeline,
    outputs, emit), counted per stage; ``key`` (stage, ``detail`` and the message without its
    values) groups failures of one cause for throttled logging."""

    def __init__(self, stage: str, text: str, detail: str = "") -> None:
        super().__init__(text)
        self.stage = stage
        self.detail = detail

    @property
    def key(self) -> str:
        return f"{self.stage}:{self.detail}:{cause_of(str(self))}"


def run_stage(stage: str, what: str, run: Callable, *args):
    """``run(*args)``, with any failure turned into a FrameFailure naming ``what``."""
    try:
        return run(*args)
    except (InputError, MessageError, CalibrationError) as exc:
        raise FrameFailure(stage, f"{what}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - one frame never ends a node or a bag run
        raise FrameFailure(stage, f"{what}: unexpected error {exc!r}", type(exc).__name__) from exc


@dataclass
class FrameInputs:
    """A pair and what goes with it: messages as they arrived (sensor_msgs types)."""

    image: object
    cloud: object
    camera_info: object | None
    #: the recent nav_msgs/Odometry: a :class:`deskew.OdometryBuffer` (or its snapshot), or
    #: one message; the motion during the sweep is interpolated between them
    odometry: object | None = None
    #: monotonic time the pair formed (latency starts here)
    received: float = 0.0
    #: the outputs to build (someone listens to them); None = every enabled output
    wanted: frozenset[str] | None = None


@dataclass
class PreparedFrame:
    """A frame's inputs decoded and checked: what :meth:`DepthPipeline.run` takes."""

    camera: PinholeCamera
    rgb: np.ndarray
    points: np.ndarray
    T_cam_lidar: np.ndarray
    motion: deskew.SweepDeskew | SensorMotion | None


@dataclass
class FrameOutput:
    """A processed frame: the output messages (relative topic -> message) and what made them."""

    messages: dict[str, object]
    camera: PinholeCamera
    rgb: np.ndarray
    result: FrameResult
    latency: float


@dataclass
class FrameOutcome:
    """What became of one frame: ``output`` or ``failure``; ``not_deskewed`` when odometry was
    asked for and could not be used (the frame is still processed)."""

    output: FrameOutput | None = None
    failure: FrameFailure | None = None
    not_deskewed: odometry.NoMotion | None = None
    #: how many frames went through the backend's forward pass with this one (1: alone)
    batch: int = 0


@dataclass
class FrameAccounting:
    """Counts of every frame handed to :meth:`FrameProcessor.process`, by what became of it.

    ``lock`` guards the counts; a caller that hands frames over under the same lock (the node)
    gets snapshots that add up exactly.
    """

    lock: threading.Lock = field(default_factory=threading.Lock)
    processed: int = 0
    failed: int = 0
    in_process: int = 0
    #: processed frames that shared the backend's forward pass with another camera's
    batched: int = 0
    failed_by_stage: Counter = field(default_factory=Counter)
    failure_examples: list[str] = field(default_factory=list)
    not_deskewed: Counter = field(default_factory=Counter)
    deskew_notes: dict[str, str] = field(default_factory=dict)

    def __getstate__(self) -> dict:  # a lock does not pickle (DataLoader workers)
        return {k: v for k, v in self.__dict__.items() if k != "lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, lock=threading.Lock())

    def record(self, outcome: FrameOutcome) -> None:
        """Count ``outcome`` (call with ``lock`` held)."""
        if outcome.failure is not None:
            self.failed += 1
            self.failed_by_stage[outcome.failure.stage] += 1
            if len(self.failure_examples) < FAILURE_EXAMPLES:
                self.failure_examples.append(str(outcome.failure))
        else:
            self.processed += 1
            self.batched += outcome.batch > 1
        if outcome.not_deskewed is not None:
            cause = outcome.not_deskewed.cause
            self.not_deskewed[cause] += 1
            self.deskew_notes.setdefault(cause, str(outcome.not_deskewed))


#: where a frame's outputs go: the node publishes them, process_bag writes them
Emit = Callable[[FrameInputs, FrameOutput], None]


@dataclass(frozen=True)
class FrameSource:
    """What differs between a live node and a bag run, as data."""

    #: role (image, camera_info, points, odometry) -> topic name, for messages
    topics: dict[str, str]
    #: where transforms between frames come from: a TransformBuffer fed by /tf_static and /tf
    #: (the node's subscriptions, the bag's messages in bag order)
    transforms: TransformSource
    #: what to do when no transform connects the cloud's frame to the image's
    extrinsics_fix: str


class FrameProcessor:
    """The per-frame step, built once from the node's parameters."""

    def __init__(
        self,
        config: dict,
        source: FrameSource,
        lock: threading.Lock | None = None,
        backend: DepthCompletionBackend | None = None,
    ) -> None:
        """``backend``: one already built (the cameras of a node share one model); None
        builds it from ``config``."""
        self.config = config
        self.source = source
        if backend is None:
            self.pipeline = pipeline_from_parameters(config)
        else:
            self.pipeline = pipeline_around(backend, config)
        self.fixed_extrinsics, self.extrinsics_source = extrinsics_from_parameters(config)
        self.outputs = enabled_outputs(config)
        self.points_scale = config["points_scale"] or None
        self.deskewing = bool(config["odometry_topic"])
        self.time_spec = deskew.TimeFieldSpec(
            config["points_time_field"], config["points_time_unit"], config["points_time_reference"]
        )
        self.azimuth_timing = deskew.AzimuthTiming(
            config["sweep_direction"],
            config["sweep_period"],
            config["sweep_reference_angle"],
            config["sweep_stamp"],
        )
        self.accounting = FrameAccounting(lock or threading.Lock())

    def reconfigure(self, config: dict) -> None:
        """Apply new values of the runtime parameters (parameters.RUNTIME_PARAMETERS, already
        checked): the depth range, projection, support and enabled outputs change; the backend
        and its weights stay. The next frame uses them (one attribute swap per field)."""
        backend = self.pipeline.backend
        if hasattr(backend, "support"):  # the network's window follows the LiDAR support
            backend.support = support_from_parameters(config)
        if isinstance(getattr(backend, "max_depth", None), float):  # the classical fill
            backend.max_depth = float(config["max_depth"])
        self.pipeline = pipeline_around(backend, config)
        self.outputs = enabled_outputs(config)
        self.config = config

    # --- entry points -----------------------------------------------------------------------

    def process(self, inputs: FrameInputs, emit: Emit | None = None) -> FrameOutcome:
        """Run one frame, hand its outputs to ``emit`` (publish, write), and count it."""
        outcome = self.take_and_process(lambda: inputs, emit)
        assert outcome is not None
        return outcome

    def take_and_process(
        self, take: Callable[[], FrameInputs | None], emit: Emit | None = None
    ) -> FrameOutcome | None:
        """``take()`` a frame and mark it in process atomically (under the accounting lock),
        then run it, ``emit(inputs, output)``, and count it; None when there was nothing to
        take. A failure of ``emit`` fails the frame like any other stage."""
        return process_together([(self, take, emit)])[0]

    # --- the step ---------------------------------------------------------------------------

    def _project(self, inputs: FrameInputs, outcome: FrameOutcome) -> _Projected:
        """Checks, conversions and the sparse depth: everything before the backend."""
        frame = self.prepare(inputs, outcome)
        sparse, count = run_stage(
            "pipeline",
            "completion",
            self.pipeline.project,
            frame.rgb,
            frame.points,
            frame.camera,
            frame.T_cam_lidar,
            frame.motion,
        )
        confidence = "depth/confidence" in self.outputs and (
            inputs.wanted is None or "depth/confidence" in inputs.wanted
        )
        return _Projected(frame, sparse, count, confidence)

    def _finish(self, inputs: FrameInputs, projected: _Projected, completed: tuple) -> FrameOutput:
        """The backend's result -> what is published, and the output messages."""
        frame = projected.frame
        result = run_stage(
            "pipeline",
            "completion",
            self.pipeline.finish,
            projected.sparse,
            projected.count,
            *completed,
            projected.confidence,
        )
        messages = run_stage(
            "outputs",
            "building the outputs",
            self.output_messages,
            inputs.image.header,
            frame.camera,
            frame.rgb,
            result,
            inputs.wanted,
        )
        latency = time.monotonic() - inputs.received if inputs.received else 0.0
        return FrameOutput(messages, frame.camera, frame.rgb, result, latency)

    def prepare(self, inputs: FrameInputs, outcome: FrameOutcome | None = None) -> PreparedFrame:
        """The checks and conversions before completion: camera, image, points, extrinsics and
        motion (training reads bags through this, then projects with ``pipeline.sparse_depth``).
        Raises FrameFailure; odometry that cannot be used is noted in ``outcome``."""
        topics = self.source.topics
        if inputs.camera_info is None:
            raise FrameFailure(
                "camera_info",
                f"no camera_info received yet on {topics['camera_info']}; frames are skipped "
                "until one arrives",
                "none",
            )
        camera = run_stage(
            "camera_info",
            f"camera_info on {topics['camera_info']}",
            camera_info_to_camera,
            inputs.camera_info,
            self.config["camera_model"],
        )
        rgb = run_stage("image", f"image on {topics['image']}", image_to_rgb, inputs.image)
        run_stage("image", f"image on {topics['image']}", check_image_size, rgb, camera)
        cloud = inputs.cloud
        points = run_stage(
            "points",
            f"point cloud on {topics['points']}",
            pointcloud2_to_array,
            cloud,
            False,
            self.points_scale,
        )
        if cloud.width * cloud.height == 0:
            raise FrameFailure("points", f"empty point cloud on {topics['points']}", "empty")
        if len(points) == 0:
            raise FrameFailure(
                "points",
                f"point cloud on {topics['points']} has {cloud.width * cloud.height} points, "
                "all NaN/inf",
                "nan",
            )
        T = run_stage(
            "extrinsics",
            "extrinsics (calibration_dir/extrinsics/transforms)",
            pair_extrinsics,
            self.fixed_extrinsics,
            self.source.transforms,
            cloud.header.frame_id,
            inputs.image.header.frame_id,
            self.source.extrinsics_fix,
            cloud.header.stamp,
            self.config["cloud_in_camera_frame"],
        )
        motion = self._motion(inputs, points, outcome or FrameOutcome())
        return PreparedFrame(camera, rgb, points, T, motion)

    def _motion(
        self, inputs: FrameInputs, points: np.ndarray, outcome: FrameOutcome
    ) -> deskew.SweepDeskew | None:
        """How to move each point to where it was at the image's stamp: its time (the cloud's
        time field, else its azimuth) and the LiDAR's twist interpolated between the odometry
        messages around the sweep. None (noted in ``outcome``) when the odometry or the times
        cannot be used: the frame is then processed without deskewing."""
        if not self.deskewing:
            return None
        cloud, topic = inputs.cloud, self.source.topics["odometry"]

        def lookup(child: str, lidar: str) -> np.ndarray | None:
            try:
                return self.source.transforms.lookup(lidar, child)
            except CalibrationError:
                return None

        try:
            try:
                timed = pointcloud2_times(cloud, self.time_spec, self.points_scale)
            except MessageError as exc:
                raise deskew.NoMotion("time", f"the cloud's time field: {exc}") from exc
            target = 1e-9 * (
                stamp_to_nanoseconds(inputs.image.header.stamp)
                - stamp_to_nanoseconds(cloud.header.stamp)
            )
            if timed is None:
                times, span = None, self.azimuth_timing.span
            else:
                times, field = timed
                if len(times) != len(points):
                    raise deskew.NoMotion(
                        "time", f"{len(times)} point times for {len(points)} points"
                    )
                deskew.check_times(times, field, self.source.topics["points"])
                span = (float(times.min()), float(times.max()))
            span = (min(span[0], target), max(span[1], target))
            twists = deskew.lidar_twists(inputs.odometry, cloud.header, lookup, topic, span)
        except deskew.NoMotion as exc:
            outcome.not_deskewed = exc
            return None
        return deskew.SweepDeskew(twists, target, times, self.azimuth_timing)

    def output_messages(
        self,
        header,
        camera: PinholeCamera,
        rgb: np.ndarray,
        result: FrameResult,
        wanted: frozenset[str] | None = None,
    ) -> dict[str, object]:
        """The enabled outputs of one frame (those in ``wanted`` when given: an output nobody
        listens to is not built), keyed by relative topic, with the camera image's header
        (REP 118)."""
        build = set(self.outputs) if wanted is None else set(self.outputs) & wanted
        out: dict[str, object] = {}
        if "depth/image" in build:
            out["depth/image"] = numpy_to_image(result.dense, "32FC1", header)
        if "depth/camera_info" in build:
            out["depth/camera_info"] = camera_to_camera_info(camera, header)
        if "depth/points" in build:
            xyz = self.pipeline.points_xyz(result.dense, camera)
            out["depth/points"] = organised_xyzrgb_cloud(xyz, rgb, header)
        if "sparse_depth/image" in build:
            sparse = np.where(result.sparse > 0, result.sparse, np.nan).astype(np.float32)
            out["sparse_depth/image"] = numpy_to_image(sparse, "32FC1", header)
        if "depth/colored" in build:
            colored = colorize_depth(result.dense, self.config["max_depth"])
            out["depth/colored"] = numpy_to_image(colored, "rgb8", header)
        if "depth/confidence" in build and result.confidence is not None:
            out["depth/confidence"] = numpy_to_image(result.confidence, "32FC1", header)
        return out


# --- several frames at once -------------------------------------------------------------------


@dataclass
class _Projected:
    """A frame ready for the backend."""

    frame: PreparedFrame
    sparse: np.ndarray
    count: int
    confidence: bool


@dataclass
class _Job:
    processor: FrameProcessor
    inputs: FrameInputs
    emit: Emit | None
    outcome: FrameOutcome = field(default_factory=FrameOutcome)
    projected: _Projected | None = None
    completed: tuple | None = None


#: one camera's frame source for :func:`process_together`: its processor, how to take its
#: frame (None: nothing to do) and where its outputs go
FrameJob = tuple[FrameProcessor, Callable[[], FrameInputs | None], Emit | None]


def process_together(jobs: list[FrameJob]) -> list[FrameOutcome]:
    """Take a frame of each job (atomically with its accounting, as take_and_process does),
    run them, emit each one's outputs and count each one; the frames of processors that share
    a backend go through it together (:meth:`DepthCompletionBackend.complete_batch`: one
    forward pass for the frames of one input geometry). A failure fails only its own frame: a
    batch that fails is retried frame by frame. Returns each job's outcome (None: nothing
    was taken)."""
    slots: list[_Job | None] = []
    for processor, take, emit in jobs:
        accounting = processor.accounting
        with accounting.lock:
            inputs = take()
            if inputs is not None:
                accounting.in_process += 1
        slots.append(None if inputs is None else _Job(processor, inputs, emit))
    taken = [job for job in slots if job is not None]
    try:
        for job in taken:
            try:
                job.projected = job.processor._project(job.inputs, job.outcome)
            except FrameFailure as exc:
                job.outcome.failure = exc
        _complete_together([job for job in taken if job.outcome.failure is None])
        for job in taken:
            if job.outcome.failure is not None:
                continue
            try:
                output = job.processor._finish(job.inputs, job.projected, job.completed)
                if job.emit is not None:
                    run_stage(
                        "emit", "publishing/writing the outputs", job.emit, job.inputs, output
                    )
                job.outcome.output = output
            except FrameFailure as exc:
                job.outcome.failure = exc
    finally:
        for job in taken:
            accounting = job.processor.accounting
            with accounting.lock:
                accounting.in_process -= 1
                accounting.record(job.outcome)
    return [None if job is None else job.outcome for job in slots]


def _complete_together(jobs: list[_Job]) -> None:
    """Each job's (depth, confidence) from its backend; jobs sharing a backend and a confidence
    request in one complete_batch call. Sets ``job.completed`` or ``job.outcome.failure``."""
    groups: dict[tuple[int, bool, int], list[_Job]] = {}
    for job in jobs:
        # batch_cameras false: each frame in a group of its own
        own_group = 0 if job.processor.config["batch_cameras"] else id(job)
        key = (id(job.processor.pipeline.backend), job.projected.confidence, own_group)
        groups.setdefault(key, []).append(job)
    for (_, confidence, _), members in groups.items():
        backend = members[0].processor.pipeline.backend
        frames = [
            (j.projected.frame.rgb, j.projected.sparse, j.projected.frame.camera.intrinsics)
            for j in members
        ]
        try:
            results = run_stage(
                "pipeline", "completion", backend.complete_batch, frames, confidence
            )
        except FrameFailure as exc:
            if len(members) == 1:
                members[0].outcome.failure = exc
                continue
            results = None  # one bad frame must not fail the others: each alone
        for index, job in enumerate(members):
            if results is not None:
                job.completed = results[index]
                job.outcome.batch = backend.last_batch_sizes[index]
                continue
            try:
                alone = frames[index : index + 1]
                job.completed = run_stage(
                    "pipeline", "completion", backend.complete_batch, alone, confidence
                )[0]
                job.outcome.batch = 1
            except FrameFailure as exc:
                job.outcome.failure = exc
