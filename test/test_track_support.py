"""The track rule (tracking/support.py): a track is published only while the current LiDAR scan has
returns under it; static tracks on long-lived returns only when the model is confident of a class
that stands still (a parked car stays, a wall track goes); through PerceptionPipeline.process."""

from types import SimpleNamespace

import numpy as np
import pytest
from fake_models import PeaksModel

from ssm_perception.config import GridConfig, PerceptionConfig, TrackSupportConfig
from ssm_perception.geometry import make_transform, se2_matrix
from ssm_perception.io.pointcloud2 import LIDAR_DTYPE
from ssm_perception.pipeline import FrameInputs, PerceptionPipeline
from ssm_perception.tracking.support import TrackSupportRule, footprint_returns

GRID = GridConfig(length_x=20.0, length_y=20.0, resolution=0.5)  # 40 x 40 cells, x_min = y_min = -10
T_BASE_LIDAR = make_transform((0.0, 0.0, 1.8))
S = 1_000_000_000
DT = S // 10


def _track(tid, x, y, cls=1, score=0.8, status="confirmed", length=4.5, width=1.9):
    return SimpleNamespace(id=tid, cls=cls, status=status, x=x, y=y, yaw=0.0, length=length, width=width,
                           score=score, class_probs={cls: 1.0})


def _counts(*boxes) -> np.ndarray:
    """[H, W] non-ground counts: 5 returns in every cell of each base_link box (x0, x1, y0, y1)."""
    c = np.zeros((GRID.nx, GRID.ny), np.int32)
    for x0, x1, y0, y1 in boxes:
        i0, i1 = int((x0 - GRID.x_min) / GRID.resolution), int((x1 - GRID.x_min) / GRID.resolution)
        j0, j1 = int((y0 - GRID.y_min) / GRID.resolution), int((y1 - GRID.y_min) / GRID.resolution)
        c[i0:i1, j0:j1] = 5
    return c


def _published_ids(rule, tracks, counts, k, ego_x=0.0):
    out, rep = rule.apply(tracks, counts, se2_matrix(ego_x, 0, 0), 1.0 + 0.1 * k)
    assert rep.checked
    return [t.id for t in out], rep


def test_unsupported_track_is_withheld_and_comes_back_with_its_id():
    rule = TrackSupportRule(TrackSupportConfig(), GRID)
    car = (3.0, 6.0, -1.0, 1.0)  # returns of a car at base_link x 4.5
    ghost = _track(2, -5.0, -6.0)  # a confirmed track on empty ground
    ids, rep = _published_ids(rule, [_track(1, 4.5, 0.0), ghost], _counts(car), 0)
    assert ids == [1] and rep.withheld_unsupported == [2] and rep.returns[2] == 0 and rep.returns[1] > 0
    # occluded for a scan: withheld (the tracker keeps it); returns again: published, same id
    ids, rep = _published_ids(rule, [_track(1, 4.5, 0.0)], _counts(), 1)
    assert ids == [] and rep.withheld_unsupported == [1]
    ids, _ = _published_ids(rule, [_track(1, 4.5, 0.0)], _counts(car), 2)
    assert ids == [1]
    # a coasting track with returns under it is published (as coasting); without, it is not
    ids, _ = _published_ids(rule, [_track(1, 4.5, 0.0, status="coasting")], _counts(car), 3)
    assert ids == [1]
    ids, _ = _published_ids(rule, [_track(1, 4.5, 0.0, status="coasting")], _counts(), 4)
    assert ids == []


def test_support_window_and_min_returns():
    rule = TrackSupportRule(TrackSupportConfig(window_frames=3, min_returns=2), GRID)
    car = (3.0, 6.0, -1.0, 1.0)
    assert _published_ids(rule, [_track(1, 4.5, 0.0)], _counts(car), 0)[0] == [1]
    assert _published_ids(rule, [_track(1, 4.5, 0.0)], _counts(), 1)[0] == [1]  # 1 scan without: in the window
    assert _published_ids(rule, [_track(1, 4.5, 0.0)], _counts(), 2)[0] == [1]
    assert _published_ids(rule, [_track(1, 4.5, 0.0)], _counts(), 3)[0] == []  # 3 scans without
    one = np.zeros((GRID.nx, GRID.ny), np.int32)
    one[29, 20] = 1  # a single return under the box: below min_returns
    assert footprint_returns(one, GRID, 4.5, 0.0, 0.0, 4.5, 1.9, 0.25) == 1
    assert _published_ids(rule, [_track(1, 4.5, 0.0)], one, 4)[0] == []
    # tentative tracks are not the rule's business (published only with publish_tentative, flagged)
    assert _published_ids(rule, [_track(7, -5.0, -6.0, status="tentative")], _counts(), 5)[0] == [7]


