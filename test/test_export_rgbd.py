"""export_rgbd writes TUM and Droid-SLAM layouts that read back as the depth of a bag or the node."""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from ros_graph import node_graph

from depth_completion_ros.bag_io import BagReader, to_ros
from depth_completion_ros.kitti import KittiDrive
from depth_completion_ros.messages import image_to_depth
from depth_completion_ros.tools import export_rgbd, kitti_to_bag, process_bag
from depth_completion_ros.tools.graph import SensorFrame, ros_environment


def test_tum_and_droid_layouts(
    tmp_path: Path, kitti_drive_dir: Path, kitti_calib_dir: Path, capsys
):
    raw, bag = tmp_path / "raw", tmp_path / "processed"
    assert kitti_to_bag.main([str(kitti_drive_dir), str(raw), "--cameras", "2"]) == 0
    assert (
        process_bag.main(
            [str(raw), str(bag), "--calibration-dir", str(kitti_calib_dir), "--no-progress"]
        )
        == 0
    )
    with BagReader(bag) as reader:
        message = next(reader.messages(["/depth/image"]))
    dense = image_to_depth(to_ros(message.data, message.msgtype))
    K = np.asarray(
        to_ros(
            next(BagReader(bag).messages(["/depth/camera_info"])).data, "sensor_msgs/msg/CameraInfo"
        ).k
    ).reshape(3, 3)

    capsys.readouterr()
    assert export_rgbd.main([str(bag), str(tmp_path / "tum"), "--depth-scale", "1000"]) == 0
    far = int((np.nan_to_num(dense) * 1000 > 65535).sum())
    said = capsys.readouterr().err
    keeping = f"--depth-scale {export_rgbd.suggest_depth_scale(float(np.nanmax(dense))):g} keeps"
    assert np.nanmax(dense) * 500 <= 65535 and "--depth-scale 500 keeps" in keeping
    assert (f"{far} of " in said and keeping in said) if far else not said, said
    # TUM's own 5000/m: everything beyond 13.1 m becomes 0, counted and the fix named
    assert export_rgbd.main([str(bag), str(tmp_path / "tum5000")]) == 0
    said = capsys.readouterr().err
    clipped = int((np.round(np.nan_to_num(dense) * 5000) > 65535).sum())
    valid = int((np.isfinite(dense) & (dense > 0)).sum())
    assert clipped > 0.05 * valid  # a street: many pixels beyond 13.1 m
    assert f"{clipped} of {valid} depth pixels" in said and "beyond 13.1 m" in said, said
    assert keeping in said
    with pytest.raises(SystemExit):
        export_rgbd.main([str(bag), str(tmp_path / "x"), "--depth-scale", "-1"])
    assert "--depth-scale must be positive" in capsys.readouterr().err
    tum = tmp_path / "tum"
    (line,) = [x for x in (tum / "associations.txt").read_text().splitlines() if x]
    t_rgb, rgb_name, t_depth, depth_name = line.split()
    assert t_rgb == t_depth == "1316995200.500000"
    depth = cv2.imread(str(tum / depth_name), cv2.IMREAD_ANYDEPTH).astype(np.float64) / 1000.0
    valid = np.isfinite(dense) & (dense < 65.5)
    np.testing.assert_allclose(depth[valid], dense[valid], atol=0.5 / 1000 + 1e-6)
    assert np.all(depth[~np.isfinite(dense) | (dense > 65.6)] == 0)  # beyond uint16: 0, not clamped
    assert cv2.imread(str(tum / rgb_name)).shape == (*dense.shape, 3)
    fx, fy, cx, cy = np.loadtxt(tum / "intrinsics.txt")
    np.testing.assert_allclose([fx, fy, cx, cy], [K[0, 0], K[1, 1], K[0, 2], K[1, 2]], rtol=1e-6)

    assert export_rgbd.main([str(bag), str(tmp_path / "droid"), "--layout", "droid"]) == 0
    droid = tmp_path / "droid"
    np.testing.assert_array_equal(
        np.load(droid / "depth" / "000000.npy"), np.nan_to_num(dense, nan=0.0)
    )
    assert (droid / "image" / "000000.png").is_file()
    assert np.loadtxt(droid / "calib.txt").shape == (4,)

    # a bag without depth: exit 1, topic named, nothing left behind
    assert export_rgbd.main([str(raw), str(tmp_path / "none")]) == 1
    assert not (tmp_path / "none").exists() and not list(tmp_path.glob(".none*"))


