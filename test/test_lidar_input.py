"""Sensor-agnostic LiDAR input (bev/lidar_input.py): intensity scale and absence do not change what
the shipped model publishes, self-returns are dropped, and wrong mountings are reported."""

import functools

import numpy as np
import pytest
import transforms3d as t3

from ssm_perception.bev.features import LidarScan, channel_index, encode_frame
from ssm_perception.bev.grid import BevGrid
from ssm_perception.bev.lidar_input import OK, WARN, LidarInput, relative_times
from ssm_perception.config import GridConfig, LidarInputConfig, PerceptionConfig
from ssm_perception.geometry import make_transform
from ssm_perception.pipeline import FrameInputs, PerceptionPipeline
from ssm_perception.sim.scenario import Scenario


@functools.cache
def _frames(n: int = 3):
    sc = Scenario.from_preset("urban", seed=3, duration_s=2.0)
    out = []
    for fr in sc.frames(with_others=False):
        out.append(fr)
        if len(out) == n:
            break
    fid = sc.config.lidar.frame_id
    return out, fid, out[0].T_base_sensor[fid]


def _variant(cloud, kind):
    if kind == "removed":
        return cloud[[n for n in cloud.dtype.names if n != "intensity"]]
    c = cloud.copy()
    c["intensity"] = c["intensity"] * (255.0 if kind == "x255" else 1 / 255.0) if kind != "original" else c["intensity"]
    return c


def _occupied(kind, lidar_input=None):
    frames, fid, T = _frames()
    cfg = PerceptionConfig(sensors={"use_radar": False, "use_camera": False})
    if lidar_input is not None:
        cfg.lidar_input = lidar_input
    p = PerceptionPipeline(cfg)
    for fr in frames:
        out = p.process(FrameInputs(stamp_ns=fr.stamp_ns, T_odom_base=fr.T_odom_base, lidar=_variant(fr.lidar, kind),
                                    T_base_lidar=T, lidar_frame=fid))
    return out.occupancy > 0.5, out


def test_intensity_scaled_or_removed_gives_the_same_occupied_cells():
    ref, out = _occupied("original")
    assert ref.sum() > 200 and out.sensor_checks["intensity"][0] == OK
    for kind in ("x255", "/255", "removed"):
        occ, o = _occupied(kind)
        changed = (occ ^ ref).sum() / ref.sum()
        assert abs(int(occ.sum()) - int(ref.sum())) <= 0.05 * ref.sum(), kind
        assert changed <= 0.05, (kind, changed)
        assert o.sensor_checks["intensity"][0] == WARN  # the rescale / absence is reported
    # Without the normalisation (scale pinned to 1) a 0..1 sensor does change the output: the
    # test above measures the feature, not an insensitive model.
    occ, _ = _occupied("/255", LidarInputConfig(intensity_mode="fixed", intensity_scale=1.0))
    assert (occ ^ ref).sum() / ref.sum() > 0.05


def _roof_and_wall():
    """A wall 10 m ahead plus 400 roof returns (base_link z 1.45-1.55 over the cabin), LiDAR frame."""
    rng = np.random.default_rng(0)
    n_wall, n_roof = 800, 400
    a = np.zeros(n_wall + n_roof, [("x", "f4"), ("y", "f4"), ("z", "f4"), ("intensity", "f4")])
    a["x"][:n_wall], a["y"][:n_wall] = 9.0, rng.uniform(-4, 4, n_wall)
    a["z"][:n_wall] = rng.uniform(-1.5, 0.5, n_wall)
    a["x"][n_wall:], a["y"][n_wall:] = rng.uniform(-2.5, 1.0, n_roof), rng.uniform(-0.8, 0.8, n_roof)
    a["z"][n_wall:] = rng.uniform(-0.45, -0.35, n_roof)
    a["intensity"] = 40.0
    return a, make_transform((1.0, 0.0, 1.9))


def test_self_returns_dropped():
    cloud, T = _roof_and_wall()
    grid = BevGrid.from_config(GridConfig(length_x=40.0, length_y=40.0, resolution=0.5))
    ego = (slice(37, 44), slice(38, 42))  # cells x -1.5..2, y -1..1
    nonground = channel_index("lidar_nonground")

    kept = LidarInput()(cloud, T)
    assert len(kept) == 800 and np.all(kept["x"] > 8)
    f_on = encode_frame(grid, LidarScan(kept, T), ground="flat").features[nonground]
    off = LidarInput(LidarInputConfig(ego_footprint=False))(cloud, T)
    f_off = encode_frame(grid, LidarScan(off, T), ground="flat").features[nonground]
    assert float(f_off[ego].sum()) > 0 and float(f_on[ego].sum()) == 0


