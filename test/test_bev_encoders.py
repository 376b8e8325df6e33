"""BEV grid and sensor encoders: geometry, features, bad input, missing sensors."""

import math

import numpy as np
import pytest
import torch

from ssm_perception.bev.camera import CAMERA_CHANNELS, encode_camera
from ssm_perception.bev.features import (
    FEATURE_CHANNELS,
    CameraFrame,
    LidarScan,
    RadarScan,
    channel_index,
    encode_frame,
)
from ssm_perception.bev.grid import BevGrid
from ssm_perception.bev.lidar import LIDAR_CHANNELS, deskew, encode_lidar
from ssm_perception.bev.radar import RADAR_CHANNELS, VELOCITY_SCALE, encode_radar
from ssm_perception.config import GridConfig
from ssm_perception.frame_assembler import radar_over_ground
from ssm_perception.geometry import make_transform

GRID = BevGrid.square(40, 0.5)  # 20 m x 20 m
EYE = np.eye(4)
LIDAR_DTYPE = [("x", "f4"), ("y", "f4"), ("z", "f4"), ("intensity", "f4"), ("t", "f4")]


def cloud(rows):
    a = np.zeros(len(rows), dtype=LIDAR_DTYPE)
    for k, r in enumerate(rows):
        a[k] = tuple(r) + (0.0,) * (5 - len(r))
    return a


def ground_ring(n=4000, r_max=14.0, seed=0):
    """Flat ground returns (z = 0 in base_link) out to r_max, all azimuths."""
    rng = np.random.default_rng(seed)
    az = rng.uniform(-math.pi, math.pi, n)
    r = rng.uniform(1.0, r_max, n)
    return [(r[i] * math.cos(az[i]), r[i] * math.sin(az[i]), 0.0, 10.0) for i in range(n)]


def ch(feats, name, names=FEATURE_CHANNELS):
    return feats[names.index(name)]


def test_grid_from_config_and_indexing():
    g = BevGrid.from_config(GridConfig())
    assert (g.nx, g.ny, g.resolution) == (200, 200, 0.5)
    c = g.cell_centers()
    assert c.shape == (2, 200, 200)
    assert c[0, 0, 0].item() == pytest.approx(-49.75) and c[1, 0, 5].item() == pytest.approx(-47.25)
    xy = torch.tensor([[0.1, 0.1], [-0.1, -0.1], [49.9, -49.9], [50.0, 0.0], [float("nan"), 0.0], [1e30, 1e30]])
    flat, valid = g.points_to_cells(xy)
    assert valid.tolist() == [True, True, True, False, False, False]
    assert flat[0].item() == 100 * 200 + 100 and flat[1].item() == 99 * 200 + 99
    assert flat[2].item() == 199 * 200 + 0
    ij = torch.tensor([[100, 100]])
    assert torch.equal(g.metric_to_index(g.index_to_metric(ij)), ij)


def test_lidar_cell_statistics_and_height():
    pts = cloud([(2.1, 0.1, 0.5, 100.0), (2.2, 0.2, 1.7, 0.0), (2.3, 0.3, 0.0, 0.0)])
    f, stats = encode_lidar(GRID, pts, EYE, ground="flat")
    i, j = GRID.metric_to_index(torch.tensor([[2.1, 0.1]]))[0].tolist()
    assert ch(f, "lidar_valid", LIDAR_CHANNELS).min() == 1.0
    assert ch(f, "lidar_log_count", LIDAR_CHANNELS)[i, j].item() == pytest.approx(math.log(4))
    assert ch(f, "lidar_h_min", LIDAR_CHANNELS)[i, j].item() == pytest.approx(0.0)
    assert ch(f, "lidar_h_max", LIDAR_CHANNELS)[i, j].item() == pytest.approx(1.7)
    assert ch(f, "lidar_intensity", LIDAR_CHANNELS)[i, j].item() == pytest.approx(math.log1p(100) / 3, rel=1e-5)
    assert ch(f, "lidar_nonground", LIDAR_CHANNELS)[i, j].item() == pytest.approx(math.log(3))
    # heights 0.0 -> bin 0, 0.5 -> bin 1, 1.7 -> bin 3
    assert [ch(f, f"lidar_hbin_{k}", LIDAR_CHANNELS)[i, j].item() > 0 for k in range(5)] == [
        True, True, False, True, False]
    assert stats["lidar_used"] == 3 and stats["lidar_points"] == 3
    assert float(f.abs().sum()) > 0 and torch.isfinite(f).all()


