"""Helpers for the node tests over real DDS: start the node and the replay as processes, listen from
the test process, and write small synthetic bags whose discontinuities are placed exactly.

conftest.py gives every test run its own random ROS_DOMAIN_ID; subprocesses inherit os.environ.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import yaml

from ssm_perception.config import NODE_NAME, PerceptionConfig
from ssm_perception.geometry import (
    invert_transform,
    make_transform,
    se2_matrix,
    transform_points,
)
from ssm_perception.io.pointcloud2 import LIDAR_DTYPE, array_to_cloud_fields
from ssm_perception.io.ros_convert import ns_to_stamp, stamp_to_ns
from ssm_perception.nodes.launcher import PROFILE_VARS, dds_env

ROOT = Path(__file__).resolve().parents[1]
NS = 1_000_000_000
GRID = "/perception/occupancy_grid"
DIAGNOSTICS = "/diagnostics"
T0_NS = 1_700_000_000 * NS  # bag start: a realistic epoch so stamps are never zero
SENSOR_LATENCY_NS = 30_000_000  # driver latency: a scan arrives after the TF samples around its stamp

# A small grid and the cheapest settings keep a frame well under the 10 Hz LiDAR period on 2 shared
# cores, so the tests see every frame (dropped frames would turn into time-gap resets).
TEST_OVERRIDES = {
    "grid.length_x": 40.0, "grid.length_y": 40.0, "grid.resolution": 0.5,
    "sensors.use_camera": False,
}


# Same transports as `ssm-perception launch` (the packaged Fast DDS profile, launcher.dds_env), for this
# process's listener too.
os.environ.update({k: v for k, v in dds_env().items() if k in PROFILE_VARS})


def ros_env(**extra: str) -> dict[str, str]:
    env = dds_env()
    env.setdefault("ROS_DOMAIN_ID", "42")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def write_params(path: Path, overrides: dict | None = None) -> Path:
    """A ROS 2 parameter file: the defaults with dotted ``overrides`` applied."""
    flat = PerceptionConfig().to_ros_parameters()
    flat.update(overrides or {})
    PerceptionConfig.from_ros_parameters(flat)  # fail here, not in the node, for a broken test setup
    Path(path).write_text(yaml.safe_dump({NODE_NAME: {"ros__parameters": flat}}))
    return Path(path)


class Proc:
    """A subprocess with its combined output in a file (no pipe to fill up)."""

    def __init__(self, cmd: list[str], log: Path, env: dict | None = None):
        self.log = Path(log)
        self._fh = self.log.open("w")
        self.p = subprocess.Popen(cmd, stdout=self._fh, stderr=subprocess.STDOUT, env=env or ros_env(), cwd=ROOT)

    def output(self) -> str:
        if not self._fh.closed:
            self._fh.flush()
        return self.log.read_text()

    def alive(self) -> bool:
        return self.p.poll() is None

    def wait(self, timeout: float) -> int:
        return self.p.wait(timeout=timeout)

    def stop(self, timeout: float = 10.0) -> int:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGINT)
            try:
                self.p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self._fh.close()
        return self.p.returncode


def start_node(tmp_path: Path, overrides: dict | None = None, use_sim_time: bool = True) -> Proc:
    params = write_params(tmp_path / "params.yaml", {**TEST_OVERRIDES, **(overrides or {})})
    from ssm_perception.nodes.launcher import node_command

    return Proc(node_command(params, use_sim_time=use_sim_time), tmp_path / "node.log")


@contextmanager
def running_node(tmp_path: Path, listener: Listener, overrides: dict | None = None, use_sim_time: bool = True):
    """The node started with the test settings (``start_node``), ``listener`` already listening; on
    exit the node is stopped (SIGINT) and the listener closed. Check ``node.stop()`` afterwards: it
    returns the exit status again."""
    try:
        node = start_node(tmp_path, overrides, use_sim_time)
    except BaseException:
        listener.close()
        raise
    try:
        yield node
    finally:
        node.stop()
        listener.close()


def replay(bag: Path, log: Path, timeout_s: float, **kw) -> Proc:
    """``start_replay`` and wait for it to finish; it must exit 0."""
    proc = start_replay(bag, log, **kw)
    assert proc.wait(timeout_s) == 0, proc.output()
    return proc


def start_replay(bag: Path, log: Path, rate: float = 1.0, exclude: tuple[str, ...] = (),
                 lockstep: str = "/perception/occupancy_grid", lockstep_timeout_s: float = 3.0) -> Proc:
    """Replay in lockstep with the node's grid by default: every frame is processed however loaded
    the machine is, so the tests can expect exact frames and resets."""
    from ssm_perception.nodes.launcher import replay_command

    cmd = replay_command(bag, rate=rate, wait_subscribers_s=30.0, exclude=exclude, quiet=True, lockstep=lockstep)
    return Proc(cmd + ["--lockstep-timeout", str(lockstep_timeout_s)], log)


def wait_for(pred, timeout: float, what: str, proc: Proc | None = None, period: float = 0.05):
    """Poll ``pred`` until truthy; on timeout fail with ``what`` and the process output."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        if proc is not None and not proc.alive():
            raise AssertionError(f"process died while waiting for {what}:\n{proc.output()[-4000:]}")
        time.sleep(period)
    tail = f"\n--- process output ---\n{proc.output()[-4000:]}" if proc is not None else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{tail}")


