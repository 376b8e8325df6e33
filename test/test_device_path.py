"""The GPU frame path, checked on the CPU (issue 21): what a CUDA pipeline does differently (the
stale-cell reset check deferred to the read-back, everything the host needs in one packed copy,
the camera image reduced on the device, evidence planes computed on the device) must give the
outputs of the plain CPU path."""

import dataclasses

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ssm_perception.bev.camera import image_to_tensor
from ssm_perception.bev.device import GraphCache, graph_capacity, resolve_stats
from ssm_perception.bev.features import CameraFrame, LidarScan, RadarScan, encode_frame
from ssm_perception.bev.grid import BevGrid
from ssm_perception.config import GridConfig, PerceptionConfig
from ssm_perception.evidence import evidence_grids, evidence_planes, grids_from_planes
from ssm_perception.pipeline import FrameInputs, PerceptionPipeline


def _clip(seconds=0.5, size=20.0, seed=5):
    from ssm_perception.sim.scenario import Scenario

    grid = GridConfig(length_x=size, length_y=size)
    sc = Scenario.from_preset("urban", seed=seed, duration_s=seconds, grid=grid)
    return grid, [FrameInputs.from_sim(sc.config, fr) for fr in sc.frames()]


def _frames(clip, n=12):
    """n frames at 10 Hz from a short clip: the LiDAR drops out for frames 3-5 (cells go stale: a
    partial reset), the pose jumps 9 m at frame 9 (a full reset)."""
    out = []
    for k in range(n):
        src = clip[k % len(clip)]
        pose = src.T_odom_base.copy()
        pose[0, 3] += 0.3 * k + (9.0 if k >= 9 else 0.0)
        out.append(dataclasses.replace(src, stamp_ns=clip[0].stamp_ns + k * 100_000_000, T_odom_base=pose,
                                       lidar=None if 3 <= k <= 5 else src.lidar))
    return out


def _device_like(pipe: PerceptionPipeline) -> PerceptionPipeline:
    """The CUDA pipeline's host-side choices, on the CPU."""
    pipe.policy.defer_cells = True
    pipe.policy.age_on_device = True  # the age step as one function, warp grid from the motion inside
    pipe.health.grid_on_device = True  # likewise the monitor's per-cell step
    pipe.packed_read_back = True
    pipe.encoder_graphs = GraphCache(pad_on_cpu=True)  # the graphed encoders' padded inputs (run eagerly here)
    pipe.health.graphs = pipe.policy.graphs = pipe.encoder_graphs
    return pipe


def _dets(out):
    return [(d.cls, d.x, d.y, d.yaw, d.score) for d in out.detections_base]


def test_device_path_gives_the_cpu_paths_outputs():
    grid, clip = _clip()
    cfg = PerceptionConfig()
    cfg.grid = grid
    cfg.reset.unobserved_cell_reset_s = 0.25
    cpu, dev = PerceptionPipeline(cfg), _device_like(PerceptionPipeline(cfg))
    saw = {"full": 0, "partial": 0, "dets": 0}
    for inp in _frames(clip):
        a, b = cpu.process(inp), dev.process(inp)
        saw["full"] += a.reset.full
        saw["partial"] += a.reset.cell_mask is not None
        saw["dets"] += len(a.detections_base)
        # the deferred check resolves to the eager decision: reasons, details, mask or none, counts
        assert (a.reset.reasons, a.reset.details) == (b.reset.reasons, b.reset.details)
        assert (a.reset.cell_mask is None) == (b.reset.cell_mask is None) and b.reset.cells_pending is None
        if a.reset.cell_mask is not None:
            assert torch.equal(a.reset.cell_mask, b.reset.cell_mask)
        # occupancy travels as uint8 in the packed copy: within half a step of 1/255 everywhere
        d = np.abs(a.occupancy - b.occupancy)
        assert d.max() <= 0.5 / 255 + 1e-6
        assert np.array_equal(a.unknown, b.unknown)
        assert _dets(a) == _dets(b) and len(a.tracks) == len(b.tracks)  # the table travels bit-exact
        assert a.health == b.health and a.sensors == b.sensors
        timings = ("timings_ms", "lidar_stage_ms")  # counters read back with the frame's one copy
        assert {k: v for k, v in a.feature_stats.items() if k not in timings} == \
               {k: v for k, v in b.feature_stats.items() if k not in timings}
        assert isinstance(b.feature_stats["lidar_used"], int) and isinstance(b.sensors["lidar"], bool)
        assert a.evidence_report == b.evidence_report
        assert all(np.array_equal(getattr(a.evidence, f.name), getattr(b.evidence, f.name))
                   for f in dataclasses.fields(a.evidence))
        assert np.array_equal(a.direct_age_s, b.direct_age_s)
    assert cpu.reset_counts == dev.reset_counts
    assert saw["full"] >= 2 and saw["partial"] >= 1 and saw["dets"] > 0, saw  # the paths this must cover


def test_graphed_encoders_inputs_padded_to_capacity_give_the_same_features():
    """What the CUDA graphs replay (fixed-capacity clouds with a live row, per-frame numbers as
    tensors, the camera projection inside), run eagerly: bit-equal features and counters."""
    grid_cfg, clip = _clip(seconds=0.3, size=40.0)
    grid = BevGrid.from_config(grid_cfg)
    for inp in clip[-2:]:
        for twist in ((4.0, 0.1, 0.05), None):
            scans = (LidarScan(inp.lidar, inp.T_base_lidar), RadarScan(inp.radar, inp.T_base_radar),
                     CameraFrame(inp.image, inp.K, inp.T_base_camera))
            plain = encode_frame(grid, *scans, ego_twist=twist)
            padded = encode_frame(grid, *scans, ego_twist=twist, graphs=GraphCache(pad_on_cpu=True))
            assert torch.equal(plain.features, padded.features)
            drop = ("timings_ms", "lidar_stage_ms")
            assert {k: v for k, v in plain.stats.items() if k not in drop} == \
                   {k: v for k, v in padded.stats.items() if k not in drop}
            n_lidar, n_radar = plain.stats["lidar_points"], plain.stats["radar_points"]
            assert graph_capacity(n_lidar) > n_lidar and graph_capacity(n_radar) > n_radar  # padding was there
    empty = encode_frame(grid, LidarScan(inp.lidar[:0], inp.T_base_lidar), graphs=GraphCache(pad_on_cpu=True))
    assert resolve_stats(empty.stats)["lidar_points"] == 0 and not empty.sensor_mask["lidar"]


