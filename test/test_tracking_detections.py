"""Detections: heatmap peaks decode to the boxes that were planted; radar refinement; odom hand-over."""

import math

import numpy as np
import pytest
import torch

from ssm_perception.config import GridConfig
from ssm_perception.geometry import se2_matrix
from ssm_perception.tracking.detections import (
    Detection,
    decode_detections,
    detections_to_odom,
    refine_with_radar,
)

GRID = GridConfig(length_x=20.0, length_y=10.0, resolution=0.5)  # 40 x 20 cells


def _heads(batch=True):
    nx, ny = GRID.nx, GRID.ny
    h = {
        "center_logit": torch.full((4, nx, ny), -8.0),
        "box_offset": torch.zeros(2, nx, ny),
        "box_size": torch.zeros(3, nx, ny),
        "box_yaw": torch.zeros(2, nx, ny),
        "velocity": torch.zeros(2, nx, ny),
        "occupancy_logit": torch.zeros(1, nx, ny),  # extra heads are ignored
    }
    h["box_yaw"][1] = 1.0  # cos = 1: yaw 0 everywhere
    # a car at cell (30, 5): logit 3 (score 0.953), with a weaker neighbour that NMS must drop
    h["center_logit"][0, 30, 5] = 3.0
    h["center_logit"][0, 31, 5] = 2.0
    h["box_offset"][:, 30, 5] = torch.tensor([0.1, -0.2])
    h["box_size"][:, 30, 5] = torch.log(torch.tensor([4.5, 1.9, 1.6]))
    h["box_yaw"][:, 30, 5] = torch.tensor([math.sin(0.5), math.cos(0.5)])
    h["velocity"][:, 30, 5] = torch.tensor([6.0, 1.0])
    # a pedestrian at cell (8, 15): logit 0 (score 0.5)
    h["center_logit"][3, 8, 15] = 0.0
    h["box_size"][:, 8, 15] = torch.log(torch.tensor([0.6, 0.6, 1.7]))
    if batch:
        h = {k: v[None] for k, v in h.items()}
    return h


@pytest.mark.parametrize("batch", [True, False])
def test_decode_recovers_planted_boxes(batch):
    dets = decode_detections(_heads(batch), GRID, score_threshold=0.3)
    assert [d.cls for d in dets] == [1, 4]  # best score first; the neighbour peak was suppressed
    car, ped = dets
    # cell (30, 5) centre: x = -10 + 30.5 * 0.5 = 5.25, y = -5 + 5.5 * 0.5 = -2.25
    assert (car.x, car.y) == pytest.approx((5.35, -2.45), abs=1e-5)
    assert (car.length, car.width, car.height) == pytest.approx((4.5, 1.9, 1.6), rel=1e-5)
    assert car.yaw == pytest.approx(0.5, abs=1e-6)
    assert (car.vx, car.vy) == pytest.approx((6.0, 1.0))
    assert car.score == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item())
    assert car.frame == "base_link"
    assert (ped.x, ped.y, ped.score) == pytest.approx((-10 + 8.5 * 0.5, -5 + 15.5 * 0.5, 0.5))


def test_decode_threshold_and_limit():
    assert [d.cls for d in decode_detections(_heads(), GRID, score_threshold=0.6)] == [1]
    assert len(decode_detections(_heads(), GRID, score_threshold=0.3, max_detections=1)) == 1
    assert decode_detections(_heads(), GRID, score_threshold=0.99) == []


def test_decode_nan_outputs_never_become_detections():
    h = _heads()
    h["center_logit"][0, 0, 20 - 1, 3] = math.nan
    h["center_logit"][0, 1, 10, 10] = 5.0
    h["box_size"][0, 0, 10, 10] = math.nan  # a peak with a broken box
    dets = decode_detections(h, GRID)
    assert [d.cls for d in dets] == [1, 4]
    h["center_logit"][:] = math.nan
    assert decode_detections(h, GRID) == []


def test_decode_rejects_wrong_shapes():
    h = _heads()
    with pytest.raises(ValueError, match="grid"):
        decode_detections(h, GridConfig())
    with pytest.raises(ValueError, match="batch"):
        decode_detections({k: v.expand(2, -1, -1, -1) for k, v in h.items()}, GRID)
    with pytest.raises(KeyError, match="velocity"):
        decode_detections({k: v for k, v in h.items() if k != "velocity"}, GRID)


