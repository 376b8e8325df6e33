"""Live check of the perception node over DDS: a simulated 10 Hz drive replayed in real time (no
lockstep) into the node; how many LiDAR frames it drops, whether it resets itself, and the latency
from sensor stamp to publication.

    python scripts/gpu_live_check.py [--config FILE] [--scenario urban] [--seed 200000] [--duration 20]
                                     [-o results/gpu_live_check.json]

On the GPU machine scripts/gpu_live_check.sh prepares the environment (the carried ROS 2 bundle and
wheels) and runs this with the GPU default (config/ssm_perception_gpu.yaml: 200 x 200, cuda, fused,
CUDA graphs). What runs is what a vehicle runs: the perception node process (``perception_node``
with the parameter file, use_sim_time), the replay process (``ssm-perception replay`` at x1 with
/clock; the bag's ground-truth topics are not published) and this process as a listener on
/perception/occupancy_grid, /diagnostics and /clock, all on a random ROS_DOMAIN_ID with the
packaged Fast DDS profile. The bag is simulated first (the 'urban' preset has no injected faults,
so every full reset after the first frame's route start is the node resetting itself).

Figures written (JSON):
- frames: LiDAR scans sent (in the bag, all published by the replay), received by the node, processed
  (= grids published), skipped while busy, dropped for TF, lost in transport (sequence gaps), grids
  seen by the listener; dropped = sent - processed, in % and per second of the drive;
- resets: every full reset with its reasons (node log and /diagnostics counters); "self resets"
  are those after the first processed frame (whose route start is expected);
- latency: stamp -> grid received by the listener (wall clock: the time the replay's /clock reached
  the stamp, interpolated from /clock arrivals, to the grid's arrival) p50/p99, and the node's own
  stamp -> publication (node clock, sim time) and per-stage p50/p99 from /diagnostics;
- the node's start-up time, its CPU use during the replay (busy cores), the machine.

Exit code: 0 when the target holds (dropped <= --max-drop-pct and no self reset), 1 when it was
measured but missed, 2 when something needed is missing or the run failed (one line saying what).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

NS = 1_000_000_000
RESET_LINE = re.compile(r"\]: state reset at (?P<t>[\d.]+) s: (?P<what>.*)$")  # the node's log line
READY_LINE = "ready: grid"


class CheckError(RuntimeError):
    """Something needed is missing or the run failed before it could be measured (exit code 2)."""


def say(msg: str) -> None:
    print(f"\033[1m[live-check]\033[0m {msg}", flush=True)


# ------------------------------------------------------------------------------ preconditions
def check_environment(device: str) -> None:
    """Everything the three processes import, with one line naming what is missing."""
    missing = []
    for mod in ("numpy", "scipy", "yaml", "torch", "pydantic", "transforms3d", "rosbags", "mcap", "safetensors", "tqdm",
                "typer", "rclpy", "sensor_msgs.msg", "nav_msgs.msg", "visualization_msgs.msg", "diagnostic_msgs.msg",
                "std_srvs.srv", "std_msgs.msg", "rosgraph_msgs.msg", "tf2_msgs.msg", "ssm_perception.msg"):
        try:
            __import__(mod)
        except Exception as exc:  # noqa: BLE001 - an ImportError or a shared library that does not load
            missing.append(f"{mod} ({type(exc).__name__}: {exc})")
    if missing:
        raise CheckError("cannot import " + "; ".join(missing))
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CheckError(f"the configuration runs on {device} but torch {torch.__version__} sees no CUDA device")


def proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process (/proc/PID/stat), None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def transport_limits() -> dict:
    """What bounds Fast DDS between processes here: the shared-memory file system and the socket
    buffer caps (config/fastdds_profile.xml asks for 16 MiB segments and 4 MiB buffers)."""
    out: dict = {}
    try:
        out["dev_shm_mib"] = round(shutil.disk_usage("/dev/shm").total / 2**20)
    except OSError:
        out["dev_shm_mib"] = None
    for key in ("rmem_max", "wmem_max"):
        try:
            out[f"net_core_{key}"] = int(Path(f"/proc/sys/net/core/{key}").read_text())
        except (OSError, ValueError):
            out[f"net_core_{key}"] = None
    return out


def source_commit() -> str | None:
    try:
        r = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                           timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() or None if r.returncode == 0 else None


def pcts(xs) -> dict:
    import numpy as np

    a = np.asarray(list(xs), dtype=np.float64)
    if a.size == 0:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    return {"n": int(a.size), "p50": round(float(np.percentile(a, 50)), 2),
            "p99": round(float(np.percentile(a, 99)), 2), "max": round(float(a.max()), 2)}


# ------------------------------------------------------------------------------ the listener
class Listener:
    """This process's rclpy node: grid stamps and arrival times, /diagnostics, /clock samples."""

    def __init__(self, topics):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from nav_msgs.msg import OccupancyGrid
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from rosgraph_msgs.msg import Clock

        rclpy.init()
        self.node = rclpy.create_node("ssm_perception_live_check")
        self.lock = threading.Lock()
        self.grids: dict[int, float] = {}  # stamp ns -> monotonic arrival (first copy)
        self.grid_copies = 0
        self.diags: list = []  # (monotonic, DiagnosticArray)
        self.clock: list[tuple[int, float]] = []  # (sim ns, monotonic arrival)
        reliable = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)
        self.node.create_subscription(OccupancyGrid, topics.occupancy_grid, self._on_grid, reliable)
        self.node.create_subscription(DiagnosticArray, topics.diagnostics, self._on_diag, reliable)
        self.node.create_subscription(Clock, "/clock", self._on_clock, qos_profile_sensor_data)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_grid(self, msg) -> None:
        t = time.monotonic()
        s = int(msg.header.stamp.sec) * NS + int(msg.header.stamp.nanosec)
        with self.lock:
            self.grid_copies += 1
            self.grids.setdefault(s, t)

    def _on_diag(self, msg) -> None:
        with self.lock:
            self.diags.append((time.monotonic(), msg))

    def _on_clock(self, msg) -> None:
        t = time.monotonic()
        with self.lock:
            self.clock.append((int(msg.clock.sec) * NS + int(msg.clock.nanosec), t))

    def last_values(self, suffix: str) -> dict[str, str]:
        """Key/values of the newest /diagnostics status whose name ends with ``suffix``."""
        with self.lock:
            diags = list(self.diags)
        for _, arr in reversed(diags):
            for st in arr.status:
                if st.name.endswith(suffix):
                    return {kv.key: kv.value for kv in st.values}
        return {}

    def close(self) -> None:
        import rclpy

        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        rclpy.try_shutdown()


