"""Pair LiDAR scans with the camera image nearest in time (no message_filters on PyPI).

Plain Python on stamps, so the node and the offline bag tool pair exactly the same way. A scan is
paired once the best image for it is known: an image stamped at or after the scan (and within
``horizon`` of it) has arrived; images arrive in stamp order, so later ones can only be farther.
Images are large and often arrive after the next scan, so a newer scan does not decide an older
one; only a full buffer does (the camera stopped), or two images arriving after the scan that are
more than ``horizon`` away from it (the image stream is elsewhere: a looped bag, a scan stamped
wrongly). Pairs whose offset exceeds ``max_offset`` are rejected and counted, with the offset
kept for the log.

Nothing is ever cleared: a backwards jump (a bag loop) or a single wrong stamp is only counted.
Every scan therefore ends as exactly one of paired, rejected by offset or without image, or is
still waiting: ``stats.scans == stats.paired + stats.rejected + pairer.waiting`` at all times.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

ImageT = TypeVar("ImageT")
CloudT = TypeVar("CloudT")

#: images arriving after a scan, all far (> horizon) from it, that decide it: one may be a single
#: wrong stamp, two mean the image stream has moved on (a loop) and no partner will come
_FAR_IMAGES_TO_DECIDE = 2


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
    """Counters for diagnostics: scans == paired + rejected + waiting."""

    scans: int = 0  # scans added
    images: int = 0  # images added
    paired: int = 0
    rejected_offset: int = 0  # nearest image was further than max_offset
    no_image: int = 0  # no image at all when the scan had to be decided
    time_jumps: int = 0  # a stream went back by more than the horizon (bag loop, sim restart)
    last_jump: float = 0.0  # seconds of the last backwards jump (negative)
    last_jump_stream: str = ""  # 'image' or 'scan'
    last_rejected_offset: float | None = None
    recent_offsets: deque = field(default_factory=lambda: deque(maxlen=50))

    @property
    def rejected(self) -> int:
        """Scans that formed no pair (offset too large or no image at all)."""
        return self.rejected_offset + self.no_image


@dataclass
class _Image(Generic[ImageT]):
    seq: int  # arrival order
    stamp: float
    item: ImageT


@dataclass
class _Scan(Generic[CloudT]):
    stamp: float
    item: CloudT
    far_images: int = 0  # images arrived since, more than the horizon away


class StampPairer(Generic[ImageT, CloudT]):
    """Nearest-in-time pairing of two streams with bounded buffers."""

    def __init__(
        self, max_offset: float, buffer_size: int = 10, horizon: float | None = None
    ) -> None:
        """``horizon``: stamps further apart than this (default max(1 s, 2 * max_offset)) are
        in different stretches of time: a jump, a loop or a wrong stamp."""
        if max_offset <= 0:
            raise ValueError(f"max_offset must be positive, got {max_offset}")
        self.max_offset = float(max_offset)
        self.horizon = max(1.0, 2.0 * self.max_offset) if horizon is None else float(horizon)
        if self.horizon < self.max_offset:
            raise ValueError(f"horizon {self.horizon} must be at least max_offset {max_offset}")
        self.buffer_size = int(buffer_size)
        self._images: deque[_Image[ImageT]] = deque(maxlen=buffer_size)
        self._scans: list[_Scan[CloudT]] = []  # bounded in _decide
        self._last_stamp: dict[str, float] = {}
        self._seq = 0
        self.stats = PairingStats()

    @property
    def waiting(self) -> int:
        """Scans buffered and not yet decided."""
        return len(self._scans)

    def _note_jump(self, stream: str, stamp: float) -> None:
        last = self._last_stamp.get(stream)
        self._last_stamp[stream] = stamp
        if last is not None and last - stamp > self.horizon:
            self.stats.time_jumps += 1
            self.stats.last_jump = stamp - last
            self.stats.last_jump_stream = stream

    def add_image(self, stamp: float, image: ImageT) -> list[Pair[ImageT, CloudT]]:
        """Buffer an image; return the pairs that became decidable."""
        self.stats.images += 1
        self._note_jump("image", stamp)
        self._seq += 1
        self._images.append(_Image(self._seq, stamp, image))
        for scan in self._scans:
            if abs(stamp - scan.stamp) > self.horizon:
                scan.far_images += 1
        return self._decide(final=False)

    def add_cloud(self, stamp: float, cloud: CloudT) -> list[Pair[ImageT, CloudT]]:
        """Buffer a scan; return the pairs that became decidable."""
        self.stats.scans += 1
        self._note_jump("scan", stamp)
        self._scans.append(_Scan(stamp, cloud))
        return self._decide(final=False)

    def flush(self) -> list[Pair[ImageT, CloudT]]:
        """Decide every buffered scan with the images seen so far (end of a bag)."""
        return self._decide(final=True)

    def _decidable(self, scan: _Scan[CloudT]) -> bool:
        if scan.far_images >= _FAR_IMAGES_TO_DECIDE:
            return True
        end = scan.stamp + self.horizon
        return any(scan.stamp <= image.stamp <= end for image in self._images)

    def _decide(self, final: bool) -> list[Pair[ImageT, CloudT]]:
        pairs: list[Pair[ImageT, CloudT]] = []
        overflow = len(self._scans) - self.buffer_size
        kept: list[_Scan[CloudT]] = []
        for index, scan in enumerate(self._scans):
            if final or index < overflow or self._decidable(scan):
                pair = self._pair(scan)
                if pair is not None:
                    pairs.append(pair)
            else:
                kept.append(scan)  # a closer image may still come
        self._scans = kept
        return pairs

    def _pair(self, scan: _Scan[CloudT]) -> Pair[ImageT, CloudT] | None:
        if not self._images:
            self.stats.no_image += 1
            return None
        nearest = min(self._images, key=lambda image: abs(image.stamp - scan.stamp))
        offset = nearest.stamp - scan.stamp
        self.stats.recent_offsets.append(offset)
        if abs(offset) > self.max_offset:
            self.stats.rejected_offset += 1
            self.stats.last_rejected_offset = offset
            return None
        self.stats.paired += 1
        # images that arrived before the one used are older in its stream and cannot serve a
        # later scan better; by arrival, not by stamp, so a looped stream's images survive
        while self._images and self._images[0].seq < nearest.seq:
            self._images.popleft()
        return Pair(nearest.item, scan.item, nearest.stamp, scan.stamp)


class LatestSlot(Generic[ImageT]):
    """Holds only the newest unprocessed item; replacing one counts a drop.

    When completion is slower than the input, older pairs are dropped, never queued without bound.
    """

    def __init__(self) -> None:
        self._item: ImageT | None = None
        self._condition = threading.Condition()
        self.dropped = 0
        self._closed = False

    @property
    def pending(self) -> int:
        """1 while an item waits to be taken, else 0."""
        return int(self._item is not None)

    def put(self, item: ImageT) -> None:
        with self._condition:
            if self._item is not None:
                self.dropped += 1
            self._item = item
            self._condition.notify()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until an item is there (without taking it); False on timeout or close."""
        with self._condition:
            if self._item is None and not self._closed:
                self._condition.wait(timeout)
            return self._item is not None

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
