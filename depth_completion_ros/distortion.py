"""Lens distortion and sensor windows as ROS's CameraInfo means them (pure numpy).

A CameraInfo describes the full-resolution sensor (K, D, R, P, width, height) plus how the
published image was taken from it (binning, roi). Two images go with it (REP 104,
image_geometry):

* the *rectified* image (``image_rect``): pixels = ``P @ (x, y, z, 1)``, no distortion;
* the *raw* image (``image_raw``): pixels = ``K @ distort(x / z, y / z)`` with D under the named
  distortion model.

This module holds the forward models (our own implementation of OpenCV's formulas):

* ``plumb_bob`` (k1, k2, p1, p2, k3) and ``rational_polynomial`` (k1, k2, p1, p2, k3, k4, k5, k6)::

      r2 = x^2 + y^2
      radial = (1 + k1 r2 + k2 r2^2 + k3 r2^3) / (1 + k4 r2 + k5 r2^2 + k6 r2^3)
      xd = x radial + 2 p1 x y + p2 (r2 + 2 x^2)
      yd = y radial + p1 (r2 + 2 y^2) + 2 p2 x y

* ``equidistant`` (fisheye, k1..k4)::

      theta = atan(r);  theta_d = theta (1 + k1 theta^2 + k2 theta^4 + k3 theta^6 + k4 theta^8)
      (xd, yd) = theta_d / r * (x, y)

their inverse (Newton's method, for back-projecting raw pixels), the radius beyond which a model
folds back (points beyond it would land inside the image again: they are dropped), and
image_geometry's binning/roi rule (principal point moved by the roi offset, then K and P scaled
by 1/binning).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

#: distortion models, as sensor_msgs/distortion_models.h names them, with their coefficients
MODELS: dict[str, tuple[str, ...]] = {
    "plumb_bob": ("k1", "k2", "p1", "p2", "k3"),
    "rational_polynomial": ("k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6"),
    "equidistant": ("k1", "k2", "k3", "k4"),
}
#: largest undistorted radius x/z considered for the polynomial models (87 degrees off-axis)
_MAX_RADIUS = 20.0


class DistortionError(ValueError):
    """A distortion model or its coefficients cannot be used; the text names the fix."""


def is_distorted(D) -> bool:
    """Whether any coefficient is non-zero (an empty D is no distortion)."""
    D = np.asarray(D, dtype=np.float64).ravel()
    return bool(D.size) and bool(np.any(D != 0.0))


def coefficients(model: str, D) -> np.ndarray:
    """D checked against ``model`` and padded to the model's full length (float64).

    plumb_bob takes 4 or 5 values (k3 = 0 when absent); rational_polynomial 8 (5 = plumb_bob);
    equidistant 4. Extra values are accepted only when they are zero (OpenCV's thin-prism and
    tilt terms are not modelled).
    """
    if model not in MODELS:
        raise DistortionError(
            f"distortion model {model!r} is not supported for raw images with D != 0; supported: "
            f"{', '.join(MODELS)} (or rectify the image, e.g. with image_proc, and use "
            "camera_model rectified)"
        )
    D = np.asarray(D, dtype=np.float64).ravel()
    names = MODELS[model]
    if not np.all(np.isfinite(D)):
        raise DistortionError(f"distortion coefficients D hold NaN/inf: {D.tolist()}")
    shortest = 4 if model != "rational_polynomial" else 5
    if D.size < shortest:
        raise DistortionError(
            f"{model} needs {len(names)} coefficients ({', '.join(names)}), D has {D.size}"
        )
    if D.size > len(names) and np.any(D[len(names) :] != 0.0):
        raise DistortionError(
            f"{model} has {len(names)} coefficients ({', '.join(names)}), D has {D.size} with "
            f"non-zero extra terms {D[len(names) :].tolist()} (thin-prism/tilt terms are not "
            "supported)"
        )
    out = np.zeros(len(names))
    out[: min(D.size, len(names))] = D[: len(names)]
    return out


def distort(x: np.ndarray, y: np.ndarray, model: str, c: np.ndarray):
    """Undistorted normalised coordinates (x/z, y/z) -> distorted ones, in x's dtype."""
    if model == "equidistant":
        r = np.hypot(x, y)
        theta = np.arctan(r)
        t2 = theta * theta
        theta_d = theta * (1 + t2 * (c[0] + t2 * (c[1] + t2 * (c[2] + t2 * c[3]))))
        with np.errstate(invalid="ignore", divide="ignore"):
            scale = np.where(r > 1e-12, theta_d / r, 1.0).astype(x.dtype, copy=False)
        return x * scale, y * scale
    k1, k2, p1, p2, k3 = c[:5]
    k4, k5, k6 = c[5:8] if c.size >= 8 else (0.0, 0.0, 0.0)
    xx, yy, xy = x * x, y * y, x * y
    r2 = xx + yy
    radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    if k4 or k5 or k6:
        radial = radial / (1 + r2 * (k4 + r2 * (k5 + r2 * k6)))
    xd = x * radial + 2 * p1 * xy + p2 * (r2 + 2 * xx)
    yd = y * radial + p1 * (r2 + 2 * yy) + 2 * p2 * xy
    return xd.astype(x.dtype, copy=False), yd.astype(y.dtype, copy=False)


