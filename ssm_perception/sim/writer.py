"""Stream a scenario into a rosbag2 (mcap or sqlite3): every sensor message at its own rate and
latency, TF, odometry, zone, and the ground-truth topics. Messages are written in bag-time order
(receive time = stamp + latency (+ jitter / out-of-order delay)), so adversities that reorder
stamps show up exactly as a recorder would have seen them.
"""

from __future__ import annotations

import heapq
import json
import math
from pathlib import Path

import numpy as np

from ssm_perception import __version__
from ssm_perception.config import TopicsConfig
from ssm_perception.io import bag as B
from ssm_perception.sim.scenario import Scenario

GT_OCCUPANCY = "/ground_truth/occupancy"
GT_DYNAMIC = "/ground_truth/dynamic"
GT_VISIBILITY = "/ground_truth/visibility"
GT_OBJECTS = "/ground_truth/objects"
GT_EVENTS = "/ground_truth/events"
GT_SCENARIO = "/ground_truth/scenario"
GT_EGO = "/ground_truth/ego_pose"
ZONE = "/vehicle/zone"
ODOM = "/odom"


def bag_topic_types(topics: TopicsConfig | None = None) -> dict[str, str]:
    """Every topic a simulated bag can hold, with its type."""
    t = topics or TopicsConfig()
    return {
        t.lidar: "sensor_msgs/msg/PointCloud2",
        t.radar: "sensor_msgs/msg/PointCloud2",
        t.camera_image: "sensor_msgs/msg/Image",
        t.camera_info: "sensor_msgs/msg/CameraInfo",
        "/tf": "tf2_msgs/msg/TFMessage",
        "/tf_static": "tf2_msgs/msg/TFMessage",
        ODOM: "nav_msgs/msg/Odometry",
        ZONE: "std_msgs/msg/String",
        GT_OCCUPANCY: "nav_msgs/msg/OccupancyGrid",
        GT_DYNAMIC: "nav_msgs/msg/OccupancyGrid",
        GT_VISIBILITY: "nav_msgs/msg/OccupancyGrid",
        GT_OBJECTS: "ssm_perception/msg/TrackArray",
        GT_EVENTS: "std_msgs/msg/String",
        GT_SCENARIO: "std_msgs/msg/String",
        GT_EGO: "nav_msgs/msg/Odometry",
    }


