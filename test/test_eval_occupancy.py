"""Occupancy metrics against hand-computed small cases; ECE on known distributions."""

import math

import numpy as np
import pytest

from ssm_perception.eval.occupancy import (
    Calibration,
    Counts,
    OccupancyMetrics,
    iou,
    range_map,
)


def test_counts_hand_computed():
    pred = np.array([[1, 1, 0], [0, 1, 0]], bool)
    truth = np.array([[1, 0, 0], [1, 1, 0]], bool)
    c = Counts().add(pred, truth)
    assert (c.tp, c.fp, c.fn, c.tn) == (2, 1, 1, 2)
    assert c.iou == pytest.approx(2 / 4)
    assert c.f1 == pytest.approx(4 / 6)
    assert iou(pred, truth, mask=np.array([[1, 1, 1], [0, 0, 0]], bool)) == pytest.approx(1 / 2)
    assert Counts().add(np.zeros(3, bool), np.zeros(3, bool)).iou is None


def test_static_dynamic_visible_splits():
    ranges = range_map(2, 3, 1.0, -1.0, -1.5)
    m = OccupancyMetrics(ranges, bands=((0.0, 1.0), (1.0, math.inf)))
    occ = np.array([[1, 1, 0], [0, 1, 0]], bool)
    dyn = np.array([[0, 1, 0], [0, 0, 0]], bool)  # cell (0,1) is a moving object
    vis = np.array([[1, 1, 1], [0, 0, 0]], bool)
    prob = np.array([[0.9, 0.2, 0.7], [0.1, 0.8, 0.1]])  # misses the mover, one FP at (0,2)
    m.add(prob, occ, dyn, vis, dyn_joint=prob * 0.9)
    s = m.summary()["splits"]
    assert s["all"]["iou"] == pytest.approx(2 / 4)  # tp (0,0),(1,1); fp (0,2); fn (0,1)
    assert s["static"]["iou"] == pytest.approx(2 / 3)  # mover ignored
    assert s["dynamic"]["iou"] == pytest.approx(0.0)  # static cells ignored: fp (0,2), fn (0,1)
    assert s["visible"]["iou"] == pytest.approx(1 / 3)
    assert s["occluded"]["iou"] == pytest.approx(1.0)
    assert s["dynamic_occluded"]["iou"] is None  # nothing positive there
    # range: cell centres at x=-0.5/0.5, y=-1/0/1 -> r = 0.5 for the middle column
    assert s["range_0_1"]["tp"] + s["range_0_1"]["fn"] == 2
    assert m.summary()["moving"]["fn"] == 1


def test_ece_perfectly_calibrated_is_small():
    rng = np.random.default_rng(0)
    p = rng.uniform(size=200_000)
    y = rng.uniform(size=p.size) < p
    assert Calibration(10).add(p, y).ece() < 0.01


def test_ece_overconfident_known_value():
    # Always predicts 0.9 but only half are occupied: ECE = |0.5 - 0.9| = 0.4.
    p = np.full(1000, 0.9)
    y = np.arange(1000) % 2 == 0
    cal = Calibration(10).add(p, y)
    assert cal.ece() == pytest.approx(0.4)
    bins = cal.bins()
    assert bins[9]["count"] == 1000 and bins[9]["frequency"] == pytest.approx(0.5)
    assert Calibration(10).ece() is None