def reliable(depth: int = 500, **kw):
    """The QoS the tests listen with: reliable, deep enough that no output is lost on a loaded machine."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE, **kw)


class Listener:
    """An rclpy node in the test process, in its own context, spun by a background thread.

    ``subscribe(topic, type, qos)`` collects messages into ``self.msgs[topic]``; ``topics``
    ({topic: type}) subscribes those at once with ``reliable()``.
    """

    def __init__(self, name: str = "test_listener", topics: dict | None = None):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.msgs: dict[str, list] = defaultdict(list)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()
        for topic, msg_type in (topics or {}).items():
            self.subscribe(topic, msg_type)

    def subscribe(self, topic: str, msg_type, qos=None) -> None:
        def cb(msg, topic=topic):
            with self._lock:
                self.msgs[topic].append(msg)
        self.node.create_subscription(msg_type, topic, cb, qos if qos is not None else reliable())

    def get(self, topic: str) -> list:
        with self._lock:
            return list(self.msgs[topic])

    def stamps(self, topic: str) -> list[int]:
        """Header stamps [ns] of the messages received on ``topic``, in arrival order."""
        return [stamp_to_ns(m.header.stamp) for m in self.get(topic)]

    def call(self, srv_type, service: str, request, timeout: float = 20.0):
        """Call ``service`` and return its response; fail the test if it is absent or silent."""
        client = self.node.create_client(srv_type, service)
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                raise AssertionError(f"service {service} not available after {timeout} s")
            future = client.call_async(request)
            wait_for(future.done, timeout, f"the answer of {service}")
            return future.result()
        finally:
            self.node.destroy_client(client)

    def call_trigger(self, service: str, timeout: float = 10.0):
        from std_srvs.srv import Trigger

        return self.call(Trigger, service, Trigger.Request(), timeout)

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        self.rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=2.0)


class SensorDriver(Listener):
    """The listener plus the publishers of a LiDAR driver and a localization: LiDAR (sensor QoS),
    /tf and latched /tf_static."""

    def __init__(self, name: str, topics: dict | None = None):
        from rclpy.qos import DurabilityPolicy, qos_profile_sensor_data
        from sensor_msgs.msg import PointCloud2
        from tf2_msgs.msg import TFMessage

        super().__init__(name, topics)
        self.pub_lidar = self.node.create_publisher(PointCloud2, "/sensing/lidar/points", qos_profile_sensor_data)
        self.pub_tf = self.node.create_publisher(TFMessage, "/tf", reliable(100))
        self.pub_static = self.node.create_publisher(TFMessage, "/tf_static",
                                                     reliable(100, durability=DurabilityPolicy.TRANSIENT_LOCAL))

    def connect(self, node_proc: Proc, T_base_lidar: np.ndarray, stamp_ns: int, pubs: tuple = ()) -> None:
        """Wait until the node subscribes to every publisher, send the LiDAR mount on /tf_static
        (acknowledged), then let discovery settle: the first samples after matching are often lost."""
        from rclpy.duration import Duration
        from tf2_msgs.msg import TFMessage

        from ssm_perception.io.ros_convert import matrix_to_transform_msg

        pubs = (self.pub_lidar, self.pub_tf, self.pub_static, *pubs)
        wait_for(lambda: all(p.get_subscription_count() > 0 for p in pubs), 60, "the node's subscriptions", node_proc)
        self.pub_static.publish(TFMessage(transforms=[
            matrix_to_transform_msg(T_base_lidar, "base_link", "lidar_top", stamp_ns)]))
        self.pub_static.wait_for_all_acked(Duration(seconds=5))
        time.sleep(1.0)


def cloud_msg(arr: np.ndarray, stamp_ns: int, frame_id: str):
    """sensor_msgs/PointCloud2 (rclpy, height 1, dense) from a structured array."""
    from sensor_msgs.msg import PointCloud2, PointField

    fields, point_step, data = array_to_cloud_fields(arr)
    m = PointCloud2()
    m.header.stamp, m.header.frame_id = ns_to_stamp(stamp_ns), frame_id
    m.height, m.width = 1, len(arr)
    m.fields = [PointField(name=n, offset=o, datatype=d, count=c) for n, o, d, c in fields]
    m.point_step, m.row_step, m.is_dense = point_step, point_step * len(arr), True
    m.data = data
    return m


def scene_in_sensor(scene: np.ndarray, T_odom_sensor: np.ndarray, radius_m: float) -> np.ndarray:
    """The scene's points [N, 3] (odom) in the sensor frame, within ``radius_m`` horizontally."""
    pts = transform_points(invert_transform(T_odom_sensor), scene)
    return pts[np.linalg.norm(pts[:, :2], axis=1) < radius_m]


