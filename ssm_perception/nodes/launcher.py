"""`ssm-perception launch [CONFIG] [--bag BAG]`: the node graph without `ros2 launch`.

Where ROS 2 is installed, `ros2 launch ssm_perception ssm_perception.launch.py` does the same from
launch/. Here (pip wheels, no launch_ros) the graph is a few subprocesses run with this interpreter:
the perception node with the YAML and, with ``--bag``, the replay with /clock and the node on sim
time. SIGINT/SIGTERM are forwarded; the first process that fails stops the others.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from ssm_perception.config import ConfigError, PerceptionConfig
from ssm_perception.weights import CheckpointError, check_model_weights


def node_command(config: str | Path, use_sim_time: bool = False) -> list[str]:
    return [sys.executable, "-m", "ssm_perception.nodes.perception_node", "--ros-args",
            "--params-file", str(config), "-p", f"use_sim_time:={'true' if use_sim_time else 'false'}"]


def replay_command(bag: str | Path, rate: float = 1.0, loop: bool = False, wait_subscribers_s: float = 30.0,
                   exclude: tuple[str, ...] = (), quiet: bool = False, lockstep: str = "") -> list[str]:
    cmd = [sys.executable, "-m", "ssm_perception.cli", "replay", str(bag), "--rate", str(rate),
           "--wait-subscribers", str(wait_subscribers_s)]
    cmd += ["--lockstep", lockstep] if lockstep else []
    cmd += ["--loop"] if loop else []
    cmd += ["--quiet"] if quiet else []
    for topic in exclude:
        cmd += ["--exclude", topic]
    return cmd


LOCALHOST_WARNING = ("ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST is set: with it Fast DDS ignores "
                     "FASTDDS_BUILTIN_TRANSPORTS and loses large point clouds and images between processes")
PROFILE_VARS = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_BUILTIN_TRANSPORTS")


def dds_profile_path() -> Path | None:
    """config/fastdds_profile.xml: the source tree first, then the installed share directory."""
    from ssm_perception.nodes.perception_node import default_config_path

    cfg = default_config_path()
    if cfg is None:
        return None
    profile = cfg.parent / "fastdds_profile.xml"
    return profile if profile.is_file() else None


def dds_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for the graph's processes: the packaged Fast DDS profile
    (config/fastdds_profile.xml) unless the environment already chooses the transports.

    Measured (scripts/dds_transport_candidates.py, results/dds_transport_candidates.json): Fast DDS's
    default transports lose most 1-2 MB clouds between processes on one host; LARGE_DATA delivers
    them but a participant on default settings never discovers it (RViz, a planner: no node, no
    topic, no service); the profile keeps the default transports (so every peer discovers and reads
    the node) with a 16 MiB shared-memory segment and 4 MiB socket buffers, and delivered every cloud.
    """
    env = dict(os.environ if env is None else env)
    if not any(env.get(v) for v in PROFILE_VARS) and (profile := dds_profile_path()) is not None:
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(profile)
    return env


def dds_summary(env: dict[str, str]) -> str:
    """What decides the transports, for the start-up line."""
    chosen = [f"{v}={env[v]}" for v in PROFILE_VARS if env.get(v)]
    return ", ".join(chosen) or "Fast DDS defaults (large clouds will be lost: see README)"


