"""The demo end to end: synthetic drive -> kitti_to_bag -> play_bag -> node process -> outputs."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from depth_completion_ros.tools import demo
from depth_completion_ros.visualization import BAR_HEIGHT, TITLE_HEIGHT


def test_demo_three_synthetic_frames(tmp_path: Path, ros_domain_id: int) -> None:
    output = tmp_path / "demo"
    code = demo.main(["--frames", "3", "--output", str(output), "--domain-id", str(ros_domain_id)])
    log = (
        (output / "node.log").read_text(errors="replace") if (output / "node.log").exists() else ""
    )
    assert code == 0, log

    summary = json.loads((output / "summary.json").read_text())
    assert summary["frames_in"] == 3
    assert summary["frames_out"] == summary["frames_in"]
    assert "play_bag" in summary["input"]
    assert summary["latency_ms_p50"] is not None and summary["latency_ms_p50"] > 0
    # the classical fill on the synthetic street: well under 2 m RMSE against exact depth
    accuracy = summary["accuracy"]
    assert accuracy is not None and 0 < accuracy["mae_mm"] < accuracy["rmse_mm"] < 2000

    names = [f"{i:06d}.png" for i in range(3)]
    assert sorted(p.name for p in (output / "depth").iterdir()) == names
    assert sorted(p.name for p in (output / "pictures").iterdir()) == names
    depth = cv2.imread(str(output / "depth" / names[0]), cv2.IMREAD_ANYDEPTH)
    assert depth.dtype == np.uint16 and (depth > 0).mean() > 0.5
    picture = cv2.imread(str(output / "pictures" / names[0]))[:, :, ::-1]
    height, width = depth.shape
    panel = height + TITLE_HEIGHT  # image, LiDAR, depth: each under a title; then a colour bar
    assert picture.shape == (3 * panel + BAR_HEIGHT, width, 3)
    # the dense panel: no depth above the LiDAR's top beam (the sky), shown grey (hatched camera
    # image), distinct from the colour-mapped depth below it
    dense_panel = picture[2 * panel + TITLE_HEIGHT : 3 * panel].astype(int)
    grey = (dense_panel[..., 0] == dense_panel[..., 1]) & (
        dense_panel[..., 1] == dense_panel[..., 2]
    )
    empty = depth == 0
    assert grey[:10].all() and empty[:10].all()
    assert (dense_panel[:10] >= 20).all()  # the shaded camera image, not black ("no depth")
    assert (grey == empty).mean() > 0.99
    header = (output / "cloud.ply").read_bytes()[:300].decode("ascii", errors="replace")
    vertices = int(header.split("element vertex ")[1].split()[0])
    assert vertices > 0.5 * depth.size


def test_help_shows_defaults_and_outputs_are_kept_apart(capsys) -> None:
    with pytest.raises(SystemExit):
        demo.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "frames to play (0 = all) (default: 10)" in text
    synthetic = demo.parse_args([])
    kitti = demo.parse_args(["--kitti-drive", "/data/2011_09_26/2011_09_26_drive_0001_sync"])
    assert synthetic.output == "output/demo"
    assert kitti.output == "output/demo_kitti/2011_09_26_drive_0001_sync"


def test_replacing_an_earlier_run_is_said(tmp_path: Path) -> None:
    output = tmp_path / "demo"
    (output / "pictures").mkdir(parents=True)
    (output / "pictures" / "000019.png").write_bytes(b"old")
    (output / "summary.json").write_text(json.dumps({"source": "synthetic street scene"}))
    (output / "mine.txt").write_text("not the demo's")
    said: list[str] = []
    demo.clear_previous_run(output, "KITTI drive X", log=said.append)
    assert said and "replacing the run on synthetic street scene" in said[0]
    assert "KITTI drive X" in said[0] and "--output" in said[0]
    assert not (output / "pictures").exists() and not (output / "summary.json").exists()
    assert (output / "mine.txt").exists()  # only the demo's own outputs are removed
    said.clear()
    demo.clear_previous_run(tmp_path / "fresh", "x", log=said.append)
    assert not said


def test_a_failed_demo_prints_the_node_log(tmp_path: Path, ros_domain_id: int, capsys) -> None:
    """A network model without weights: the node refuses to start; its reason is printed."""
    output = tmp_path / "demo"
    code = demo.main(
        [
            "--frames",
            "1",
            "--output",
            str(output),
            "--domain-id",
            str(ros_domain_id),
            "--model",
            "selfdc_r18",
        ]  # fmt: skip
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "the node exited" in err and "node.log" in err
    tail = [line for line in err.splitlines() if line.startswith("  | ")]
    assert tail and any("checkpoint" in line for line in tail), err
