"""Rule check: the published grid never calls free a cell with direct LiDAR evidence of the current
scan; the network/evidence disagreement is a health signal; published values (occupancy and
observation age) are built by one function and decoded as a planner would."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ssm_perception.bev.features import LidarScan, encode_frame
from ssm_perception.bev.grid import BevGrid
from ssm_perception.config import (
    ConfigError,
    EvidenceConfig,
    GridConfig,
    PerceptionConfig,
)
from ssm_perception.evidence import (
    EvidenceCheck,
    EvidenceGrids,
    band_bins,
    decode_occupancy,
    evidence_grids,
    published_grids,
)
from ssm_perception.geometry import make_transform, se2_matrix
from ssm_perception.io.pointcloud2 import LIDAR_DTYPE
from ssm_perception.pipeline import FrameInputs, PerceptionPipeline

GRID = GridConfig(length_x=20.0, length_y=20.0, resolution=0.5)  # 40 x 40, x_min = -10
T_BASE_LIDAR = make_transform((0.0, 0.0, 1.8))
S = 1_000_000_000


def _cloud(cells: dict[tuple[float, float], list[float]], ground: int = 3000, seed: int = 0) -> np.ndarray:
    """Returns at given base_link (x, y) with given heights above the ground, plus flat ground."""
    rng = np.random.default_rng(seed)
    pts = [(x, y, h) for (x, y), hs in cells.items() for h in hs]
    r, th = rng.uniform(2, 9.5, ground), rng.uniform(-np.pi, np.pi, ground)
    a = np.zeros(len(pts) + ground, LIDAR_DTYPE)
    if pts:
        p = np.array(pts)
        a["x"][: len(pts)], a["y"][: len(pts)], a["z"][: len(pts)] = p[:, 0], p[:, 1], p[:, 2] - 1.8
    a["x"][len(pts):], a["y"][len(pts):] = r * np.cos(th), r * np.sin(th)
    a["z"][len(pts):] = -1.8 + rng.normal(0, 0.01, ground)
    a["intensity"] = 10.0
    return a


def _cell(x: float, y: float) -> tuple[int, int]:
    return int((x - GRID.x_min) / GRID.resolution), int((y - GRID.y_min) / GRID.resolution)


def test_evidence_counts_are_the_encoders_in_the_height_band():
    cfg = EvidenceConfig()
    assert band_bins(cfg) == ["lidar_hbin_1", "lidar_hbin_2", "lidar_hbin_3"]  # 0.25 .. 2.5 m
    cells = {(5.25, 1.25): [0.5, 1.0, 1.2, 2.0], (5.25, -2.25): [0.5], (-4.75, 3.25): [3.0, 3.1, 3.2]}
    feats = encode_frame(BevGrid.from_config(GRID), LidarScan(_cloud(cells), T_BASE_LIDAR), ground="flat")
    ev = evidence_grids(feats.features, cfg)
    assert ev.band_count[_cell(5.25, 1.25)] == 4
    assert ev.band_count[_cell(5.25, -2.25)] == 1
    assert ev.band_count[_cell(-4.75, 3.25)] == 0  # above the band (overhang): not evidence ...
    assert ev.nonground_count[_cell(-4.75, 3.25)] == 3  # ... but non-ground
    assert ev.band_count.sum() == 5
    evidence = ev.evidence(cfg)
    assert evidence[_cell(5.25, 1.25)] and not evidence[_cell(5.25, -2.25)]  # min_returns = 2
    assert ev.free_now.any() and ev.direct_now[_cell(5.25, 1.25)]
    low = EvidenceConfig(min_height_m=0.25, max_height_m=0.75)
    assert evidence_grids(feats.features, low).band_count[_cell(5.25, 1.25)] == 1


def test_band_must_use_the_encoders_bin_edges():
    with pytest.raises(ValueError, match="height bin edges"):
        EvidenceConfig(min_height_m=0.3)
    with pytest.raises(ConfigError, match="evidence.floor"):
        PerceptionConfig.from_ros_parameters({"evidence.floor": 0.4})


def _outputs(prob, evidence_cells=(), free_cells=(), unknown=None, age=None):
    shape = prob.shape
    band = np.zeros(shape, np.int32)
    for c in evidence_cells:
        band[c] = 5
    free = np.zeros(shape, bool)
    for c in free_cells:
        free[c] = True
    ev = EvidenceGrids(band, band.copy(), free, (band > 0) | free)
    return SimpleNamespace(occupancy=prob, evidence=ev, unknown=np.zeros(shape, bool) if unknown is None else unknown,
                           direct_age_s=age)


def test_published_grid_never_calls_evidence_free_and_encodes_observation_age():
    cfg = EvidenceConfig()
    prob = np.full((6, 6), 0.1, np.float32)
    prob[0, 0] = 0.9  # network: occupied where the scan sees through
    prob[5, 5] = 0.95  # network: occupied on evidence, stays
    unknown = np.zeros((6, 6), bool)
    unknown[3, 3] = True
    age = np.full((6, 6), np.inf, np.float32)
    age[1, :] = 0.0  # observed by a range sensor this scan
    age[2, 0], age[2, 1], age[2, 2] = 0.05, 1.0, 60.0
    out = _outputs(prob, evidence_cells=[(1, 1), (5, 5)], free_cells=[(0, 0)], unknown=unknown, age=age)
    pub = published_grids(out, cfg)
    assert pub.occupancy.dtype == np.int8 and pub.observation.dtype == np.int8
    assert pub.occupancy[1, 1] == 75  # network said 0.1: raised to the floor
    assert pub.occupancy[5, 5] == 95  # the network may say more
    assert pub.occupancy[0, 0] == 90  # 'keep': the see-through cell keeps the network's value
    assert pub.occupancy[4, 4] == 10 and pub.occupancy[3, 3] == -1
    near = published_grids(_outputs(np.array([[0.503, 0.497, 0.5, 0.994]], np.float32)), cfg).occupancy
    assert near.tolist() == [[51, 49, 50, 99]]  # the encoding never flips the occupied/free decision
    assert (pub.observation[1] == 100).all() and pub.observation[3, 3] == -1
    assert pub.observation[2, 0] == 99 and pub.observation[2, 1] == 90 and pub.observation[2, 2] == 1
    assert pub.observation[4, 4] == 0  # never observed directly: the occupancy there is inferred
    decoded = decode_occupancy(pub.occupancy)
    assert decoded[3, 3] == 0.5 and abs(decoded[1, 1] - 0.75) < 1e-6
    # Without the rule, the published value is the network's; 'clear' caps see-through cells at 0.5.
    assert published_grids(out, EvidenceConfig(enabled=False)).occupancy[1, 1] == 10
    clear = published_grids(out, EvidenceConfig(free_space="clear")).occupancy
    assert clear[0, 0] == 50 and clear[1, 1] == 75


def test_disagreement_rate_levels():
    cfg = EvidenceConfig(min_cells=4, ema=1.0, disagreement_warn=0.2, disagreement_error=0.5)
    check = EvidenceCheck(cfg)
    cells = [(i, 0) for i in range(10)]
    prob = np.full((10, 10), 0.9, np.float32)
    r = check.update(prob, _outputs(prob, cells).evidence)
    assert r.level == 0 and r.disagreement == 0.0 and r.evidence_cells == 10
    prob[:3, 0] = 0.2
    r = check.update(prob, _outputs(prob, cells).evidence)
    assert r.level == 1 and abs(r.disagreement - 0.3) < 1e-9 and r.network_free == 3
    prob[:8, 0] = 0.2
    r = check.update(prob, _outputs(prob, cells).evidence)
    assert r.level == 2 and "out of distribution" in r.message
    few = check.update(prob, _outputs(prob, cells[:3]).evidence)
    assert few.disagreement is None and few.disagreement_mean == r.disagreement_mean  # no sample


class _BlindModel(torch.nn.Module):
    """A stand-in for a network out of its distribution: P(occupied) = 0.02 everywhere."""

    def __init__(self, real):
        super().__init__()
        self.real = real
        self.kind, self.grid = "mamba", real.grid

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.real, name)

    def step(self, x, state, dt, reset_mask=None):
        heads, state = self.real.step(x, state, dt, reset_mask)
        heads = dict(heads)
        heads["occupancy_logit"] = torch.full_like(heads["occupancy_logit"], -3.9)
        return heads, state


def test_pipeline_publishes_evidence_the_network_erased_and_raises_the_disagreement():
    from ssm_perception.model import BevPerceptionModel

    cfg = PerceptionConfig(grid=GRID, model={"kind": "mamba", "d_model": 8, "d_state": 4, "headdim": 4})
    cfg.evidence.ema, cfg.evidence.min_cells = 0.5, 5
    model = _BlindModel(BevPerceptionModel(cfg).eval())
    pipe = PerceptionPipeline(cfg, model=model)
    pipe._warp_in_step = False
    wall = {(6.25, y): [0.5, 1.0, 1.5] for y in np.arange(-3.25, 3.5, 0.5)}
    outs = [pipe.process(FrameInputs(stamp_ns=S + k * S // 10, T_odom_base=se2_matrix(0.0, 0, 0),
                                     lidar=_cloud(wall, seed=k), T_base_lidar=T_BASE_LIDAR)) for k in range(4)]
    o = outs[-1]
    assert not o.unknown.any()  # a learned model has something everywhere: -1 only for non-finite
    pub = published_grids(o, cfg.evidence)
    i, _ = _cell(6.25, 0.0)
    wall_cells = o.evidence.evidence(cfg.evidence)
    assert wall_cells[i].sum() >= 12
    assert (pub.occupancy[wall_cells] >= 75).all()  # the network said 0.02
    assert (pub.occupancy[~wall_cells] <= 2).all()
    assert (pub.observation[wall_cells] == 100).all()
    assert o.evidence_report.disagreement == 1.0 and o.evidence_report.level == 2
    assert np.isinf(o.direct_age_s[0, 0]) and o.direct_age_s[wall_cells].max() == 0.0