def _checks(T, xf=lambda a: a):
    frames, fid, _ = _frames(12)
    li = LidarInput()
    for fr in frames:
        li(xf(fr.lidar), T, fr.T_odom_base, fr.stamp_ns, fid)
    return li.summary()


def test_mounting_checks_pass_on_a_correct_mount():
    _, _, T = _frames()
    c = _checks(T)
    assert c["mounting"][0] == OK and c["heading"][0] == OK, c


def test_tilted_mount_detected():
    _, _, T = _frames()
    R = np.eye(4)
    R[:3, :3] = t3.euler.euler2mat(0.0, np.radians(8.0), 0.0)  # sensor pitched 8 deg; TF says level
    level, msg = _checks(T @ R)["mounting"]
    assert level == WARN and "tilted 8." in msg and "base_link <- lidar_top" in msg


def test_wrong_height_and_y_forward_frame_detected():
    _, _, T = _frames()
    low = T.copy()
    low[2, 3] = 0.0  # TF puts the LiDAR on the ground
    level, msg = _checks(low)["mounting"]
    assert level == WARN and "ground is at z = -1.9" in msg

    def y_forward(a):  # the same scan from a LiDAR whose y axis points forward, with the TF unchanged
        b = a.copy()
        b["x"], b["y"] = a["y"], -a["x"]
        return b

    level, msg = _checks(T, y_forward)["heading"]
    assert level == WARN and "y forward" in msg and "base_link <- lidar_top" in msg


def test_per_point_time_fields():
    stamp = 1_700_000_000_000_000_000
    t, _ = relative_times(np.array([0, 50_000_000, 99_000_000], np.uint32), stamp)  # Ouster-style ns
    assert np.allclose(t, [0, 0.05, 0.099])
    t, how = relative_times(np.array([stamp * 1e-9 - 0.05, stamp * 1e-9 + 0.04]), stamp)  # absolute s
    assert np.allclose(t, [-0.05, 0.04], atol=1e-5) and how == "absolute seconds"
    assert relative_times(np.array([stamp * 1e-9], np.float32), stamp)[0] is None  # float32 epoch: too coarse
    assert relative_times(np.array([0.0, 3.0]), stamp)[0] is None  # not a sweep


@pytest.mark.parametrize("mode,expected", [("fixed", 255.0 * 0.3), ("ignore", 21.0)])
def test_intensity_modes(mode, expected):
    a = np.zeros(10, [("x", "f4"), ("y", "f4"), ("z", "f4"), ("intensity", "f4"), ("time", "f8")])
    a["x"], a["intensity"] = 20.0, 0.3
    out = LidarInput(LidarInputConfig(intensity_mode=mode, intensity_scale=255.0))(a, np.eye(4))
    assert np.allclose(out["intensity"], expected) and "t" in out.dtype.names


def test_auto_scale_makes_the_channel_independent_of_the_sensor_scale():
    """auto mode rescales even a sensor already near the training scale (95th percentile 50 here, a
    factor 1.6): x 255 and / 255 give the same normalised intensities as the recording (OK for the
    recording, WARN for the far-off scales)."""
    rng = np.random.default_rng(0)
    a = np.zeros(2000, [("x", "f4"), ("y", "f4"), ("z", "f4"), ("intensity", "f4")])
    a["x"] = 20.0
    a["intensity"] = rng.uniform(0.0, 52.6, a.size)  # 95th percentile ~50
    outs, levels = {}, {}
    for kind, f in (("original", 1.0), ("x255", 255.0), ("/255", 1 / 255)):
        b = a.copy()
        b["intensity"] = a["intensity"] * np.float32(f)
        li = LidarInput(LidarInputConfig(auto_scans=1, mount_check=False))
        outs[kind], levels[kind] = li(b, np.eye(4))["intensity"], li.checks["intensity"].level
    assert np.percentile(outs["original"], 95) == pytest.approx(80.0, rel=1e-3)  # the training 95th percentile
    for kind in ("x255", "/255"):
        assert np.allclose(outs[kind], outs["original"], rtol=1e-4), kind
    assert levels == {"original": OK, "x255": WARN, "/255": WARN}


