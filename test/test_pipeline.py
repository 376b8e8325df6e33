"""PerceptionPipeline end to end on small synthetic frames: maps stay world-fixed while the ego
moves, resets happen with the right reasons and clear memory, bad input never becomes NaN,
detections reach the tracker in odom, and the model fallback is explicit."""

import logging

import numpy as np
import pytest
import torch
from fake_models import PeaksModel

from ssm_perception.config import GridConfig, PerceptionConfig
from ssm_perception.geometry import make_transform, se2_matrix
from ssm_perception.io.pointcloud2 import LIDAR_DTYPE, RADAR_DTYPE
from ssm_perception.model import BevPerceptionModel, CheckpointError
from ssm_perception.pipeline import FrameInputs, PerceptionPipeline
from ssm_perception.temporal import reset_policy as rp

S = 1_000_000_000
DT = S // 10
GRID = GridConfig(length_x=20.0, length_y=20.0, resolution=0.5)  # 40 x 40 cells, x_min = y_min = -10
T_BASE_LIDAR = make_transform((0.0, 0.0, 1.8))
WALL_X = 8.25  # odom x of a wall across the road; a cell centre whenever ego x is a multiple of 0.5


def _cfg(**model) -> PerceptionConfig:
    return PerceptionConfig(grid=GRID, model={"kind": "logodds", **model})


def _wall_cloud(ego_x: float, rng) -> np.ndarray:
    """A wall (odom x = WALL_X, |y| < 3) plus ground returns, in the LiDAR frame."""
    n_wall, n_ground = 600, 1500
    a = np.zeros(n_wall + n_ground, LIDAR_DTYPE)
    a["x"][:n_wall] = WALL_X - ego_x
    a["y"][:n_wall] = rng.uniform(-3, 3, n_wall)
    a["z"][:n_wall] = rng.uniform(0.3, 2.0, n_wall) - 1.8
    r, th = rng.uniform(2, 9, n_ground), rng.uniform(-0.5, 0.5, n_ground)
    a["x"][n_wall:], a["y"][n_wall:] = r * np.cos(th), r * np.sin(th)
    a["z"][n_wall:] = -1.8 + rng.normal(0, 0.02, n_ground)
    a["intensity"] = 0.5
    return a


def _frame(k: int, rng, stamp=None, ego_x=None, **kw) -> FrameInputs:
    ego_x = 0.5 * k if ego_x is None else ego_x
    args = {"lidar": _wall_cloud(ego_x, rng), "T_base_lidar": T_BASE_LIDAR}
    args.update(kw)
    return FrameInputs(stamp_ns=S + k * DT if stamp is None else stamp, T_odom_base=se2_matrix(ego_x, 0, 0), **args)


def test_world_fixed_map_and_stage_latencies(caplog):
    rng = np.random.default_rng(0)
    # the trainer raises this logger's level for its own process; the pipeline's INFO lines are asserted here
    with caplog.at_level(logging.INFO), caplog.at_level(logging.INFO, logger="ssm_perception.temporal.reset_policy"):
        p = PerceptionPipeline(_cfg())
        outs = [p.process(_frame(k, rng)) for k in range(6)]
    assert outs[0].reset.reasons == [rp.ROUTE_START] and "route_start" in caplog.text
    assert all(o.reset.reasons == [] for o in outs[1:])
    o = outs[-1]
    assert o.occupancy.shape == (40, 40) and o.unknown.shape == (40, 40) and o.dynamic.shape == (40, 40)
    assert set(o.latency_ms) == {"reset", "encode", "warp", "temporal", "heads", "tracking", "health", "total"}
    assert all(v >= 0 for v in o.latency_ms.values())
    assert o.latency_ms["total"] >= sum(v for k, v in o.latency_ms.items() if k != "total")
    assert o.sensors["lidar"] and not o.sensors["camera"]
    for k, out in enumerate(outs):
        i_wall = 36 - k  # the wall's cell moves one cell towards the ego per frame
        assert out.occupancy[i_wall, 17:23].min() > 0.5, k
        assert not out.unknown[i_wall, 17:23].any()
    # Evidence accumulates on the wall across frames (the warp kept it on the same world cells).
    assert outs[-1].occupancy[31, 20] > outs[0].occupancy[36, 20]
    assert np.isfinite(o.occupancy).all() and o.unknown.any()  # far corners were never observed