def _det(**kw):
    base = {"x": 20.0, "y": 0.0, "yaw": 0.0, "length": 4.5, "width": 1.9, "height": 1.6, "vx": 0.0, "vy": 0.0,
            "cls": 1, "score": 0.9}
    return Detection(**(base | kw))


def test_radar_replaces_only_the_radial_component():
    d = _det(x=20.0, y=0.0, vx=1.0, vy=2.0)  # line of sight along +x from the sensor at the origin
    radar = np.array([[19.0, 0.3, 5.0], [21.0, -0.5, 5.2], [20.5, 0.0, 4.9], [40.0, 0.0, -3.0]])
    (r,) = refine_with_radar([d], radar)
    assert (r.vx, r.vy) == pytest.approx((5.0, 2.0))  # median radial speed, tangential kept
    # not enough returns inside the box: unchanged
    assert refine_with_radar([d], radar[3:]) == [d]
    assert refine_with_radar([d], np.full((3, 3), math.nan)) == [d]


def test_radar_fills_missing_velocity_along_line_of_sight():
    d = _det(x=10.0, y=10.0, vx=math.nan, vy=math.nan)
    radar = np.array([[10.0, 10.0, -2.0], [10.5, 10.2, -2.0]])
    (r,) = refine_with_radar([d], radar)
    assert (r.vx, r.vy) == pytest.approx((-math.sqrt(2), -math.sqrt(2)))


def test_detections_to_odom_rotates_everything():
    T = se2_matrix(100.0, 50.0, math.pi / 2)
    (o,) = detections_to_odom([_det(x=10.0, y=2.0, yaw=0.3, vx=4.0, vy=1.0)], T)
    assert o.frame == "odom"
    assert (o.x, o.y) == pytest.approx((98.0, 60.0))
    assert o.yaw == pytest.approx(0.3 + math.pi / 2)
    assert (o.vx, o.vy) == pytest.approx((-1.0, 4.0))
    with pytest.raises(ValueError, match="base_link"):
        detections_to_odom([o], T)
    with pytest.raises(ValueError, match="4x4"):
        detections_to_odom([], np.full((4, 4), math.nan))


def test_decode_reports_occupancy_evidence_when_the_head_is_there():
    h = _heads()
    h["occupancy_logit"][0, 0, 30, 5] = 2.0  # the car's cell: P(occupied) 0.88; the pedestrian's stays 0.5
    car, ped = decode_detections(h, GRID, score_threshold=0.3)
    assert car.evidence == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item())
    assert ped.evidence == pytest.approx(0.5)
    no_occ = decode_detections({k: v for k, v in h.items() if k != "occupancy_logit"}, GRID)
    assert len(no_occ) == 2 and all(math.isnan(d.evidence) for d in no_occ)


def _cfg(**kw):
    from ssm_perception.config import PerClass, TrackingConfig

    base = {"detection_threshold": 0.1,
            "score_threshold": PerClass(car=0.5, truck=0.5, cyclist=0.3, pedestrian=0.2),
            "nms_radius_m": PerClass(car=2.0, truck=3.0, cyclist=1.0, pedestrian=0.5)}
    return TrackingConfig(**(base | kw))


def test_select_applies_per_class_thresholds():
    from ssm_perception.tracking.detections import select_detections

    dets = [_det(score=0.45), _det(y=10.0, score=0.55), _det(y=-10.0, cls=4, score=0.25),
            _det(y=-20.0, cls=4, score=0.15), _det(y=20.0, cls=3, score=0.35)]
    kept = select_detections(dets, _cfg())
    assert [(d.cls, d.score) for d in kept] == [(1, 0.55), (4, 0.25), (3, 0.35)]  # input order kept
    assert select_detections([_det(score=math.nan), _det(length=0.0), _det(x=math.inf)], _cfg()) == []