@dataclass
class Graph:
    """A set of named subprocesses started together and stopped together (SIGINT, then SIGKILL)."""

    env: dict[str, str] = field(default_factory=dds_env)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, name: str, cmd: list[str], **popen) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, env=self.env, **popen)
        self.procs[name] = proc
        return proc

    def poll(self) -> tuple[str, int] | None:
        """(name, return code) of the first process that has exited, else None."""
        for name, p in self.procs.items():
            if p.poll() is not None:
                return name, p.returncode
        return None

    def signal(self, sig: int) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(sig)

    def stop(self, timeout_s: float = 10.0) -> dict[str, int]:
        self.signal(signal.SIGINT)
        deadline = time.monotonic() + timeout_s
        for p in self.procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        return {n: p.returncode for n, p in self.procs.items()}

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def run_launch(config: str, bag: str | None, rate: float, loop: bool, exit_after_replay: bool) -> int:
    from ssm_perception.nodes.perception_node import default_config_path

    config_path = Path(config) if config else default_config_path()
    if config_path is None:
        print("[launch] no configuration given and no default parameter file (config/ssm_perception_cpu.yaml / _gpu.yaml) found", file=sys.stderr)
        return 2
    try:
        cfg = PerceptionConfig.load(config_path)  # schema and device: what the node would refuse
        check_model_weights(cfg)  # and its weights (present, intact, trusted, matching the model fields)
    except (ConfigError, CheckpointError) as exc:
        print(f"[launch] invalid configuration: {exc}", file=sys.stderr)
        return 2
    t = cfg.topics
    graph = Graph()
    print(f"[launch] ROS_DOMAIN_ID={graph.env.get('ROS_DOMAIN_ID', '0')}, "
          f"RMW={graph.env.get('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp')}, "
          f"{dds_summary(graph.env)}")
    print(f"[launch] perception_node with {config_path}{' (use_sim_time)' if bag else ''}")
    print(f"[launch]   inputs : {t.lidar}, {t.radar}, {t.camera_image}, {t.camera_info}, /tf, /tf_static")
    print(f"[launch]   outputs: {t.occupancy_grid} (OccupancyGrid), {t.tracks} (TrackArray), {t.markers} "
          f"(MarkerArray), {t.diagnostics} (DiagnosticArray); reset service /ssm_perception/reset")
    graph.start("perception_node", node_command(config_path, use_sim_time=bool(bag)))
    if bag:
        print(f"[launch] replay {bag} at x{rate:g}{' in a loop' if loop else ''}, with /clock")
        graph.start("replay", replay_command(bag, rate, loop))
    if graph.env.get("ROS_AUTOMATIC_DISCOVERY_RANGE", "").upper() == "LOCALHOST" and \
            graph.env.get("FASTDDS_BUILTIN_TRANSPORTS"):
        print(f"[launch] warning: {LOCALHOST_WARNING}", file=sys.stderr)
    print("[launch] Ctrl-C stops everything")

    stopping = []

    def forward(signum, frame):
        stopping.append(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    code = 0
    try:
        while not stopping:
            done = graph.poll()
            if done is not None:
                name, rc = done
                if name == "replay" and rc == 0 and not exit_after_replay:
                    print("[launch] replay finished; the node keeps running (Ctrl-C to stop)")
                    graph.procs.pop("replay")
                    continue
                if rc != 0:
                    print(f"[launch] {name} exited with code {rc}; stopping the graph", file=sys.stderr)
                    code = rc
                break
            time.sleep(0.2)
    finally:
        codes = graph.stop()
        for s, h in old.items():
            signal.signal(s, h)
    print("[launch] stopped: " + ", ".join(f"{n} -> {c}" for n, c in codes.items()))
    return code


def register(app) -> None:
    import typer

    from ssm_perception.cli_errors import finite

    @app.command("launch")
    def launch(
        config: str = typer.Argument("", help="ROS 2 parameter YAML; empty = the CPU or GPU default (config/ssm_perception_cpu.yaml / _gpu.yaml)"),
        bag: str = typer.Option("", "--bag", help="also replay this rosbag2 (the node then runs on sim time)"),
        rate: float = typer.Option(1.0, "--rate", "-r", callback=finite(gt=0, le=1e6), help="replay speed factor"),
        loop: bool = typer.Option(False, "--loop", "-l", help="replay in a loop"),
        exit_after_replay: bool = typer.Option(False, "--exit-after-replay", help="stop when the replay ends"),
    ) -> None:
        """Start the perception node (and a replay) where `ros2 launch` is not installed."""
        if bag:
            from ssm_perception.io.bag import check_bag

            check_bag(bag)  # a bad bag is one line and exit code 2 before anything starts
        raise typer.Exit(run_launch(config, bag or None, rate, loop, exit_after_replay))