def test_moving_track_kept_parked_car_kept_static_wall_track_withheld():
    rule = TrackSupportRule(TrackSupportConfig(), GRID)
    published = {1: 0, 2: 0, 3: 0}
    frames = 45  # 4.5 s: past static_min_s (3 s)
    for k in range(frames):
        ego_x = 0.0
        mover_x = -6.0 + 0.25 * k  # 2.5 m/s along x
        tracks = [_track(1, mover_x, 5.0, score=0.5),  # moving car
                  _track(2, 4.5, -5.0, score=0.8),  # parked car, confidently a car
                  _track(3, -5.0, -5.0, cls=4, score=0.45, length=0.8, width=0.8)]  # a "pedestrian" on a wall
        counts = _counts((mover_x - 2, mover_x + 2, 4.5, 5.5), (3.0, 6.0, -6.0, -4.0), (-5.5, -4.5, -7.0, -3.0))
        ids, rep = _published_ids(rule, tracks, counts, k, ego_x)
        for i in ids:
            published[i] += 1
        if k == frames - 1:
            assert rep.withheld_static == [3]
    assert published[1] == frames  # moving with returns: always published
    assert published[2] == frames  # parked car: static on returns, confident car: kept
    assert published[3] == 30  # the wall track: published until it is 3 s old, then withheld
    # the same parked car with a weak score is withheld once judged static
    weak = TrackSupportRule(TrackSupportConfig(), GRID)
    for k in range(frames):
        ids, _ = _published_ids(weak, [_track(2, 4.5, -5.0, score=0.3)], _counts((3.0, 6.0, -6.0, -4.0)), k)
    assert ids == []
    # the rule off: everything passes
    off = TrackSupportRule(TrackSupportConfig(enabled=False), GRID)
    out, rep = off.apply([_track(2, -5.0, -6.0)], _counts(), se2_matrix(0, 0, 0), 1.0)
    assert [t.id for t in out] == [2] and not rep.checked


def test_without_lidar_tracks_are_not_checked():
    rule = TrackSupportRule(TrackSupportConfig(), GRID)
    out, rep = rule.apply([_track(2, -5.0, -6.0)], None, se2_matrix(0, 0, 0), 1.0)
    assert [t.id for t in out] == [2] and not rep.checked


# ------------------------------------------------------------------------------ through the pipeline
def _car_cloud(with_car: bool, seed: int) -> np.ndarray:
    """Ground returns around the ego, plus (``with_car``) a car body at base_link x 3.5..5.5, |y| < 1."""
    rng = np.random.default_rng(seed)
    n_car, n_ground = (400 if with_car else 0), 2000
    a = np.zeros(n_car + n_ground, LIDAR_DTYPE)
    a["x"][:n_car] = rng.uniform(3.5, 5.5, n_car)
    a["y"][:n_car] = rng.uniform(-1.0, 1.0, n_car)
    a["z"][:n_car] = rng.uniform(0.4, 1.5, n_car) - 1.8
    r, th = rng.uniform(2, 9.5, n_ground), rng.uniform(-np.pi, np.pi, n_ground)
    a["x"][n_car:], a["y"][n_car:] = r * np.cos(th), r * np.sin(th)
    a["z"][n_car:] = -1.8 + rng.normal(0, 0.01, n_ground)
    a["intensity"] = 10.0
    return a