def write_bag(scenario: Scenario, path: str | Path, storage: str = "mcap", progress: bool = True,
              topics: TopicsConfig | None = None) -> Path:
    """Write the whole scenario to a new bag directory at ``path``; nothing is left on failure."""
    from tqdm import tqdm

    sc, cfg = scenario, scenario.config
    topics = topics or TopicsConfig()
    path = Path(path)
    frames = {"map": "map", "odom": "odom", "base": "base_link"}
    types = bag_topic_types(topics)
    # timeline of nominal times: sensors, TF/odometry ticks, zone changes and events
    items: list[tuple[float, int, str, int]] = []
    for sensor in ("lidar", "radar", "camera"):
        if getattr(cfg, sensor).enabled:
            items += [(k / getattr(cfg, sensor).rate_hz, 1, sensor, k) for k in range(sc.count(sensor))]
    n_tf = math.ceil(cfg.duration_s * cfg.tf_rate_hz - 1e-9)
    items += [(k / cfg.tf_rate_hz, 0, "tf", k) for k in range(n_tf)]
    items.sort()
    max_jitter = max([a.jitter_s for a in cfg.adversities if a.type == "stamp_jitter"] + [0.0])
    slack_ns = math.ceil(max_jitter * 1e9) + 1

    heap: list[tuple[int, int, str, object]] = []
    seq = 0

    def push(bag_ns: int, topic: str, msg) -> None:
        nonlocal seq
        heapq.heappush(heap, (int(bag_ns), seq, topic, msg))
        seq += 1

    custom = {"ssm_perception.scenario": cfg.to_yaml(), "ssm_perception.seed": str(cfg.seed),
              "ssm_perception.version": __version__}
    with B.BagWriter(path, storage=storage, custom_data=custom) as bag:
        for topic, msgtype in types.items():
            bag.add_topic(topic, msgtype, latched=topic in ("/tf_static", GT_SCENARIO))

        def flush(before_ns: int | None) -> None:
            while heap and (before_ns is None or heap[0][0] < before_ns):
                bag_ns, _, topic, msg = heapq.heappop(heap)
                bag.write(topic, bag_ns, msg)

        t0 = sc.start_ns
        push(t0, GT_SCENARIO, B.string_msg(cfg.to_yaml()))
        push(t0, "/tf_static", B.tf_message([(T, t0, frames["base"], fid) for fid, T in sc.T_base_sensor.items()]))
        push(t0, ZONE, B.string_msg(cfg.zone))
        for ev in sc.events():
            push(ev["start_ns"], GT_EVENTS, B.string_msg(json.dumps(ev, sort_keys=True)))
            if ev["type"] == "zone_change":
                push(ev["start_ns"], ZONE, B.string_msg(ev["zone"]))
        bar = tqdm(total=len(items), unit="msg", desc=f"simulate {cfg.name}", disable=not progress, leave=False)
        for t_nom, _, kind, k in items:
            flush(sc.ns(t_nom) - slack_ns)
            bar.update(1)
            if kind == "tf":
                if sc.in_time_gap(t_nom):
                    continue
                stamp = sc.ns(t_nom)
                T_ob, T_mo = sc.T_odom_base(t_nom), sc.T_map_odom(t_nom)
                push(stamp, "/tf", B.tf_message([(T_mo, stamp, frames["map"], frames["odom"]),
                                                 (T_ob, stamp, frames["odom"], frames["base"])]))
                v, yaw_rate = sc.ego_velocity_at(t_nom)
                push(stamp, ODOM, B.odometry_msg(T_ob, (v * (1 + cfg.odom_scale_error), 0.0, 0.0),
                                                 yaw_rate + cfg.odom_yaw_rate_bias, stamp, frames["odom"],
                                                 frames["base"]))
                continue
            m = sc.measurement(kind, k)
            if m is None:
                continue
            scfg = getattr(cfg, kind)
            if kind == "radar":
                push(m.bag_ns, topics.radar, B.pointcloud2_msg(sc.radar_scan(m).points, m.stamp_ns, scfg.frame_id))
            elif kind == "camera":
                cam = sc.camera_frame(m)
                push(m.bag_ns, topics.camera_image, B.image_msg(cam.image, m.stamp_ns, scfg.frame_id))
                push(m.bag_ns, topics.camera_info, B.camera_info_msg(scfg.width, scfg.height, cam.K, cam.D, cam.P,
                                                                     m.stamp_ns, scfg.frame_id))
            else:
                fr = sc.lidar_frame(m, with_others=False)
                push(m.bag_ns, topics.lidar, B.pointcloud2_msg(fr.lidar, m.stamp_ns, scfg.frame_id))
                _push_ground_truth(push, sc, fr, frames)
        bar.close()
        flush(None)
    return path


def _push_ground_truth(push, sc: Scenario, fr, frames) -> None:
    g = sc.grid
    s = fr.stamp_ns
    for topic, grid in ((GT_OCCUPANCY, fr.occupied), (GT_DYNAMIC, fr.dynamic), (GT_VISIBILITY, fr.visible)):
        push(s, topic, B.occupancy_grid_msg(np.where(grid, 100, 0).astype(np.int8), g.resolution, (g.x_min, g.y_min),
                                            s, frames["base"]))
    keys = ("id", "cls", "x", "y", "z", "yaw", "l", "w", "h", "vx", "vy", "yaw_rate")
    # status: CONFIRMED (1) when at least one LiDAR return hit the object in this scan, COASTING (2)
    # when it is fully hidden or out of range (evaluation can ignore unobservable objects)
    objs = [{**{k: o[k].item() for k in keys}, "status": 1 if o["num_points"] > 0 else 2} for o in fr.objects_odom]
    push(s, GT_OBJECTS, B.track_array_msg(objs, s, frames["odom"]))
    T_mb = fr.T_world_base
    v, yaw_rate = sc.ego_velocity_at(fr.t_s)
    push(s, GT_EGO, B.odometry_msg(T_mb, (v, 0.0, 0.0), yaw_rate, s, frames["map"], frames["base"]))
