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
    assert len(pairer._clouds) == 3
    assert pairer.stats.rejected_offset == 6


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


def test_time_going_backwards_resets() -> None:
    pairer: StampPairer[str, str] = StampPairer(max_offset=0.05, reset_jump=1.0)
    pairer.add_image(100.0, "old image")
    pairer.add_cloud(100.2, "old scan")
    pairer.add_image(1.0, "new image")  # the bag looped
    assert pairer.stats.resets == 1
    pairs = pairer.add_cloud(1.01, "new scan")
    pairs += pairer.flush()
    assert [(p.image, p.cloud) for p in pairs] == [("new image", "new scan")]
    assert pairer.stats.rejected_offset == 0  # the old scan was dropped, not paired


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