def test_lidar_free_space_and_occlusion():
    # Ground all around plus a wall 6 m ahead: cells before it are free, behind it occluded.
    # ground behind the wall is hidden from the sensor: drop those returns
    rows = [r for r in ground_ring(r_max=12.0) if not (r[0] > 6.0 and abs(r[1]) < 1.1 * r[0] / 6.1)]
    rows += [(6.1, y, z, 5.0) for y in np.linspace(-1.0, 1.0, 41) for z in (0.5, 1.0, 1.5)]
    f, _ = encode_lidar(GRID, cloud(rows), EYE, ground="flat")
    free, occ = ch(f, "lidar_free", LIDAR_CHANNELS), ch(f, "lidar_occluded", LIDAR_CHANNELS)

    def at(x, y):
        return tuple(GRID.metric_to_index(torch.tensor([[x, y]]))[0].tolist())

    assert free[at(3.0, 0.0)] == 1 and occ[at(3.0, 0.0)] == 0
    assert free[at(6.1, 0.0)] == 0  # the obstacle cell itself is a hit, not free
    assert occ[at(8.5, 0.0)] == 1 and free[at(8.5, 0.0)] == 0
    assert free[at(0.0, 8.0)] == 1 and free[at(-8.0, 0.0)] == 1  # no obstacle that way
    assert free[at(9.8, 9.8)] == 0  # beyond the farthest return (r > 12 m): unknown
    # an overhanging return (3 m up, e.g. a sign) is counted but does not block the ray
    rows2 = rows + [(-4.1, y, 3.0, 5.0) for y in np.linspace(-1.0, 1.0, 41)]
    f2, _ = encode_lidar(GRID, cloud(rows2), EYE, ground="flat")
    assert ch(f2, "lidar_nonground", LIDAR_CHANNELS)[at(-4.1, 0.0)] > 0
    assert ch(f2, "lidar_free", LIDAR_CHANNELS)[at(-8.0, 0.0)] == 1
    assert ch(f2, "lidar_occluded", LIDAR_CHANNELS)[at(-8.0, 0.0)] == 0


def test_lidar_extrinsics_and_ground_fit():
    # Sensor 1.8 m above base_link, ground plane in base_link z = 0 -> lidar z = -1.8.
    t_bl = make_transform((1.0, 0.0, 1.8))
    rows = [(x - 1.0, y, -1.8, 1.0) for (x, y, _, _) in ground_ring(3000)]
    rows += [(4.0, 0.0, -1.8 + 1.0, 1.0)]  # obstacle 1 m high at base x = 5
    f, stats = encode_lidar(GRID, cloud(rows), t_bl, ground="ransac")
    assert not stats["lidar_ground_fallback"]
    i, j = GRID.metric_to_index(torch.tensor([[5.0, 0.0]]))[0].tolist()
    assert ch(f, "lidar_h_max", LIDAR_CHANNELS)[i, j].item() == pytest.approx(1.0, abs=0.05)
    assert ch(f, "lidar_nonground", LIDAR_CHANNELS)[i, j] > 0


def test_deskew_moves_points_to_stamp():
    xyz = torch.tensor([[10.0, 0.0, 0.0], [10.0, 0.0, 0.0]])
    t = torch.tensor([-0.1, 0.0])
    out = deskew(xyz, t, (10.0, 0.0, 0.0))  # 10 m/s forward: 0.1 s ago the base was 1 m behind
    assert torch.allclose(out[0], torch.tensor([9.0, 0.0, 0.0]))
    assert torch.equal(out[1], xyz[1])
    # pure rotation at 1 rad/s: point ahead measured 0.1 s ago is rotated back by -0.1 rad
    out = deskew(xyz[:1], t[:1], (0.0, 0.0, 1.0))
    assert torch.allclose(out[0, :2], torch.tensor([10 * math.cos(-0.1), 10 * math.sin(-0.1)]), atol=1e-5)
    # through the encoder: the point lands in the deskewed cell
    f, _ = encode_lidar(GRID, cloud([(5.1, 0.1, 1.0, 0.0, -0.1)]), EYE, ego_twist=(10.0, 0.0, 0.0), ground="flat")
    i, j = GRID.metric_to_index(torch.tensor([[4.1, 0.1]]))[0].tolist()
    assert ch(f, "lidar_log_count", LIDAR_CHANNELS)[i, j] > 0


