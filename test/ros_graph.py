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
    """The node process, its log, and a player node with its executor."""

    def __init__(self, process, log_path: Path, player: FramePlayer, executor, context):
        self.process = process
        self.log_path = log_path
        self.player = player
        self.executor = executor
        self.context = context

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
    log_path = tmp_path / "node.log"
    process = start_node_process(parameters, domain_id, log_path, extra_args, transport)
    context = rclpy.Context()
    rclpy.init(context=context)
    player = FramePlayer(reliable_inputs=reliable_inputs, context=context)
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
