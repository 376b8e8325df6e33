"""Distribution shift (severe weather) from LiDAR statistics: simulated rain (the simulator's clutter)
and fog onsets are detected against the running reference and reset the state once with the reason
``distribution_shift``; driving past a wall right beside the car is not a shift."""

import numpy as np

from ssm_perception.config import DistributionShiftConfig, GridConfig, PerceptionConfig
from ssm_perception.geometry import make_transform, se2_matrix
from ssm_perception.io.pointcloud2 import LIDAR_DTYPE
from ssm_perception.pipeline import FrameInputs, PerceptionPipeline
from ssm_perception.temporal import reset_policy as rp
from ssm_perception.temporal.shift import ShiftDetector, scan_stats

S = 1_000_000_000
T_BASE_LIDAR = make_transform((0.0, 0.0, 1.8))


def _scan(rng, wall_y: float | None = None) -> np.ndarray:
    """A 32-beam spinning scan of flat ground and a ring of buildings at 30-60 m (sensor frame)."""
    az = np.linspace(-np.pi, np.pi, 1800, endpoint=False)
    el = np.deg2rad(np.linspace(-25, 5, 32))
    A, E = np.meshgrid(az, el, indexing="ij")
    d = np.stack([np.cos(E) * np.cos(A), np.cos(E) * np.sin(A), np.sin(E)], -1).reshape(-1, 3)
    r = np.full(len(d), np.inf)
    down = d[:, 2] < -1e-3
    r[down] = 1.8 / -d[down, 2]  # ground
    wall_r = 30 + 30 * (0.5 + 0.5 * np.sin(3 * np.arctan2(d[:, 1], d[:, 0]))) / np.hypot(d[:, 0], d[:, 1])
    r = np.minimum(r, wall_r)
    if wall_y is not None:  # a long wall (or truck) beside the car, parallel to x
        with np.errstate(divide="ignore", invalid="ignore"):
            t = wall_y / d[:, 1]
        beside = (t > 0) & (np.abs(d[:, 0] * t) < 15) & (d[:, 2] * t > -1.8) & (d[:, 2] * t < 2.0)
        r = np.where(beside, np.minimum(r, t), r)
    keep = np.isfinite(r) & (r < 120) & (rng.random(len(r)) > 0.05)
    p = d[keep] * (r[keep] + rng.normal(0, 0.02, keep.sum()))[:, None]
    a = np.zeros(len(p), LIDAR_DTYPE)
    a["x"], a["y"], a["z"] = p[:, 0], p[:, 1], p[:, 2]
    a["intensity"] = np.clip(rng.normal(30, 8, len(p)), 0, 255)
    return a


def _rain(rng, scan: np.ndarray, drops: int = 2500) -> np.ndarray:
    """Rain as the simulator makes it (sim/sensors.py clutter): drops intercept random beams at
    min_range + Exp(6 m), with low intensity."""
    idx = rng.choice(len(scan), drops, replace=False)
    r = np.linalg.norm(np.stack([scan["x"], scan["y"], scan["z"]], 1)[idx], axis=1)
    r_drop = 1.0 + rng.exponential(6.0, drops)
    hit = idx[r_drop < r]
    out = scan.copy()
    scale = (r_drop[r_drop < r] / r[r_drop < r]).astype(np.float32)
    for f in ("x", "y", "z"):
        out[f][hit] *= scale
    out["intensity"][hit] = rng.uniform(0, 4, len(hit))
    return out


def _fog(rng, scan: np.ndarray, visibility_m: float = 12.0) -> np.ndarray:
    """Fog: returns beyond the visibility are lost, the rest attenuated (two-way Beer-Lambert), and
    droplets return from random short ranges."""
    r = np.linalg.norm(np.stack([scan["x"], scan["y"], scan["z"]], 1), axis=1)
    out = scan[r < visibility_m].copy()
    out["intensity"] *= np.exp(-2 * 3.0 / visibility_m * r[r < visibility_m]).astype(np.float32)
    return _rain(rng, out, drops=3000)


def test_clean_scans_and_a_wall_beside_the_car_are_not_a_shift():
    rng = np.random.default_rng(0)
    det = ShiftDetector(DistributionShiftConfig())
    reports = [det.update(_scan(rng)) for _ in range(15)]
    reports += [det.update(_scan(rng, wall_y=y)) for y in (3.0, 2.0, 1.5, 1.2, 1.2, 1.5, 2.5)]
    assert not any(r.detected for r in reports)
    assert reports[-1].reference and "match the reference" in reports[-1].message
    clean, walled = scan_stats(_scan(rng), 10.0), scan_stats(_scan(rng, wall_y=1.2), 10.0)
    assert walled.near_share < clean.near_share + 0.002  # thousands of returns within 2 m, on a surface


