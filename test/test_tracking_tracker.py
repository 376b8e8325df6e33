"""MultiObjectTracker: accuracy, id stability through occlusion and crossings, lifecycle, bad input."""

import math

import numpy as np
import pytest

from ssm_perception.config import TrackingConfig
from ssm_perception.tracking.detections import Detection
from ssm_perception.tracking.tracker import (
    UNOBSERVED_VAR,
    MultiObjectTracker,
    TrackState,
)

SIZES = {1: (4.5, 1.9, 1.6), 2: (10.0, 2.5, 3.2), 3: (1.8, 0.6, 1.7), 4: (0.6, 0.6, 1.75)}


def cfg(**kw) -> TrackingConfig:
    """A fixed lifecycle for these behaviour tests (3 hits to confirm, 1.5 s of coasting, threshold
    0.3, the chi2 99.2 % gate): the shipped defaults are tuned to the model's detections and may move."""
    from ssm_perception.config import PerClass

    base = {"detection_threshold": 0.3, "score_threshold": PerClass(car=0.3, truck=0.3, cyclist=0.3, pedestrian=0.3),
            "nms_radius_m": PerClass(car=2.0, truck=3.0, cyclist=1.0, pedestrian=0.5), "confirm_hits": 3,
            "max_coast_s": 1.5, "report_coast_s": 1.5, "detection_probability": 0.5, "gate_mahalanobis": 11.83}
    return TrackingConfig(**(base | kw))


def odet(x, y, vx=0.0, vy=0.0, cls=1, yaw=None, score=0.9):
    yaw = math.atan2(vy, vx) if yaw is None else yaw
    return Detection(x, y, yaw, *SIZES[cls], vx, vy, cls, score, frame="odom")


def confirmed(tracks: list[TrackState]) -> list[TrackState]:
    return [t for t in tracks if t.status != "tentative"]


def test_constant_velocity_target_small_error():
    rng = np.random.default_rng(0)
    trk = MultiObjectTracker(cfg())
    for k in range(40):
        t = 0.1 * k
        x, y = 5.0 + 10.0 * t, -3.0 + 2.0 * t
        d = odet(x + rng.normal(0, 0.3), y + rng.normal(0, 0.3), 10.0 + rng.normal(0, 0.6),
                 2.0 + rng.normal(0, 0.6), yaw=math.atan2(2, 10) + rng.normal(0, 0.1))
        tracks = trk.update([d], t)
        assert len(tracks) == 1
        assert tracks[0].status == ("tentative" if k < 2 else "confirmed")
    (tr,) = tracks
    assert tr.id == 1
    assert math.hypot(tr.x - x, tr.y - y) < 0.3
    assert math.hypot(tr.vx - 10.0, tr.vy - 2.0) < 0.5
    assert abs(tr.yaw - math.atan2(2, 10)) < 0.05
    assert abs(tr.yaw_rate) < 0.1
    assert tr.age_s == pytest.approx(3.9) and tr.time_since_update_s == 0.0
    assert tr.existence > 0.99
    # covariance: honest size (position std well under a metre), symmetric, positive definite
    assert 0.01 < math.sqrt(tr.pose_cov[0, 0]) < 0.3
    for cov in (tr.pose_cov, tr.twist_cov):
        assert cov.shape == (6, 6)
        np.testing.assert_allclose(cov, cov.T)
        assert np.linalg.eigvalsh(cov).min() > 0
    assert tr.pose_cov[2, 2] == UNOBSERVED_VAR  # z is not estimated


def test_id_stable_through_half_second_occlusion():
    trk = MultiObjectTracker(cfg())
    statuses = []
    for k in range(40):
        t = 0.1 * k
        occluded = 15 <= k < 20  # 0.5 s without detections
        tracks = trk.update([] if occluded else [odet(8.0 * t, 0.0, 8.0, 0.0)], t)
        (tr,) = tracks
        statuses.append(tr.status)
        assert tr.id == 1
        assert abs(tr.x - 8.0 * t) < 0.5  # coasting keeps predicting along the motion
    assert statuses[15:20] == ["coasting"] * 5 and statuses[20] == "confirmed"
    # position uncertainty grew while coasting: the covariance admits what it does not know
    assert math.sqrt(tr.pose_cov[0, 0]) < 0.3