def test_resets_clear_memory_with_reasons():
    rng = np.random.default_rng(1)
    p = PerceptionPipeline(_cfg())
    for k in range(4):
        p.process(_frame(k, rng))
    # Bag loop: time jumps back. No LiDAR this frame, so after the reset nothing is known.
    out = p.process(_frame(0, rng, lidar=None))
    assert out.reset.full and out.reset.reasons == [rp.TIME_BACKWARDS]
    assert out.unknown.all() and np.allclose(out.occupancy, 0.5)
    # Localization jump (20 m in 0.1 s).
    p.process(_frame(1, rng))
    out = p.process(_frame(2, rng, ego_x=20.5))
    assert out.reset.reasons == [rp.LOCALIZATION_JUMP]
    # Explicit request, duplicate stamp, invalid pose: all resets, never NaN.
    p.request_reset("test")
    out = p.process(_frame(3, rng, ego_x=21.0))
    assert out.reset.reasons == [rp.REQUESTED]
    out = p.process(_frame(3, rng, ego_x=21.0))
    assert out.reset.reasons == [rp.TIME_NOT_ADVANCING]
    bad = _frame(4, rng)
    bad.T_odom_base = np.full((4, 4), np.nan)
    out = p.process(bad)
    assert out.reset.reasons == [rp.INVALID_POSE] and out.tracks == [] and np.isfinite(out.occupancy).all()
    counts = p.reset_counts
    assert counts[rp.TIME_BACKWARDS] == 1 and counts[rp.LOCALIZATION_JUMP] == 1 and counts[rp.REQUESTED] == 1


def test_non_finite_state_is_reported_and_reset():
    rng = np.random.default_rng(2)
    p = PerceptionPipeline(_cfg())
    p.process(_frame(0, rng))
    p.process(_frame(1, rng))
    p.state = {k: torch.full_like(v, float("nan")) for k, v in p.state.items()}  # a corrupted memory
    out = p.process(_frame(2, rng))
    assert out.health.nonfinite > 0 and np.isfinite(out.occupancy).all() and np.isfinite(out.dynamic).all()
    out = p.process(_frame(3, rng))
    assert out.reset.reasons == [rp.NON_FINITE_STATE]
    assert out.health.nonfinite == 0


def test_bad_inputs_are_masked_not_raised():
    rng = np.random.default_rng(3)
    p = PerceptionPipeline(_cfg())
    cloud = _wall_cloud(0, rng)
    cloud["x"][:50] = np.nan
    cloud["z"][50:60] = np.inf
    no_xyz = np.zeros(10, np.dtype([("a", "<f4")]))
    radar = np.zeros(5, RADAR_DTYPE)
    radar["x"], radar["radial_velocity"] = 5.0, -2.0
    out = p.process(FrameInputs(S, se2_matrix(0, 0, 0), lidar=cloud, T_base_lidar=T_BASE_LIDAR,
                                radar=radar, T_base_radar=make_transform((3.5, 0, 0.5)),
                                image=np.zeros((8, 8, 3), np.uint8), K=np.zeros((3, 3)),
                                T_base_camera=np.eye(4)))
    assert np.isfinite(out.occupancy).all() and out.sensors["lidar"] and out.sensors["radar"]
    assert any("camera" in s and "intrinsics" in s for s in out.input_problems)
    out = p.process(FrameInputs(S + DT, se2_matrix(0, 0, 0), lidar=no_xyz, T_base_lidar=T_BASE_LIDAR,
                                radar=radar, T_base_radar=None))
    assert not out.sensors["lidar"] and not out.sensors["radar"]
    assert any(s.startswith("lidar: cloud needs fields") for s in out.input_problems)
    assert any(s.startswith("radar: no valid") for s in out.input_problems)


