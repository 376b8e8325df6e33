"""Which Fast DDS transport setting delivers 1-2 MB point clouds at 10 Hz AND is discovered by peers
with default settings? Writes results/dds_transport_candidates.json.

For each candidate a publisher and a subscriber process are started with the candidate's environment
(or one side on defaults: a LiDAR driver or RViz nobody reconfigured). The publisher sends N clouds
per size at 10 Hz with the node's sensor QoS (best effort, keep last 5); the subscriber counts the
distinct ones received. Discovery: a process with the candidate's environment runs a node and a
Trigger service; a process with no DDS variables at all must see the node, a topic and the service.

    python scripts/dds_transport_candidates.py [--n 50] [--out results/dds_transport_candidates.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "config" / "fastdds_profile.xml"
DDS_VARS = ("FASTDDS_BUILTIN_TRANSPORTS", "FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE",
            "ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_LOCALHOST_ONLY", "RMW_FASTRTPS_USE_QOS_FROM_XML")
CANDIDATES = {
    "default": {},
    "large_data": {"FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA"},
    "profile": {"FASTDDS_DEFAULT_PROFILES_FILE": str(PROFILE)},
    # the profile without its shared-memory transport: what crosses between two computers (UDP only)
    "profile_udp_only": {"FASTDDS_DEFAULT_PROFILES_FILE": "<tmp>/udp_only.xml"},
}
# (publisher environment, subscriber environment)
PAIRS = [
    ("default", "default"),
    ("large_data", "large_data"),
    ("profile", "profile"),
    ("default", "profile"),   # a LiDAR driver on defaults -> the node with the profile
    ("profile", "default"),   # the replay / node with the profile -> a tool on defaults
    ("profile_udp_only", "profile_udp_only"),
    ("default", "large_data"),
    ("large_data", "default"),
]
SIZES_MB = (1.0, 2.0)
TOPIC = "/dds_candidates/cloud"


def clean_env(candidate: str, domain: int, tmp: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DDS_VARS}
    env.update({k: v.replace("<tmp>", str(tmp)) for k, v in CANDIDATES[candidate].items()})
    env["ROS_DOMAIN_ID"] = str(domain)
    env["PYTHONUNBUFFERED"] = "1"
    return env


# ------------------------------------------------------------------------------------------ roles
def role_sub(expected: int, timeout_s: float, out: str) -> None:
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import PointCloud2

    rclpy.init()
    node = rclpy.create_node("dds_candidate_sub")
    seen: set[str] = set()
    node.create_subscription(PointCloud2, TOPIC, lambda m: seen.add(m.header.frame_id), qos_profile_sensor_data)
    deadline = time.monotonic() + timeout_s
    last = -1
    while time.monotonic() < deadline and len(seen) < expected:
        rclpy.spin_once(node, timeout_sec=0.1)
        if len(seen) != last:
            last = len(seen)
    # every message id is "<size>:<k>"; report per size
    counts: dict[str, int] = {}
    for s in seen:
        size = s.split(":")[0]
        counts[size] = counts.get(size, 0) + 1
    Path(out).write_text(json.dumps(counts))
    node.destroy_node()
    rclpy.try_shutdown()


def role_pub(n: int, rate_hz: float) -> None:
    import numpy as np
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import PointCloud2, PointField

    rclpy.init()
    node = rclpy.create_node("dds_candidate_pub")
    pub = node.create_publisher(PointCloud2, TOPIC, qos_profile_sensor_data)
    deadline = time.monotonic() + 20.0
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # as the replay does: the first samples after matching are often lost
    for size_mb in SIZES_MB:
        m = PointCloud2()
        npts = int(size_mb * 1e6 / 16)
        m.height, m.width, m.point_step, m.row_step = 1, npts, 16, 16 * npts
        m.fields = [PointField(name=c, offset=4 * i, datatype=7, count=1) for i, c in enumerate("xyzi")]
        m.data = np.random.default_rng(0).integers(0, 255, 16 * npts, dtype=np.uint8).tobytes()
        t0 = time.monotonic()
        for k in range(n):
            m.header.frame_id = f"{size_mb:g}:{k}"
            m.header.stamp = node.get_clock().now().to_msg()
            pub.publish(m)
            time.sleep(max(0.0, t0 + (k + 1) / rate_hz - time.monotonic()))
    time.sleep(1.0)
    node.destroy_node()
    rclpy.try_shutdown()


def role_server(seconds: float) -> None:
    import rclpy
    from std_msgs.msg import String
    from std_srvs.srv import Trigger

    rclpy.init()
    node = rclpy.create_node("dds_candidate_server")
    node.create_publisher(String, "/dds_candidates/status", 10)
    node.create_service(Trigger, "/dds_candidates/reset", lambda req, res: res)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.1)
    node.destroy_node()
    rclpy.try_shutdown()


def role_peer(timeout_s: float, out: str) -> None:
    """Default-configured client: how long until it sees the node, the topic and the service?"""
    import rclpy
    from std_srvs.srv import Trigger

    rclpy.init()
    node = rclpy.create_node("dds_candidate_peer")
    client = node.create_client(Trigger, "/dds_candidates/reset")
    t0 = time.monotonic()
    got: dict[str, float | None] = {"node": None, "topic": None, "service": None}
    while time.monotonic() - t0 < timeout_s and None in got.values():
        rclpy.spin_once(node, timeout_sec=0.1)
        now = time.monotonic() - t0
        if got["node"] is None and "dds_candidate_server" in node.get_node_names():
            got["node"] = now
        if got["topic"] is None and "/dds_candidates/status" in dict(node.get_topic_names_and_types()):
            got["topic"] = now
        if got["service"] is None and client.service_is_ready():
            got["service"] = now
    Path(out).write_text(json.dumps(got))
    node.destroy_node()
    rclpy.try_shutdown()


# ------------------------------------------------------------------------------------------ driver
def run(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, *cmd], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=ROOT)


def measure_delivery(pub_env: str, sub_env: str, n: int, tmp: Path) -> dict:
    domain = random.SystemRandom().randint(101, 200)
    out = tmp / f"sub_{pub_env}_{sub_env}.json"
    expected = n * len(SIZES_MB)
    sub = run(["sub", str(expected), str(20 + 2 * expected / 10), str(out)], clean_env(sub_env, domain, tmp))
    time.sleep(1.0)
    pub = run(["pub", str(n), "10"], clean_env(pub_env, domain, tmp))
    pub.wait(timeout=120)
    sub.wait(timeout=60)
    counts = json.loads(out.read_text()) if out.is_file() else {}
    return {f"{s:g}MB": {"sent": n, "received": counts.get(f"{s:g}", 0),
                         "loss_pct": round(100.0 * (1 - counts.get(f"{s:g}", 0) / n), 1)} for s in SIZES_MB}


def measure_discovery(server_env: str, tmp: Path, timeout_s: float = 20.0) -> dict:
    domain = random.SystemRandom().randint(101, 200)
    out = tmp / f"peer_{server_env}.json"
    server = run(["server", str(timeout_s + 10)], clean_env(server_env, domain, tmp))
    peer = run(["peer", str(timeout_s), str(out)], clean_env("default", domain))
    peer.wait(timeout=timeout_s + 30)
    server.kill()
    server.wait()
    got = json.loads(out.read_text()) if out.is_file() else {}
    return {"default_peer_sees_s": got, "discovered": bool(got) and None not in got.values()}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] in ("sub", "pub", "server", "peer"):
        role, args = sys.argv[1], sys.argv[2:]
        if role == "sub":
            role_sub(int(args[0]), float(args[1]), args[2])
        elif role == "pub":
            role_pub(int(args[0]), float(args[1]))
        elif role == "server":
            role_server(float(args[0]))
        else:
            role_peer(float(args[0]), args[1])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=50, help="clouds per size and candidate")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "results" / "dds_transport_candidates.json"))
    a = ap.parse_args()
    import tempfile

    results: dict = {"what": __doc__.split("\n\n")[0].replace("\n", " "), "profile": str(PROFILE.relative_to(ROOT)),
                     "candidates": CANDIDATES, "host": {"cpus": os.cpu_count(), "python": platform.python_version(),
                     "rmem_max": Path("/proc/sys/net/core/rmem_max").read_text().strip()},
                     "n_per_size": a.n, "rate_hz": 10, "qos": "best effort, keep last 5 (sensor data)",
                     "delivery": {}, "discovery_by_default_peer": {}}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        xml = PROFILE.read_text()
        (tmp / "udp_only.xml").write_text(xml.replace("<transport_id>ssm_shm</transport_id>\n          <transport_id>ssm_udp",
                                                     "<transport_id>ssm_udp"))
        for name in CANDIDATES:
            results["discovery_by_default_peer"][name] = measure_discovery(name, tmp)
            print(name, "discovery", results["discovery_by_default_peer"][name], flush=True)
        for pub_env, sub_env in PAIRS:
            runs = [measure_delivery(pub_env, sub_env, a.n, tmp) for _ in range(a.repeats)]
            results["delivery"][f"{pub_env} -> {sub_env}"] = runs
            print(pub_env, "->", sub_env, runs, flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