@pytest.mark.parametrize("rule_on", [True, False])
def test_pipeline_publishes_only_supported_tracks(rule_on):
    cfg = PerceptionConfig(grid=GRID, model={"kind": "logodds"}, track_support={"enabled": rule_on})
    model = PeaksModel(cfg, occupancy_logit=5.0)  # the detections' occupancy gate passes everywhere
    p = PerceptionPipeline(cfg, model=model)
    car, ghost = (29, 20), (10, 8)  # cells: base_link (4.75, 0.25) on the car's returns, (-4.75, -5.75) empty
    model.peaks = [car, ghost]
    for k in range(3):
        out = p.process(FrameInputs(S + k * DT, se2_matrix(0, 0, 0), lidar=_car_cloud(True, k),
                                    T_base_lidar=T_BASE_LIDAR))
    xs = sorted(round(t.x) for t in out.tracks)
    if not rule_on:  # the tracker alone publishes the ghost
        assert xs == [-5, 5] and not out.track_support.checked
        return
    assert xs == [5] and all(t.status == "confirmed" for t in out.tracks)
    assert len(out.track_support.withheld_unsupported) == 1 and out.track_support.published == 1
    assert out.track_support.shape_checked and out.track_support.withheld_shape == []  # the band reaches the rule
    car_id = out.tracks[0].id
    # the car's returns vanish (occluded) while the network still reports it: withheld, not deleted
    out = p.process(FrameInputs(S + 3 * DT, se2_matrix(0, 0, 0), lidar=_car_cloud(False, 3),
                                T_base_lidar=T_BASE_LIDAR))
    assert out.tracks == [] and car_id in out.track_support.withheld_unsupported
    out = p.process(FrameInputs(S + 4 * DT, se2_matrix(0, 0, 0), lidar=_car_cloud(True, 4),
                                T_base_lidar=T_BASE_LIDAR))
    assert [t.id for t in out.tracks] == [car_id]


def test_node_reports_the_track_rule_in_diagnostics(rclpy_context):
    import rclpy  # noqa: F401  (CI must fail, not skip, when ROS 2 did not install)
    from rclpy.parameter import Parameter

    from ssm_perception.evidence import EvidenceReport
    from ssm_perception.nodes.perception_node import PerceptionNode
    from ssm_perception.tracking.support import TrackSupportReport

    n = PerceptionNode(context=rclpy_context, parameter_overrides=[
        Parameter("grid.length_x", value=20.0), Parameter("grid.length_y", value=20.0),
        Parameter("model.kind", value="logodds"), Parameter("sensors.use_camera", value=False)])
    try:
        n.last_evidence = EvidenceReport(0, "network agrees with the scan's evidence", 10, 0, 0.0, 0.0, 0, 5)
        n.last_track_support = TrackSupportReport(True, published=3, withheld_unsupported=[5, 6], withheld_static=[7])
        (ev,) = [s for s in n.diagnostics().status if s.name.endswith(": evidence")]
        values = {kv.key: kv.value for kv in ev.values}
        assert values["tracks_published"] == "3" and values["tracks_withheld_no_returns"] == "2"
        assert values["tracks_withheld_static_on_returns"] == "1" and values["track_rule_checked"] == "True"
    finally:
        n.destroy_node()


# ------------------------------------------------------------------------------ the shape check
BIG = GridConfig(length_x=40.0, length_y=40.0, resolution=0.5)  # 80 x 80 cells, x_min = y_min = -20


def _band(cells) -> np.ndarray:
    """[H, W] band counts (BIG): 3 returns in each listed base_link point's cell."""
    c = np.zeros((BIG.nx, BIG.ny), np.int32)
    for x, y in cells:
        c[int((x - BIG.x_min) / BIG.resolution), int((y - BIG.y_min) / BIG.resolution)] = 3
    return c


def _car_returns(x, y, length=4.5, width=1.9):
    """An L of returns, as a LiDAR sees a car: its rear and its near side (cells 0.5 m apart)."""
    xs = np.arange(x - length / 2 + 0.25, x + length / 2, 0.5)
    ys = np.arange(y - width / 2 + 0.25, y + width / 2, 0.5)
    return [(float(v), y - width / 2 + 0.25) for v in xs] + [(x - length / 2 + 0.25, float(v)) for v in ys]


def _wall(x0, x1, y, rows=2):
    """A wall or building front along x, ``rows`` cells (0.5 m each) deep from y down."""
    return [(float(v), y - 0.5 * k) for v in np.arange(x0 + 0.25, x1, 0.5) for k in range(rows)]


def _shape_ids(band, tracks, cfg=None):
    cfg = cfg or TrackSupportConfig()
    out, rep = TrackSupportRule(cfg, BIG).apply(tracks, band, se2_matrix(0, 0, 0), 1.0, band_count=band)
    assert rep.checked and rep.shape_checked == cfg.shape_check
    return sorted(t.id for t in out), rep