def test_crossing_targets_do_not_swap():
    rng = np.random.default_rng(3)
    trk = MultiObjectTracker(cfg())
    ids_a, ids_b = set(), set()
    for k in range(60):
        t = 0.1 * k
        # two pedestrians on an X: they meet at (3, 3) at t = 3 s
        a = (1.0 * t, 1.0 * t)
        b = (1.0 * t, 6.0 - 1.0 * t)
        dets = [odet(a[0] + rng.normal(0, 0.1), a[1] + rng.normal(0, 0.1), 1.0, 1.0, cls=4),
                odet(b[0] + rng.normal(0, 0.1), b[1] + rng.normal(0, 0.1), 1.0, -1.0, cls=4)]
        tracks = confirmed(trk.update(dets, t))
        for tr in tracks:
            if math.hypot(tr.x - a[0], tr.y - a[1]) < 0.5 and k > 35:
                ids_a.add(tr.id)
            if math.hypot(tr.x - b[0], tr.y - b[1]) < 0.5 and k > 35:
                ids_b.add(tr.id)
        if 3 <= k <= 25:
            first = {tr.id: tr for tr in tracks}
    assert len(first) == 2
    a_id = min(first.values(), key=lambda tr: tr.y).id  # below the diagonal at the start: track of a
    assert ids_a == {a_id} and ids_b == {next(i for i in first if i != a_id)}


def test_empty_and_nan_detections_make_no_tracks():
    trk = MultiObjectTracker(cfg())
    assert trk.update([], 0.0) == []
    bad = [odet(math.nan, 0.0), odet(1.0, math.inf), odet(2.0, 2.0, yaw=math.nan),
           Detection(3.0, 3.0, 0.0, -1.0, 2.0, 1.5, 0.0, 0.0, 1, 0.9, frame="odom"),  # negative size
           odet(4.0, 4.0, score=math.nan), odet(5.0, 5.0, score=0.1)]  # below detection_threshold
    for k in range(5):
        assert trk.update(bad, 0.1 * (k + 1)) == []
    # NaN velocity alone is fine: position-only measurement
    for k in range(5):
        tracks = trk.update([Detection(1.0 + 0.5 * k, 2.0, 0.0, *SIZES[1], math.nan, math.nan, 1, 0.9, "odom")],
                            1.0 + 0.1 * k)
    (tr,) = tracks
    assert tr.status == "confirmed" and np.isfinite([tr.x, tr.y, tr.vx, tr.vy]).all()


def test_detections_must_be_in_odom():
    with pytest.raises(ValueError, match="odom"):
        MultiObjectTracker(cfg()).update([Detection(0, 0, 0, 1, 1, 1, 0, 0, 1, 0.9)], 0.0)


def test_zero_and_negative_dt():
    trk = MultiObjectTracker(cfg(confirm_hits=3))
    d = odet(0.0, 0.0)
    trk.update([d], 0.0)
    trk.update([d], 0.0)  # duplicate frame: ignored, no second hit
    trk.update([d], 0.0)
    assert [t.status for t in trk.update([d], 0.1)] == ["tentative"]  # only 2 hits so far
    assert [t.status for t in trk.update([d], 0.2)] == ["confirmed"]
    before = trk.tracks()
    after = trk.update([odet(30.0, 0.0)], 0.15)  # slightly older frame (out of order): dropped
    assert [(t.id, t.x, t.status) for t in after] == [(t.id, t.x, t.status) for t in before]
    assert [(t.id, t.x) for t in trk.update([d], math.nan)] == [(t.id, t.x) for t in after]  # NaN stamp: no-op
    # a jump back in time beyond max_coast_s (bag replayed from the start): fresh tracker, new ids
    tracks = trk.update([odet(5.0, 5.0)], -10.0)
    assert [(t.id, t.status) for t in tracks] == [(2, "tentative")]
    assert trk.stamp == -10.0


def test_leave_and_reenter_gets_a_new_track_without_spurious_ones():
    config = cfg(max_coast_s=1.0, report_coast_s=1.0)
    trk = MultiObjectTracker(config)
    counts = []
    for k in range(80):
        t = 0.1 * k
        visible = k < 20 or k >= 50  # leaves the sensor range for 3 s
        tracks = trk.update([odet(40.0 + 2.0 * t, 0.0, 2.0, 0.0)] if visible else [], t)
        counts.append(len(tracks))
        if k == 19:
            first_id = tracks[0].id
    assert max(counts) == 1  # never more than the one object
    assert counts[20:29] == [1] * 9 and counts[30:50] == [0] * 20  # coasts max_coast_s, then deleted
    (tr,) = tracks
    assert tr.id != first_id and tr.status == "confirmed"


