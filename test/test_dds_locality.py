"""DDS traffic of everything the repository starts stays on this machine, large data still flows.

The processes are started with ``graph.ros_environment`` (what the tests, the demo and the tools
use). Their sockets are read from /proc while they run: every UDP/TCP socket must be bound to
127.0.0.1, so the kernel cannot send their packets out of a network interface (a socket bound to
loopback cannot reach another host, and none joins a multicast group). The same two-process
transfer proves multi-megabyte clouds still arrive (shared memory), best effort and reliable.

    python test/test_dds_locality.py 50     # the measurement: 50 clouds of 7.5 MB, JSON
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from depth_completion_ros.tools.graph import (
    dds_profile_path,
    ros_environment,
    start_node_process,
    stop_process,
)

PROBE = Path(__file__).with_name("dds_probe.py")
NS = {"dds": "http://www.eprosima.com"}


def _address(hex_address: str) -> str:
    address, port = hex_address.split(":")
    if len(address) == 8:
        ip = socket.inet_ntoa(struct.pack("<I", int(address, 16)))
    else:
        ip = socket.inet_ntop(socket.AF_INET6, bytes.fromhex(address)[::-1])  # rough: words
    return f"{ip}:{int(port, 16)}"


def process_sockets(pid: int) -> list[str]:
    """``proto local-address`` of every IP socket the process holds (from /proc)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[len("socket:[") : -1])
    found = []
    for table in ("udp", "tcp", "udp6", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                found.append(f"{table} {_address(fields[1])}")
    return found


def off_host(sockets: list[str]) -> list[str]:
    """Sockets not bound to loopback (0.0.0.0, a network address, IPv6 other than ::1)."""
    return [s for s in sockets if not (" 127.0.0.1:" in s or " ::1:" in s)]


def _probe_env(domain: int, transport: str) -> dict[str, str]:
    """ "default" = Fast DDS's own defaults (no profile), as a camera driver would run."""
    if transport == "default":
        env = ros_environment(domain, transport="inherit")
        env.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
        env.pop("FASTDDS_BUILTIN_TRANSPORTS", None)
    else:
        env = ros_environment(domain, transport=transport)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")]
    )
    return env


def run_transfer(
    count: int, transport: str = "localhost", domain: int = 0, publisher_transport: str = ""
) -> dict:
    """Publisher and subscriber processes; returns the counts and the sockets both held."""
    common = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    sub_env = _probe_env(domain, transport)
    pub_env = _probe_env(domain, publisher_transport or transport)
    sub = subprocess.Popen([sys.executable, str(PROBE), "sub", str(count)], env=sub_env, **common)
    pub = subprocess.Popen([sys.executable, str(PROBE), "pub", str(count)], env=pub_env, **common)
    sockets: dict[str, set[str]] = {"pub": set(), "sub": set()}
    try:
        assert sub.stdout.readline().strip() == "ready", sub.stderr.read()
        deadline = time.monotonic() + 120
        while pub.poll() is None and time.monotonic() < deadline:
            for name, process in (("pub", pub), ("sub", sub)):
                if process.poll() is None:
                    sockets[name].update(process_sockets(process.pid))
            time.sleep(0.5)
        pub_out, pub_err = pub.communicate(timeout=60)
        sub_out, sub_err = sub.communicate(timeout=90)
    finally:
        for process in (pub, sub):
            if process.poll() is None:
                process.kill()
                process.wait()
    assert pub.returncode == 0 and sub.returncode == 0, pub_err + sub_err
    received = json.loads(sub_out.strip().splitlines()[-1])
    sent = json.loads(pub_out.strip().splitlines()[-1])
    return {
        "transport": transport,
        "sent": sent["sent"],
        "message_bytes": sent["bytes"],
        "received_best_effort": received["best_effort"],
        "received_reliable": received["reliable"],
        "sockets": {k: sorted(v) for k, v in sockets.items()},
    }


def test_localhost_profile_read_back():
    """What Fast DDS reads: loopback-only UDP, unicast discovery to 127.0.0.1, shared memory."""
    root = ET.parse(dds_profile_path("localhost")).getroot()
    udp = [
        t
        for t in root.iterfind(".//dds:transport_descriptor", NS)
        if t.findtext("dds:type", namespaces=NS) == "UDPv4"
    ]
    assert len(udp) == 1
    allowed = [a.text for a in udp[0].iterfind("dds:interfaceWhiteList/dds:address", NS)]
    assert allowed == ["127.0.0.1"]
    kinds = {t.text for t in root.iterfind(".//dds:transport_descriptor/dds:type", NS)}
    assert kinds == {"SHM", "UDPv4"}
    rtps = root.find(".//dds:participant/dds:rtps", NS)
    assert rtps.findtext("dds:useBuiltinTransports", namespaces=NS) == "false"
    builtin = rtps.find("dds:builtin", NS)
    for name in ("metatrafficUnicastLocatorList", "initialPeersList"):
        addresses = [a.text for a in builtin.iterfind(f"dds:{name}//dds:address", NS)]
        assert addresses == ["127.0.0.1"], name
    assert builtin.find("dds:metatrafficMulticastLocatorList", NS) is None


def test_graph_processes_bind_only_loopback_and_large_clouds_arrive(ros_domain_id):
    result = run_transfer(10, "localhost", ros_domain_id)
    for name, sockets in result["sockets"].items():
        assert sockets, f"{name}: no socket seen (the check would be empty)"
        assert not off_host(sockets), f"{name} holds sockets off loopback: {off_host(sockets)}"
    assert result["message_bytes"] > 7_000_000
    assert result["received_reliable"] == 10
    assert result["received_best_effort"] == 10


def test_node_process_binds_only_loopback(ros_domain_id, tmp_path):
    """The node as the demo and the tests start it (graph.start_node_process)."""
    node = start_node_process({}, ros_domain_id, tmp_path / "node.log")
    try:
        deadline, sockets = time.monotonic() + 60, []
        while time.monotonic() < deadline and node.poll() is None:
            sockets = process_sockets(node.pid)
            if "waiting for" in (tmp_path / "node.log").read_text() or len(sockets) >= 3:
                time.sleep(1.0)
                sockets = process_sockets(node.pid)
                break
            time.sleep(0.2)
    finally:
        stop_process(node)
    assert sockets, (tmp_path / "node.log").read_text()
    assert not off_host(sockets), sockets


def test_a_driver_with_fast_dds_defaults_still_finds_the_graph(ros_domain_id):
    """A process without the profile (a camera driver on this machine) and a localhost one
    discover each other: the driver listens for discovery on every interface, loopback too."""
    result = run_transfer(3, "localhost", ros_domain_id, publisher_transport="default")
    assert result["received_reliable"] == 3  # (best effort: multi-MB over default transports
    assert not off_host(result["sockets"]["sub"])  # is what the profile is for)


def test_robot_profile_reaches_the_network():
    """The robot-facing profile is the other one: UDP on every interface, multicast discovery."""
    root = ET.parse(dds_profile_path("robot")).getroot()
    assert root.find(".//dds:interfaceWhiteList", NS) is None
    assert root.find(".//dds:initialPeersList", NS) is None
    env = ros_environment(0, transport="robot")
    assert env["FASTDDS_DEFAULT_PROFILES_FILE"].endswith("fastdds_robot.xml")


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    transport = sys.argv[2] if len(sys.argv) > 2 else "localhost"
    measured = run_transfer(count, transport, domain=int(os.environ.get("ROS_DOMAIN_ID", 77)))
    measured["sockets_off_loopback"] = {k: off_host(v) for k, v in measured["sockets"].items()}
    print(json.dumps(measured, indent=2))
