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
