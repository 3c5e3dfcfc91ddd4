"""Test helpers: a FramePlayer in this process talking to the node in another, over DDS."""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

import rclpy
from rclpy.executors import SingleThreadedExecutor

from depth_completion_ros.tools.graph import (
    FramePlayer,
    start_node_process,
    stop_process,
    use_ros_environment,
)


class Graph:
    """The node process, its log, and a player node with its executor; the node's accounting
    as it publishes it on /diagnostics (``counts``, ``diagnostics``), not parsed from its log."""

    def __init__(self, process, log_path: Path, player: FramePlayer, executor, context):
        from diagnostic_msgs.msg import DiagnosticArray

        self.process = process
        self.log_path = log_path
        self.player = player
        self.executor = executor
        self.context = context
        #: every /diagnostics status of the node, as {key: int or str}, in arrival order
        self.diagnostics: list[dict[str, object]] = []
        player.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 100)

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            if status.name.startswith("depth_completion"):
                values = {kv.key: kv.value for kv in status.values}
                self.diagnostics.append(
                    {k: int(v) if v.lstrip("-").isdigit() else v for k, v in values.items()}
                )

    def counts(self, camera: str | None = None) -> dict[str, object]:
        """The node's latest accounting ({} before its first /diagnostics message); of one
        camera of a node with ``cameras``."""
        mine = [d for d in self.diagnostics if camera is None or d.get("camera") == camera]
        return mine[-1] if mine else {}

    def wait_for_counts(
        self, done, timeout: float = 20.0, camera: str | None = None
    ) -> dict[str, object]:
        """Spin until the latest accounting satisfies ``done(counts)``; returns it (or the last
        one seen, for the caller's assertion message)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            counts = self.counts(camera)
            if counts and done(counts):
                return counts
            self.spin_for(0.1)
        return self.counts(camera)

    def settled_counts(self, received: int, timeout: float = 20.0) -> dict[str, object]:
        """The accounting once at least ``received`` scans came and none is waiting."""
        return self.wait_for_counts(
            lambda c: c["received"] >= received and c["waiting"] == 0, timeout
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def spin_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.01)

    def wait_for_log(self, text: str, timeout: float = 10.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if text in self.log():
                return True
            self.spin_for(0.1)
        return False


@contextmanager
def node_graph(
    parameters: dict,
    domain_id: int,
    tmp_path: Path,
    reliable_inputs: bool = True,
    transport: str = "localhost",
    extra_args: list[str] | None = None,
):
    """Start the node with ``parameters``; yield a connected :class:`Graph`; stop everything."""
    use_ros_environment(domain_id, transport=transport)
    # the accounting comes on /diagnostics every diagnostics_period: often, unless a test asks
    parameters = {"diagnostics_period": 0.5, **parameters}
    log_path = tmp_path / "node.log"
    process = start_node_process(parameters, domain_id, log_path, extra_args, transport)
    context = rclpy.Context()
    rclpy.init(context=context)
    # image_transport compressed: the player sends jpeg CompressedImages on 'image/compressed'
    codec = "jpeg" if parameters.get("image_transport") == "compressed" else None
    player = FramePlayer(reliable_inputs=reliable_inputs, image_codec=codec, context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(player)
    graph = Graph(process, log_path, player, executor, context)
    try:
        if not player.wait_for_node(executor, timeout=60.0):
            raise AssertionError(f"node did not come up; log:\n{graph.log()}")
        yield graph
    finally:
        executor.shutdown()
        player.destroy_node()
        rclpy.try_shutdown(context=context)
        graph.returncode = stop_process(process)
