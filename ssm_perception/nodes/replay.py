"""`ssm-perception replay BAG`: publish a rosbag2 onto live topics with /clock (no `ros2 bag` here).

The bag's CDR bytes are published as they are (rclpy publishes serialized messages when given
``bytes``), so nothing is deserialized on the way and every recorded type works, ours included.
QoS follows the conventions the node expects: sensor streams best effort (REP-2003), /tf_static
latched (transient local; `ros2 bag play` needs an override file for that), the rest reliable.
/clock carries the bag time of each message, so nodes with ``use_sim_time`` run on bag time; a
loop makes the clock jump backwards, which the perception node answers with a 'time_backwards' reset.
"""

from __future__ import annotations

import importlib
import sys
import threading
import time
from pathlib import Path

from ssm_perception.config import UserError

SENSOR_TYPES = {"sensor_msgs/msg/PointCloud2", "sensor_msgs/msg/Image", "sensor_msgs/msg/CameraInfo",
                "sensor_msgs/msg/CompressedImage", "sensor_msgs/msg/Imu", "sensor_msgs/msg/LaserScan"}


class ReplayError(UserError, RuntimeError):
    """A bag that cannot be replayed (missing, unreadable, or with a type this machine lacks)."""


def ros_type(msgtype: str):
    """The rclpy message class of 'pkg/msg/Name' (rosidl_runtime_py is not on pip, so by import)."""
    pkg, kind, name = msgtype.split("/")
    try:
        return getattr(importlib.import_module(f"{pkg}.{kind}"), name)
    except (ImportError, AttributeError) as exc:
        raise ReplayError(f"message type {msgtype} is not installed for rclpy ({exc})") from None


def qos_for(topic: str, msgtype: str):
    from rclpy.qos import (
        DurabilityPolicy,
        QoSProfile,
        ReliabilityPolicy,
        qos_profile_sensor_data,
    )

    if topic == "/tf_static":
        return QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.TRANSIENT_LOCAL)
    if msgtype in SENSOR_TYPES:
        return qos_profile_sensor_data
    if topic == "/tf":
        return QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    return QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


