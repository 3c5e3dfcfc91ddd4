"""Play a ROS 2 bag into the running graph with rclpy, for machines without ``ros2 bag``.

Stored CDR bytes are published as they are (``Publisher.publish(bytes)``), so nothing is decoded
and re-encoded on the way; the message classes only name the types for DDS. Timing follows the
bag's receive times, scaled by ``--rate``; ``--clock`` publishes the bag time on ``/clock`` so
nodes run with ``use_sim_time:=true``. Types without a Python package here (tf2_msgs on PyPI
installs) are skipped with a warning.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

from depth_completion_ros.bag_io import BagError, BagReader, ros_message_class
from depth_completion_ros.tools.graph import use_ros_environment


@dataclass
class PlayOptions:
    rate: float = 1.0
    loop: bool = False
    start_offset: float = 0.0  # seconds into the bag
    topics: list[str] | None = None
    remap: dict[str, str] | None = None
    clock_hz: float = 0.0  # 0 = no /clock
    reliability: str = "bag"  # bag | reliable | best_effort
    wait_for_subscribers: float = 0.0  # seconds to wait for each topic to have a subscriber
    min_subscribers: int = 1  # subscribers each topic must have before playing starts
    delay: float = 0.0  # seconds to wait after creating publishers


def parse_remap(text: str) -> tuple[str, str]:
    source, sep, target = text.partition(":=")
    if not sep or not source or not target:
        raise argparse.ArgumentTypeError(f"remapping must be from:=to, got {text!r}")
    return source, target


def _qos(reader: BagReader, topic: str, reliability: str):
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    offered = reader.qos(topic)
    transient = bool(offered) and offered[0].durability.name == "TRANSIENT_LOCAL"
    if reliability == "bag":
        best_effort = bool(offered) and offered[0].reliability.name == "BEST_EFFORT"
    else:
        best_effort = reliability == "best_effort"
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=max(1, offered[0].depth) if offered and transient else 10,
        reliability=ReliabilityPolicy.BEST_EFFORT if best_effort else ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if transient else DurabilityPolicy.VOLATILE,
    )


def play(bag: str, options: PlayOptions, log=print) -> dict[str, int]:
    """Publish the bag; returns messages published per (remapped) topic."""
    import rclpy
    from rosgraph_msgs.msg import Clock

    if options.rate <= 0:
        raise BagError(f"--rate must be positive, got {options.rate}")
    use_ros_environment()
    with BagReader(bag) as reader:
        available = reader.topics
        selected = options.topics or sorted(available)
        missing = [t for t in selected if t not in available]
        if missing:
            raise BagError(
                f"{bag}: topic(s) {', '.join(missing)} not in the bag; it has "
                f"{', '.join(sorted(available))}"
            )
        classes, skipped = {}, []
        for topic in selected:
            try:
                classes[topic] = ros_message_class(available[topic])
            except BagError:
                skipped.append(f"{topic} ({available[topic]})")
        if skipped:
            log(f"play_bag: warning: no Python message package for {', '.join(skipped)}: skipped")
        if not classes:
            raise BagError(f"{bag}: none of the selected topics can be published here")
        remap = options.remap or {}
        rclpy.init(args=[])
        node = rclpy.create_node("play_bag")
        sent: dict[str, int] = {}
        try:
            publishers = {
                topic: node.create_publisher(
                    cls, remap.get(topic, topic), _qos(reader, topic, options.reliability)
                )
                for topic, cls in classes.items()
            }
            clock_pub = node.create_publisher(Clock, "/clock", 10) if options.clock_hz else None
            waited = dict(publishers, **({"/clock": clock_pub} if clock_pub else {}))
            _wait_for_subscribers(
                node, waited, options.wait_for_subscribers, log, options.min_subscribers
            )
            if options.delay:
                time.sleep(options.delay)
            start = reader.start_time + int(options.start_offset * 1e9)
            clock_period = 1.0 / options.clock_hz if options.clock_hz else 0.0
            while True:
                wall0 = time.monotonic()
                last_clock = -1e9

                def bag_now(wall0: float = wall0) -> int:
                    return start + int((time.monotonic() - wall0) * options.rate * 1e9)

                for message in reader.messages(list(publishers), start=start):
                    due = wall0 + (message.timestamp - start) / 1e9 / options.rate
                    while True:
                        now = time.monotonic()
                        if clock_pub is not None and now - last_clock >= clock_period:
                            clock_pub.publish(_clock(Clock, min(bag_now(), message.timestamp)))
                            last_clock = now
                        if now >= due:
                            break
                        wait = due - now
                        time.sleep(min(wait, clock_period) if clock_pub is not None else wait)
                    publishers[message.topic].publish(bytes(message.data))
                    name = remap.get(message.topic, message.topic)
                    sent[name] = sent.get(name, 0) + 1
                if not options.loop:
                    break
            _wait_for_acks(publishers.values(), timeout=5.0)
        finally:
            node.destroy_node()
            rclpy.try_shutdown()
    return sent


def _clock(Clock, stamp_ns: int):
    msg = Clock()
    msg.clock.sec, msg.clock.nanosec = stamp_ns // 1_000_000_000, stamp_ns % 1_000_000_000
    return msg


def _wait_for_acks(publishers, timeout: float) -> None:
    """Reliable writers hand over their last messages before the process goes away."""
    from rclpy.duration import Duration

    for publisher in publishers:
        publisher.wait_for_all_acked(Duration(seconds=timeout))


def _wait_for_subscribers(
    node, publishers: dict, timeout: float, log, min_subscribers: int = 1
) -> None:
    """Wait until every topic has ``min_subscribers``: a volatile reader matched after a message
    was sent never gets it, so replaying before all readers match loses frames."""
    if timeout <= 0:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(p.get_subscription_count() >= min_subscribers for p in publishers.values()):
            time.sleep(1.0)  # matching is not symmetric: let the readers see the writers too
            return
        time.sleep(0.05)
    lonely = [
        f"{t} ({p.get_subscription_count()})"
        for t, p in publishers.items()
        if p.get_subscription_count() < min_subscribers
    ]
    log(
        f"play_bag: fewer than {min_subscribers} subscriber(s) after {timeout:g} s on "
        f"{', '.join(lonely)}; playing anyway"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="play_bag",
        description="Play a ROS 2 bag into the graph over DDS with rclpy (no ros2 bag needed).",
    )
    parser.add_argument("bag", help="bag folder")
    parser.add_argument("-r", "--rate", type=float, default=1.0, help="playback speed factor")
    parser.add_argument("-l", "--loop", action="store_true", help="play again from the start")
    parser.add_argument(
        "--start-offset", type=float, default=0.0, help="seconds into the bag to start from"
    )
    parser.add_argument("--topics", nargs="+", help="only these topics")
    parser.add_argument(
        "--remap",
        nargs="+",
        type=parse_remap,
        default=[],
        metavar="FROM:=TO",
        help="publish a topic under another name",
    )
    parser.add_argument(
        "--clock",
        type=float,
        nargs="?",
        const=100.0,
        default=0.0,
        metavar="HZ",
        help="publish the bag time on /clock (default 100 Hz when given) for use_sim_time",
    )
    parser.add_argument(
        "--reliability",
        choices=("bag", "reliable", "best_effort"),
        default="bag",
        help="QoS reliability of the publishers (default: as recorded in the bag)",
    )
    parser.add_argument(
        "--wait-for-subscribers",
        type=float,
        default=0.0,
        metavar="SEC",
        help="wait up to SEC seconds until every topic has --min-subscribers subscribers",
    )
    parser.add_argument(
        "--min-subscribers",
        type=int,
        default=1,
        metavar="N",
        help="with --wait-for-subscribers: subscribers every topic needs (default 1)",
    )
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to wait before playing")
    args = parser.parse_args(argv)
    options = PlayOptions(
        rate=args.rate,
        loop=args.loop,
        start_offset=args.start_offset,
        topics=args.topics,
        remap=dict(args.remap),
        clock_hz=args.clock,
        reliability=args.reliability,
        wait_for_subscribers=args.wait_for_subscribers,
        min_subscribers=args.min_subscribers,
        delay=args.delay,
    )
    try:
        sent = play(args.bag, options, log=lambda text: print(text, file=sys.stderr))
    except BagError as exc:
        print(f"play_bag: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    print("published " + ", ".join(f"{t}: {n}" for t, n in sorted(sent.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