def max_radius(model: str, c: np.ndarray) -> float:
    """The undistorted radius r = |(x, y)| / z up to which the radial mapping keeps increasing.

    Beyond it a polynomial model folds back: a point far outside the field of view would be
    mapped into the image. Points beyond it are dropped (tangential terms are small there and
    not considered).
    """
    if model == "equidistant":
        theta = np.linspace(0.0, np.pi / 2, 200_001)[:-1]
        t2 = theta * theta
        mapped = theta * (1 + t2 * (c[0] + t2 * (c[1] + t2 * (c[2] + t2 * c[3]))))
        bad = np.flatnonzero(np.diff(mapped) <= 0)
        return float(np.tan(theta[bad[0]])) if bad.size else float("inf")
    r = np.linspace(0.0, _MAX_RADIUS, 200_001)
    x = r
    xd, _ = distort(x, np.zeros_like(x), model, np.concatenate([c[:2], [0, 0], c[4:]]))
    bad = np.flatnonzero(np.diff(xd) <= 0)
    return float(r[bad[0]]) if bad.size else _MAX_RADIUS


def undistort(xd: np.ndarray, yd: np.ndarray, model: str, c: np.ndarray, iterations: int = 20):
    """Distorted normalised coordinates -> undistorted ones (float64), by Newton's method;
    NaN where it does not converge to 1e-9 or lands beyond :func:`max_radius`."""
    xd = np.asarray(xd, dtype=np.float64)
    yd = np.asarray(yd, dtype=np.float64)
    x, y = xd.copy(), yd.copy()
    if model == "equidistant":  # start from the pinhole angle theta = theta_d
        rd = np.hypot(xd, yd)
        with np.errstate(invalid="ignore", divide="ignore"):
            scale = np.where(rd > 1e-12, np.tan(np.minimum(rd, 1.5)) / rd, 1.0)
        x, y = xd * scale, yd * scale
    h = 1e-7
    for _ in range(iterations):
        fx, fy = distort(x, y, model, c)
        ex, ey = fx - xd, fy - yd
        ax, ay = distort(x + h, y, model, c)
        bx, by = distort(x, y + h, model, c)
        j11, j21 = (ax - fx) / h, (ay - fy) / h
        j12, j22 = (bx - fx) / h, (by - fy) / h
        det = j11 * j22 - j12 * j21
        with np.errstate(invalid="ignore", divide="ignore"):
            x = x - (j22 * ex - j12 * ey) / det
            y = y - (j11 * ey - j21 * ex) / det
    fx, fy = distort(x, y, model, c)
    with np.errstate(invalid="ignore"):
        bad = ~(np.hypot(fx - xd, fy - yd) < 1e-9) | ~(np.hypot(x, y) <= max_radius(model, c))
    x[bad] = np.nan
    y[bad] = np.nan
    return x, y


