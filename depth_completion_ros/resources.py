"""Find the package's shipped files (config/, launch/) in a checkout or an installed share/."""

from __future__ import annotations

from pathlib import Path


def package_file(relative: str) -> Path:
    """``config/kitti.yaml`` etc.: the checkout's copy, else the ament share directory's."""
    checkout = Path(__file__).resolve().parents[1] / relative
    if checkout.exists():
        return checkout
    try:
        from ament_index_python.packages import get_package_share_directory

        installed = Path(get_package_share_directory("depth_completion_ros")) / relative
    except (LookupError, OSError) as exc:
        raise FileNotFoundError(f"{relative} not found in the checkout or ament index") from exc
    if not installed.exists():
        raise FileNotFoundError(f"{relative} not found (looked in {checkout} and {installed})")
    return installed