def wall_at(clock: list[tuple[int, float]], stamp_ns: int, rate: float) -> float | None:
    """Monotonic time at which the replay's /clock reached ``stamp_ns``: the last /clock sample at or
    before it plus the bag time still to go at ``rate`` (the first sample, extrapolated back, for a
    stamp before every sample)."""
    if not clock:
        return None
    import bisect

    keys = [c for c, _ in clock]
    i = bisect.bisect_right(keys, stamp_ns) - 1
    c, t = clock[max(i, 0)]
    return t + (stamp_ns - c) * 1e-9 / rate


# ------------------------------------------------------------------------------ the run
def simulate(bag: Path, scenario: str, seed: int, duration: float, grid) -> float:
    from ssm_perception.sim.scenario import Scenario
    from ssm_perception.sim.writer import write_bag

    t0 = time.monotonic()
    write_bag(Scenario.from_preset(scenario, seed=seed, duration_s=duration, grid=grid), bag, progress=False)
    return time.monotonic() - t0


def lidar_stamps(bag: Path, topic: str) -> list[int]:
    from ssm_perception.io.bag import read_messages

    return sorted(int(m.header.stamp.sec) * NS + int(m.header.stamp.nanosec)
                  for _, _, _, m in read_messages(bag, [topic]))


def run(args) -> dict:
    import numpy as np

    from ssm_perception.config import ConfigError, PerceptionConfig
    from ssm_perception.defaults import default_config_path
    from ssm_perception.io.bag import bag_topics
    from ssm_perception.nodes.launcher import (
        PROFILE_VARS,
        Graph,
        dds_env,
        dds_summary,
        node_command,
        replay_command,
    )

    t_start = time.monotonic()
    config = Path(args.config) if args.config else default_config_path()
    if config is None or not config.is_file():
        raise CheckError(f"no parameter file {args.config or '(default)'}")
    try:
        cfg = PerceptionConfig.load(config)
    except ConfigError as exc:
        raise CheckError(f"{config}: {exc}") from None
    check_environment(cfg.model.device)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="live_check_"))
    work.mkdir(parents=True, exist_ok=True)
    bag = work / "bag"
    if args.bag:
        bag = Path(args.bag)
        sim_s = 0.0
    else:
        shutil.rmtree(bag, ignore_errors=True)
        say(f"simulating '{args.scenario}' seed {args.seed}, {args.duration:g} s -> {bag}")
        sim_s = simulate(bag, args.scenario, args.seed, args.duration, cfg.grid)
    topics = bag_topics(bag)
    lidar_topic = cfg.topics.lidar
    if lidar_topic not in topics:
        raise CheckError(f"{bag} has no {lidar_topic}")
    sent = lidar_stamps(bag, lidar_topic)
    exclude = sorted(t for t in topics if t.startswith("/ground_truth"))  # not on a vehicle

    env = dds_env()
    env["ROS_DOMAIN_ID"] = str(args.domain_id or os.environ.get("ROS_DOMAIN_ID") or random.SystemRandom().randint(120, 230))
    if args.discovery_range == "localhost":  # for a host whose interfaces carry no multicast
        env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    else:
        env.pop("ROS_AUTOMATIC_DISCOVERY_RANGE", None)  # LOCALHOST discovery loses large clouds (launcher.py)
    env["PYTHONUNBUFFERED"] = "1"
    for key in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", *PROFILE_VARS):  # same graph, same transports
        if env.get(key):
            os.environ[key] = env[key]
        else:
            os.environ.pop(key, None)
    say(f"ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']}, RMW={env.get('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp')}, "
        f"{dds_summary(env)}; node config {config} (grid {cfg.grid.nx}x{cfg.grid.ny}, {cfg.model.kind}/"
        f"{cfg.model.backend} on {cfg.model.device})")

    listener = Listener(cfg.topics)
    logs = {n: work / f"{n}.log" for n in ("node", "replay")}
    files = {n: p.open("w") for n, p in logs.items()}
    graph = Graph(env=env)
    result: dict = {}
    try:
        t_node = time.monotonic()
        node = graph.start("node", node_command(config, use_sim_time=True), stdout=files["node"],
                           stderr=subprocess.STDOUT)
        while READY_LINE not in logs["node"].read_text():
            if (done := graph.poll()) is not None:
                raise CheckError(f"the node exited with code {done[1]} before it was ready: "
                                 + " | ".join(logs["node"].read_text().strip().splitlines()[-3:]))
            if time.monotonic() - t_node > args.startup_timeout:
                raise CheckError(f"the node was not ready after {args.startup_timeout:g} s (log {logs['node']})")
            time.sleep(0.2)
        startup_s = time.monotonic() - t_node
        say(f"node ready after {startup_s:.1f} s; replaying {len(sent)} LiDAR scans in real time")
        cpu0, t_replay = proc_cpu_s(node.pid), time.monotonic()
        replay = graph.start("replay", replay_command(bag, rate=args.rate, wait_subscribers_s=60.0, exclude=tuple(exclude),
                                                      quiet=True), stdout=files["replay"], stderr=subprocess.STDOUT)
        bag_s = (sent[-1] - sent[0]) / NS / args.rate if sent else 0.0
        deadline = time.monotonic() + bag_s + 90.0
        while replay.poll() is None:
            if (done := graph.poll()) is not None and done[0] != "replay":
                raise CheckError(f"{done[0]} exited with code {done[1]} during the replay (log {logs[done[0]]})")
            if time.monotonic() > deadline:
                raise CheckError(f"the replay did not finish within {bag_s + 90:.0f} s (log {logs['replay']})")
            time.sleep(0.2)
        if replay.returncode != 0:
            raise CheckError(f"the replay failed with code {replay.returncode}: "
                             + " | ".join(logs["replay"].read_text().strip().splitlines()[-3:]))
        replay_s = time.monotonic() - t_replay
        cpu1 = proc_cpu_s(node.pid)
        # The last frames and two more /diagnostics periods (final counters).
        time.sleep(max(2.0, 2.5 * cfg.diagnostics.period_s))
        if (done := graph.poll()) is not None and done[0] == "node":
            raise CheckError(f"the node exited with code {done[1]} (log {logs['node']})")
        state = listener.last_values(": state")
        output = listener.last_values(": output")
        lidar = listener.last_values(": sensor lidar")
        latency = listener.last_values(": latency")
        if not state or not output:
            raise CheckError("no /diagnostics from the node reached the listener (DDS discovery between processes "
                             "failed? interfaces: " + ", ".join(n for _, n in socket.if_nameindex())
                             + "; try --discovery-range localhost)")
        if not int(lidar.get("received", 0) or 0):
            raise CheckError("the node received no LiDAR scan from the replay (DDS discovery or transport between "
                             "processes failed? try --discovery-range localhost; logs in " + str(work) + ")")
    finally:
        codes = graph.stop()
        for f in files.values():
            f.close()
        listener.close()
    node_log = logs["node"].read_text()

    # ----------------------------------------------------------------------- frames
    processed = int(output.get("frames_processed", 0))
    n_sent = len(sent)
    dropped = n_sent - processed
    got = listener.grids
    missing = [s for s in sent if s not in got]
    t0 = sent[0] if sent else 0
    seconds = int(np.ceil((sent[-1] - t0) / NS + 1e-9)) if sent else 0
    per_second = [0] * max(seconds, 1)
    for s in missing:
        per_second[min(int((s - t0) / NS), len(per_second) - 1)] += 1
    warm = [s for s in sent if (s - t0) / NS >= args.warmup_s]
    warm_missing = [s for s in missing if (s - t0) / NS >= args.warmup_s]
    frames = {
        "lidar_sent": n_sent,
        "received_by_node": int(lidar.get("received", 0)),
        "rejected_by_node": int(lidar.get("rejected", 0)),
        "processed": processed,
        "dropped_busy": int(output.get("frames_dropped_busy", 0)),
        "dropped_tf": int(output.get("frames_dropped_tf", 0)),
        "lost_transport": int(output.get("frames_lost_transport", 0)),
        "grids_seen_by_listener": len(got),
        "grid_copies_seen": listener.grid_copies,
        "dropped": dropped,
        "dropped_pct": round(100.0 * dropped / n_sent, 2) if n_sent else None,
        "not_seen_per_second_of_drive": per_second,
        "not_seen_stamps_s": [round((s - t0) / NS, 2) for s in missing],
        f"dropped_pct_after_first_{args.warmup_s:g}_s": (round(100.0 * len(warm_missing) / len(warm), 2)
                                                           if warm else None),
    }
    # ----------------------------------------------------------------------- resets
    resets = [{"t_s": round((round(float(m["t"]) * NS) - t0) / NS, 2), "what": m["what"]}
              for line in node_log.splitlines() if (m := RESET_LINE.search(line))]
    first_grid = min(got) if got else None
    self_resets = [r for r in resets
                   if first_grid is None or round(r["t_s"] * NS) + t0 > first_grid + NS // 1000]
    counts = {k.removeprefix("resets."): int(v) for k, v in state.items() if k.startswith("resets.")}
    # ----------------------------------------------------------------------- latency
    clock = sorted(listener.clock)
    e2e = [1e3 * (arr - w) for s, arr in sorted(got.items()) if (w := wall_at(clock, s, args.rate)) is not None]

    def fnum(key):
        v = latency.get(key)
        return round(float(v), 2) if v not in (None, "") else None

    stages = sorted({k.rsplit("_ms.", 1)[0] for k in latency if k.endswith("_ms.p50")})
    lat = {
        "stamp_to_listener_wall_ms": pcts(e2e),
        "first_grid_ms": round(e2e[0], 1) if e2e else None,  # includes the node's lazy start (graph capture)
        "node_stamp_to_publication_ms": {"p50": fnum("pipeline_latency_ms.p50"), "p99": fnum("pipeline_latency_ms.p99"),
                                         "clock": "node clock = sim time from /clock (quantised by its rate)"},
        "node_stages_ms": {st: {"p50": fnum(f"{st}_ms.p50"), "p99": fnum(f"{st}_ms.p99")} for st in stages
                           if st != "pipeline_latency"},
        "node_processing_ms_median": float(output.get("processing_ms.median", 0) or 0),
        "window": "the node's last 200 frames",
    }
    # ----------------------------------------------------------------------- verdict + machine
    import torch

    from ssm_perception.bench import environment

    device = torch.device(cfg.model.device if not cfg.model.device.startswith("cuda") or torch.cuda.is_available()
                          else "cpu")
    machine = environment(device) | {"hostname": os.uname().nodename, **transport_limits(),
                                     "net_interfaces": [n for _, n in socket.if_nameindex()]}
    passed = dropped <= args.max_drop_pct / 100.0 * n_sent and not self_resets
    result = {
        "format": "ssm_perception.live_check/1",
        "what": (f"perception node live over DDS: simulated drive replayed in real time (x{args.rate:g}, no lockstep) by "
                 "`ssm-perception replay`, node on sim time"),
        "config": str(config.relative_to(REPO) if config.is_relative_to(REPO) else config),
        "model": {"kind": cfg.model.kind, "backend": cfg.model.backend, "device": cfg.model.device,
                  "cuda_graph": cfg.model.cuda_graph, "grid": f"{cfg.grid.nx}x{cfg.grid.ny}",
                  "sensors": [n for n in ("lidar", "radar", "camera") if getattr(cfg.sensors, f"use_{n}")]},
        "scenario": {"preset": args.scenario, "seed": args.seed, "duration_s": args.duration,
                     "bag": str(bag), "replayed_topics": sorted(t for t in topics if t not in exclude)},
        "dds": {"ros_domain_id": env["ROS_DOMAIN_ID"], "rmw": env.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp"),
                "discovery_range": env.get("ROS_AUTOMATIC_DISCOVERY_RANGE", "SUBNET (unset)"),
                "transports": dds_summary(env)},
        "frames": frames,
        "resets": {"all": resets, "self_resets": self_resets, "counts_from_diagnostics": counts,
                   "note": "the first processed frame's route_start is expected; any later full reset is the "
                           "node resetting itself (the 'urban' preset injects no fault)"},
        "latency": lat,
        "node": {"startup_s": round(startup_s, 1), "replay_wall_s": round(replay_s, 1),
                 "busy_cores_during_replay": (round((cpu1 - cpu0) / replay_s, 2)
                                              if cpu0 is not None and cpu1 is not None and replay_s > 0 else None),
                 "exit_codes": codes},
        "target": {"max_dropped_pct": args.max_drop_pct, "self_resets": 0},
        "passed": bool(passed),
        "timings_s": {"simulate": round(sim_s, 1), "total": round(time.monotonic() - t_start, 1)},
        "machine": machine,
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": source_commit(),
    }
    result["log_tail"] = {name: p.read_text().strip().splitlines()[-15:] for name, p in logs.items()}
    if args.keep_logs:
        result["logs"] = {n: str(p) for n, p in logs.items()}
    elif not args.work:
        shutil.rmtree(work, ignore_errors=True)  # the simulated bag (~450 MB for 20 s) and the logs
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="", help="node parameter file (default: the CPU or GPU default, defaults.py)")
    ap.add_argument("--scenario", default="urban")
    ap.add_argument("--seed", type=int, default=200000)
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of drive (10 Hz LiDAR)")
    ap.add_argument("--bag", default="", help="replay this bag instead of simulating one")
    ap.add_argument("--rate", type=float, default=1.0, help="replay speed factor (1 = real time)")
    ap.add_argument("--max-drop-pct", type=float, default=1.0)
    ap.add_argument("--warmup-s", type=float, default=2.0, help="also report drops after this many seconds")
    ap.add_argument("--startup-timeout", type=float, default=240.0, help="seconds for the node to become ready")
    ap.add_argument("--domain-id", type=int, default=0, help="ROS_DOMAIN_ID (default: random)")
    ap.add_argument("--discovery-range", choices=("subnet", "localhost"), default="subnet",
                    help="ROS_AUTOMATIC_DISCOVERY_RANGE: subnet (unset, Fast DDS multicast; the default) or "
                         "localhost (for a host without multicast)")
    ap.add_argument("--work", default="", help="folder for the bag and logs (default: a temporary one, removed)")
    ap.add_argument("--keep-logs", action="store_true", help="keep the work folder and name the logs in the result")
    ap.add_argument("-o", "--output", default="results/gpu_live_check.json")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(2))
    try:
        result = run(args)
    except CheckError as exc:
        print(f"[live-check] error: {exc}", file=sys.stderr, flush=True)
        return 2
    except Exception:  # noqa: BLE001 - a crash of the check is "could not measure", not "missed"
        import traceback

        traceback.print_exc()
        print("[live-check] error: the check itself failed (traceback above)", file=sys.stderr, flush=True)
        return 2
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    fr, lat = result["frames"], result["latency"]
    say(f"{fr['lidar_sent']} scans sent, {fr['received_by_node']} received, {fr['processed']} processed: "
        f"dropped {fr['dropped']} ({fr['dropped_pct']} %; busy {fr['dropped_busy']}, TF {fr['dropped_tf']}, "
        f"transport {fr['lost_transport']}); self resets: {len(result['resets']['self_resets'])}; stamp -> grid at "
        f"the listener p50 {lat['stamp_to_listener_wall_ms']['p50']} / p99 {lat['stamp_to_listener_wall_ms']['p99']} ms")
    say(f"{'PASSED' if result['passed'] else 'MISSED'} (target: dropped <= {args.max_drop_pct:g} %, no self reset) -> {out}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