def test_lidar_bad_input_is_counted_never_nan():
    rows = [(1.0, 1.0, 0.5, 1.0), (float("nan"), 0.0, 0.0, 0.0), (float("inf"), 1.0, 0.0, 0.0),
            (1e30, 1e30, 0.0, 0.0), (500.0, 0.0, 0.5, 0.0), (1.0, 1.0, 50.0, 0.0), (2.0, 2.0, 0.5, float("nan")),
            (8.25 * 12, 0.25 * 12, 0.5, 0.0)]  # ~99 m away, through the centre of cell (8.25, 0.25)
    f, stats = encode_lidar(GRID, cloud(rows), EYE, ground="ransac")
    assert torch.isfinite(f).all()
    assert stats["lidar_nonfinite"] == 2
    assert stats["lidar_out_of_range"] == 2
    assert stats["lidar_out_of_height"] == 1
    assert stats["lidar_out_of_grid"] == 1
    assert stats["lidar_used"] == 2
    # the real return ~99 m away (outside the grid) proves its beam free inside the grid; the bogus
    # 1e30 return was dropped, so its beam (45 degrees) stays unknown
    free = ch(f, "lidar_free", LIDAR_CHANNELS)
    i, j = GRID.metric_to_index(torch.tensor([[8.25, 0.25]]))[0].tolist()
    assert free[i, j] == 1
    i, j = GRID.metric_to_index(torch.tensor([[8.0, 8.0]]))[0].tolist()
    assert free[i, j] == 0
    empty, s = encode_lidar(GRID, np.zeros(0, dtype=LIDAR_DTYPE), EYE)
    assert (empty == 0).all() and s["lidar_points"] == 0
    allnan, s = encode_lidar(GRID, cloud([(float("nan"),) * 4] * 5), EYE)
    assert (allnan == 0).all() and s["lidar_nonfinite"] == 5
    plain, _ = encode_lidar(GRID, np.array([[1.0, 1.0, 0.5]], dtype=np.float32), EYE, ground="flat")
    assert plain[1].sum() > 0  # an unstructured [N, 3] array works too
    with pytest.raises(ValueError):
        encode_lidar(GRID, np.zeros((3, 2), dtype=np.float32), EYE)


def test_radar_ego_motion_compensation():
    rdt = [("x", "f4"), ("y", "f4"), ("z", "f4"), ("radial_velocity", "f4"), ("rcs", "f4")]
    pts = np.zeros(3, dtype=rdt)
    # static target straight ahead while driving at 10 m/s: it approaches at -10 m/s
    pts[0] = (8.0, 0.1, 0.5, -10.0, 10.0)
    # static target to the left (90 deg): no radial component from forward motion
    pts[1] = (0.1, 6.0, 0.5, 0.0, 0.0)
    # target ahead moving away at 5 m/s over ground: measured -10 + 5 = -5
    pts[2] = (-6.0, 0.1, 0.5, 10.0 + 5.0, 0.0)  # behind: ego moves away from it, +10 measured
    # compensation is the frame assembler's (once, at the radar stamp); the encoder rasterizes
    f, stats = encode_radar(GRID, radar_over_ground(pts, EYE, (10.0, 0.0, 0.0)), EYE)
    vr = ch(f, "radar_vr", RADAR_CHANNELS) * VELOCITY_SCALE

    def at(x, y):
        return tuple(GRID.metric_to_index(torch.tensor([[x, y]]))[0].tolist())

    assert vr[at(8.0, 0.1)].item() == pytest.approx(0.0, abs=1e-3)
    assert vr[at(0.1, 6.0)].item() == pytest.approx(0.0, abs=0.2)
    assert vr[at(-6.0, 0.1)].item() == pytest.approx(5.0, abs=1e-2)
    assert ch(f, "radar_rcs", RADAR_CHANNELS)[at(8.0, 0.1)].item() == pytest.approx(0.5)
    assert stats["radar_used"] == 3
    bad = np.array([(np.nan, 0, 0, 0, 0), (1, 1, 0, np.inf, 0), (1e9, 0, 0, 1, 1)], dtype=rdt)
    f, stats = encode_radar(GRID, radar_over_ground(bad, EYE, (1.0, 0.0, 0.0)), EYE)
    assert torch.isfinite(f).all() and stats["radar_nonfinite"] == 2 and stats["radar_out_of_grid"] == 1


