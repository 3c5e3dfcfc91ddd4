"""Pictures for people: colour-mapped depth, titled panels with a colour bar (demo, depth/colored).

The demo's picture shows, top to bottom, the camera image, the LiDAR returns drawn on it and the
dense depth, each under a title, then a colour bar in metres. Where the published depth is NaN
because the LiDAR gives no support (above its top beam, below its bottom one), the dense panel
shows the camera image greyed and hatched, so "no estimate" reads differently from "far".
"""

from __future__ import annotations

import cv2
import numpy as np

TITLE_HEIGHT = 26  # pixels of the title bar above each panel
BAR_HEIGHT = 46  # pixels of the colour bar strip (bar + tick labels)
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_TEXT = (235, 235, 235)
_BACKGROUND = (24, 24, 24)


def colorize_depth(depth: np.ndarray, max_depth: float = 80.0) -> np.ndarray:
    """H x W metres (NaN/0 = none) -> H x W x 3 uint8 RGB: near = red, far = blue, none = black."""
    valid = np.isfinite(depth) & (depth > 0)
    scaled = np.zeros(depth.shape, dtype=np.uint8)
    closeness = 1.0 - np.clip(np.where(valid, depth, 0.0) / max_depth, 0.0, 1.0)
    scaled[valid] = np.clip(closeness[valid] * 255.0, 1, 255).astype(np.uint8)
    bgr = cv2.applyColorMap(scaled, cv2.COLORMAP_TURBO)
    bgr[~valid] = 0
    return np.ascontiguousarray(bgr[..., ::-1])


def draw_sparse(rgb: np.ndarray, sparse: np.ndarray, max_depth: float = 80.0) -> np.ndarray:
    """The camera image with LiDAR points drawn in depth colours (dilated to be visible)."""
    colours = colorize_depth(sparse, max_depth)
    valid = sparse > 0
    grown = cv2.dilate(valid.astype(np.uint8), np.ones((2, 2), np.uint8)).astype(bool)
    colours = cv2.dilate(colours, np.ones((2, 2), np.uint8))
    out = (rgb.astype(np.float32) * 0.6).astype(np.uint8)
    out[grown] = colours[grown]
    return out


def draw_dense(
    rgb: np.ndarray, dense: np.ndarray, unsupported: np.ndarray, max_depth: float = 80.0
) -> np.ndarray:
    """Colour-mapped depth; where ``unsupported`` (no LiDAR support) the camera image, greyed,
    darkened and hatched. Other pixels without depth stay black."""
    out = colorize_depth(dense, max_depth)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    shade = (grey.astype(np.float32) * 0.35 + 20.0).astype(np.uint8)
    height, width = dense.shape
    rows, cols = np.ogrid[:height, :width]
    hatch = ((rows + cols) % 14) < 2  # thin diagonal lines
    shade = np.where(hatch, np.uint8(110), shade)
    out[unsupported] = shade[unsupported][:, None]
    return out


def titled(panel: np.ndarray, title: str) -> np.ndarray:
    """The panel under a dark title bar."""
    bar = np.empty((TITLE_HEIGHT, panel.shape[1], 3), np.uint8)
    bar[:] = _BACKGROUND
    cv2.putText(bar, title, (8, TITLE_HEIGHT - 8), _FONT, 0.55, _TEXT, 1, cv2.LINE_AA)
    return np.concatenate([bar, panel], axis=0)


def colour_bar(width: int, max_depth: float = 80.0, step: float | None = None) -> np.ndarray:
    """A strip with the depth colour scale from 0 to ``max_depth`` metres and labelled ticks."""
    strip = np.empty((BAR_HEIGHT, width, 3), np.uint8)
    strip[:] = _BACKGROUND
    left, right, top, bottom = 110, width - 110, 8, 22
    span = max(right - left, 1)
    metres = np.linspace(0.0, max_depth, span, dtype=np.float32)
    metres[0] = 1e-3  # 0 would read as "no depth"
    strip[top:bottom, left:right] = colorize_depth(metres[None, :], max_depth)
    cv2.putText(strip, "near", (left - 48, bottom - 2), _FONT, 0.5, _TEXT, 1, cv2.LINE_AA)
    cv2.putText(strip, "far", (right + 8, bottom - 2), _FONT, 0.5, _TEXT, 1, cv2.LINE_AA)
    step = step or (10.0 if max_depth > 30 else 1.0 if max_depth <= 10 else 5.0)
    for value in np.arange(0.0, max_depth + 1e-6, step):
        x = left + int(round(value / max_depth * (span - 1)))
        strip[bottom : bottom + 4, x] = _TEXT
        label = f"{value:g} m" if value in (0.0, max_depth) or value == step else f"{value:g}"
        size = cv2.getTextSize(label, _FONT, 0.45, 1)[0]
        position = (min(max(x - size[0] // 2, 0), width - size[0]), BAR_HEIGHT - 6)
        cv2.putText(strip, label, position, _FONT, 0.45, _TEXT, 1, cv2.LINE_AA)
    return strip


def demo_picture(
    rgb: np.ndarray,
    sparse: np.ndarray,
    dense: np.ndarray,
    unsupported: np.ndarray,
    max_depth: float = 80.0,
) -> np.ndarray:
    """Camera image, LiDAR points and dense depth, titled, over a colour bar in metres."""
    returns = int(np.count_nonzero(sparse > 0))
    shown = np.isfinite(dense) & (dense > 0)
    panels = [
        titled(rgb, "camera image"),
        titled(draw_sparse(rgb, sparse, max_depth), f"LiDAR points ({returns:,} in the image)"),
        titled(
            draw_dense(rgb, dense, unsupported, max_depth),
            f"dense depth ({shown.mean():.0%} of pixels; grey hatched = no LiDAR support, NaN)",
        ),
        colour_bar(rgb.shape[1], max_depth),
    ]
    return np.concatenate(panels, axis=0)


def side_by_side(panels: list[np.ndarray]) -> np.ndarray:
    """Stack RGB panels of equal width vertically (wide KITTI frames read best this way)."""
    return np.concatenate(panels, axis=0)
