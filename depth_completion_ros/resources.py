"""Find the package's shipped files (config/, launch/) in a checkout or an installed share/.

Three installations put them in three places: a source checkout (``<repo>/config``), a colcon
workspace (the ament index: ``install/depth_completion_ros/share/depth_completion_ros``) and
``pip install`` into a venv or a prefix (``data_files``: ``<prefix>/share/depth_completion_ros``,
where a venv has no AMENT_PREFIX_PATH).
"""

from __future__ import annotations

import site
import sys
from pathlib import Path

PACKAGE = "depth_completion_ros"


def _own_prefix() -> Path | None:
    """<prefix> of <prefix>/lib/pythonX.Y/site-packages/depth_completion_ros (pip and colcon)."""
    here = Path(__file__).resolve().parent
    if len(here.parents) > 3 and here.parents[1].name in ("site-packages", "dist-packages"):
        return here.parents[3]
    return None


def _prefix_share_dirs() -> list[Path]:
    """``share/depth_completion_ros`` of the interpreter's prefixes (pip into a venv or --user)."""
    prefixes = [Path(sys.prefix), Path(sys.base_prefix)]
    user_base = getattr(site, "USER_BASE", None)
    if user_base:
        prefixes.append(Path(user_base))
    seen, dirs = set(), []
    for prefix in prefixes:
        share = prefix / "share" / PACKAGE
        if share not in seen:
            seen.add(share)
            dirs.append(share)
    return dirs


def _ament_share_dir() -> Path | None:
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory(PACKAGE))
    except (ImportError, LookupError, OSError, ValueError):
        return None


def package_file(relative: str) -> Path:
    """``config/kitti.yaml`` etc.: the checkout's copy, else this installation's share/, else
    the ament index's, else the interpreter prefix's (the first that exists)."""
    candidates = [Path(__file__).resolve().parents[1] / relative]  # a checkout
    own = _own_prefix()
    if own is not None:  # the installation this module was imported from
        candidates.append(own / "share" / PACKAGE / relative)
    ament = _ament_share_dir()
    if ament is not None:
        candidates.append(ament / relative)
    candidates += [share / relative for share in _prefix_share_dirs()]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = "\n  ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"{relative} of {PACKAGE} not found; looked in:\n  {looked}\n"
        "Install the package (pip install . or colcon build) or run from a checkout."
    )