@dataclass(frozen=True)
class Lens:
    """A raw camera: intrinsics K (of the image as published) and its distortion."""

    K: np.ndarray  # 3x3
    model: str
    coefficients: np.ndarray  # padded, see :func:`coefficients`

    @classmethod
    def from_camera(cls, K, D, model: str) -> Lens:
        return cls(np.asarray(K, np.float64).reshape(3, 3), model, coefficients(model, D))

    @property
    def radius(self) -> float:
        return _max_radius_cached(self.model, self.coefficients.tobytes())

    def to_pixels(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Undistorted normalised coordinates -> raw pixel coordinates (NaN beyond the radius
        where the model folds back)."""
        K = self.K
        limit = self.radius
        xd, yd = distort(x, y, self.model, self.coefficients)
        u = xd * x.dtype.type(K[0, 0])
        if K[0, 1]:
            u += yd * x.dtype.type(K[0, 1])
        u += x.dtype.type(K[0, 2])
        v = yd * y.dtype.type(K[1, 1])
        v += y.dtype.type(K[1, 2])
        if np.isfinite(limit):
            with np.errstate(invalid="ignore"):
                beyond = x * x + y * y > x.dtype.type(limit * limit)
            u[beyond] = np.nan
        return u, v

    def pixel_rays(self, width: int, height: int) -> np.ndarray:
        """H x W x 2 float32 undistorted (x/z, y/z) of every pixel centre (NaN where the model
        cannot be inverted); computed once per camera and size."""
        return _rays_cached(
            self.K.tobytes(), self.model, self.coefficients.tobytes(), int(width), int(height)
        )

    def backproject(self, depth: np.ndarray) -> np.ndarray:
        """H x W depth (metres, NaN/0 = none) of the raw image -> H x W x 3 float32 points in
        the camera optical frame (NaN where none), each along its pixel's undistorted ray."""
        height, width = depth.shape
        rays = self.pixel_rays(width, height)
        out = np.empty((height, width, 3), dtype=np.float32)
        z = out[..., 2]
        np.copyto(z, depth, casting="same_kind")
        np.copyto(z, np.float32(np.nan), where=~(depth > 0))
        np.multiply(z, rays[..., 0], out=out[..., 0])
        np.multiply(z, rays[..., 1], out=out[..., 1])
        return out


@functools.lru_cache(maxsize=8)
def _max_radius_cached(model: str, c: bytes) -> float:
    return max_radius(model, np.frombuffer(c, dtype=np.float64))


@functools.lru_cache(maxsize=4)
def _rays_cached(K: bytes, model: str, c: bytes, width: int, height: int) -> np.ndarray:
    K = np.frombuffer(K, dtype=np.float64).reshape(3, 3)
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    yd = (v - K[1, 2]) / K[1, 1]
    xd = (u - K[0, 2] - K[0, 1] * yd) / K[0, 0]
    x, y = undistort(xd, yd, model, np.frombuffer(c, dtype=np.float64))
    rays = np.stack([x, y], axis=-1).astype(np.float32)
    rays.setflags(write=False)
    return rays


# --- binning and region of interest (image_geometry's rule) ---------------------------------


@dataclass(frozen=True)
class SensorWindow:
    """What a CameraInfo says beyond the published image's own camera: the full-resolution
    size, K and P, and how the image was taken from the sensor (binning, roi, in full-resolution
    pixels). Kept so the published camera_info is the one that came in."""

    width: int
    height: int
    K: np.ndarray
    P: np.ndarray
    binning_x: int = 1
    binning_y: int = 1
    roi: tuple[int, int, int, int, bool] = (0, 0, 0, 0, False)  # x, y, width, height, do_rectify

    @property
    def size(self) -> tuple[int, int]:
        return int(self.width), int(self.height)

    @property
    def is_full_frame(self) -> bool:
        """No binning and no roi: the image is the sensor's full-resolution image."""
        return self.binning_x == 1 and self.binning_y == 1 and not any(self.roi[:4])


def reduce_to_image(window: SensorWindow) -> tuple[np.ndarray, np.ndarray]:
    """(K, P) of the published image: image_geometry's ``fromCameraInfo`` rule (principal point
    moved by the roi offset, then fx, cx (fy, cy; P's Tx, Ty) scaled by 1/binning)."""
    K = np.array(window.K, dtype=np.float64).reshape(3, 3)
    P = np.array(window.P, dtype=np.float64).reshape(3, 4)
    x_offset, y_offset = window.roi[0], window.roi[1]
    if x_offset or y_offset:
        K[0, 2] -= x_offset
        K[1, 2] -= y_offset
        P[0, 2] -= x_offset
        P[1, 2] -= y_offset
    if window.binning_x > 1:
        scale = 1.0 / window.binning_x
        K[0, 0] *= scale
        K[0, 2] *= scale
        P[0, 0] *= scale
        P[0, 2] *= scale
        P[0, 3] *= scale
    if window.binning_y > 1:
        scale = 1.0 / window.binning_y
        K[1, 1] *= scale
        K[1, 2] *= scale
        P[1, 1] *= scale
        P[1, 2] *= scale
        P[1, 3] *= scale
    return K, P


def rectify_pixels(u, v, K, D, model: str, R, P) -> tuple[np.ndarray, np.ndarray]:
    """Raw full-resolution pixels -> rectified ones (image_geometry's ``rectifyPoint``)."""
    K = np.asarray(K, np.float64).reshape(3, 3)
    c = coefficients(model, D) if is_distorted(D) else None
    yd = (np.asarray(v, np.float64) - K[1, 2]) / K[1, 1]
    xd = (np.asarray(u, np.float64) - K[0, 2] - K[0, 1] * yd) / K[0, 0]
    x, y = undistort(xd, yd, model, c) if c is not None else (xd, yd)
    ray = np.asarray(R, np.float64).reshape(3, 3) @ np.stack([x, y, np.ones_like(x)])
    P = np.asarray(P, np.float64).reshape(3, 4)
    w = P[2, :3] @ ray
    return (P[0, :3] @ ray) / w, (P[1, :3] @ ray) / w


def image_size(window: SensorWindow, rectified: bool, D=(), model: str = "", R=None):
    """(width, height) of the published image.

    Raw images: the roi's size / binning. Rectified images: the same, except that with
    ``roi.do_rectify`` the rectified roi (the bounding box of the raw roi's corners, rectified:
    image_geometry's ``rectifyRoi``) is what the rectified image covers.
    """
    x, y, w, h, do_rectify = window.roi
    if not any((x, y, w, h)):
        w, h = window.width, window.height
    if rectified and do_rectify:
        us = np.array([x, x + w, x + w, x], dtype=np.float64)
        vs = np.array([y, y, y + h, y + h], dtype=np.float64)
        R = np.eye(3) if R is None else R
        ru, rv = rectify_pixels(us, vs, window.K, D, model, R, window.P)
        if not (np.all(np.isfinite(ru)) and np.all(np.isfinite(rv))):
            raise DistortionError(
                f"the roi corners {list(zip(us, vs, strict=True))} cannot be rectified (the "
                "distortion model does not invert there)"
            )
        left, top = np.ceil(min(ru[0], ru[3])), np.ceil(min(rv[0], rv[1]))
        right, bottom = np.floor(max(ru[1], ru[2])), np.floor(max(rv[2], rv[3]))
        w, h = int(right - left), int(bottom - top)
    return w // window.binning_x, h // window.binning_y
