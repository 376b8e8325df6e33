"""Issue 18: the published tracks speak the planners' language. Over a tracked sequence (shipped
tracking defaults, noisy detections, misses, class confusion, clutter) every Track message has a
UUID that stays the same over the track's life and is never reused (also across a tracker reset),
symmetric positive semi-definite covariances, class probabilities in Autoware's numbering that sum
to 1, and existence_probability >= 0.5 whenever it is CONFIRMED. The ground-truth encoder (bags)
round-trips through the evaluation's decoder."""

import math

import numpy as np
import pytest

from ssm_perception.config import TrackingConfig
from ssm_perception.io import ros_convert as rc
from ssm_perception.io import track_fields
from ssm_perception.tracking.detections import Detection
from ssm_perception.tracking.tracker import MultiObjectTracker

SIZES = {1: (4.5, 1.9, 1.6), 2: (10.0, 2.5, 3.2), 3: (1.8, 0.6, 1.7), 4: (0.6, 0.6, 1.75)}
NS = 1_000_000_000


def _frames(rng, n=120):
    """Per frame: detections in odom. Four objects; the cyclist is missed for 0.8 s and comes back
    with a weak score (the coasting -> re-detected path); the truck is sometimes called a car."""
    objs = [(1, 0.0, 0.0, 8.0, 0.5), (2, 20.0, 6.0, 5.0, 0.0), (3, -5.0, 10.0, 3.0, -1.0), (4, 10.0, -8.0, 0.0, 1.2)]
    for k in range(n):
        t = 0.1 * k
        dets = []
        for cls, x0, y0, vx, vy in objs:
            if cls == 3 and 40 <= k < 48:
                continue
            score = 0.32 if (cls == 3 and k >= 48) else float(rng.uniform(0.5, 0.95))
            seen_cls = 1 if (cls == 2 and rng.random() < 0.3) else cls
            dets.append(Detection(x0 + vx * t + rng.normal(0, 0.2), y0 + vy * t + rng.normal(0, 0.2),
                                  math.atan2(vy, vx) + rng.normal(0, 0.05), *SIZES[cls],
                                  vx + rng.normal(0, 0.5), vy + rng.normal(0, 0.5), seen_cls, score, frame="odom"))
        if rng.random() < 0.2:  # clutter
            dets.append(Detection(*rng.uniform(-30, 30, 2), 0.0, *SIZES[1], math.nan, math.nan, 1,
                                  float(rng.uniform(0.3, 0.5)), frame="odom"))
        yield t, dets


def _check_message(msg, uuids: dict[int, bytes]) -> int:
    confirmed = 0
    for m in msg.tracks:
        uid = bytes(m.object_id.uuid)
        assert len(uid) == 16 and uid != bytes(16)
        assert uuids.setdefault(m.track_number, uid) == uid, f"track {m.track_number} changed its UUID"
        for cov in (m.pose.covariance, m.twist.covariance):
            c = np.asarray(cov).reshape(6, 6)
            assert np.allclose(c, c.T, atol=1e-12)
            assert np.linalg.eigvalsh(c).min() >= -1e-9 * max(1.0, np.abs(c).max())
        probs = [c.probability for c in m.classification]
        assert m.classification and sum(probs) == pytest.approx(1.0, abs=1e-6)
        assert probs == sorted(probs, reverse=True) and all(0 <= c.label <= 7 for c in m.classification)
        assert 0.0 <= m.existence_probability <= 1.0
        if m.status == m.STATUS_CONFIRMED:
            confirmed += 1
            assert m.existence_probability >= 0.5, f"confirmed track {m.track_number} at {m.existence_probability}"
        assert len(m.shape.footprint.points) == 4 and m.shape.dimensions.x > 0
    return confirmed


def test_track_messages_over_a_sequence_and_a_reset():
    rng = np.random.default_rng(7)
    trk = MultiObjectTracker(TrackingConfig())  # the shipped defaults: one-hit confirmation
    uuids: dict[int, bytes] = {}
    confirmed = coasting = 0
    truck_probs = []
    for t, dets in _frames(rng):
        tracks = [tr for tr in trk.update(dets, t) if tr.status != "tentative"]  # what the node publishes
        msg = rc.track_array_msg(tracks, "odom", int((1_700_000_000 + t) * NS))
        confirmed += _check_message(msg, uuids)
        coasting += sum(m.status == m.STATUS_COASTING for m in msg.tracks)
        truck_probs += [c.probability for m in msg.tracks for c in m.classification if c.label == 2
                        and len(m.classification) == 2]
    assert confirmed > 300 and coasting > 0
    assert truck_probs and 0.5 < np.mean(truck_probs) < 1.0  # the truck's confusion shows as two hypotheses
    assert len(set(uuids.values())) == len(uuids), "two tracks share a UUID"

    before = set(uuids.values())
    trk.reset()
    after: dict[int, bytes] = {}
    for t, dets in _frames(np.random.default_rng(8), n=5):
        msg = rc.track_array_msg([tr for tr in trk.update(dets, 20.0 + t) if tr.status != "tentative"], "odom",
                                 int((1_700_000_100 + t) * NS))
        _check_message(msg, after)
    assert after and not (set(after.values()) & before), "a UUID was reused after a reset"


def test_confirmed_tracks_meet_the_planner_threshold_even_after_long_coasting():
    """A track that coasted until its existence fell below 0.5 and is then detected weakly is not
    reported CONFIRMED until its existence is back at 0.5 (it stays COASTING, still published)."""
    trk = MultiObjectTracker(TrackingConfig(max_coast_s=3.0, report_coast_s=3.0, min_existence=0.0))
    det = Detection(0.0, 0.0, 0.0, *SIZES[1], 0.0, 0.0, 1, 0.9, frame="odom")
    trk.update([det], 0.0)
    for k in range(1, 12):
        (tr,) = trk.update([], 0.1 * k)
    assert tr.status == "coasting" and tr.existence_probability < 0.5
    weak = Detection(0.0, 0.0, 0.0, *SIZES[1], 0.0, 0.0, 1, 0.31, frame="odom")
    (tr,) = trk.update([weak], 1.2)
    assert tr.existence_probability < 0.5 and tr.status == "coasting"
    for k in range(13, 20):
        (tr,) = trk.update([det], 0.1 * k)
    assert tr.status == "confirmed" and tr.existence_probability >= 0.5


def test_ground_truth_encoding_round_trips_through_the_evaluation_decoder():
    from ssm_perception.eval.tracking import ground_truth_objects
    from ssm_perception.io import bag

    objs = [{"id": 12, "cls": 3, "x": 4.0, "y": -2.0, "z": 0.85, "yaw": 2.5, "l": 1.8, "w": 0.6, "h": 1.7,
             "vx": -3.0, "vy": 1.5, "status": 2}]
    (o,) = ground_truth_objects(bag.track_array_msg(objs, 5 * NS, "odom"))
    assert (o.id, o.cls, o.observed) == (12, 3, False)
    assert (o.x, o.y, o.yaw) == pytest.approx((4.0, -2.0, 2.5))
    assert (o.vx, o.vy) == pytest.approx((-3.0, 1.5))
    assert (o.length, o.width, o.height) == pytest.approx((1.8, 0.6, 1.7))
    msg = bag.track_array_msg(objs, 5 * NS, "odom")
    assert msg.tracks[0].classification[0].label == track_fields.BICYCLE  # our cyclist is Autoware's bicycle
    assert bytes(msg.tracks[0].object_id.uuid) == track_fields.ground_truth_uuid(12)