def test_long_gap_starts_fresh_tracks():
    trk = MultiObjectTracker(cfg(max_coast_s=1.5))
    for k in range(5):
        trk.update([odet(0.5 * k, 0.0, 5.0, 0.0)], 0.1 * k)
    # 10 s without any frame (e.g. the sensor died), then an object near where the old one would be
    tracks = trk.update([odet(2.5, 0.0, 5.0, 0.0)], 10.4)
    assert [(t.id, t.status) for t in tracks] == [(2, "tentative")]


def test_gating_and_class_awareness():
    trk = MultiObjectTracker(cfg())
    for k in range(5):
        trk.update([odet(0.0, 0.0)], 0.1 * k)
    # a detection 15 m away is outside the gate: the car track coasts and a new tentative track starts
    tracks = trk.update([odet(15.0, 0.0)], 0.5)
    assert sorted((t.id, t.status) for t in tracks) == [(1, "coasting"), (2, "tentative")]
    # a pedestrian detection right on the car track does not update it (class-aware)
    tracks = trk.update([odet(0.0, 0.0, cls=4)], 0.6)
    car = next(t for t in tracks if t.id == 1)
    assert car.status == "coasting" and car.time_since_update_s == pytest.approx(0.2)
    assert any(t.cls == 4 and t.status == "tentative" for t in tracks)
    # car <-> truck confusions are tolerated
    tracks = trk.update([odet(0.0, 0.0, cls=2)], 0.7)
    assert next(t for t in tracks if t.id == 1).status == "confirmed"


def test_hungarian_beats_greedy():
    """Greedy nearest-neighbour would give the middle detection to the wrong track."""
    trk = MultiObjectTracker(cfg(confirm_hits=1))
    for k in range(5):
        trk.update([odet(0.0, 0.0, cls=4), odet(1.0, 0.0, cls=4)], 0.1 * k)
    ids = {round(t.x): t.id for t in trk.tracks()}
    dets = [odet(0.6, 0.0, cls=4), odet(1.5, 0.0, cls=4)]
    cost = trk.cost_matrix(dets)  # rows: tracks at 0 and 1
    # greedy would take the cheapest pair first (track at 1, detection at 0.6) and strand the rest
    assert np.argmin(cost) == 2 and not np.isfinite(cost[0, 1])
    by_id = {t.id: t for t in trk.update(dets, 0.5)}
    assert len(by_id) == 2 and all(t.status == "confirmed" for t in by_id.values())
    assert by_id[ids[0]].x > 0.05 and by_id[ids[1]].x > 1.05  # each pulled towards its own detection


def test_reset_and_ids_never_reused():
    trk = MultiObjectTracker(cfg())
    trk.update([odet(0.0, 0.0)], 0.0)
    trk.reset()
    assert trk.tracks() == [] and trk.stamp is None
    (tr,) = trk.update([odet(0.0, 0.0)], 0.0)
    assert tr.id == 2


def test_track_state_fills_a_track_array_message():
    from ssm_perception.io import bag
    trk = MultiObjectTracker(cfg())
    for k in range(4):
        tracks = trk.update([odet(3.0 * 0.1 * k, 1.0, 3.0, 0.0)], 0.1 * k)
    msg = bag.track_array_msg([t.as_msg_dict() for t in tracks], 400_000_000, "odom")
    (m,) = msg.tracks
    tr = tracks[0]
    assert m.track_number == tr.id and bytes(m.object_id.uuid) == tr.uuid and m.status == 1
    assert m.classification[0].label == 1 and m.existence_probability == pytest.approx(tr.existence_probability)
    assert m.pose.covariance.shape == (36,) and m.pose.covariance[0] == pytest.approx(tr.pose_cov[0, 0])
    # twist in the object frame: rotate the odom velocity by -yaw
    c, s = math.cos(tr.yaw), math.sin(tr.yaw)
    assert m.twist.twist.linear.x == pytest.approx(c * tr.vx + s * tr.vy)


