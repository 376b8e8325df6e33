"""Label-free metrics on hand-made frames: evidence coverage of the published grid vs the network
alone, see-through contradictions, tracks without returns, tracks that never move on evidence, and
tracking against labels (ignoring labelled boxes without returns)."""

from types import SimpleNamespace

import numpy as np

from ssm_perception.config import GridConfig, PerceptionConfig
from ssm_perception.eval.labelfree import (
    LabelFreeMetrics,
    footprint_cells,
    labels_for_stamp,
)
from ssm_perception.evidence import EvidenceGrids, published_grids
from ssm_perception.geometry import se2_matrix
from ssm_perception.io.labels import LabelBox

GRID = GridConfig(length_x=20.0, length_y=20.0, resolution=0.5)  # 40 x 40, x_min = -10


def _cell(x, y):
    return int((x + 10) / 0.5), int((y + 10) / 0.5)


def _track(tid, x, y, status="confirmed"):
    return SimpleNamespace(id=tid, cls=1, x=x, y=y, yaw=0.0, length=4.0, width=2.0, status=status)


def _frame(ego_x, tracks, net=0.1):
    band = np.zeros((40, 40), np.int32)
    for y in np.arange(-1.0, 1.01, 0.5):  # returns on a parked car at odom x = 8
        band[_cell(8.0 - ego_x, y)] = 4
    band[_cell(-8.0, 8.0)] = 3  # a wall corner the network calls free
    free = np.zeros((40, 40), bool)
    free[_cell(2.0, 0.0)] = free[_cell(2.5, 0.0)] = True
    prob = np.full((40, 40), net, np.float32)
    prob[_cell(2.0, 0.0)] = 0.9  # network: occupied where the scan sees through
    prob[band > 0] = 0.8
    prob[_cell(-8.0, 8.0)] = 0.1
    ev = EvidenceGrids(band, band.copy(), free, (band > 0) | free)
    rep = SimpleNamespace(disagreement=1 / 6)
    return SimpleNamespace(occupancy=prob, unknown=np.zeros((40, 40), bool), evidence=ev, direct_age_s=None,
                           evidence_report=rep, tracks=tracks, T_odom_base=se2_matrix(ego_x, 0.0, 0.0))


def test_coverage_contradictions_and_track_support():
    cfg = PerceptionConfig(grid=GRID)
    lf = LabelFreeMetrics(cfg)
    for k in range(40):  # 4 s at 10 Hz, the ego drives at 1 m/s towards the parked car
        t = 0.1 * k
        out = _frame(0.1 * k, [_track(1, 8.0, 0.0), _track(2, 0.1 * k + 3.0, -6.0), _track(3, 0, 0, "tentative")])
        lf.add(t, out, published_grids(out, cfg.evidence))
    s = lf.summary()
    assert s["frames"] == 40 and s["evidence_cells"] == 40 * 6
    assert s["evidence_coverage"] == 1.0  # the rule: the wall corner is published occupied
    assert abs(s["evidence_coverage_network"] - 5 / 6) < 1e-9  # the network alone missed it
    assert s["free_space_contradiction_rate"] == 0.5 and abs(s["disagreement_mean"] - 1 / 6) < 1e-9
    tr = s["tracks"]
    assert tr["instances_in_grid"] == 80 and tr["unsupported_instances"] == 40  # track 2 drives on nothing
    assert tr["ids"] == 2 and tr["static_on_evidence_ids"] == 1  # track 1: parked on its returns for 3.9 s
    assert s["labels"] is None


def test_labels_score_tracks_and_ignore_boxes_without_returns():
    cfg = PerceptionConfig(grid=GRID)
    lf = LabelFreeMetrics(cfg, with_labels=True)
    stamps = [1_000_000_000 + k * 100_000_000 for k in range(10)]
    labels = {s: [LabelBox(s, "car-a", "car", 8.0, 0.0, 0.8, 4.0, 2.0, 1.5, 0.0),
                  LabelBox(s, "hidden", "car", 5.0, 6.0, 0.8, 4.0, 2.0, 1.5, 0.0)] for s in stamps}
    keys = np.array(sorted(labels))
    assert labels_for_stamp(labels, keys, stamps[3] + 20_000_000) is labels[stamps[3]]
    assert labels_for_stamp(labels, keys, stamps[-1] + 60_000_000) is None
    for k, s in enumerate(stamps):
        out = _frame(0.0, [_track(7, 8.3, 0.2), _track(8, -5.0, -5.0)])
        lf.add(0.1 * k, out, published_grids(out, cfg.evidence), labels_for_stamp(labels, keys, s))
    lab = lf.summary()["labels"]
    car = lab["tracking"]["car"]
    # car-a matched every frame; the box without returns is ignored (not a miss); track 8 is a false positive
    assert car["num_gt"] == 10 and car["misses"] == 0 and car["false_positives"] == 10
    assert lab["tracks_far_from_labels_share"] == 0.5
    assert lab["recall_by_range"]["car"][0]["recall"] == 1.0  # 8 m: the 0-10 m bucket


def test_footprint_cells_follow_the_box_orientation():
    m = footprint_cells(GRID, 0.0, 0.0, 0.0, 4.0, 1.0, margin=0.0)
    assert m[_cell(1.75, 0.25)] and not m[_cell(0.25, 1.25)]
    m = footprint_cells(GRID, 0.0, 0.0, np.pi / 2, 4.0, 1.0, margin=0.0)
    assert not m[_cell(1.75, 0.25)] and m[_cell(0.25, 1.25)]
    assert not footprint_cells(GRID, 50.0, 0.0, 0.0, 4.0, 2.0).any()  # outside the grid
