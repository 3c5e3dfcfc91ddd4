"""The one data path: points + image + camera -> sparse depth -> dense depth.

The node, the offline bag tool, the demo and evaluation all call :class:`DepthPipeline`, so one
test covers all of them. Plain numpy/torch: no ROS types here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from depth_completion_ros.backends.base import DepthCompletionBackend
from depth_completion_ros.calibration import PinholeCamera
from depth_completion_ros.confidence import DEFAULT_DISTANCE, distance_confidence, mask_confidence
from depth_completion_ros.deskew import SweepDeskew
from depth_completion_ros.projection import (
    ProjectionConfig,
    SensorMotion,
    backproject,
    deskew,
    project_points,
)
from depth_completion_ros.support import SupportConfig, outside_support


class InputError(ValueError):
    """A frame cannot be processed; the message names the problem and the fix."""


def check_image_size(rgb: np.ndarray, camera: PinholeCamera) -> None:
    """The image and its camera_info describe the same pixels, or an InputError says so."""
    if rgb.shape[:2] != (camera.height, camera.width):
        raise InputError(
            f"image is {rgb.shape[1]}x{rgb.shape[0]} but camera_info says "
            f"{camera.width}x{camera.height}: the camera changed resolution or the "
            "camera_info belongs to another camera/stream"
        )


@dataclass
class FrameResult:
    """Outputs for one frame (both H x W float32 metres)."""

    sparse: np.ndarray  # 0 = no LiDAR point
    dense: np.ndarray  # NaN = no estimate (REP 118)
    points_in_image: int
    #: 0-1 per pixel, NaN where ``dense`` is NaN; only when asked for (see DepthPipeline.run)
    confidence: np.ndarray | None = None


class DepthPipeline:
    """Projection + completion + what may be published, with the checks every caller needs.

    What may be published is decided here, once for every backend: depth in
    [min_depth, max_depth], and (``support`` set, the default) only where the LiDAR supports it,
    between its highest and lowest return per column band (:mod:`depth_completion_ros.support`).
    ``support=None`` publishes the backend's whole image.
    """

    def __init__(
        self,
        backend: DepthCompletionBackend,
        projection: ProjectionConfig = ProjectionConfig(),
        min_depth: float = 0.1,
        max_depth: float = 100.0,
        support: SupportConfig | None = SupportConfig(),
        confidence_distance: float = DEFAULT_DISTANCE,
    ) -> None:
        if not 0 <= min_depth < max_depth:
            raise ValueError(f"need 0 <= min_depth < max_depth, got {min_depth}, {max_depth}")
        self.backend = backend
        self.projection = projection
        self.min_depth = float(min_depth)
        self.max_depth = float(max_depth)
        self.support = support
        #: d0 of the distance-based confidence (pixels), for backends without their own
        self.confidence_distance = float(confidence_distance)
        self._mask: np.ndarray | None = None  # reused: a fresh image-sized mask costs page faults

    def sparse_depth(
        self,
        points: np.ndarray,
        camera: PinholeCamera,
        T_cam_lidar: np.ndarray,
        motion: SensorMotion | SweepDeskew | None = None,
    ) -> np.ndarray:
        """LiDAR points (N x 3+, cloud frame) -> sparse depth in the camera image.

        With ``motion``, the sweep is deskewed first: a :class:`deskew.SweepDeskew` (per-point
        time, 6-DoF motion, points moved to the image's stamp; what the frame step builds) or a
        :class:`SensorMotion` (one constant velocity and yaw rate, the azimuth as time).
        """
        if points.ndim != 2 or points.shape[1] < 3:
            raise InputError(f"points must be N x 3 or wider, got shape {points.shape}")
        if isinstance(motion, SensorMotion):
            points = deskew(points, motion.velocity, motion.yaw_rate, motion.sweep_period)
        elif motion is not None:
            points = motion.apply(points)
        return project_points(
            points,
            T_cam_lidar,
            camera.projection,
            camera.width,
            camera.height,
            self.projection,
            camera.lens,
        )

    def run(
        self,
        rgb: np.ndarray,
        points: np.ndarray,
        camera: PinholeCamera,
        T_cam_lidar: np.ndarray,
        motion: SensorMotion | SweepDeskew | None = None,
        confidence: bool = False,
    ) -> FrameResult:
        """One frame through the whole path (``motion``: see :meth:`sparse_depth`).

        ``confidence``: also the per-pixel confidence (:mod:`depth_completion_ros.confidence`):
        the backend's own (NLSPN's head) or, for a backend without one, exp(-d / d0) of the
        distance to the nearest return; NaN where the published depth is NaN. Not computed
        when not asked for."""
        sparse, count = self.project(rgb, points, camera, T_cam_lidar, motion)
        frame = (rgb, sparse, camera.intrinsics)
        dense, conf = self.backend.complete_batch([frame], confidence)[0]
        return self.finish(sparse, count, dense, conf, confidence)

    def project(
        self,
        rgb: np.ndarray,
        points: np.ndarray,
        camera: PinholeCamera,
        T_cam_lidar: np.ndarray,
        motion: SensorMotion | SweepDeskew | None = None,
    ) -> tuple[np.ndarray, int]:
        """The checks and the sparse depth before completion: (sparse, points in the image);
        InputError when no point falls inside the image."""
        check_image_size(rgb, camera)
        if len(points) == 0:
            raise InputError("point cloud has no finite points (empty or all NaN)")
        sparse = self.sparse_depth(points, camera, T_cam_lidar, motion)
        count = int(np.count_nonzero(sparse))
        if count == 0:
            raise InputError(
                f"none of the {len(points)} LiDAR points falls inside the image: check the "
                "extrinsics (calibration_dir / extrinsics parameters) and the cloud's frame_id"
            )
        return sparse, count

    def finish(
        self,
        sparse: np.ndarray,
        count: int,
        dense: np.ndarray,
        conf: np.ndarray | None = None,
        confidence: bool = False,
    ) -> FrameResult:
        """The backend's depth (and its confidence, if any) -> what is published: the range and
        support applied; with ``confidence`` and none from the backend, the distance-based one."""
        if confidence and conf is None:
            conf = distance_confidence(sparse, self.confidence_distance)
        dense = self.publishable(dense, sparse)
        if conf is not None:
            conf = mask_confidence(conf, dense)
        return FrameResult(sparse=sparse, dense=dense, points_in_image=count, confidence=conf)

    def confidence_source(self) -> str:
        """What depth/confidence holds with this backend, for the start-up log and docs."""
        if getattr(self.backend, "has_confidence", False):
            return f"{self.backend.name}'s confidence head (NLSPN)"
        return f"exp(-d / {self.confidence_distance:g} px), d = distance to the nearest return"

    def publishable(self, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        """A new float32 array of what is published: NaN outside the range and the support."""
        out = self.clip(dense)
        if self.support is not None:
            if self._mask is None or self._mask.shape != sparse.shape:
                self._mask = np.empty(sparse.shape, dtype=bool)
            np.copyto(
                out, np.float32(np.nan), where=outside_support(sparse, self.support, self._mask)
            )
        return out

    def clip(self, dense: np.ndarray) -> np.ndarray:
        """A new float32 array: depth outside [min_depth, max_depth] (and 0 = none) becomes NaN."""
        out = np.array(dense, dtype=np.float32)  # a copy: backends may reuse their buffers
        with np.errstate(invalid="ignore"):
            keep = (out >= self.min_depth) & (out <= self.max_depth)  # NaN: False
        np.copyto(out, np.float32(np.nan), where=~keep)
        return out

    @staticmethod
    def points_xyz(dense: np.ndarray, camera: PinholeCamera) -> np.ndarray:
        """Dense depth -> H x W x 3 points in the camera optical frame (NaN where none); a raw
        distorted image's pixels along their undistorted rays."""
        if camera.lens is not None:
            return camera.lens.backproject(dense)
        return backproject(dense, camera.intrinsics)
