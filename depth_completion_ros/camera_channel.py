"""One camera of the node: its pairing, frame step, outputs and accounting.

A node runs one channel per camera (``cameras`` parameter; one channel without it). The
channels share the model, the LiDAR subscription, odometry and transforms; each pairs the
scans with its own images, publishes into its own namespace and accounts for every scan it
received. No ROS imports: the node gives a channel its publishers.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from depth_completion_ros.frame import FrameProcessor
from depth_completion_ros.pairing import LatestSlot, StampPairer


@dataclass
class CameraChannel:
    """A camera's state in the node (``name`` '' for a node without ``cameras``)."""

    name: str
    config: dict
    processor: FrameProcessor
    #: relative output topic -> its publisher (in the camera's output namespace)
    publishers: dict = field(default_factory=dict)
    camera_info: object | None = None
    #: pairs not processed because nobody subscribed to an enabled output
    idle: int = 0
    latencies: deque = field(default_factory=lambda: deque(maxlen=200))
    last_message: dict = field(
        default_factory=lambda: {"image": 0.0, "camera_info": 0.0, "points": 0.0}
    )
    last_pair_time: float = field(default_factory=time.monotonic)
    #: pairing events already reported (the warnings name only new ones)
    reported: dict = field(default_factory=lambda: {"offset": 0, "no_image": 0, "jumps": 0})

    def __post_init__(self) -> None:
        self.pairer: StampPairer = StampPairer(self.config["max_time_offset"])
        self.slot: LatestSlot = LatestSlot()

    @property
    def label(self) -> str:
        """'[front] ' for a named camera, '' for the node's only one: log lines say whose."""
        return f"[{self.name}] " if self.name else ""

    def output_topic(self, relative: str) -> str:
        """``depth/image`` in the camera's output namespace (relative to the node's)."""
        space = self.config["output_namespace"].strip("/")
        return f"{space}/{relative}" if space else relative

    def counts(self) -> dict[str, int]:
        """Where every scan went: received == published + dropped_busy + rejected + failed +
        waiting (in the pairing buffer, handed to the worker or in process) + idle (nobody
        subscribed to an output). Call with the node's lock held: one snapshot."""
        stats = self.pairer.stats
        frames = self.processor.accounting
        counts = {
            "received": stats.scans,
            "published": frames.processed,
            "dropped_busy": self.slot.dropped,
            "rejected": stats.rejected,
            "rejected_offset": stats.rejected_offset,
            "rejected_no_image": stats.no_image,
            "failed": frames.failed,
            "waiting": self.pairer.waiting + self.slot.pending + frames.in_process,
            "idle": self.idle,
            "images_received": stats.images,
            "time_jumps": stats.time_jumps,
            "batched": frames.batched,
        }
        counts.update({f"failed:{k}": v for k, v in sorted(frames.failed_by_stage.items())})
        counts.update({f"not_deskewed:{k}": v for k, v in sorted(frames.not_deskewed.items())})
        return counts

    def summary(self, c: dict[str, int]) -> str:
        """Where every scan went, and latency percentiles (scan+image received -> published)."""
        latency = np.array(self.latencies) * 1000.0 if self.latencies else np.zeros(1)
        batched = f", {c['batched']} in a batch with another camera" if self.name else ""
        return (
            f"{self.label}pairs processed {c['published']}{batched}, dropped while busy "
            f"{c['dropped_busy']}, rejected {c['rejected']} (stamp offset {c['rejected_offset']}, "
            f"no image {c['rejected_no_image']}), failed {c['failed']}, waiting {c['waiting']}, "
            f"idle (no subscriber) {c['idle']} = "
            f"{c['received']} scans received; {c['images_received']} images received, "
            f"{c['time_jumps']} time jumps; latency p50 {np.percentile(latency, 50):.1f} ms, "
            f"p95 {np.percentile(latency, 95):.1f} ms"
        )
