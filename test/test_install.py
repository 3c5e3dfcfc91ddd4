"""``pip install .`` (not editable, outside a colcon workspace) gives working tools.

A copy of the package is installed with pip into a scratch venv whose only other packages are the
development venv's (a .pth runs ``site.addsitedir`` on it), with ``--no-deps --no-index``: nothing
is downloaded. The tools then run from another folder with no PYTHONPATH, so they can only use the
installed copy and its ``share/depth_completion_ros`` data files (no checkout, no ament index).
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("setup.py", "setup.cfg", "package.xml", "resource", "depth_completion_ros", "launch",
           "config", "models")  # fmt: skip


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The scratch venv with the package pip-installed into it."""
    root = tmp_path_factory.mktemp("install")
    source = root / "src"
    source.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif path.exists():
            shutil.copy2(path, source / name)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    shared = sysconfig.get_paths()["purelib"]
    (Path(purelib) / "_shared_venv.pth").write_text(f"import site; site.addsitedir({shared!r})\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--quiet",
            str(source),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        env=_clean_env(),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return venv


def _clean_env() -> dict[str, str]:
    """No PYTHONPATH (the checkout must not be importable) and no ament index."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AMENT_PREFIX_PATH")}
    env.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
    return env


def _run(venv: Path, cwd: Path, *command: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(venv / "bin" / command[0]), *command[1:]],
        cwd=cwd,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_installed_package_finds_its_files_outside_a_checkout(installed: Path, tmp_path: Path):
    code = (
        "import depth_completion_ros, json\n"
        "from depth_completion_ros.resources import package_file\n"
        "from depth_completion_ros.tools.graph import dds_profile_path\n"
        "print(json.dumps([depth_completion_ros.__file__, dds_profile_path('localhost'),\n"
        "    dds_profile_path('robot'), str(package_file('config/kitti.yaml')),\n"
        "    str(package_file('launch/kitti.launch.py'))]))\n"
    )
    result = _run(installed, tmp_path, "python", "-c", code)
    assert result.returncode == 0, result.stderr
    paths = [Path(p) for p in eval(result.stdout)]  # noqa: S307 - our own JSON list
    for path in paths:
        assert installed in path.parents, f"{path} is not inside the scratch install {installed}"
        assert path.is_file()
    assert paths[1].parent == installed / "share" / "depth_completion_ros" / "config"


def test_console_scripts_run_from_another_folder(installed: Path, tmp_path: Path, kitti_raw_seq):
    for tool in ("play_bag", "process_bag", "export_rgbd", "fuse_rgbd", "kitti_to_bag",
                 "convert_checkpoint", "depth_completion_demo"):  # fmt: skip
        result = _run(installed, tmp_path, tool, "--help")
        assert result.returncode == 0, f"{tool}: {result.stderr}"
        assert "usage:" in result.stdout, tool
    bag = tmp_path / "bag"
    drive = kitti_raw_seq / "2011_09_26_drive_0000_sync"
    result = _run(installed, tmp_path, "kitti_to_bag", str(drive), str(bag), "--cameras", "2")
    assert result.returncode == 0, result.stderr
    # play_bag sets up DDS with the installed profile (the crash reported before the fix)
    result = _run(
        installed, tmp_path, "play_bag", str(bag), "--rate", "50", "--wait-for-subscribers", "0"
    )
    assert result.returncode == 0, result.stderr
    assert "/kitti/velo/pointcloud: 20" in result.stdout


def test_requirements_cover_the_runtime_imports():
    """Every third-party module the runtime imports is in install_requires or an extra."""
    plain = {_name(r) for r in _setup_keyword("install_requires")}
    extras = _setup_keyword("extras_require")
    required = plain | {_name(r) for group in extras.values() for r in group}
    assert "torch" not in plain, "torch must stay an extra (a robot's own torch is kept)"
    imported = set()
    for path in (REPO / "depth_completion_ros").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    distributions = importlib.metadata.packages_distributions()
    # launch: a ROS distro; tf2_msgs: the distro's, or built by scripts/build_tf2_msgs.py
    ours = {"depth_completion_ros", "launch", "launch_ros", "tf2_msgs"}
    missing = []
    for module in sorted(imported - ours - set(sys.stdlib_module_names)):
        dists = {d.lower() for d in distributions.get(module, [])}
        ros_wheel = any(d.startswith("ros-") or d.startswith("ros_") for d in dists)
        if not dists & required and not ros_wheel:
            missing.append(f"{module} ({', '.join(sorted(dists)) or 'no distribution'})")
    assert not missing, f"imported but not required: {missing}"
    assert any(r.startswith("ros-kilted-rclpy") for r in required)


def _name(requirement: str) -> str:
    return re.split(r"[<>=!\[; ]", requirement, maxsplit=1)[0].lower()


def _setup_keyword(name: str):
    """A literal keyword argument of setup() in setup.py, read statically."""
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == name:
            return ast.literal_eval(node.value)
    raise AssertionError(f"setup.py has no {name}")


def test_package_xml_keeps_rviz_optional():
    """A headless robot's rosdep install must not pull rviz2 and Qt."""
    text = (REPO / "package.xml").read_text()
    hard = re.findall(r"<(?:exec_)?depend>([^<]+)</(?:exec_)?depend>", text)
    assert "rviz2" not in hard, hard
    assert "python3-tqdm" in hard and "python3-scipy" in hard