def _camera():
    k = np.array([[200.0, 0, 160.0], [0, 200.0, 120.0], [0, 0, 1]])
    t = np.eye(4)
    t[:3, :3] = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]])  # optical: z forward, x right, y down
    t[:3, 3] = (1.0, 0.0, 1.5)
    return k, t


def test_camera_ipm_visibility_and_colour():
    k, t = _camera()
    img = np.zeros((240, 320, 3), dtype=np.uint8)
    # left yellow (y > 0 side), right blue: an intensity edge at u = 154, where the ground point of the
    # cell at (8.25, 0.25) lands (u ~ 153.1). (Red against blue would have one grey level: no edge.)
    img[:, :154] = (255, 255, 0)
    img[:, 154:] = (0, 0, 255)
    f, stats = encode_camera(GRID, img, k, t)
    vis = ch(f, "camera_visible", CAMERA_CHANNELS)

    def at(x, y):
        return tuple(GRID.metric_to_index(torch.tensor([[x, y]]))[0].tolist())

    assert vis[at(8.0, 2.0)] == 1 and vis[at(-5.0, 0.0)] == 0 and vis[at(2.0, 9.0)] == 0
    assert ch(f, "camera_r", CAMERA_CHANNELS)[at(8.0, 2.0)].item() == pytest.approx(0.5)
    assert ch(f, "camera_b", CAMERA_CHANNELS)[at(8.0, -2.0)].item() == pytest.approx(0.5)
    assert ch(f, "camera_r", CAMERA_CHANNELS)[at(-5.0, 0.0)].item() == 0.0  # outside the frustum
    grad = ch(f, "camera_grad", CAMERA_CHANNELS)
    assert grad[at(8.25, 0.25)] > 0.1 and grad[at(8.0, 2.0)] == 0.0  # the edge, and only there
    assert stats["camera_visible_cells"] == int(vis.sum())
    mono = np.full((240, 320), 0.5, dtype=np.float32)
    f2, _ = encode_camera(GRID, mono, k, t)
    assert torch.isfinite(f2).all()


def test_encode_frame_layout_and_missing_sensors():
    f = encode_frame(GRID)
    assert f.features.shape == (len(FEATURE_CHANNELS), 40, 40) and f.features.dtype == torch.float32
    assert (f.features == 0).all() and f.sensor_mask == {"lidar": False, "radar": False, "camera": False}
    k, t = _camera()
    lidar = LidarScan(cloud(ground_ring(500)), EYE)
    radar = RadarScan(np.array([[5.0, 0.0, 0.5, -1.0, 3.0]], dtype=np.float32), EYE)
    cam = CameraFrame(np.full((240, 320, 3), 128, dtype=np.uint8), k, t)
    full = encode_frame(GRID, lidar, radar, cam, ego_twist=(1.0, 0.0, 0.0))
    assert full.sensor_mask == {"lidar": True, "radar": True, "camera": True}
    assert torch.isfinite(full.features).all()
    assert full.features[channel_index("radar_valid")].min() == 1.0
    assert set(full.stats["timings_ms"]) == {"lidar", "radar", "camera"}
    only_radar = encode_frame(GRID, radar=radar, ego_twist=(float("nan"), 0.0, 0.0))
    assert only_radar.sensor_mask == {"lidar": False, "radar": True, "camera": False}
    assert not only_radar.stats["ego_twist_used"]  # a NaN twist is ignored, not propagated
    assert (only_radar.features[: len(LIDAR_CHANNELS)] == 0).all()
    with pytest.raises(KeyError):
        channel_index("lidar_typo")