def test_batched_cost_matrix_equals_per_pair_mahalanobis():
    rng = np.random.default_rng(7)
    trk = MultiObjectTracker(cfg(confirm_hits=1, gate_mahalanobis=1e9))
    truth = [(rng.uniform(-20, 20), rng.uniform(-20, 20), c) for c in (1, 1, 2, 3, 4, 4)]
    for k in range(3):
        trk.update([odet(x + 0.5 * k, y, 5.0, 0.0, cls=c) for x, y, c in truth], 0.1 * k)
    dets = [odet(x + rng.normal(0, 1), y + rng.normal(0, 1), cls=c, yaw=rng.uniform(-3, 3)) for x, y, c in truth]
    cost = trk.cost_matrix(dets)
    for ti, t in enumerate(trk._tracks):
        for di, d in enumerate(dets):
            if (t.cls == d.cls) or {t.cls, d.cls} <= {1, 2}:
                ref = t.kf.mahalanobis(np.array([d.x, d.y, d.yaw, d.vx, d.vy]), trk.models[d.cls].R())
                assert cost[ti, di] == pytest.approx(ref, rel=1e-9)
            else:
                assert cost[ti, di] == np.inf


def test_per_class_thresholds_and_nms_reach_the_tracker():
    from ssm_perception.config import PerClass

    config = cfg(score_threshold=PerClass(car=0.8, truck=0.8, cyclist=0.3, pedestrian=0.3))
    trk = MultiObjectTracker(config)
    for k in range(6):
        t = 0.1 * k
        # a weak car (below its class threshold), a pedestrian at the same score, and a strong car
        # with a duplicate peak 1 m away (the circle NMS keeps one)
        tracks = trk.update([odet(0.0, 20.0, score=0.7), odet(5.0, 5.0, cls=4, score=0.7),
                             odet(10.0 + t, 0.0, vx=1.0, score=0.9), odet(11.0 + t, 0.0, vx=1.0, score=0.85)], t)
    car, ped = sorted(confirmed(tracks), key=lambda tr: tr.cls)
    assert (car.cls, ped.cls) == (1, 4)
    assert car.x == pytest.approx(10.5, abs=0.3) and ped.x == pytest.approx(5.0, abs=0.1)
    assert len(tracks) == 2  # no tentative leftovers from the suppressed detections


def test_long_coasting_track_is_withheld_but_keeps_its_id():
    trk = MultiObjectTracker(cfg(max_coast_s=1.5, report_coast_s=0.3))
    reported = []
    for k in range(30):
        t = 0.1 * k
        seen = k < 10 or k >= 18  # 0.8 s without detections
        tracks = trk.update([odet(10.0 + 2.0 * t, 0.0, 2.0, 0.0)] if seen else [], t)
        reported.append([tr.id for tr in tracks])
    first = reported[9]
    assert len(first) == 1
    assert reported[10:13] == [first] * 3  # coasting, still reported for 0.3 s
    assert reported[13:18] == [[]] * 5  # then withheld from the output ...
    assert reported[18:] == [first] * 12  # ... and the same id comes back with the object


@pytest.mark.parametrize("low", [0.0, 0.2])
def test_second_stage_keeps_tracks_alive_on_weak_detections_but_never_starts_one(low):
    """ByteTrack's second stage: a confirmed car whose score drops below its class threshold for a
    while stays matched (not coasting) when low_score_threshold admits the weak detections; a
    weak-only object never becomes a track; with the stage off (0) the same car only coasts."""
    trk = MultiObjectTracker(cfg(low_score_threshold=low, max_coast_s=0.3, report_coast_s=0.3))
    statuses, ids = [], set()
    for k in range(30):
        t = 0.1 * k
        car_score = 0.9 if (k < 8 or k >= 20) else 0.25  # weak for 1.2 s: longer than max_coast_s
        tracks = trk.update([odet(10.0 + 2.0 * t, 0.0, 2.0, 0.0, score=car_score),
                             odet(-20.0, 5.0, score=0.25)], t)  # a weak-only clutter peak, every frame
        car = [tr for tr in tracks if abs(tr.y) < 1.0]
        statuses.append(car[0].status if car else None)
        ids |= {tr.id for tr in confirmed(car)}
        assert all(abs(tr.x + 20.0) > 1.0 for tr in tracks)  # never a track on the weak-only peak
    if low > 0:
        assert statuses[8:20] == ["confirmed"] * 12 and len(ids) == 1  # one id through the weak spell
    else:
        assert None in statuses[8:20] and len(ids) == 2  # deleted after 0.3 s, re-born with a new id