def test_rain_and_fog_onsets_are_detected_once_and_relearned():
    rng = np.random.default_rng(1)
    cfg = DistributionShiftConfig(warmup_frames=5, persist_frames=3)
    for weather in (_rain, _fog):
        det = ShiftDetector(cfg)
        clean = [det.update(_scan(rng)) for _ in range(6)]
        assert not any(r.detected for r in clean)
        bad = [det.update(weather(rng, _scan(rng))) for _ in range(8)]
        hits = [k for k, r in enumerate(bad) if r.detected]
        assert hits == [2], (weather.__name__, [r.message for r in bad])  # the third scan in a row, once
        assert "near-range clutter" in bad[2].message
        if weather is _fog:
            assert "returns per scan" in bad[2].message and "intensity" in bad[2].message
        # The weather is the new reference. Fog clearing is a shift again (returns and intensity come
        # back); rain stopping lowers the clutter share, which is no reason to distrust the state.
        back = [det.update(_scan(rng)) for _ in range(8)]
        assert sum(r.detected for r in back) == (1 if weather is _fog else 0)


def test_simulator_rain_resets_the_pipeline_with_its_reason():
    """The simulator's own rain clutter (the adversity of adversity_mix) as an onset in an urban drive,
    through the whole pipeline: one full reset with reason distribution_shift, none without rain."""
    from ssm_perception.sim.config import AdversityConfig
    from ssm_perception.sim.presets import preset
    from ssm_perception.sim.scenario import Scenario

    grid = GridConfig(length_x=24.0, length_y=24.0, resolution=1.0)
    cfg = PerceptionConfig(grid=grid, model={"kind": "logodds"}, sensors={"use_camera": False, "use_radar": False})
    cfg.distribution_shift.warmup_frames = 4
    sc_cfg = preset("urban", seed=7, duration_s=1.6)
    sc_cfg.camera.enabled = sc_cfg.radar.enabled = False  # LiDAR only: keeps the test fast
    clean = list(Scenario(sc_cfg, grid).frames())
    sc_cfg.adversities.append(AdversityConfig(type="clutter", start_s=0.8, duration_s=2.0, sensors=["lidar"],
                                              rate=3000.0))
    rainy = list(Scenario(sc_cfg, grid).frames())

    def run(frames):
        pipe = PerceptionPipeline(cfg)
        return [pipe.process(FrameInputs.from_sim(sc_cfg, f)) for f in frames]

    assert [(k, o.reset.reasons) for k, o in enumerate(run(clean)) if o.reset.full] == [(0, [rp.ROUTE_START])]
    outs = run(rainy)
    resets = [(k, o.reset.reasons) for k, o in enumerate(outs) if o.reset.full]
    assert len(resets) == 2 and resets[1][1] == [rp.DISTRIBUTION_SHIFT], resets
    assert 10 <= resets[1][0] <= 12  # rain from 0.8 s (frame 8): the third scan in a row
    assert "near-range clutter" in outs[resets[1][0]].reset.details[0]

    cfg.distribution_shift.reset = False  # flagged, not reset
    outs = run(rainy)
    assert sum(o.reset.full for o in outs) == 1 and sum(o.shift.detected for o in outs) == 1


def test_pipeline_reset_for_unrelated_frames_uses_policy_key():
    assert rp.DISTRIBUTION_SHIFT in rp.FULL_RESET_REASONS
    policy = rp.ResetPolicy()
    policy.decide(S, se2_matrix(0, 0, 0))
    d = policy.decide(S + S // 10, se2_matrix(0.1, 0, 0), distribution_shift="distribution shift: rain")
    assert d.full and d.reasons == [rp.DISTRIBUTION_SHIFT] and d.details == ["distribution shift: rain"]


def test_median_of_log_intensity_equals_numpy_median_bit_for_bit():
    from ssm_perception.temporal.shift import _median_log1p

    rng = np.random.default_rng(3)
    for n in (1, 2, 3, 10, 1001, 5000):
        i = (rng.gamma(1.5, 20.0, n) - 5.0).astype(np.float32)  # some negative (clipped to 0), ties at 0
        i[: n // 7] = 0.0
        assert _median_log1p(i) == float(np.median(np.log1p(np.clip(i, 0.0, None))))


def test_near_clutter_share_equals_the_stacked_int64_voxel_keys():
    from ssm_perception.temporal.shift import scan_stats

    rng = np.random.default_rng(5)
    pts = np.zeros(6000, dtype=LIDAR_DTYPE)
    xyz = np.concatenate([rng.uniform(-12, 12, (3000, 3)), rng.normal(0, 0.05, (3000, 3)) + [3.0, 1.0, 0.5]])
    pts["x"], pts["y"], pts["z"] = xyz.T.astype(np.float32)
    x, y, z = (pts[f] for f in ("x", "y", "z"))
    r2 = x * x + y * y + z * z
    close = np.isfinite(r2) & (r2 > 1e-6) & (r2 < 10.0 * 10.0)
    v = np.floor(np.stack([x[close], y[close], z[close]], 1) / 0.3).astype(np.int64)  # the former keys
    span = int(2 * 10.0 / 0.3) + 3
    key = ((v[:, 0] + span) * (2 * span) + (v[:, 1] + span)) * (2 * span) + (v[:, 2] + span)
    _, counts = np.unique(key, return_counts=True)
    expected = float(np.count_nonzero(counts == 1)) / int((np.isfinite(r2) & (r2 > 1e-6)).sum())
    assert 0.0 < expected < 1.0 and scan_stats(pts, 10.0, 0.3).near_share == expected