def _exporter(domain: int, output: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "depth_completion_ros.tools.export_rgbd", "--live", str(output)]
        + list(args),
        env=ros_environment(domain),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_live_export_from_the_node(kitti_raw_seq: Path, ros_domain_id: int, tmp_path: Path):
    """Two live exporters beside the node: one stops after N frames, one on Ctrl-C."""
    drive = KittiDrive(kitti_raw_seq / "2011_09_26_drive_0000_sync")
    frames = [
        SensorFrame(2_000.0 + f.stamp, f.rgb, f.points, drive.calibration.camera, name=str(f.index))
        for f in itertools.islice(drive.frames(), 3)
    ]
    parameters = {"calibration_dir": str(drive.calibration_dir), "input_reliability": "reliable"}
    tum, droid = tmp_path / "tum", tmp_path / "droid"
    with node_graph(parameters, ros_domain_id, tmp_path) as graph:
        counted = _exporter(ros_domain_id, tum, "--frames", "3", "--depth-scale", "256")
        until_stop = _exporter(ros_domain_id, droid, "--layout", "droid", "--timeout", "120")
        try:
            player = graph.player
            # node + 2 exporters on the image, player + 2 exporters on the depth
            deadline = time.monotonic() + 60.0
            while not (
                player.image_pub.get_subscription_count() >= 3
                and player.count_subscribers("/depth/image") >= 3
                and player.count_subscribers("/depth/camera_info") >= 3
            ):
                assert time.monotonic() < deadline, "exporters did not subscribe"
                graph.spin_for(0.1)
            # the graph shows the exporters to the player; the node's writers may match them only
            # at Fast DDS's next periodic announcement (~3 s): volatile readers would miss frames
            graph.spin_for(3.5)
            result = player.play(frames, graph.executor, wait_topics=("depth/image",))
            assert counted.wait(60) == 0, counted.stdout.read()
            graph.spin_for(1.0)
            assert until_stop.poll() is None  # no frame limit: still listening
            until_stop.send_signal(signal.SIGINT)
            assert until_stop.wait(30) == 0, until_stop.stdout.read()
        finally:
            for process in (counted, until_stop):
                if process.poll() is None:
                    process.kill()
                    process.wait()

    stamps = sorted(result.outputs)
    assert len(stamps) == 3 and all("depth/image" in result.outputs[s] for s in stamps)
    dense = {s: image_to_depth(result.outputs[s]["depth/image"]) for s in stamps}
    K = np.reshape(result.outputs[stamps[0]]["depth/camera_info"].k, (3, 3))
    expected_calib = [K[0, 0], K[1, 1], K[0, 2], K[1, 2]]

    lines = [x.split() for x in (tum / "associations.txt").read_text().splitlines() if x]
    assert [line[0] for line in lines] == [f"{s / 1e9:.6f}" for s in stamps]
    for (_, rgb_name, _, depth_name), stamp in zip(lines, stamps, strict=True):
        depth = cv2.imread(str(tum / depth_name), cv2.IMREAD_ANYDEPTH).astype(np.float64) / 256
        valid = np.isfinite(dense[stamp])
        assert valid.mean() > 0.5
        np.testing.assert_allclose(depth[valid], dense[stamp][valid], atol=0.5 / 256 + 1e-6)
        assert np.all(depth[~valid] == 0)
        rgb = cv2.cvtColor(cv2.imread(str(tum / rgb_name)), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(rgb, frames[stamps.index(stamp)].rgb)
    np.testing.assert_allclose(np.loadtxt(tum / "intrinsics.txt"), expected_calib, rtol=1e-6)
    assert (tum / "depth_scale.txt").read_text().strip() == "256"

    assert sorted(p.name for p in (droid / "depth").iterdir()) == [f"{i:06d}.npy" for i in range(3)]
    for index, stamp in enumerate(stamps):
        np.testing.assert_array_equal(
            np.load(droid / "depth" / f"{index:06d}.npy"), np.nan_to_num(dense[stamp], nan=0.0)
        )
    assert np.loadtxt(droid / "timestamps.txt").tolist() == [s / 1e9 for s in stamps]
    np.testing.assert_allclose(np.loadtxt(droid / "calib.txt"), expected_calib, rtol=1e-6)
    assert not list(tmp_path.glob(".*partial*"))  # staging folders renamed away


def test_live_export_without_frames_writes_nothing(ros_domain_id: int, tmp_path: Path):
    """No publisher: the timeout ends the export with an error and no folder."""
    process = _exporter(ros_domain_id, tmp_path / "none", "--timeout", "1")
    assert process.wait(60) == 1
    assert "no frame" in process.stdout.read()
    assert not list(tmp_path.iterdir())