def test_shape_check_keeps_objects_and_withholds_tracks_on_walls_and_hedges():
    # a car alone, a row of three parked cars 1 m apart, a pedestrian: all published
    row = [(-10.0 + 5.5 * k, 8.0) for k in range(3)]
    cells = _car_returns(8.0, -2.0) + [c for x, y in row for c in _car_returns(x, y)] + [(12.25, 12.25), (12.25, 12.75)]
    tracks = [_track(1, 8.0, -2.0)] + [_track(10 + k, x, y) for k, (x, y) in enumerate(row)] \
        + [_track(20, 12.5, 12.5, cls=4, length=0.7, width=0.7)]
    # a 30 m building front (1 m deep) at y = -12 with a car-sized track on it; a 38 m hedge (1.5 m
    # deep, returns in 2 of 3 cells, holes in every row and column) with a pedestrian track in it
    hedge = [(-18.75 + 0.5 * i, -16.25 - 0.5 * j) for i in range(76) for j in range(3) if (i + 2 * j) % 3]
    cells += _wall(-15.0, 15.0, -12.25) + hedge
    tracks += [_track(30, 0.0, -12.5), _track(31, -8.0, -16.75, cls=4, length=0.7, width=0.7)]
    ids, rep = _shape_ids(_band(cells), tracks)
    assert ids == [1, 10, 11, 12, 20]
    assert sorted(rep.withheld_shape) == [30, 31] and rep.published == 5
    # off: all published
    ids, rep = _shape_ids(_band(cells), tracks, TrackSupportConfig(shape_check=False))
    assert len(ids) == len(tracks) and rep.withheld_shape == []


def test_shape_check_thresholds():
    # a car parked 1 m from a wall is its own structure; touching the wall, it is part of it
    car = _car_returns(0.0, 0.0)
    apart, _ = _shape_ids(_band(car + _wall(-18.0, 18.0, -2.25)), [_track(1, 0.0, 0.0)])
    touching, _ = _shape_ids(_band(car + _wall(-18.0, 18.0, -1.25)), [_track(1, 0.0, 0.0)])
    assert apart == [1] and touching == []
    # a wall ending just past the box is within shape_reach_m: kept
    assert _shape_ids(_band(_wall(-4.0, 4.0, 0.25)), [_track(1, 0.0, 0.0)])[0] == [1]
    # the area beyond the reach is what counts: 36 m x 1 m, box (4.5 m + a cell) + 2 m each way
    beyond = 2 * 2 * (18.0 - 4.5) / 0.5 * 0.25  # m^2: 27
    wall = _band(_wall(-18.0, 18.0, 0.25))
    assert _shape_ids(wall, [_track(1, 0.0, 0.0)], TrackSupportConfig(shape_max_beyond_m2=beyond + 0.5))[0] == [1]
    assert _shape_ids(wall, [_track(1, 0.0, 0.0)], TrackSupportConfig(shape_max_beyond_m2=beyond - 0.5))[0] == []
    # a 20 m single-cell wall has 5.5 m^2 beyond: below the default, kept (the check is about area)
    assert _shape_ids(_band(_wall(-10.0, 10.0, 0.0, rows=1)), [_track(1, 0.0, 0.0)])[0] == [1]


def test_shape_check_uses_the_band_not_overhangs():
    """A tree's crown over a parked car is above the evidence band: not in ``band_count``, so the car
    is its own structure (the non-ground counts, which hold the crown, are not what joins regions)."""
    car = _car_returns(0.0, 0.0)
    crown = [(float(x), float(y)) for x in np.arange(-9.75, 10.0, 0.5) for y in np.arange(-3.75, 4.0, 0.5)]
    band, nonground = _band(car), _band(car + crown)
    rule = TrackSupportRule(TrackSupportConfig(), BIG)
    out, rep = rule.apply([_track(1, 0.0, 0.0)], nonground, se2_matrix(0, 0, 0), 1.0, band_count=band)
    assert [t.id for t in out] == [1] and rep.withheld_shape == []
    out, rep = rule.apply([_track(1, 0.0, 0.0)], nonground, se2_matrix(0, 0, 0), 1.1, band_count=nonground)
    assert out == [] and rep.withheld_shape == [1]
