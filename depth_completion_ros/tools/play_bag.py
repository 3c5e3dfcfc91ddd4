"""Play a ROS 2 bag into the running graph with rclpy, for machines without ``ros2 bag``.

Stored CDR bytes are published as they are (``Publisher.publish(bytes)``), so nothing is decoded
and re-encoded on the way; the message classes only name the types for DDS. Timing follows the
bag's receive times, scaled by ``--rate``; ``--clock`` publishes the bag time on ``/clock`` so
nodes run with ``use_sim_time:=true``. Latched (transient-local) messages recorded before
``--start-offset``, such as /tf_static, are published first. Types without a Python package here
are skipped with a warning.

By default it waits (up to ``--wait-for-subscribers`` s) for the subscribers before playing: a
volatile reader that matches after a message was sent never gets it, so a node started just
before play_bag would otherwise miss the first frames, or all of a short bag. Ctrl-C (or SIGTERM)
stops playing between messages and still prints what was published; a second one aborts.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from dataclasses import dataclass, field

from depth_completion_ros.bag_io import BagError, BagReader, ros_message_class
from depth_completion_ros.cli_help import DefaultsFormatter
from depth_completion_ros.tools.graph import DDS_PROFILES, use_ros_environment

DEFAULT_WAIT = 10.0  # seconds to wait for subscribers
SETTLE = 2.0  # seconds without a new match after which topics nobody reads are given up


@dataclass
class PlayOptions:
    rate: float = 1.0
    loop: bool = False
    start_offset: float = 0.0  # seconds into the bag
    topics: list[str] | None = None
    remap: dict[str, str] | None = None
    clock_hz: float = 0.0  # 0 = no /clock
    reliability: str = "bag"  # bag | reliable | best_effort
    wait_for_subscribers: float = DEFAULT_WAIT  # seconds to wait for subscribers; 0 = none
    min_subscribers: int = 1  # subscribers each topic must have before playing starts
    delay: float = 0.0  # seconds to wait after creating publishers
    dds_profile: str = "localhost"  # localhost | robot | inherit (graph.ros_environment)


@dataclass
class StopFlag:
    """Set by SIGINT/SIGTERM; checked between messages, so nothing is published into a context
    that is shutting down (rclpy's own handler would shut it down under a publish call)."""

    set: bool = False
    signal: int = 0
    _previous: dict = field(default_factory=dict)

    def install(self) -> StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        if self.set:
            raise KeyboardInterrupt  # a second Ctrl-C: stop waiting for anything
        self.set, self.signal = True, signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def sleep(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; False as soon as the flag is set."""
        end = time.monotonic() + seconds
        while not self.set:
            left = end - time.monotonic()
            if left <= 0:
                return True
            time.sleep(min(left, 0.05))
        return False


class Interrupted(Exception):
    """Playing stopped by a signal; ``sent`` holds what was published."""

    def __init__(self, sent: dict[str, int]) -> None:
        super().__init__("interrupted")
        self.sent = sent


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


def play(bag: str, options: PlayOptions, log=print, stop: StopFlag | None = None) -> dict[str, int]:
    """Publish the bag; returns messages published per (remapped) topic.

    With ``stop`` (set by a signal handler) playing ends between two messages and
    :class:`Interrupted` carries the counts; rclpy's own signal handling is off, so the context
    stays valid until this function shuts it down.
    """
    import rclpy
    from rclpy.signals import SignalHandlerOptions
    from rosgraph_msgs.msg import Clock

    if options.rate <= 0:
        raise BagError(f"--rate must be positive, got {options.rate}")
    stop = stop or StopFlag()
    use_ros_environment(transport=options.dds_profile)
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
        context = rclpy.Context()
        rclpy.init(args=[], context=context, signal_handler_options=SignalHandlerOptions.NO)
        node = rclpy.create_node("play_bag", context=context)
        sent: dict[str, int] = {}
        interrupted = False
        try:
            publishers = {
                topic: node.create_publisher(
                    cls, remap.get(topic, topic), _qos(reader, topic, options.reliability)
                )
                for topic, cls in classes.items()
            }
            clock_pub = node.create_publisher(Clock, "/clock", 10) if options.clock_hz else None
            waited = {remap.get(t, t): p for t, p in publishers.items()}
            if clock_pub:
                waited["/clock"] = clock_pub
            _wait_for_subscribers(
                waited, options.wait_for_subscribers, log, options.min_subscribers, stop
            )
            if options.delay:
                stop.sleep(options.delay)
            start = reader.start_time + int(options.start_offset * 1e9)
            latched = _publish_latched_before(reader, publishers, start, options.reliability)
            for topic, count in latched.items():
                sent[remap.get(topic, topic)] = count
            clock_period = 1.0 / options.clock_hz if options.clock_hz else 0.0
            while not stop.set:
                wall0 = time.monotonic()
                last_clock = -1e9

                def bag_now(wall0: float = wall0) -> int:
                    return start + int((time.monotonic() - wall0) * options.rate * 1e9)

                for message in reader.messages(list(publishers), start=start):
                    due = wall0 + (message.timestamp - start) / 1e9 / options.rate
                    while not stop.set:
                        now = time.monotonic()
                        if clock_pub is not None and now - last_clock >= clock_period:
                            clock_pub.publish(_clock(Clock, min(bag_now(), message.timestamp)))
                            last_clock = now
                        if now >= due:
                            break
                        wait = due - now
                        stop.sleep(min(wait, clock_period) if clock_pub is not None else wait)
                    if stop.set:
                        break
                    publishers[message.topic].publish(bytes(message.data))
                    name = remap.get(message.topic, message.topic)
                    sent[name] = sent.get(name, 0) + 1
                if not options.loop:
                    break
            interrupted = stop.set
            # reliable writers hand over their last messages before the process goes away
            _wait_for_acks(publishers.values(), timeout=1.0 if interrupted else 5.0)
        except KeyboardInterrupt:  # a second signal while waiting for acks
            interrupted = True
        finally:
            node.destroy_node()
            rclpy.try_shutdown(context=context)
    if interrupted:
        raise Interrupted(sent)
    return sent


def _publish_latched_before(
    reader: BagReader, publishers: dict, start: int, reliability: str
) -> dict[str, int]:
    """Publish the latched (transient-local) messages recorded before ``start`` at once: a
    /tf_static written at the bag's first instant must reach the node also when playing from
    an offset, or every frame after it would lack its extrinsics."""
    if start <= reader.start_time:
        return {}
    latched = [
        t for t in publishers if _qos(reader, t, reliability).durability.name == "TRANSIENT_LOCAL"
    ]
    counts: dict[str, int] = {}
    for message in reader.messages(latched, stop=start) if latched else ():
        publishers[message.topic].publish(bytes(message.data))
        counts[message.topic] = counts.get(message.topic, 0) + 1
    return counts


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
    publishers: dict, timeout: float, log, min_subscribers: int = 1, stop: StopFlag | None = None
) -> None:
    """Wait until every topic has ``min_subscribers`` readers, or, once some have, until no new
    reader has matched for SETTLE s (a bag's /tf that the node does not read must not hold the
    replay for the whole timeout); then 1 s more, since matching is not symmetric."""
    if timeout <= 0:
        return
    stop = stop or StopFlag()
    deadline = time.monotonic() + timeout
    log(
        f"play_bag: waiting up to {timeout:g} s for subscribers on {len(publishers)} topic(s) "
        "(--wait-for-subscribers 0 plays at once)"
    )
    last_change, last_counts = time.monotonic(), None
    while time.monotonic() < deadline and not stop.set:
        counts = {t: p.get_subscription_count() for t, p in publishers.items()}
        if counts != last_counts:
            last_counts, last_change = counts, time.monotonic()
        ready = [t for t, n in counts.items() if n >= min_subscribers]
        if len(ready) == len(counts):
            stop.sleep(1.0)
            return
        if ready and time.monotonic() - last_change >= SETTLE:
            unread = sorted(t for t in counts if t not in ready)
            log(f"play_bag: no (or too few) subscribers on {', '.join(unread)}: playing anyway")
            stop.sleep(1.0)
            return
        stop.sleep(0.05)
    if stop.set:
        return
    counts = {t: p.get_subscription_count() for t, p in publishers.items()}
    if not any(counts.values()):
        log(
            f"play_bag: warning: no subscriber on any topic after {timeout:g} s; playing anyway. "
            "Is the node running, in the same ROS_DOMAIN_ID, with the same Fast DDS profile "
            "(FASTDDS_DEFAULT_PROFILES_FILE), its topics remapped to the bag's names?"
        )
    else:
        lonely = [f"{t} ({n})" for t, n in counts.items() if n < min_subscribers]
        log(
            f"play_bag: fewer than {min_subscribers} subscriber(s) after {timeout:g} s on "
            f"{', '.join(lonely)}; playing anyway"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="play_bag",
        description="Play a ROS 2 bag into the graph over DDS with rclpy (no ros2 bag needed). "
        "Waits for subscribers first; Ctrl-C stops and prints what was published.",
        formatter_class=DefaultsFormatter,
    )
    parser.add_argument("bag", help="bag folder (rosbag2: mcap or sqlite3)")
    parser.add_argument(
        "-r", "--rate", type=float, default=1.0, help="playback speed factor (2 = twice as fast)"
    )
    parser.add_argument("-l", "--loop", action="store_true", help="play again from the start")
    parser.add_argument(
        "--start-offset", type=float, default=0.0, help="seconds into the bag to start from"
    )
    parser.add_argument("--topics", nargs="+", help="only these topics (default: all)")
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
        help="publish the bag time on /clock for use_sim_time (100 Hz when given without HZ; "
        "0 = no /clock)",
    )
    parser.add_argument(
        "--reliability",
        choices=("bag", "reliable", "best_effort"),
        default="bag",
        help="QoS reliability of the publishers (bag: as recorded)",
    )
    parser.add_argument(
        "--wait-for-subscribers",
        type=float,
        default=DEFAULT_WAIT,
        metavar="SEC",
        help="before playing, wait up to SEC seconds until every topic has --min-subscribers "
        f"readers (or, once some have, until none has matched for {SETTLE:g} s); 0 = play at once",
    )
    parser.add_argument(
        "--min-subscribers",
        type=int,
        default=1,
        metavar="N",
        help="readers every topic needs before playing starts",
    )
    parser.add_argument(
        "--delay", type=float, default=0.0, help="seconds to wait after the subscribers matched"
    )
    parser.add_argument(
        "--dds-profile",
        choices=(*DDS_PROFILES, "inherit"),
        default="localhost",
        help="Fast DDS profile: localhost (traffic stays on this machine), robot (other machines "
        "reach it), inherit (the environment's FASTDDS_DEFAULT_PROFILES_FILE); every process of "
        "the graph needs the same kind",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.rate <= 0:
        parser.error(f"--rate must be positive, got {args.rate:g}")
    if args.wait_for_subscribers < 0 or args.min_subscribers < 1 or args.delay < 0:
        parser.error("--wait-for-subscribers and --delay must be >= 0, --min-subscribers >= 1")
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
        dds_profile=args.dds_profile,
    )
    stop = StopFlag().install()
    try:
        sent = play(args.bag, options, log=lambda text: print(text, file=sys.stderr), stop=stop)
        note = ""
    except BagError as exc:
        print(f"play_bag: error: {exc}", file=sys.stderr)
        return 1
    except Interrupted as exc:
        sent, note = exc.sent, " (interrupted)"
    except KeyboardInterrupt:  # a second Ctrl-C before anything was set up
        print("play_bag: aborted", file=sys.stderr)
        return 130
    finally:
        stop.restore()
    summary = ", ".join(f"{t}: {n}" for t, n in sorted(sent.items())) or "nothing"
    print(f"published {summary}{note}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