def lidar_array(pts: np.ndarray, rings: int = 0) -> np.ndarray:
    """A LiDAR structured array of points [N, 3], intensity 50; ring = index mod ``rings`` if given."""
    arr = np.zeros(len(pts), dtype=LIDAR_DTYPE)
    arr["x"], arr["y"], arr["z"] = pts[:, 0], pts[:, 1], pts[:, 2]
    arr["intensity"] = 50.0
    if rings:
        arr["ring"] = np.arange(len(pts)) % rings
    return arr


# ---------------------------------------------------------------------------------------- diagnostics
def diag_values(arr, name_suffix: str) -> dict[str, str] | None:
    """{key: value} of the status whose name ends with ``name_suffix`` in a DiagnosticArray."""
    for st in arr.status:
        if st.name.endswith(name_suffix):
            return {kv.key: kv.value for kv in st.values}
    return None


def diag_level(arr, name_suffix: str) -> int | None:
    for st in arr.status:
        if st.name.endswith(name_suffix):
            return st.level[0] if isinstance(st.level, bytes) else int(st.level)
    return None


def diag_flags(arr, suffix: str = ": input") -> dict[str, int]:
    """{flag: count} of a DiagnosticArray's input status ("flags.<name>" keys)."""
    return {k.split(".", 1)[1]: int(v) for k, v in (diag_values(arr, suffix) or {}).items() if k.startswith("flags.")}


def grids_counted(listener: Listener, grid_topic: str = GRID) -> bool:
    """The newest diagnostics count exactly the grids received (the node's last frame is reported)."""
    d = listener.get(DIAGNOSTICS)
    return bool(d) and int(diag_values(d[-1], ": state")["frames_processed"]) == len(listener.get(grid_topic))


def accounted_for(listener: Listener, grid_topic: str = GRID):
    """The newest DiagnosticArray once every received LiDAR frame is accounted for (processed or
    dropped), none is waiting, and a grid arrived for each processed one; else None."""
    d = listener.get(DIAGNOSTICS)
    if not d:
        return None
    out, lidar = diag_values(d[-1], ": output"), diag_values(d[-1], ": sensor lidar")
    done = int(out["frames_processed"]) + int(out["frames_dropped_busy"]) + int(out["frames_dropped_tf"])
    ok = int(out["frames_waiting"]) == 0 and done == int(lidar["received"]) and \
        len(listener.get(grid_topic)) == int(out["frames_processed"])
    return d[-1] if ok else None


def reset_counts(diags: list) -> dict[str, int]:
    """Reset counts per reason from the newest DiagnosticArray that reports any."""
    for arr in reversed(diags):
        v = diag_values(arr, ": state")
        if v is not None:
            return {k.split(".", 1)[1]: int(x) for k, x in v.items() if k.startswith("resets.")}
    return {}


# ---------------------------------------------------------------------------------------- synthetic bag
def scene_points(rng: np.random.Generator) -> np.ndarray:
    """Static structure in odom [N, 3]: two walls along the road, a parked box, ground."""
    walls = []
    for y in (-9.0, 9.0):
        x = rng.uniform(-30, 90, 6000)
        walls.append(np.stack([x, np.full_like(x, y), rng.uniform(0.0, 2.5, x.size)], 1))
    # a parked car: the surfaces of a 4.5 x 1.8 x 1.5 m box (a flat plate is no car to a trained model)
    u = rng.uniform(0.0, 1.0, (1500, 3))
    car = np.stack([20.0 + 4.5 * u[:, 0], 3.1 + 1.8 * u[:, 1], 0.3 + 1.2 * u[:, 2]], 1)
    face = rng.integers(0, 5, 1500)
    car[face == 0, 1], car[face == 1, 1] = 3.1, 4.9          # sides
    car[face == 2, 0], car[face == 3, 0] = 20.0, 24.5        # rear, front
    car[face == 4, 2] = 1.5                                  # roof
    walls.append(car)
    g = rng.uniform(-30, 90, (6000, 2))
    g[:, 1] = rng.uniform(-9, 9, 6000)
    walls.append(np.concatenate([g, np.zeros((6000, 1))], 1))
    return np.concatenate(walls).astype(np.float64)


