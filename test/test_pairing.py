"""Nearest-in-time pairing of scans and images, and the newest-only slot between threads."""

from __future__ import annotations

import threading
import time

import pytest

from depth_completion_ros.pairing import LatestSlot, StampPairer


def test_nearest_image_is_chosen() -> None:
    pairer: StampPairer[str, str] = StampPairer(max_offset=0.05)
    for stamp in (0.90, 0.97, 1.06):
        assert pairer.add_image(stamp, f"img{stamp}") == []
    pairs = pairer.add_cloud(1.0, "scan")  # an image after the scan exists: decidable now
    assert [(p.image, p.cloud) for p in pairs] == [("img0.97", "scan")]
    assert pairs[0].offset == pytest.approx(-0.03)
    assert pairer.stats.paired == 1


def test_waits_for_a_later_image() -> None:
    pairer: StampPairer[str, str] = StampPairer(max_offset=0.05)
    pairer.add_image(0.95, "early")
    assert pairer.add_cloud(1.0, "scan") == []  # a nearer image may still come
    pairs = pairer.add_image(1.01, "late")
    assert [p.image for p in pairs] == ["late"]
    assert pairs[0].image_stamp == 1.01 and pairs[0].cloud_stamp == 1.0


def test_late_image_still_pairs_after_a_newer_scan() -> None:
    """Regression: images (MBs) often arrive after the next scan; the scan must wait for them."""
    pairer: StampPairer[str, str] = StampPairer(max_offset=0.05)
    pairer.add_image(0.9, "previous image")
    assert pairer.add_cloud(1.0, "a") == []
    assert pairer.add_cloud(1.1, "b") == []  # a's image is still in flight
    pairs = pairer.add_image(1.0, "image a")
    assert [(p.image, p.cloud) for p in pairs] == [("image a", "a")]
    pairs = pairer.add_image(1.1, "image b")
    assert [(p.image, p.cloud) for p in pairs] == [("image b", "b")]
    assert pairer.stats.rejected_offset == 0


def test_scans_without_images_are_bounded() -> None:
    """When the camera stops, the oldest scans are decided (and rejected) once the buffer fills."""
    pairer: StampPairer[str, int] = StampPairer(max_offset=0.05, buffer_size=3)
    pairer.add_image(0.0, "last image")
    for i in range(1, 10):
        assert pairer.add_cloud(float(i), i) == []
    assert pairer.waiting == 3
    assert pairer.stats.rejected_offset == 6
    assert _accounted(pairer)


def test_rejects_beyond_max_offset_and_records_it() -> None:
    pairer: StampPairer[str, str] = StampPairer(max_offset=0.02)
    pairer.add_image(1.05, "img")
    assert pairer.add_cloud(1.0, "scan") == []
    assert pairer.stats.rejected_offset == 1 and pairer.stats.paired == 0
    assert pairer.stats.last_rejected_offset == pytest.approx(0.05)
    assert list(pairer.stats.recent_offsets) == [pytest.approx(0.05)]


def test_flush_without_images_counts_no_image() -> None:
    pairer: StampPairer[str, str] = StampPairer(max_offset=0.05)
    pairer.add_cloud(1.0, "scan")
    assert pairer.flush() == []
    assert pairer.stats.no_image == 1


def _accounted(pairer: StampPairer) -> bool:
    """Every scan is paired, rejected or still waiting: none vanishes."""
    stats = pairer.stats
    return stats.scans == stats.paired + stats.rejected + pairer.waiting


def _feed(pairer: StampPairer, events: list[tuple[str, float]]) -> list[tuple[float, float]]:
    pairs = []
    for kind, stamp in events:
        add = pairer.add_image if kind == "image" else pairer.add_cloud
        pairs += add(stamp, stamp)
        assert _accounted(pairer), (kind, stamp, pairer.stats)
    return [(p.image, p.cloud) for p in pairs]


def test_loop_with_a_partner_already_arrived_loses_nothing() -> None:
    """The issue's sequence: the old code reset twice and lost the 1.9 and 0.0 frames."""
    pairer: StampPairer[float, float] = StampPairer(0.05)
    events = [
        ("image", 1.9),
        ("image", 0.0),
        ("cloud", 1.9),
        ("cloud", 0.0),
        ("image", 0.1),
        ("cloud", 0.1),
    ]
    assert _feed(pairer, events) == [(1.9, 1.9), (0.0, 0.0), (0.1, 0.1)]
    assert pairer.stats.rejected == 0 and pairer.waiting == 0
    assert pairer.stats.time_jumps == 2  # one per stream, counted, nothing cleared


@pytest.mark.parametrize("cloud_first", [False, True])
def test_looped_bag_pairs_every_frame(cloud_first: bool) -> None:
    """A 20-frame 10 Hz bag looped 5 times, scans before or after their images."""
    pairer: StampPairer[float, float] = StampPairer(0.05)
    events = []
    for _ in range(5):
        for i in range(20):
            stamp = round(1000.0 + i * 0.1, 3)
            frame = [("cloud", stamp), ("image", stamp)]
            events += frame if cloud_first else frame[::-1]
    pairs = _feed(pairer, events) + [(p.image, p.cloud) for p in pairer.flush()]
    assert len(pairs) == 100 and all(image == cloud for image, cloud in pairs)
    assert pairer.stats.rejected == 0 and pairer.stats.time_jumps == 8


