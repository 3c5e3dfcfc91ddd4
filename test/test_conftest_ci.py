"""The conftest's data fixtures skip without the shared data, but fail the run in CI.

Runs pytest in a subprocess on a copy of the real conftest placed where no ``../shared/data``
exists, with a tiny test that asks for a data fixture.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TINY_TEST = """
def test_needs_data(kitti_scan_path):
    assert kitti_scan_path.exists()


def test_without_data():
    assert True
"""


def _run(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess:
    repo = tmp_path / "repo"  # its conftest looks for tmp_path/shared/data: absent
    (repo / "test").mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(__file__).with_name("conftest.py"), repo / "test" / "conftest.py")
    (repo / "test" / "test_tiny.py").write_text(TINY_TEST)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", "test"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("ci", ["true", "1", "TRUE"])
def test_missing_data_fails_in_ci(tmp_path: Path, ci: str) -> None:
    result = _run(tmp_path, ci)
    assert result.returncode == 1, result.stdout
    assert re.search(r"ERROR test/test_tiny.py::test_needs_data", result.stdout)
    assert re.search(r"== 1 passed.* 1 error in", result.stdout)  # the data-free test still runs
    missing = tmp_path / "shared" / "data"
    assert "CI=true and real test data not found at" in result.stdout
    assert str(missing) in result.stdout  # names the path it looked at
    assert "Fix: provide the data folder" in result.stdout


@pytest.mark.parametrize("ci", [None, "false"])
def test_missing_data_skips_outside_ci(tmp_path: Path, ci: str | None) -> None:
    result = _run(tmp_path, ci)
    assert result.returncode == 0, result.stdout
    assert re.search(r"SKIPPED \[1\] test/test_tiny.py", result.stdout)
    assert re.search(r"== 1 passed, 1 skipped.* in", result.stdout)
    assert "real test data not found at" in result.stdout
    assert "CI=true" not in result.stdout