@pytest.mark.parametrize(("shape", "factor"), [((96, 160, 3), 1), ((97, 161, 3), 3), ((60, 80), 2)])
def test_camera_image_reduced_on_the_device_equals_the_host_reduction(shape, factor):
    img = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    host = image_to_tensor(img, factor, on_device=False)
    dev = image_to_tensor(img, factor, on_device=True)
    assert host.shape == dev.shape == (1, 3, shape[0] // factor, shape[1] // factor)
    assert torch.equal(host, dev)


def test_evidence_planes_equal_the_host_evidence_grids():
    grid_cfg, clip = _clip(seconds=0.2)
    inp = clip[-1]
    feats = encode_frame(BevGrid.from_config(grid_cfg), LidarScan(inp.lidar, inp.T_base_lidar),
                         RadarScan(inp.radar, inp.T_base_radar)).features
    cfg = PerceptionConfig().evidence
    ref, got = evidence_grids(feats, cfg), grids_from_planes(evidence_planes(feats, cfg).numpy())
    for f in dataclasses.fields(ref):
        assert np.array_equal(getattr(ref, f.name), getattr(got, f.name)), f.name
    assert ref.band_count.sum() > 0 and ref.free_now.any()


class _HostReads(TorchDispatchMode):
    """Counts the ops that make a CUDA host wait for the device: reading a tensor's value
    (item / int / bool / float: ``_local_scalar_dense``) and data-dependent shapes (nonzero, boolean
    indexing, unique). On the CPU they cost nothing, which is why they creep in unnoticed."""

    NAMES = ("_local_scalar_dense", "nonzero", "masked_select", "unique", "argwhere")

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        bool_index = name in ("index", "index_put", "index_put_") and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else ()) or ())
        if bool_index or name == "is_nonzero" or any(n in name for n in self.NAMES):
            import traceback

            where = next((f for f in reversed(traceback.extract_stack()[:-1]) if "ssm_perception" in f.filename), None)
            self.calls.append(f"{name} in {None if where is None else where.name}")
        return func(*args, **(kwargs or {}))


def test_device_path_reads_no_device_value_outside_the_read_back():
    """The frame step reads no device value: everything the host needs (health, reset flags,
    counters, sensor flags) comes in the one packed copy, and the ground fit draws its sample
    without compacting the candidates (no data-dependent shape)."""
    grid, clip = _clip(seconds=0.3)
    cfg = PerceptionConfig()
    cfg.grid = grid
    pipe = _device_like(PerceptionPipeline(cfg))
    frames = _frames(clip, 4)
    for inp in frames[:2]:
        pipe.process(inp)
    with _HostReads() as reads:
        pipe.process(frames[2])
    cpu_only = {"is_nonzero in _check_dt",  # BevPerceptionModel checks dt only when it is a CPU tensor
                "index in grid_taps"}  # row gathers of channels-last CPU tensors (CUDA: grid_sample)
    assert not set(reads.calls) - cpu_only, reads.calls


@pytest.mark.parametrize("motion", [(0.3, 0.01, 0.004), (1.0, -0.5, 0.0), (0.37, 0.0, 0.0), (-2.2, 1.3, -0.2)])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_warp_grid_computed_the_device_way_equals_the_host_grid(motion, mode):
    from ssm_perception.temporal.warp import sampling_grid

    grid = BevGrid.square(40, 0.5)
    g_host, m_host = sampling_grid(motion, grid, 1, mode, on_device=False)
    g_dev, m_dev = sampling_grid(motion, grid, 1, mode, on_device=True)
    cell_aligned = motion == (1.0, -0.5, 0.0)  # whole cells, no turn: values move exactly
    assert m_host == m_dev and (m_host == "nearest") == (mode == "nearest" or cell_aligned)
    assert torch.allclose(g_host, g_dev, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("shape", "dtype"), [((480, 640, 3), np.uint8), ((481, 641), np.uint8),
                                              ((480, 640, 4), np.uint8), ((480, 640, 3), np.uint16)])
def test_camera_graph_reducing_the_raw_image_equals_the_plain_encoder(shape, dtype):
    """The camera's graph takes the raw image and reduces it inside (uint16: reduced on the host
    first): the same features as the plain encoder, bit for bit."""
    from ssm_perception.bev.camera import encode_camera

    grid = BevGrid.square(40, 0.5)
    K = np.array([[300.0, 0, 320], [0, 300, 240], [0, 0, 1]])
    T = np.eye(4)
    T[:3, :3] = [[0, 0, 1], [-1, 0, 0], [0, -1, 0]]  # optical frame looking along +x
    T[2, 3] = 1.5
    img = np.random.default_rng(0).integers(0, np.iinfo(dtype).max, shape, dtype=dtype)
    plain, _ = encode_camera(grid, img, K, T)
    graphed, stats = encode_camera(grid, img, K, T, graphs=GraphCache(pad_on_cpu=True))
    assert torch.equal(plain, graphed) and int(stats["camera_visible_cells"]) > 0