def write_synthetic_bag(path: Path, duration_s: float = 5.0, speed_mps: float = 5.0,
                        jump_at_s: float | None = None, jump_m: float = 8.0,
                        lidar_gap_s: tuple[float, float] | None = None, tf_gap_s: tuple[float, float] | None = None,
                        duplicate_at_s: float | None = None, late_at_s: float | None = None) -> dict:
    """A small bag: /tf_static, /tf (odom -> base_link at 50 Hz), LiDAR at 10 Hz, radar at 10 Hz.

    ``jump_at_s``: from then on odom -> base_link is shifted by ``jump_m`` (a localization jump).
    ``lidar_gap_s``: (start, end) without LiDAR messages (a sensor dropout).
    ``tf_gap_s``: (start, end) without /tf messages (TF loss).
    ``duplicate_at_s``: the scan at this time is received twice; ``late_at_s``: the scan at this time
    is received 250 ms late, after two newer scans (out of order).
    Returns the LiDAR stamps [ns] written and the event times.
    """
    from ssm_perception.io import bag as b
    from ssm_perception.io.pointcloud2 import RADAR_DTYPE

    rng = np.random.default_rng(0)
    scene = scene_points(rng)
    T_base_lidar = make_transform((1.0, 0.0, 1.8))
    T_base_radar = make_transform((3.5, 0.0, 0.5))

    def pose(t_s: float) -> np.ndarray:
        x = speed_mps * t_s + (jump_m if jump_at_s is not None and t_s >= jump_at_s else 0.0)
        return se2_matrix(x, 0.0, 0.0)

    lidar_stamps = []
    with b.BagWriter(path) as bag:
        bag.add_topic("/tf_static", "tf2_msgs/msg/TFMessage", latched=True)
        bag.add_topic("/tf", "tf2_msgs/msg/TFMessage")
        bag.add_topic("/sensing/lidar/points", "sensor_msgs/msg/PointCloud2")
        bag.add_topic("/sensing/radar/points", "sensor_msgs/msg/PointCloud2")
        bag.write("/tf_static", T0_NS, b.tf_message([(T_base_lidar, T0_NS, "base_link", "lidar_top"),
                                                     (T_base_radar, T0_NS, "base_link", "radar_front")]))
        events = []  # (bag time = reception, kind, stamp)
        for k in range(int(duration_s * 50) + 1):  # /tf at 50 Hz, no latency
            t = T0_NS + k * NS // 50
            events.append((t, "tf", t))
        for k in range(int(duration_s * 10) + 1):
            t = T0_NS + k * NS // 10 + NS // 100  # scans 10 ms after a TF sample, received 30 ms later
            ts = (t - T0_NS) / NS
            late = 250_000_000 if late_at_s is not None and abs(ts - late_at_s) < 0.05 else 0
            events.append((t + SENSOR_LATENCY_NS + late, "lidar", t))
            if duplicate_at_s is not None and abs(ts - duplicate_at_s) < 0.05:
                events.append((t + SENSOR_LATENCY_NS + 1_000_000, "lidar", t))
            events.append((t + NS // 50 + SENSOR_LATENCY_NS, "radar", t + NS // 50))
        for bag_t, kind, t in sorted(events):
            ts = (t - T0_NS) / NS
            if kind == "tf":
                if tf_gap_s is None or not tf_gap_s[0] <= ts < tf_gap_s[1]:
                    bag.write("/tf", t, b.tf_message([(pose(ts), t, "odom", "base_link")]))
                continue
            if kind == "lidar" and lidar_gap_s is not None and lidar_gap_s[0] <= ts < lidar_gap_s[1]:
                continue
            pts = scene_in_sensor(scene, pose(ts) @ (T_base_lidar if kind == "lidar" else T_base_radar), 30.0)
            if kind == "lidar":
                arr = lidar_array(pts, rings=32)
                if t not in lidar_stamps:  # a duplicate is the same scan
                    lidar_stamps.append(t)
                frame = "lidar_top"
            else:
                pts = pts[pts[:, 0] > 0][:64]
                arr = np.zeros(len(pts), dtype=RADAR_DTYPE)
                arr["rcs"] = 10.0
                arr["x"], arr["y"], arr["z"] = pts[:, 0], pts[:, 1], pts[:, 2]
                frame = "radar_front"
            topic = "/sensing/lidar/points" if kind == "lidar" else "/sensing/radar/points"
            bag.write(topic, bag_t, b.pointcloud2_msg(arr, t, frame))
    return {"lidar_stamps": lidar_stamps}


def python() -> str:
    return sys.executable