def test_circle_nms_within_class_and_across_car_truck_only():
    from ssm_perception.config import PerClass
    from ssm_perception.tracking.detections import select_detections

    best, close, far = _det(score=0.9), _det(x=21.5, score=0.8), _det(x=23.0, score=0.7)
    assert select_detections([close, best, far], _cfg()) == [best, far]  # 1.5 m < 2 m; 3 m survives
    truck = _det(x=22.5, cls=2, score=0.6)  # 2.5 m from the car: inside the truck's 3 m radius
    assert select_detections([best, truck], _cfg()) == [best]
    ped = _det(x=20.3, cls=4, score=0.6)  # on the car but another kind of object: kept
    assert select_detections([best, ped], _cfg()) == [best, ped]
    no_nms = _cfg(nms_radius_m=PerClass(car=0.0, truck=0.0, cyclist=0.0, pedestrian=0.0))
    assert select_detections([close, best], no_nms) == [close, best]


def test_evidence_gate_drops_unsupported_peaks_but_not_unknown_evidence():
    from ssm_perception.tracking.detections import select_detections

    weak, strong, unknown = _det(evidence=0.2), _det(y=10.0, evidence=0.8), _det(y=-10.0)
    assert select_detections([weak, strong, unknown], _cfg(min_evidence=0.5)) == [strong, unknown]
    assert select_detections([weak, strong, unknown], _cfg()) == [weak, strong, unknown]


def test_shipped_floor_is_below_every_class_threshold():
    from ssm_perception.config import TrackingConfig

    t = TrackingConfig()
    assert t.detection_threshold <= min(t.score_threshold.of(c, 1.0) for c in (1, 2, 3, 4))


def _refine_one_box_at_a_time(dets, pts, sensor_xy, margin_m=0.5, min_points=2):
    """refine_with_radar as it was before it scored all boxes at once (the reference)."""
    import math
    from dataclasses import replace

    pts = np.asarray(pts, dtype=np.float64).reshape(-1, 3)
    pts = pts[np.all(np.isfinite(pts), axis=1)]
    out = []
    for d in dets:
        c, s = math.cos(d.yaw), math.sin(d.yaw)
        dx, dy = pts[:, 0] - d.x, pts[:, 1] - d.y
        along, across = c * dx + s * dy, -s * dx + c * dy
        inside = (np.abs(along) <= d.length / 2 + margin_m) & (np.abs(across) <= d.width / 2 + margin_m)
        ray = np.array([d.x - sensor_xy[0], d.y - sensor_xy[1]])
        rng = float(np.linalg.norm(ray))
        if int(inside.sum()) < min_points or rng < 1e-3:
            out.append(d)
            continue
        u = ray / rng
        vr = float(np.median(pts[inside, 2]))
        v = np.array([d.vx, d.vy]) if d.has_velocity else np.zeros(2)
        v = v + (vr - float(v @ u)) * u
        out.append(replace(d, vx=float(v[0]), vy=float(v[1])))
    return out


def test_radar_refinement_of_all_boxes_at_once_equals_one_box_at_a_time():
    from ssm_perception.tracking.detections import Detection, refine_with_radar

    rng = np.random.default_rng(4)
    dets = [Detection(x=float(x), y=float(y), yaw=float(a), length=4.5, width=1.9, height=1.6, vx=float(vx), vy=0.3,
                      cls=1, score=0.8) for x, y, a, vx in rng.uniform([-20, -20, -3, -5], [20, 20, 3, 5], (40, 4))]
    dets.append(Detection(x=float("nan"), y=0.0, yaw=0.0, length=4.0, width=2.0, height=1.5, vx=0.0, vy=0.0, cls=1,
                          score=0.5))
    pts = np.concatenate([rng.uniform(-22, 22, (300, 2)), rng.normal(0, 3, (300, 1))], 1)
    pts[5] = np.nan
    for d in dets[:10]:  # returns on some boxes for sure
        pts = np.concatenate([pts, [[d.x + 0.3, d.y - 0.2, 2.0], [d.x - 0.5, d.y + 0.1, 2.4], [d.x, d.y, 1.9]]])
    got, ref = refine_with_radar(dets, pts, (1.0, 0.0)), _refine_one_box_at_a_time(dets, pts, (1.0, 0.0))
    assert [(d.vx, d.vy) for d in got[:-1]] == [(d.vx, d.vy) for d in ref[:-1]]
    assert sum(g.vx != d.vx for g, d in zip(got, dets, strict=True)) >= 10  # refinement happened
