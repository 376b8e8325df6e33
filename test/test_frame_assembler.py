"""The frame assembler: pairing, TF, ego twist and motion compensation to the LiDAR stamp.

Acceptance (issue 16): driving at 15 m/s, a radar return and a camera-visible marking on a static
wall, both measured 0.1 s before the LiDAR stamp, land on the wall after compensation.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ssm_perception.bev.camera import CAMERA_CHANNELS
from ssm_perception.bev.features import channel_index, encode_frame
from ssm_perception.bev.grid import BevGrid
from ssm_perception.config import GridConfig, PerceptionConfig
from ssm_perception.frame_assembler import (
    FrameAssembler,
    Stamped,
    ego_twist,
    radar_over_ground,
    twist_motion,
)
from ssm_perception.geometry import se2_matrix
from ssm_perception.io.pointcloud2 import LIDAR_DTYPE, RADAR_DTYPE
from ssm_perception.tf_buffer import TfBuffer

NS = 1_000_000_000
T0 = 100 * NS  # epoch of the test drive
SPEED = 15.0  # m/s along odom x
WALL_X = 25.0  # static wall (and the marking at its foot) at odom x = 25 m
MARK = (24.0, 26.0)  # odom x range of the bright ground marking in front of the wall
K = np.array([[400.0, 0.0, 320.0], [0.0, 400.0, 240.0], [0.0, 0.0, 1.0]])
RADAR_MOUNT = se2_matrix(3.5, 0.0, 0.0)
CAMERA_MOUNT = np.eye(4)
CAMERA_MOUNT[:3, :3] = [[0, 0, 1], [-1, 0, 0], [0, -1, 0]]  # optical: z forward, x right, y down
CAMERA_MOUNT[:3, 3] = (1.0, 0.0, 1.5)


def ego_x(stamp_ns: int) -> float:
    return SPEED * (stamp_ns - T0) / NS


def drive(tf: TfBuffer | None = None) -> TfBuffer:
    tf = tf or TfBuffer(10.0)
    tf.set_transform(RADAR_MOUNT, "base_link", "radar_front", 0, static=True)
    tf.set_transform(CAMERA_MOUNT, "base_link", "camera_optical", 0, static=True)
    tf.set_transform(se2_matrix(0.0, 0.0, 0.0), "map", "odom", T0, static=True)
    for k in range(25):
        s = T0 + k * 50_000_000
        tf.set_transform(se2_matrix(ego_x(s), 0.0, 0.0), "odom", "base_link", s)
    return tf


def lidar_cloud() -> np.ndarray:
    pts = np.zeros(3, dtype=LIDAR_DTYPE)
    pts["x"], pts["y"], pts["z"] = [5.0, 6.0, 7.0], 0.0, 0.5
    return pts


def wall_radar(stamp_ns: int) -> np.ndarray:
    """One return from the wall straight ahead, seen from the radar at ``stamp_ns``; the radar
    measures the closing speed relative to itself (-15 m/s for a static wall)."""
    pts = np.zeros(1, dtype=RADAR_DTYPE)
    pts["x"] = WALL_X - (ego_x(stamp_ns) + RADAR_MOUNT[0, 3])
    pts["z"] = 0.0
    pts["radial_velocity"] = -SPEED
    pts["rcs"] = 10.0
    return pts


def marking_image(stamp_ns: int) -> np.ndarray:
    """640x480 image from the camera at ``stamp_ns``: flat dark ground, a bright marking on the
    ground at odom x in MARK (pinhole model, exact ray/ground intersection per pixel)."""
    h, w = 480, 640
    _, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    dy = (v - K[1, 2]) / K[1, 1]  # optical ray (., dy, 1): its ground hit depends on dy only
    with np.errstate(divide="ignore"):
        s = np.where(dy > 0, CAMERA_MOUNT[2, 3] / dy, np.inf)  # ground (base z = 0) along the ray
    odom_x = ego_x(stamp_ns) + CAMERA_MOUNT[0, 3] + s  # optical z is base x
    img = np.full((h, w, 3), 20, np.uint8)
    img[(odom_x >= MARK[0]) & (odom_x <= MARK[1])] = 250
    return img


def assembler_at(t_lidar: int, t_other: int) -> tuple[FrameAssembler, object]:
    cfg = PerceptionConfig()
    asm = FrameAssembler(cfg, drive())
    prev = asm.assemble(t_lidar - 100_000_000, lidar_cloud(), "base_link")  # the frame before: gives the twist
    assert prev.inputs is not None and not prev.problems
    asm.radar = Stamped(wall_radar(t_other), "radar_front", t_other)
    asm.image = Stamped(marking_image(t_other), "camera_optical", t_other)
    asm.camera_info = SimpleNamespace(K=K)
    out = asm.assemble(t_lidar, lidar_cloud(), "base_link")
    assert not out.problems, out.problems
    return asm, out.inputs


def test_radar_and_camera_land_on_the_static_wall_at_15_mps_with_0_1_s_offset():
    t_lidar = T0 + 1 * NS
    t_other = t_lidar - 100_000_000  # radar and camera 0.1 s older than the LiDAR
    _, inp = assembler_at(t_lidar, t_other)
    wall_base = WALL_X - ego_x(t_lidar)  # where the wall is in base_link at the LiDAR stamp: 10 m
    assert inp.ego_twist == pytest.approx((SPEED, 0.0, 0.0), abs=1e-6)

    # radar: the return is on the wall (1.5 m off without compensation) and static over ground
    p = inp.T_base_radar @ np.array([float(inp.radar["x"][0]), 0.0, 0.0, 1.0])
    assert p[0] == pytest.approx(wall_base, abs=0.05)
    assert inp.radar_over_ground and float(inp.radar["radial_velocity"][0]) == pytest.approx(0.0, abs=1e-3)
    uncompensated = RADAR_MOUNT @ np.array([float(inp.radar["x"][0]), 0.0, 0.0, 1.0])
    assert uncompensated[0] - wall_base == pytest.approx(1.5, abs=0.05)  # the error the assembler removes

    # through the encoders: radar hit in the wall's cell, camera marking on the wall's cell
    grid_cfg = GridConfig(length_x=60.0, length_y=20.0, resolution=0.5)
    grid = BevGrid.from_config(grid_cfg)
    lidar, radar, camera = inp.scans()
    feats = encode_frame(grid, lidar, radar, camera, ego_twist=inp.ego_twist).features

    def cell(x, y=0.25):
        return tuple(grid.metric_to_index(torch.tensor([[x, y]]))[0].tolist())

    count = feats[channel_index("radar_log_count")]
    assert count[cell(wall_base + 0.25)] > 0 and count.sum() == count[cell(wall_base + 0.25)]
    r = feats[len(feats) - len(CAMERA_CHANNELS) + CAMERA_CHANNELS.index("camera_r")]
    mark_base = (WALL_X - ego_x(t_lidar), (MARK[1] - MARK[0]) / 2)
    assert r[cell(mark_base[0] - 0.25)] > 0.3  # bright: the marking, at the wall's foot
    assert r[cell(mark_base[0] + mark_base[1] + 0.75)] < -0.3  # just past it: dark ground
    # with the image's own-stamp extrinsic the same cell would show dark ground 1.5 m away: sensitive
    wrong = encode_frame(grid, camera=type(camera)(camera.image, camera.K, CAMERA_MOUNT)).features
    assert wrong[len(feats) - len(CAMERA_CHANNELS) + CAMERA_CHANNELS.index("camera_r")][
        cell(mark_base[0] + mark_base[1] + 0.75)] > 0.3


def test_pairing_tolerance_and_missing_tf():
    t_lidar = T0 + 1 * NS
    asm, inp = assembler_at(t_lidar, t_lidar - 90_000_000)
    assert inp.radar is not None and inp.image is not None
    # the image is now 0.25 s older than the LiDAR (tolerance 0.1 s): not paired; the radar is
    asm.radar = Stamped(wall_radar(t_lidar), "radar_front", t_lidar + 100_000_000)
    late = asm.assemble(t_lidar + 160_000_000, lidar_cloud(), "base_link").inputs
    assert late.radar is not None and late.image is None
    # a radar frame without TF: the frame keeps the LiDAR, the problem is named
    asm.radar = Stamped(wall_radar(t_lidar), "radar_nowhere", t_lidar + 170_000_000)
    out = asm.assemble(t_lidar + 200_000_000, lidar_cloud(), "base_link")
    assert out.inputs.radar is None and [f for f, _ in out.problems] == ["tf_radar"]
    # the LiDAR's own frame unknown: dropped
    out = asm.assemble(t_lidar + 300_000_000, lidar_cloud(), "lidar_nowhere")
    assert out.inputs is None and out.problems[0][0] == "tf_missing"


def test_twist_motion_round_trip_and_radar_lever_arm():
    twist = (12.0, 0.5, 0.4)
    for dt in (0.1, -0.07):
        assert ego_twist(twist_motion(twist, dt), dt) == pytest.approx(twist) if dt > 0 else True
    assert ego_twist(twist_motion(twist, 0.1), 0.1) == pytest.approx(twist, abs=1e-9)
    # turning on the spot: the radar 3.5 m ahead moves sideways at wz * 3.5; a static target to the
    # radar's left closes at that speed, which the compensation removes
    pts = np.zeros(1, dtype=RADAR_DTYPE)
    pts["y"], pts["radial_velocity"] = 10.0, -0.4 * 3.5
    out = radar_over_ground(pts, RADAR_MOUNT, (0.0, 0.0, 0.4))
    assert float(out["radial_velocity"][0]) == pytest.approx(0.0, abs=1e-5)
    assert float(pts["radial_velocity"][0]) == pytest.approx(-1.4)  # the input is not modified
    assert math.isfinite(float(out["x"][0]))


def test_pairing_is_by_stamp_not_by_arrival_order():
    """Radar scans stored in either order (callbacks of different topics race) pair the same way."""
    t_lidar = T0 + 1 * NS
    stamps = [t_lidar - 180_000_000, t_lidar - 80_000_000, t_lidar + 30_000_000, t_lidar + 95_000_000]
    picked = []
    for order in (stamps, stamps[::-1], [stamps[2], stamps[0], stamps[3], stamps[1]]):
        asm = FrameAssembler(PerceptionConfig(), drive())
        for s in order:
            asm.radar = Stamped(wall_radar(s), "radar_front", s)
        assert asm.radar.stamp_ns == order[-1]  # `radar` is the newest stored
        snap = asm.snapshot()
        inp = asm.assemble(t_lidar, lidar_cloud(), "base_link", snap).inputs
        picked.append(float(inp.radar["x"][0]))
    assert picked[0] == picked[1] == picked[2] == pytest.approx(float(wall_radar(stamps[2])["x"][0]))
    # nothing within the tolerance: no radar; an earlier snapshot's messages stay candidates
    asm = FrameAssembler(PerceptionConfig(), drive())
    asm.radar = Stamped(wall_radar(stamps[1]), "radar_front", stamps[1])
    kept = asm.snapshot()
    for k in range(10):  # the history moves on past the scan that matched
        asm.radar = Stamped(wall_radar(t_lidar), "radar_front", t_lidar + (k + 3) * 100_000_000)
    assert asm.assemble(t_lidar, lidar_cloud(), "base_link").inputs.radar is None
    assert asm.assemble(t_lidar + 1, lidar_cloud(), "base_link", asm.snapshot(keep=kept)).inputs.radar is not None