def test_training_features_use_the_same_normalisation():
    """The trainer's encoder (train.dataset.SimFrameEncoder) applies the pipeline's LiDAR input step:
    a simulated sensor with 0..1 intensity trains on the same intensity channel as a 0..255 one."""
    from ssm_perception.bev.features import channel_index
    from ssm_perception.train.dataset import SimFrameEncoder

    cfg = PerceptionConfig(grid=GridConfig(length_x=40.0, length_y=40.0, resolution=0.5))
    feats = {}
    for full_scale in (255.0, 1.0):
        sc = Scenario.from_preset("urban", seed=3, duration_s=0.5)
        sc.config.lidar.intensity_max = full_scale
        sc = Scenario(sc.config, grid=cfg.grid)
        enc = SimFrameEncoder(cfg, sc.config)
        fr = next(iter(sc.frames(with_others=False)))
        feats[full_scale] = enc(fr)[channel_index("lidar_intensity")]
    a, b = feats[255.0], feats[1.0]
    assert a.max() > 2.0  # log(1 + intensity) of a 0..255 scale
    assert np.abs(a - b).mean() < 0.05 * a[a > 0].mean()


def _full_box_test(xs, ys, zs, T, c):
    """The ego-box test on every return (the reference for the pre-filtered one)."""
    R, tr = T[:3, :3].astype(np.float32), T[:3, 3].astype(np.float32)
    inside = None
    with np.errstate(invalid="ignore"):
        for k, (lo, hi) in enumerate(((c.ego_x_min, c.ego_x_max), (c.ego_y_min, c.ego_y_max),
                                      (c.ego_z_min, c.ego_z_max))):
            v = R[k, 0] * xs + R[k, 1] * ys + R[k, 2] * zs + tr[k]
            m = (v >= lo) & (v <= hi)
            inside = m if inside is None else inside & m
    return inside


@pytest.mark.parametrize("yaw_deg", [0.0, 37.0, 90.0])
def test_ego_box_prefilter_and_own_layout_copy_give_the_general_paths_output(yaw_deg):
    """The per-frame shortcuts (returns tested exactly only near the box's extent in LiDAR x; a cloud
    already in the output layout copied whole) change no value and no dropped return."""
    rng = np.random.default_rng(1)
    T = np.eye(4)
    T[:3, :3] = t3.euler.euler2mat(0.02, -0.03, np.radians(yaw_deg))
    T[:3, 3] = (0.4, 0.1, 1.9)
    n = 20000
    pts = np.zeros(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4"), ("t", "<f4"),
                             ("ring", "<u2")])
    xyz = rng.uniform(-6, 6, (n, 3)).astype(np.float32)
    xyz[:50] = [np.nan, 1.0, 0.0]
    xyz[50:60] = [0.0, np.inf, 0.0]
    pts["x"], pts["y"], pts["z"] = xyz.T
    pts["intensity"] = rng.uniform(0, 90, n)
    pts["intensity"][:7] = np.nan
    pts["t"] = rng.uniform(-0.05, 0.05, n)
    pts["ring"] = rng.integers(0, 64, n)
    cfg = LidarInputConfig(intensity_mode="fixed", intensity_scale=1.0, mount_check=False)

    def widened(a):  # the same cloud with one more field: the general path
        w = np.zeros(len(a), dtype=pts.dtype.descr + [("extra", "<f4")])
        for f in pts.dtype.names:
            w[f] = a[f]
        return w

    ref = _full_box_test(xyz[:, 0], xyz[:, 1], xyz[:, 2], T, cfg)
    assert 50 < int(ref.sum()) < n // 2
    for cloud in (pts, pts[~ref]):  # with returns inside the box (dropped), and without (copied whole)
        step_a, step_b = LidarInput(cfg), LidarInput(cfg)
        a, b = step_a(cloud, T, None, 0), step_b(widened(cloud), T, None, 0)
        assert step_a.dropped_ego == step_b.dropped_ego == (int(ref.sum()) if len(cloud) == n else 0)
        assert a.dtype == b.dtype and len(a) == len(b) == n - int(ref.sum())
        for f in a.dtype.names:
            assert np.array_equal(a[f], b[f], equal_nan=True), f
        assert np.array_equal(a["x"], pts["x"][~ref], equal_nan=True)
        assert np.array_equal(a["intensity"], np.nan_to_num(pts["intensity"][~ref], nan=0.0))