@pytest.mark.parametrize("cloud_first", [False, True])
def test_one_scan_an_hour_ahead_costs_only_itself(cloud_first: bool) -> None:
    pairer: StampPairer[float, float] = StampPairer(0.05)
    events = []
    for i in range(10):
        stamp = round(100.0 + i * 0.1, 3)
        scan = stamp + 3600.0 if i == 4 else stamp  # frame 4's scan is stamped an hour ahead
        frame = [("cloud", scan), ("image", stamp)]
        events += frame if cloud_first else frame[::-1]
    pairs = _feed(pairer, events) + [(p.image, p.cloud) for p in pairer.flush()]
    good = [round(100.0 + i * 0.1, 3) for i in range(10) if i != 4]
    assert pairs == [(s, s) for s in good]
    assert pairer.stats.rejected_offset == 1 and pairer.waiting == 0
    assert pairer.stats.last_rejected_offset == pytest.approx(-3600.0, abs=1.0)


def test_one_image_an_hour_ahead_costs_only_its_scan() -> None:
    pairer: StampPairer[float, float] = StampPairer(0.05)
    events = []
    for i in range(10):
        stamp = round(100.0 + i * 0.1, 3)
        image = stamp + 3600.0 if i == 4 else stamp
        events += [("cloud", stamp), ("image", image)]
    pairs = _feed(pairer, events) + [(p.image, p.cloud) for p in pairer.flush()]
    assert pairs == [(round(100.0 + i * 0.1, 3),) * 2 for i in range(10) if i != 4]
    assert pairer.stats.rejected_offset == 1  # frame 4's scan: its image is the wrong one


def test_one_stray_image_between_a_scan_and_its_image_decides_nothing() -> None:
    pairer: StampPairer[float, float] = StampPairer(0.05)
    events = [("image", 100.0), ("cloud", 100.0), ("cloud", 100.1), ("image", 3700.0)]
    events += [("image", 100.1)]
    assert _feed(pairer, events) == [(100.0, 100.0), (100.1, 100.1)]
    assert pairer.stats.rejected == 0


def test_scan_whose_image_never_comes_is_decided_after_a_loop() -> None:
    """Scan 1.9 lost its image; the image stream loops: the scan is rejected, not kept forever."""
    pairer: StampPairer[float, float] = StampPairer(0.05)
    events = [("image", 1.8), ("cloud", 1.8), ("cloud", 1.9), ("image", 0.0), ("cloud", 0.0)]
    events += [("image", 0.1), ("cloud", 0.1)]
    assert _feed(pairer, events) == [(1.8, 1.8), (0.0, 0.0), (0.1, 0.1)]
    assert pairer.stats.rejected_offset == 1 and pairer.waiting == 0


def test_many_frames_pair_one_to_one() -> None:
    pairer: StampPairer[int, int] = StampPairer(max_offset=0.03, buffer_size=4)
    pairs = []
    for i in range(50):  # camera 10 Hz, LiDAR 10 Hz stamped 12 ms earlier, arriving interleaved
        pairs += pairer.add_cloud(i * 0.1 - 0.012, i)
        pairs += pairer.add_image(i * 0.1, i)
    pairs += pairer.flush()
    assert [(p.image, p.cloud) for p in pairs] == [(i, i) for i in range(50)]


def test_max_offset_must_be_positive() -> None:
    with pytest.raises(ValueError):
        StampPairer(max_offset=0.0)


def test_latest_slot_keeps_only_the_newest() -> None:
    slot: LatestSlot[int] = LatestSlot()
    for i in range(5):
        slot.put(i)
    assert slot.take(timeout=0.0) == 4
    assert slot.dropped == 4
    assert slot.take(timeout=0.01) is None


def test_latest_slot_wakes_a_waiting_consumer() -> None:
    slot: LatestSlot[str] = LatestSlot()
    got: list[str | None] = []
    consumer = threading.Thread(target=lambda: got.append(slot.take(timeout=5.0)))
    consumer.start()
    time.sleep(0.05)
    slot.put("pair")
    consumer.join(timeout=5.0)
    assert got == ["pair"] and slot.dropped == 0


def test_latest_slot_close_releases_the_consumer() -> None:
    slot: LatestSlot[str] = LatestSlot()
    got: list[str | None] = []
    consumer = threading.Thread(target=lambda: got.append(slot.take(timeout=5.0)))
    consumer.start()
    time.sleep(0.05)
    started = time.monotonic()
    slot.close()
    consumer.join(timeout=5.0)
    assert got == [None] and time.monotonic() - started < 2.0


def test_latest_slot_wait_does_not_take() -> None:
    slot: LatestSlot[str] = LatestSlot()
    assert slot.wait(timeout=0.01) is False
    slot.put("pair")
    assert slot.wait(timeout=0.01) is True and slot.pending == 1
    assert slot.take(timeout=0.0) == "pair" and slot.pending == 0
    slot.close()
    assert slot.wait(timeout=5.0) is False  # closed: returns at once
