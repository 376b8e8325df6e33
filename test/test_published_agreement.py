"""One truth: the grid the node publishes over DDS and the grid `evaluate` scores are the same values.

A simulated bag with ground truth is replayed in lockstep into the node (a separate process, real DDS);
the published OccupancyGrids are scored against the bag's ground truth as a planner reads them
(value / 100, -1 unknown). `evaluate` on the same bag with the same configuration must give the same
IoU within 0.01, and the same known share.
"""

import numpy as np
import pytest
from nav_msgs.msg import OccupancyGrid
from ros_helpers import GRID, TEST_OVERRIDES, Listener, replay, running_node, wait_for

from ssm_perception.config import GridConfig, PerceptionConfig

pytestmark = pytest.mark.ros


def test_node_and_evaluate_score_the_same_published_grid(tmp_path):
    from ssm_perception.eval.evaluate import evaluate
    from ssm_perception.eval.occupancy import OccupancyMetrics, range_map
    from ssm_perception.evidence import decode_occupancy
    from ssm_perception.io.bag import read_messages
    from ssm_perception.io.ros_convert import occupancy_grid_to_array, stamp_to_ns
    from ssm_perception.sim.presets import preset
    from ssm_perception.sim.scenario import Scenario
    from ssm_perception.sim.writer import write_bag

    grid = GridConfig(length_x=TEST_OVERRIDES["grid.length_x"], length_y=TEST_OVERRIDES["grid.length_y"],
                      resolution=TEST_OVERRIDES["grid.resolution"])
    sc_cfg = preset("urban", seed=3, duration_s=1.6)
    sc_cfg.camera.enabled = False  # the node runs without a camera here (TEST_OVERRIDES)
    bag = write_bag(Scenario(sc_cfg, grid), tmp_path / "bag", progress=False)

    listener = Listener("agreement_listener", {GRID: OccupancyGrid})
    with running_node(tmp_path, listener) as node:
        replay(bag, tmp_path / "replay.log", 120, lockstep_timeout_s=30.0)
        truth = {}
        for _, _, _, m in read_messages(bag, ["/ground_truth/occupancy", "/ground_truth/dynamic",
                                              "/ground_truth/visibility"]):
            truth.setdefault(stamp_to_ns(m.header.stamp), []).append(occupancy_grid_to_array(m) == 100)
        wait_for(lambda: len(listener.get(GRID)) >= len(truth), 30, "a grid per scan", node)

    node_metrics = OccupancyMetrics(range_map(grid.nx, grid.ny, grid.resolution, grid.x_min, grid.y_min))
    known = []
    for g in listener.get(GRID):
        occ, dyn, vis = truth[stamp_to_ns(g.header.stamp)]
        values = occupancy_grid_to_array(g)
        node_metrics.add(decode_occupancy(values), occ, dyn, vis)
        known.append(float((values >= 0).mean()))
    assert node_metrics.frames == len(truth) >= 15

    cfg = PerceptionConfig.from_ros_parameters({**PerceptionConfig().to_ros_parameters(), **TEST_OVERRIDES})
    m = evaluate([bag], cfg, tmp_path / "eval", progress=False, plots=False)["models"]["model"]
    node_iou = node_metrics.summary()["splits"]["all"]["iou"]
    eval_iou = m["occupancy"]["splits"]["all"]["iou"]
    assert m["occupancy"]["frames"] == node_metrics.frames
    assert abs(node_iou - eval_iou) <= 0.01, (node_iou, eval_iou)
    assert abs(m["occupancy"]["ece"] - node_metrics.calibration.ece()) <= 0.01
    assert abs(m["known_share"] - float(np.mean(known))) <= 0.01
    # The published grid is not the raw probability: evaluate reports both, and they differ by the
    # evidence floor and the int8 encoding only.
    assert m["occupancy_raw"]["splits"]["all"]["iou"] is not None