def test_detections_reach_the_tracker_in_odom():
    rng = np.random.default_rng(4)
    cfg = _cfg()
    model = PeaksModel(cfg)
    p = PerceptionPipeline(cfg, model=model)
    assert p.model_info == {"kind": "fake", "source": "given"}
    obj = (6.25, 2.25)  # odom; ego drives +x at 5 m/s, so the object's cell moves back by one per frame
    ids = set()
    for k in range(6):
        model.peaks = [(32 - k, 24)]
        out = p.process(_frame(k, rng))
        d = out.detections_base[0]
        assert d.x == pytest.approx(obj[0] - 0.5 * k) and d.y == pytest.approx(obj[1])
        assert out.detections_odom[0].x == pytest.approx(obj[0]) and out.detections_odom[0].frame == "odom"
        ids.update(t.id for t in out.tracks)
    (track,) = out.tracks
    assert track.status == "confirmed" and len(ids) == 1
    assert track.x == pytest.approx(obj[0], abs=0.05) and abs(track.vx) < 0.5
    # A full reset drops every track; the next detection starts a new id.
    p.request_reset("operator")
    model.peaks = [(26, 24)]
    out = p.process(_frame(6, rng))
    fresh = "tentative" if cfg.tracking.confirm_hits > 1 else "confirmed"  # a one-hit birth is confirmed at once
    assert [t.id for t in out.tracks] != [track.id] and all(t.status == fresh for t in out.tracks)


def test_model_fallback_is_explicit(caplog, tmp_path, monkeypatch):
    import ssm_perception.pipeline as pl

    monkeypatch.setattr(pl, "SHIPPED_CHECKPOINTS", tmp_path)  # nothing shipped
    with caplog.at_level(logging.WARNING, logger="ssm_perception.pipeline"):
        p = PerceptionPipeline(PerceptionConfig(grid=GRID, model={"kind": "convgru"}))
    assert p.model.kind == "logodds" and "falling back" in caplog.text
    assert "convgru" in p.model_info["fallback"] and p.model_info["kind"] == "logodds"
    with pytest.raises(CheckpointError, match="not found"):
        PerceptionPipeline(_cfg(kind="mamba", checkpoint=str(tmp_path / "missing.safetensors")))


ODD_CLOUDS = {
    "empty": np.zeros(0, LIDAR_DTYPE),
    "all_nan": np.full(64, np.nan, LIDAR_DTYPE),
    "far_away": np.full(64, 1e30, LIDAR_DTYPE),
    "xyz_only_float64": np.ones(64, np.dtype([("x", "<f8"), ("y", "<f8"), ("z", "<f8")])),
    "int16_xyz": np.ones(64, np.dtype([("x", "<i2"), ("y", "<i2"), ("z", "<i2")])),
    "big_endian": np.ones(64, np.dtype([("x", ">f4"), ("y", ">f4"), ("z", ">f4")])),
    "vector_x": np.ones(64, np.dtype([("x", "<f4", (2,)), ("y", "<f4"), ("z", "<f4")])),
    "plain_array": np.ones((64, 3), np.float32),
}


def test_odd_clouds_never_raise_or_produce_nan():
    rng = np.random.default_rng(5)
    p = PerceptionPipeline(_cfg())
    p.process(_frame(0, rng))
    for k, (name, cloud) in enumerate(ODD_CLOUDS.items(), start=1):
        out = p.process(_frame(k, rng, lidar=cloud))
        assert np.isfinite(out.occupancy).all() and np.isfinite(out.dynamic).all(), name
        assert out.reset.reasons == [], name
        if name in ("vector_x", "plain_array"):
            assert not out.sensors["lidar"] and out.input_problems, name


def test_encoder_failure_is_contained(monkeypatch):
    import ssm_perception.pipeline as pl

    calls = []
    real = pl.encode_frame

    def flaky(grid, lidar=None, *a, **kw):
        calls.append(lidar is not None)
        if lidar is not None:
            raise RuntimeError("simulated encoder bug")
        return real(grid, lidar, *a, **kw)

    monkeypatch.setattr(pl, "encode_frame", flaky)
    out = PerceptionPipeline(_cfg()).process(_frame(0, np.random.default_rng(6)))
    assert calls == [True, False] and not out.sensors["lidar"]
    assert out.input_problems == ["encoder failed: RuntimeError: simulated encoder bug"]


