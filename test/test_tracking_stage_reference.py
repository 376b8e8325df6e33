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
