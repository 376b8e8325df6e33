"""Issue 21 item 3: the tracking stage (PerceptionPipeline's stage 7: detections to odom, tracker,
track rule) against a recording of it, made before the tracker and the rule were rewritten for speed.

test/data/tracker_stage_reference.npz was written by ``python test/tracker_sequence.py <file>`` from
the implementation at commit d5d9fdc (the vectorised tracker of #21, per-track track rule) on two
sequences of test/tracker_sequence.py (120 and 60 objects of all classes from a moving ego, misses,
weak detections, clutter, stationary objects, a 0.6 s gap, weak detections on a wall of returns;
two tracking/rule configurations). Compared here, every frame: track ids, classes and statuses and
the rule's decision per track (published, withheld unsupported, withheld static, tentative passed),
its return counts and the published ids in order, exactly; the 33 track fields (state, box,
existence, scores, class probabilities, estimated covariance entries) through a fixed weighted sum
per track to 1e-9 relative; at frames 24 and 49 each field to 1e-9. The other covariance entries
must be the unobserved variance, the uuids stable per id and unique."""

from pathlib import Path

import numpy as np
import pytest
from tracker_sequence import record_stage, stage_configs, stage_inputs

from ssm_perception.tracking.stage import tracking_stage

REFERENCE = Path(__file__).parent / "data" / "tracker_stage_reference.npz"
EXACT = ("n", "ids", "cls", "status", "decision", "returns", "n_pub", "pub_ids", "full_n")


def _stage(tracker, rule, dets, T, stamp, counts):
    _, tracks, published, report = tracking_stage(tracker, rule, dets, T, stamp, counts)
    return tracks, published, report


@pytest.mark.parametrize("name", sorted(stage_configs()))
def test_tracking_stage_reproduces_the_recording(name):
    tc, sc, n, frames = stage_configs()[name]
    got = record_stage(stage_inputs(n, frames), tc, sc, _stage)
    with np.load(REFERENCE) as ref:
        want = {k.split("/", 1)[1]: ref[k] for k in ref.files if k.startswith(name + "/")}
    assert set(got) == set(want)
    per_frame = np.repeat(np.arange(frames), want["n"])
    for key in EXACT:
        if got[key].shape != want[key].shape or not np.array_equal(got[key], want[key]):
            k = per_frame[np.flatnonzero(got[key][:len(want[key])] != want[key][:len(got[key])])[:1]] \
                if key not in ("n", "n_pub", "pub_ids", "full_n") else "?"
            pytest.fail(f"{name}: {key} differs from the recording (first frame {k})")
    np.testing.assert_allclose(got["fp"], want["fp"], rtol=1e-9, atol=1e-9, err_msg=f"{name}: track fields")
    np.testing.assert_allclose(got["full"], want["full"], rtol=1e-9, atol=1e-9, err_msg=f"{name}: frames 24, 49")
    decisions = np.bincount(want["decision"] + 1, minlength=5)
    assert decisions[2:].min() > 0 and want["n"].max() >= (100 if n >= 100 else 50)  # every decision, many tracks


def test_footprints_returns_counts_the_cells_footprint_returns_counts():
    """The track rule's all-boxes count against the one-box function, on random and grid-aligned
    boxes (centres on cell edges, right angles: cell centres on the box edge), inside, across and
    outside the grid."""
    import math

    from ssm_perception.config import GridConfig
    from ssm_perception.tracking.support import footprint_returns, footprints_returns

    rng = np.random.default_rng(0)
    for g in (GridConfig(length_x=20.0, length_y=20.0, resolution=0.5), GridConfig(length_x=60.0, length_y=40.0)):
        counts = rng.integers(0, 3, (g.nx, g.ny)).astype(np.int32) * (rng.random((g.nx, g.ny)) < 0.3)
        n = 400
        x = np.concatenate([rng.uniform(-40, 40, n), np.round(rng.uniform(-10, 10, n) * 4) / 4])
        y = np.concatenate([rng.uniform(-30, 30, n), np.round(rng.uniform(-10, 10, n) * 4) / 4])
        yaw = np.concatenate([rng.uniform(-4, 4, n), rng.choice([0.0, math.pi / 2, math.pi, -math.pi / 2], n)])
        length = np.concatenate([rng.choice([0.05, 0.6, 1.8, 4.5, 10.0, 16.0], n), rng.choice([4.5, 1.5, 0.5], n)])
        width = np.concatenate([rng.choice([0.05, 0.6, 1.9, 2.5], n), rng.choice([1.9, 0.5, 1.0], n)])
        cos, sin = np.array([math.cos(a) for a in yaw]), np.array([math.sin(a) for a in yaw])
        for margin in (0.0, 0.25, 0.5):
            got = footprints_returns(counts, g, x, y, cos, sin, length, width, margin)
            want = [footprint_returns(counts, g, *a, margin) for a in zip(x, y, yaw, length, width, strict=True)]
            want = np.array([-1 if w is None else w for w in want])
            assert np.array_equal(got, want)
            assert (want == -1).any() and (want == 0).any() and (want > 0).any()


def test_the_stage_hand_offs_carry_the_objects_values():
    """The stage passes arrays instead of objects: detections_to_odom_table's table holds its odom
    detections' fields, update_table tracks like update on those detections, and output_table holds
    the returned tracks' x, y, yaw, length, width, tentative flags and ids."""
    from ssm_perception.config import TrackingConfig
    from ssm_perception.tracking.detections import (
        TABLE_COLUMNS,
        detections_to_odom,
        detections_to_odom_table,
    )
    from ssm_perception.tracking.tracker import MultiObjectTracker

    cfg = TrackingConfig(confirm_hits=3)  # tentative tracks in the output too
    a, b = MultiObjectTracker(cfg), MultiObjectTracker(cfg)
    seen = set()
    for stamp, dets, T, _ in stage_inputs(60, 12):
        odom, table, cls = detections_to_odom_table(dets, T)
        assert list(map(repr, odom)) == list(map(repr, detections_to_odom(dets, T)))  # repr: NaN velocities
        assert all(d.frame == "odom" for d in odom)
        want = np.array([[getattr(d, c) for c in TABLE_COLUMNS] for d in odom]).reshape(-1, len(TABLE_COLUMNS))
        np.testing.assert_array_equal(table, want)
        assert cls == [d.cls for d in odom]
        got, ref_tracks = a.update_table(table, cls, stamp), b.update(odom, stamp)
        assert [(t.id, t.status, t.x, t.existence) for t in got] == \
            [(t.id, t.status, t.x, t.existence) for t in ref_tracks]
        arr, tent, ids = a.output_table()
        np.testing.assert_array_equal(arr, np.array([(t.x, t.y, t.yaw, t.length, t.width) for t in got]).reshape(-1, 5))
        assert tent.tolist() == [t.status == "tentative" for t in got] and ids == [t.id for t in got]
        seen.update(t.status for t in got)
    assert seen == {"tentative", "confirmed", "coasting"}