def test_checkpoint_resolution_explicit_then_shipped(tmp_path, monkeypatch):
    import ssm_perception.pipeline as pl
    from ssm_perception.model import save_checkpoint

    cfg = PerceptionConfig(grid=GRID, model={"kind": "convgru", "d_model": 8, "allow_untrusted_weights": True})
    path = tmp_path / "convgru.safetensors"
    save_checkpoint(BevPerceptionModel(cfg), path, {"note": "test"})
    explicit = PerceptionPipeline(cfg.model_copy(update={"model": cfg.model.model_copy(update={"checkpoint": str(path)})}))
    assert explicit.model.kind == "convgru" and explicit.model_info["source"] == str(path)
    monkeypatch.setattr(pl, "SHIPPED_CHECKPOINTS", tmp_path)
    shipped = PerceptionPipeline(cfg)
    assert shipped.model_info["source"] == str(path) and "fallback" not in shipped.model_info
    assert pl.shipped_checkpoint("attention") is None
    out = shipped.process(_frame(0, np.random.default_rng(7)))
    assert np.isfinite(out.occupancy).all()


def test_mamba_pipeline_reuses_two_state_buffers_and_changes_no_number():
    """The pipeline gathers the warp inside the Mamba step and hands the previous-but-one state
    back as the next one's buffer: the same occupancy as warp-then-step, and after the first
    frames of an episode only two state buffers ever (none allocated per frame)."""
    import copy

    torch.manual_seed(0)
    cfg = PerceptionConfig(grid=GRID, model={"kind": "mamba"})
    cfg.reset.unobserved_cell_reset_s = 0.25  # partial resets of stale cells on most frames
    model = BevPerceptionModel(cfg)
    fast, plain = PerceptionPipeline(cfg, model=model), PerceptionPipeline(cfg, model=copy.deepcopy(model))
    plain._warp_in_step = False  # the old order: model.warp, then model.step
    rng_a, rng_b = np.random.default_rng(1), np.random.default_rng(1)
    stamps = [S + k * DT for k in range(8)] + [S + 30 * DT + k * DT for k in range(8)]  # a 2.2 s gap: full reset
    reused, partial = [], 0
    for k, stamp in enumerate(stamps):
        spare = fast._spare_state
        a = fast.process(_frame(k, rng_a, stamp=stamp, ego_x=0.37 * k))
        # the buffer handed in is alive while the step runs, so an allocation could not land on it
        reused.append(spare is not None and fast.state["ssm"].data_ptr() == spare["ssm"].data_ptr())
        b = plain.process(_frame(k, rng_b, stamp=stamp, ego_x=0.37 * k))
        assert a.reset.reasons == b.reset.reasons
        partial += a.reset.cell_mask is not None
        # Warp-in-step may run as the compiled CPU loop (temporal/cpu_kernel.py), whose float32
        # sums are ordered differently from torch's: equal to a few ulp, not bit for bit.
        np.testing.assert_allclose(a.occupancy, b.occupancy, rtol=0, atol=1e-6)
        np.testing.assert_allclose(a.dynamic, b.dynamic, rtol=0, atol=1e-6)
    assert partial >= 4
    # frames 0-1 of each episode allocate (zeros, then the first channels-last state), then never
    assert reused == [False, False] + [True] * 6 + [False, False] + [True] * 6


def test_configured_backend_is_used_with_a_checkpoint(tmp_path):
    """model.backend is a runtime choice: a checkpoint trained with 'reference' runs with the
    backend the node's configuration asks for (it used to silently keep the training one)."""
    from ssm_perception.model import save_checkpoint
    from ssm_perception.pipeline import resolve_model

    cfg = PerceptionConfig(grid=GRID, model={"kind": "mamba"})
    save_checkpoint(BevPerceptionModel(cfg), tmp_path / "m.safetensors")
    for backend in ("reference", "fused", "mamba_ssm"):
        run = PerceptionConfig(grid=GRID, model={"kind": "mamba", "backend": backend, "allow_untrusted_weights": True,
                                                 "checkpoint": str(tmp_path / "m.safetensors")})
        model, _ = resolve_model(run)
        assert model.core.backend == backend and model.config.model.backend == backend
