"""On-disk caches shared by the data jobs and the datasets: teacher maps, segment labels,
generated samples, and the manifests that make every job resumable.

Layout (``rel`` = an image's path relative to the image root the job was given, suffix dropped):

- teacher maps: ``<root>/<rel>.npy``, float16 H x W at the image's own size; ``<root>/meta.json``
  says ``{"kind": "disparity" | "depth", "model": ..., ...}``. Depth Anything V2 outputs relative
  inverse depth, so its cache is ``kind: disparity``. Never 8 bit.
- segment labels: ``<root>/<rel>.png``, uint16, value = label + 1, 0 = ignore (read back as int64
  with -1 = ignore); ``<root>/meta.json`` names the source (sam, oneformer, felzenszwalb, slic).
- every job writes ``<root>/manifest.rank<R>.jsonl`` (one JSON object per finished item, one file
  per process so that no two processes append to one file); a restarted job skips what any
  manifest lists and whose output exists.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from depth_completion_ros.depth_io import write_atomic, write_bytes_atomic

META_FILE = "meta.json"


def relative_stem(image_path: str | Path, image_root: str | Path) -> Path:
    """``image_path`` relative to ``image_root``, without its suffix (the cache key). Symlinks
    are not followed, so a dataset whose folders are links to other disks keeps its keys."""
    rel = Path(os.path.abspath(image_path)).relative_to(os.path.abspath(image_root))
    return rel.with_suffix("")


def teacher_path(root: str | Path, rel: Path) -> Path:
    return Path(root) / rel.with_suffix(".npy")


def segments_path(root: str | Path, rel: Path) -> Path:
    return Path(root) / rel.with_suffix(".png")


def write_meta(root: str | Path, meta: dict[str, Any]) -> Path:
    text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
    return write_bytes_atomic(Path(root) / META_FILE, text.encode())


def read_meta(root: str | Path) -> dict[str, Any]:
    path = Path(root) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: '{root}' is not a cache written by this project's data jobs"
        )
    return json.loads(path.read_text())


def write_teacher_map(path: Path, values: np.ndarray) -> Path:
    """Save a teacher map as float16 .npy (atomically)."""
    array = np.asarray(values, dtype=np.float16)
    return write_atomic(path, lambda tmp: np.save(tmp, array, allow_pickle=False))


def read_teacher_map(path: Path) -> np.ndarray:
    """A cached teacher map as float32 H x W (never unpickles)."""
    return np.load(path, allow_pickle=False).astype(np.float32)


def write_segments(path: Path, labels: np.ndarray) -> Path:
    """Save int labels (-1 = ignore) as uint16 PNG with label + 1."""
    labels = np.asarray(labels)
    if labels.min(initial=0) < -1 or labels.max(initial=0) > 65534:
        raise ValueError("segment labels must lie in -1..65534")
    png = (labels.astype(np.int64) + 1).astype(np.uint16)
    ok, data = cv2.imencode(".png", png)
    if not ok:
        raise OSError(f"could not encode segments for {path}")
    return write_bytes_atomic(path, data.tobytes())


def read_segments(path: Path) -> np.ndarray:
    """Cached labels as int64 H x W, -1 = ignore."""
    png = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if png is None or png.dtype != np.uint16 or png.ndim != 2:
        raise ValueError(f"{path} is not a uint16 single-channel segment PNG")
    return png.astype(np.int64) - 1


class Manifest:
    """Append-only record of finished items of one process, and the union of all processes'.

    ``done`` holds the keys every rank has finished; ``add`` appends one JSON line and flushes, so
    a killed job loses at most the item it was writing (whose output is written atomically anyway).
    """

    def __init__(self, root: str | Path, rank: int = 0) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / f"manifest.rank{rank}.jsonl"
        self.done: dict[str, dict[str, Any]] = {}
        for entry in self.entries(self.root):
            self.done[entry["key"]] = entry

    @staticmethod
    def entries(root: str | Path) -> Iterable[dict[str, Any]]:
        """All entries of all ranks' manifests under ``root`` (a torn last line is ignored)."""
        for path in sorted(Path(root).glob("manifest.rank*.jsonl")):
            for line in path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(entry, dict) and "key" in entry:
                    yield entry

    def is_done(self, key: str, output: Path | None = None) -> bool:
        return key in self.done and (output is None or output.exists())

    def add(self, key: str, **fields: Any) -> None:
        entry = {"key": key, **fields}
        with self.path.open("a") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")
            f.flush()
        self.done[key] = entry
