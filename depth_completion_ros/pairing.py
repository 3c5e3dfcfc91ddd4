"""Pair LiDAR scans with the camera image nearest in time (no message_filters on PyPI).

Plain Python on stamps, so the node and the offline bag tool pair exactly the same way. A scan is
paired once the best image for it is known: an image stamped at or after the scan has arrived
(images arrive in stamp order, so later ones can only be farther). Images are large and often
arrive after the next scan, so a newer scan does not decide an older one; only a full buffer does
(the camera stopped). Pairs whose offset exceeds ``max_offset`` are rejected and counted, with the
offset kept for the log.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

ImageT = TypeVar("ImageT")
CloudT = TypeVar("CloudT")


@dataclass
class Pair(Generic[ImageT, CloudT]):
    """A scan and its image; ``offset`` = image stamp - scan stamp (seconds)."""

    image: ImageT
    cloud: CloudT
    image_stamp: float
    cloud_stamp: float
    received: float = 0.0  # monotonic time the pair formed (the node's latency starts here)

    @property
    def offset(self) -> float:
        return self.image_stamp - self.cloud_stamp


@dataclass
class PairingStats:
    """Counters for diagnostics."""

    paired: int = 0
    rejected_offset: int = 0  # nearest image was further than max_offset
    no_image: int = 0  # no image at all when the scan had to be decided
    resets: int = 0  # time went backwards (bag loop, sim restart)
    last_rejected_offset: float | None = None
    recent_offsets: deque = field(default_factory=lambda: deque(maxlen=50))


class StampPairer(Generic[ImageT, CloudT]):
    """Nearest-in-time pairing of two streams with bounded buffers."""

    def __init__(self, max_offset: float, buffer_size: int = 10, reset_jump: float = 1.0) -> None:
        if max_offset <= 0:
            raise ValueError(f"max_offset must be positive, got {max_offset}")
        self.max_offset = float(max_offset)
        self.reset_jump = float(reset_jump)
        self.buffer_size = int(buffer_size)
        self._images: deque[tuple[float, ImageT]] = deque(maxlen=buffer_size)
        self._clouds: deque[tuple[float, CloudT]] = deque()  # bounded in _decide
        self.stats = PairingStats()

    def clear(self) -> None:
        self._images.clear()
        self._clouds.clear()

    def _check_time_jump(self, stamp: float, queue: deque) -> None:
        if queue and stamp < queue[-1][0] - self.reset_jump:
            self.clear()
            self.stats.resets += 1

    def add_image(self, stamp: float, image: ImageT) -> list[Pair[ImageT, CloudT]]:
        """Buffer an image; return the pairs that became decidable."""
        self._check_time_jump(stamp, self._images)
        self._images.append((stamp, image))
        return self._decide(final=False)

    def add_cloud(self, stamp: float, cloud: CloudT) -> list[Pair[ImageT, CloudT]]:
        """Buffer a scan; return the pairs that became decidable."""
        self._check_time_jump(stamp, self._clouds)
        self._clouds.append((stamp, cloud))
        return self._decide(final=False)

    def flush(self) -> list[Pair[ImageT, CloudT]]:
        """Decide every buffered scan with the images seen so far (end of a bag)."""
        return self._decide(final=True)

    def _nearest_image(self, stamp: float) -> tuple[float, ImageT] | None:
        if not self._images:
            return None
        return min(self._images, key=lambda item: abs(item[0] - stamp))

    def _decide(self, final: bool) -> list[Pair[ImageT, CloudT]]:
        pairs: list[Pair[ImageT, CloudT]] = []
        while self._clouds:
            cloud_stamp, cloud = self._clouds[0]
            overflow = len(self._clouds) > self.buffer_size
            image_after = any(stamp >= cloud_stamp for stamp, _ in self._images)
            if not (final or overflow or image_after):
                break  # a closer image may still come
            self._clouds.popleft()
            nearest = self._nearest_image(cloud_stamp)
            if nearest is None:
                self.stats.no_image += 1
                continue
            image_stamp, image = nearest
            offset = image_stamp - cloud_stamp
            self.stats.recent_offsets.append(offset)
            if abs(offset) > self.max_offset:
                self.stats.rejected_offset += 1
                self.stats.last_rejected_offset = offset
                continue
            self.stats.paired += 1
            pairs.append(Pair(image, cloud, image_stamp, cloud_stamp))
            # images older than the one used cannot serve a later scan better
            while self._images and self._images[0][0] < image_stamp:
                self._images.popleft()
        return pairs


class LatestSlot(Generic[ImageT]):
    """Holds only the newest unprocessed item; replacing one counts a drop.

    When completion is slower than the input, older pairs are dropped, never queued without bound.
    """

    def __init__(self) -> None:
        self._item: ImageT | None = None
        self._condition = threading.Condition()
        self.dropped = 0
        self._closed = False

    def put(self, item: ImageT) -> None:
        with self._condition:
            if self._item is not None:
                self.dropped += 1
            self._item = item
            self._condition.notify()

    def take(self, timeout: float | None = None) -> ImageT | None:
        """Wait for an item (or close); returns None on timeout or close."""
        with self._condition:
            if self._item is None and not self._closed:
                self._condition.wait(timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify_all()
