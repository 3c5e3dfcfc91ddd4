"""Shared fixtures: paths into the real data in ``<repo>/../shared/data`` and a unique ROS domain.

The data are never copied into the repository: a test that needs them asks for one of these
fixtures and is skipped, with the path it looked at, when the shared folder is absent. In CI
(environment variable ``CI`` set to true/1/yes, as GitHub Actions and GitLab set it) a missing
folder fails the test instead: a CI run that silently skipped every real-data test would pass
green while testing little.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = REPO_ROOT.parent / "shared" / "data"

KITTI_DC_FRAME = DATA_ROOT / "kitti_dc_frame"
KITTI_DC_DRIVE = "2011_09_26_drive_0001_sync"
KITTI_DC_FRAME_ID = 5

_domain_counter = itertools.count()


def in_ci() -> bool:
    """Whether the run is a CI run (``CI`` = true/1/yes, any case)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _require(path: Path) -> Path:
    """Return ``path``, or skip the test (fail it in CI), saying where the data were expected."""
    if not path.exists():
        where = (
            f"real test data not found at {path} (expected the shared data folder at "
            f"{DATA_ROOT}, beside the repository; see shared/data/README.md)"
        )
        if in_ci():
            pytest.fail(
                f"CI=true and {where}. Fix: provide the data folder at {DATA_ROOT} in the CI "
                "job (check out or mount shared/data beside the repository); outside CI these "
                "tests are skipped instead.",
                pytrace=False,
            )
        pytest.skip(where)
    return path


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The shared data folder, ``<repo>/../shared/data``."""
    return _require(DATA_ROOT)


@pytest.fixture(scope="session")
def kitti_dc_frame() -> Path:
    """The complete KITTI frame (raw + depth-completion layouts), drive 0001, frame 5."""
    return _require(KITTI_DC_FRAME)


@pytest.fixture(scope="session")
def kitti_calib_dir(kitti_dc_frame: Path) -> Path:
    """The KITTI date folder holding calib_cam_to_cam.txt and calib_velo_to_cam.txt."""
    return _require(kitti_dc_frame / "raw" / "2011_09_26")


@pytest.fixture(scope="session")
def kitti_drive_dir(kitti_calib_dir: Path) -> Path:
    """The KITTI raw synced drive folder of the frame."""
    return _require(kitti_calib_dir / KITTI_DC_DRIVE)


@pytest.fixture(scope="session")
def kitti_scan_path(kitti_drive_dir: Path) -> Path:
    """The frame's Velodyne scan (.bin, float32 x, y, z, reflectance)."""
    return _require(kitti_drive_dir / "velodyne_points" / "data" / f"{KITTI_DC_FRAME_ID:010d}.bin")


@pytest.fixture(scope="session")
def kitti_image_path(kitti_drive_dir: Path) -> Path:
    """The frame's left colour image (image_02)."""
    return _require(kitti_drive_dir / "image_02" / "data" / f"{KITTI_DC_FRAME_ID:010d}.png")


def _dc_path(kitti_dc_frame: Path, release: str, kind: str) -> Path:
    return (
        kitti_dc_frame
        / release
        / "train"
        / KITTI_DC_DRIVE
        / "proj_depth"
        / kind
        / "image_02"
        / f"{KITTI_DC_FRAME_ID:010d}.png"
    )


@pytest.fixture(scope="session")
def kitti_velodyne_raw_path(kitti_dc_frame: Path) -> Path:
    """KITTI's own projected sparse LiDAR map for image_02 (uint16 = metres * 256)."""
    return _require(_dc_path(kitti_dc_frame, "data_depth_velodyne", "velodyne_raw"))


@pytest.fixture(scope="session")
def kitti_groundtruth_path(kitti_dc_frame: Path) -> Path:
    """KITTI's semi-dense ground truth for image_02 (uint16 = metres * 256)."""
    return _require(_dc_path(kitti_dc_frame, "data_depth_annotated", "groundtruth"))


@pytest.fixture(scope="session")
def kitti_raw_seq(data_root: Path) -> Path:
    """The 20-frame KITTI raw sequence's date folder (no ground truth, no timestamps)."""
    return _require(data_root / "kitti_raw_seq" / "2011_09_26")


@pytest.fixture(scope="session")
def nyu_frames(data_root: Path) -> Path:
    """NYU Depth v2 frames (folders ``a`` and ``b``)."""
    return _require(data_root / "nyu_frames")


@pytest.fixture
def ros_domain_id(monkeypatch: pytest.MonkeyPatch) -> int:
    """A ROS_DOMAIN_ID in 1..101 unique to this test, set in the environment for the test.

    Derived from the process id and a per-process counter, so parallel pytest processes and
    consecutive tests do not share a domain (and cannot cross-talk through leftover nodes).
    """
    domain = 1 + (os.getpid() * 7 + next(_domain_counter)) % 101
    monkeypatch.setenv("ROS_DOMAIN_ID", str(domain))
    return domain


@pytest.fixture(scope="session")
def kitti_scan(kitti_scan_path: Path) -> np.ndarray:
    """The frame's scan as N x 4 float32 (read once per session; do not modify)."""
    from depth_completion_ros.kitti import read_velodyne_bin

    scan = read_velodyne_bin(kitti_scan_path)
    scan.setflags(write=False)
    return scan


@pytest.fixture(scope="session")
def kitti_calibration(kitti_calib_dir: Path):
    """The frame's image_02 calibration, loaded through the package."""
    from depth_completion_ros.calibration import load_kitti_calibration

    return load_kitti_calibration(kitti_calib_dir, camera_index=2)


@pytest.fixture(scope="session")
def kitti_frame(kitti_image_path: Path, kitti_velodyne_raw_path: Path, kitti_calibration):
    """The frame as a backend takes it: RGB uint8 H x W x 3, KITTI's sparse map in metres
    (float32, 0 = none) and the 3 x 3 K of image_02 (read-only arrays)."""
    import cv2

    rgb = np.ascontiguousarray(cv2.imread(str(kitti_image_path))[:, :, ::-1])
    raw = cv2.imread(str(kitti_velodyne_raw_path), cv2.IMREAD_UNCHANGED)
    sparse = raw.astype(np.float32) / 256.0
    K = kitti_calibration.camera.K.copy()
    for array in (rgb, sparse, K):
        array.setflags(write=False)
    return rgb, sparse, K


@pytest.fixture(scope="session")
def r18_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """selfdc_r18 random weights saved as safetensors: a real checkpoint file for plumbing
    tests (not accuracy), fast on a CPU."""
    import torch
    from safetensors.torch import save_file

    from depth_completion_ros.networks.nlspn import selfdc_r18

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "selfdc_r18_random.safetensors"
    save_file(selfdc_r18().state_dict(), str(path))
    return path