class BagPlayer:
    """Publishes a bag in bag-time order at ``rate`` x real time, with /clock; optionally in a loop.

    ``exclude``: topics not to publish (fault injection: e.g. drop /tf). Runs in the caller's thread;
    an executor thread serves the pause/resume services.
    """

    def __init__(self, node, bag: str | Path, rate: float = 1.0, loop: bool = False, start_paused: bool = False,
                 exclude: tuple[str, ...] = (), clock: bool = True):
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from rosbags.rosbag2 import Reader
        from rosgraph_msgs.msg import Clock
        from std_srvs.srv import Trigger

        if rate <= 0:
            raise ReplayError(f"--rate must be > 0, got {rate}")
        self.node, self.rate, self.loop = node, float(rate), loop
        self.bag = Path(bag)
        if not (self.bag / "metadata.yaml").is_file():
            raise ReplayError(f"{self.bag}: not a rosbag2 directory (no metadata.yaml)")
        self._reader_cls = Reader
        with Reader(self.bag) as reader:
            self.connections = [c for c in reader.connections if c.topic not in set(exclude)]
            self.start_ns, self.end_ns = reader.start_time, reader.end_time
        self.pubs = {}
        for c in self.connections:
            if c.topic not in self.pubs:
                self.pubs[c.topic] = node.create_publisher(ros_type(c.msgtype), c.topic, qos_for(c.topic, c.msgtype))
        # rclcpp's ClockQoS: best effort, depth 1 (what rclpy's TimeSource subscribes with).
        self.clock_pub = node.create_publisher(Clock, "/clock", QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)) if clock else None
        self._clock_msg = Clock
        self._running = threading.Event()
        if not start_paused:
            self._running.set()
        self._stop = threading.Event()
        node.create_service(Trigger, "~/pause", self._srv(False))
        node.create_service(Trigger, "~/resume", self._srv(True))
        self.published = 0
        self.loops = 0
        self._lockstep: tuple[str, float] | None = None  # (trigger topic, timeout)
        self._outputs = threading.Condition()
        self._n_outputs = 0
        self.lockstep_timeouts = 0

    def enable_lockstep(self, trigger: str, output: str, timeout_s: float = 3.0, discovery_s: float = 30.0) -> None:
        """After each message on ``trigger``, hold bag time until a message arrives on ``output``.

        Deterministic replays on loaded machines (tests, evaluation): every frame is processed,
        whatever the CPU. Bag time (and /clock) stands still while waiting, so the node sees the
        same stamps and gaps as in real time; only wall time stretches.
        """
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        if trigger not in self.pubs:
            raise ReplayError(f"lockstep trigger {trigger} is not a topic of the bag")
        deadline = time.monotonic() + discovery_s
        while (msgtype := dict(self.node.get_topic_names_and_types()).get(output)) is None:
            if self._stop.is_set():
                return
            if time.monotonic() > deadline:
                raise ReplayError(f"lockstep output {output} has no publisher after {discovery_s:g} s")
            time.sleep(0.1)

        def on_output(_raw) -> None:
            with self._outputs:
                self._n_outputs += 1
                self._outputs.notify_all()

        self.node.create_subscription(ros_type(msgtype[0]), output, on_output,
                                      QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE), raw=True)
        self._lockstep = (trigger, timeout_s)

    def _wait_output(self, before: int, timeout_s: float) -> None:
        with self._outputs:
            if not self._outputs.wait_for(lambda: self._n_outputs > before or self._stop.is_set(), timeout_s):
                self.lockstep_timeouts += 1

    def _srv(self, run: bool):
        def cb(request, response):
            (self._running.set if run else self._running.clear)()
            response.success, response.message = True, "playing" if run else "paused"
            return response
        return cb

    def resume(self) -> None:
        self._running.set()

    def stop(self) -> None:
        self._stop.set()
        self._running.set()
        with self._outputs:  # a lockstep wait ends now, not at its timeout
            self._outputs.notify_all()

    def wait_for_subscribers(self, topics, timeout_s: float, settle_s: float = 0.5) -> bool:
        """Block until one of ``topics`` has a subscriber and so do /tf and /tf_static (a frame without
        its transforms is useless), then ``settle_s`` more; False if that did not happen in ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        pubs = [self.pubs[t] for t in topics if t in self.pubs]
        tf = [self.pubs[t] for t in ("/tf", "/tf_static") if t in self.pubs]
        while time.monotonic() < deadline and not self._stop.is_set():
            if any(p.get_subscription_count() > 0 for p in pubs) and all(p.get_subscription_count() > 0 for p in tf):
                self._stop.wait(settle_s)
                return True
            time.sleep(0.05)
        return False

    def play(self, progress: bool = True) -> int:
        """Publish until the end (or forever with ``loop``); returns the number of messages published."""
        from tqdm import tqdm

        duration_s = max((self.end_ns - self.start_ns) * 1e-9, 1e-9)
        while not self._stop.is_set():
            bar = tqdm(total=round(duration_s, 1), unit="s", desc=f"replay {self.bag.name} x{self.rate:g}",
                       disable=not progress, file=sys.stderr, leave=False,
                       bar_format="{desc}: {n:.1f}/{total:.1f} s bag time |{bar}| {elapsed}")
            self._play_once(bar)
            bar.close()
            self.loops += 1
            if not self.loop:
                break
        return self.published

    def _play_once(self, bar) -> None:
        from rclpy.duration import Duration

        self._running.wait()
        wall0, bag0 = time.monotonic(), None
        last_clock = None
        with self._reader_cls(self.bag) as reader:
            conns = [c for c in reader.connections if c.topic in self.pubs]
            for conn, t_ns, raw in reader.messages(connections=conns):
                if self._stop.is_set():
                    return
                if bag0 is None:
                    bag0 = t_ns
                if not self._running.is_set():  # paused: shift the wall-time origin by the pause
                    paused_at = time.monotonic()
                    self._running.wait()
                    wall0 += time.monotonic() - paused_at
                delay = wall0 + (t_ns - bag0) * 1e-9 / self.rate - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                if self.clock_pub is not None and t_ns != last_clock:
                    msg = self._clock_msg()
                    msg.clock.sec, msg.clock.nanosec = divmod(int(t_ns), 1_000_000_000)
                    self.clock_pub.publish(msg)
                    last_clock = t_ns
                lock = self._lockstep is not None and conn.topic == self._lockstep[0]
                before = self._n_outputs
                pub = self.pubs[conn.topic]
                pub.publish(bytes(raw))
                self.published += 1
                if conn.topic == "/tf_static":
                    # Latched transforms must be in place before the scans that need them: wait until
                    # every matched reader acknowledged them (reliable QoS), at most a second.
                    pub.wait_for_all_acked(Duration(seconds=1))
                if lock:  # hold bag time until the node answered this frame
                    waited_from = time.monotonic()
                    self._wait_output(before, self._lockstep[1])
                    wall0 += time.monotonic() - waited_from
                bar.n = round((t_ns - self.start_ns) * 1e-9, 1)
                if self.published % 20 == 0:
                    bar.refresh()


def run_replay(bag: str, rate: float = 1.0, loop: bool = False, start_paused: bool = False,
               wait_subscribers_s: float = 0.0, exclude: tuple[str, ...] = (), progress: bool = True,
               lockstep: str = "", lockstep_trigger: str = "/sensing/lidar/points", lockstep_timeout_s: float = 3.0) -> int:
    """Entry point of `ssm-perception replay`; returns the process exit code."""
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.signals import SignalHandlerOptions

    from ssm_perception.nodes.shutdown import (
        ignore_signals_while_exiting,
        stop_on_signals,
    )

    # SIGINT/SIGTERM stop the player (nodes/shutdown.py); the context goes down after the node.
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    stopped = threading.Event()
    holder: list[BagPlayer] = []
    stop_on_signals(stopped, "replay", also=lambda: holder and holder[0].stop())
    node = Node("ssm_perception_replay")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spin = threading.Thread(target=executor.spin, daemon=True)
    try:
        player = BagPlayer(node, bag, rate=rate, loop=loop, start_paused=start_paused, exclude=exclude)
        holder.append(player)
        if stopped.is_set():
            player.stop()
        spin.start()
        topics = ", ".join(sorted(player.pubs))
        print(f"[replay] {player.bag}: {len(player.pubs)} topics ({topics}) + /clock, "
              f"{(player.end_ns - player.start_ns) * 1e-9:.1f} s at x{rate:g}{' in a loop' if loop else ''}",
              file=sys.stderr, flush=True)
        if wait_subscribers_s > 0:
            sensors = [c.topic for c in player.connections if c.msgtype in SENSOR_TYPES]
            if not player.wait_for_subscribers(sensors, wait_subscribers_s):
                print(f"[replay] no subscriber on {', '.join(sensors)} after {wait_subscribers_s:g} s; playing anyway",
                      file=sys.stderr, flush=True)
        if lockstep:
            player.enable_lockstep(lockstep_trigger, lockstep, lockstep_timeout_s)
            print(f"[replay] lockstep: each {lockstep_trigger} message waits for {lockstep}", file=sys.stderr,
                  flush=True)
        if start_paused:
            print("[replay] paused: call the ~/resume service (std_srvs/Trigger) or press Enter", file=sys.stderr,
                  flush=True)
            if sys.stdin is not None and sys.stdin.isatty():
                threading.Thread(target=lambda: (sys.stdin.readline(), player.resume()), daemon=True).start()
        n = player.play(progress=progress)
        timeouts = f", {player.lockstep_timeouts} lockstep timeouts" if lockstep else ""
        how = "stopped by a signal" if stopped.is_set() else "done"
        print(f"[replay] {how}: {n} messages in {player.loops} pass(es){timeouts}", file=sys.stderr, flush=True)
        # Give best-effort subscribers a moment to drain the last messages before the publishers go.
        stopped.wait(0.5)
        return 0
    except ReplayError as exc:
        print(f"[replay] error: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        return 0
    finally:
        executor.shutdown(timeout_sec=1.0)
        if spin.is_alive():
            spin.join(timeout=2.0)
        node.destroy_node()
        rclpy.try_shutdown()
        ignore_signals_while_exiting()


def register(app) -> None:
    import typer

    from ssm_perception.cli_errors import finite, topic_name

    @app.command("replay")
    def replay(
        bag: str = typer.Argument(..., help="rosbag2 directory (mcap or sqlite3)"),
        rate: float = typer.Option(1.0, "--rate", "-r", callback=finite(gt=0, le=1e6), help="playback speed factor"),
        loop: bool = typer.Option(False, "--loop", "-l", help="start again at the end (time jumps back)"),
        start_paused: bool = typer.Option(False, "--start-paused", "-p", help="wait for ~/resume or Enter"),
        wait_subscribers: float = typer.Option(
            0.0, "--wait-subscribers", callback=finite(ge=0, le=86400),
            help="wait up to this many seconds for a subscriber on a sensor topic"),
        exclude: list[str] | None = typer.Option(None, "--exclude", callback=topic_name,  # noqa: B008 - typer idiom
                                                 help="topic not to publish (repeatable)"),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
        lockstep: str = typer.Option(
            "", "--lockstep", callback=topic_name,
            help="output topic to wait for after each trigger message (deterministic replay)"),
        lockstep_trigger: str = typer.Option("/sensing/lidar/points", "--lockstep-trigger", callback=topic_name),
        lockstep_timeout: float = typer.Option(
            3.0, "--lockstep-timeout", callback=finite(gt=0, le=86400),
            help="seconds to wait for the output of one frame (a dropped frame has none)"),
    ) -> None:
        """Publish a rosbag2 onto live ROS 2 topics with /clock (use_sim_time for the nodes)."""
        from ssm_perception.io.bag import check_bag

        # Before ROS starts: a missing, truncated or corrupted bag, or one with ROS 1 message
        # definitions, is one line and exit code 2 (BagError through cli_errors.CliGroup).
        check_bag(bag)
        raise typer.Exit(run_replay(bag, rate, loop, start_paused, wait_subscribers, tuple(exclude or ()), not quiet,
                                    lockstep, lockstep_trigger, lockstep_timeout))
